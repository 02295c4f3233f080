//! The series budget: which gateway keys, users and teams become label values.
//!
//! A gateway with tens of thousands of keys must not hand Prometheus tens of thousands of
//! series per metric, yet an SRE needs spend by team and user and a look at the biggest
//! spenders. So:
//! - tokens and cost are always complete, aggregated by team (with model) and by user;
//!   team and user label values are admitted first come, first served up to their limits,
//!   and usage of any later team or user is reported under [`OTHER`] (and counted in
//!   `metis_metrics_folded_total`, so the folding is visible);
//! - per-key series exist only for the `top_keys` keys with the highest spend since the
//!   process started, plus the keys listed explicitly (opt-in);
//! - per-key cap ratios exist only for the `top_keys` (key, scope) pairs nearest their caps,
//!   plus the opt-in keys; `metis_quota_keys` counts every capped key by threshold.
//!
//! Per-key totals are kept in memory for every key that spent (bounded by the keystore, a
//! few hundred bytes per key) so the ranking is exact; only the rendering is budgeted.

use metis_ports::metrics::{Attribution, QuotaRatio};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Label value for usage without a user or team tag.
pub const NONE: &str = "none";
/// Label value for users or teams beyond the budget.
pub const OTHER: &str = "_other";

/// Token buckets, in label order.
pub(crate) const KINDS: [&str; 4] = ["input", "output", "cache_read", "cache_write"];

/// What may become a label value (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesBudget {
    /// Keys with per-key series, ranked by spend since start (0 = none ranked).
    pub top_keys: usize,
    /// Keys that always get per-key series (`--metrics-key`).
    pub keys: BTreeSet<String>,
    /// Distinct `user` label values before folding into [`OTHER`].
    pub max_users: usize,
    /// Distinct `team` label values before folding into [`OTHER`].
    pub max_teams: usize,
}

impl Default for SeriesBudget {
    fn default() -> Self {
        SeriesBudget {
            top_keys: 20,
            keys: BTreeSet::new(),
            max_users: 100,
            max_teams: 50,
        }
    }
}

/// Label values admitted first come, first served, up to a limit.
#[derive(Debug, Default)]
pub(crate) struct LabelSet {
    admitted: HashSet<String>,
    limit: usize,
}

impl LabelSet {
    pub fn new(limit: usize) -> Self {
        LabelSet {
            admitted: HashSet::new(),
            limit,
        }
    }

    /// The label value to use for `raw`, and whether it was folded into [`OTHER`].
    pub fn admit(&mut self, raw: Option<&str>) -> (String, bool) {
        let Some(v) = raw.filter(|v| !v.is_empty()) else {
            return (NONE.to_owned(), false);
        };
        if self.admitted.contains(v) {
            return (v.to_owned(), false);
        }
        if self.admitted.len() < self.limit {
            self.admitted.insert(v.to_owned());
            return (v.to_owned(), false);
        }
        (OTHER.to_owned(), true)
    }
}

/// Tokens by bucket and cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Totals {
    pub tokens: [f64; 4],
    pub cost: f64,
}

impl Totals {
    pub fn add(&mut self, tokens: &[f64; 4], cost: f64) {
        for (t, n) in self.tokens.iter_mut().zip(tokens) {
            *t += n;
        }
        self.cost += cost;
    }

    fn token_sum(&self) -> f64 {
        self.tokens.iter().sum()
    }
}

/// One key's totals by model.
#[derive(Debug, Default)]
pub(crate) struct KeyTotals {
    pub all: Totals,
    pub by_model: BTreeMap<String, Totals>,
}

/// Every key's totals (for the ranking), keyed by key id.
pub(crate) type KeyBook = HashMap<String, KeyTotals>;

/// Usage as the exporter keeps it: complete aggregates by team (with model) and by user,
/// and every key's totals for the ranking.
#[derive(Debug)]
pub(crate) struct SpendBook {
    teams: LabelSet,
    users: LabelSet,
    pub by_team: BTreeMap<(String, String), Totals>,
    pub by_user: BTreeMap<String, Totals>,
    pub keys: KeyBook,
    /// Usage records whose user / team was folded into [`OTHER`].
    pub folded_users: u64,
    pub folded_teams: u64,
}

impl SpendBook {
    pub fn new(budget: &SeriesBudget) -> Self {
        SpendBook {
            teams: LabelSet::new(budget.max_teams),
            users: LabelSet::new(budget.max_users),
            by_team: BTreeMap::new(),
            by_user: BTreeMap::new(),
            keys: KeyBook::new(),
            folded_users: 0,
            folded_teams: 0,
        }
    }

    pub fn record(&mut self, who: &Attribution<'_>, model: &str, tokens: &[f64; 4], cost: f64) {
        let (team, team_folded) = self.teams.admit(who.team_id);
        let (user, user_folded) = self.users.admit(who.user_id);
        self.folded_teams += u64::from(team_folded);
        self.folded_users += u64::from(user_folded);
        self.by_team
            .entry((team, model.to_owned()))
            .or_default()
            .add(tokens, cost);
        self.by_user.entry(user).or_default().add(tokens, cost);
        let key = match self.keys.get_mut(who.key_id) {
            Some(k) => k,
            None => self.keys.entry(who.key_id.to_owned()).or_default(),
        };
        key.all.add(tokens, cost);
        match key.by_model.get_mut(model) {
            Some(t) => t.add(tokens, cost),
            None => {
                let mut t = Totals::default();
                t.add(tokens, cost);
                key.by_model.insert(model.to_owned(), t);
            }
        }
    }
}

/// The keys whose per-key series are rendered: the `top` biggest spenders (cost, then
/// tokens, then key id, so the choice is deterministic) plus the opt-in keys that spent.
pub(crate) fn selected_keys<'a>(book: &'a KeyBook, budget: &SeriesBudget) -> Vec<&'a str> {
    let mut ranked: Vec<(&'a str, &KeyTotals)> =
        book.iter().map(|(k, t)| (k.as_str(), t)).collect();
    ranked.sort_by(|a, b| {
        b.1.all
            .cost
            .total_cmp(&a.1.all.cost)
            .then(b.1.all.token_sum().total_cmp(&a.1.all.token_sum()))
            .then(a.0.cmp(b.0))
    });
    let mut chosen: BTreeSet<&'a str> = ranked
        .iter()
        .take(budget.top_keys)
        .map(|(k, _)| *k)
        .collect();
    for k in &budget.keys {
        if let Some((key, _)) = book.get_key_value(k.as_str()) {
            chosen.insert(key.as_str());
        }
    }
    chosen.into_iter().collect()
}

/// The cap ratios rendered per key: the `top` pairs nearest their caps (above zero) plus
/// every pair of an opt-in key, in a stable order.
pub(crate) fn selected_ratios<'a>(
    ratios: &'a [QuotaRatio],
    budget: &SeriesBudget,
) -> Vec<&'a QuotaRatio> {
    let mut ranked: Vec<&'a QuotaRatio> = ratios.iter().filter(|r| r.ratio > 0.0).collect();
    ranked.sort_by(|a, b| {
        b.ratio
            .total_cmp(&a.ratio)
            .then(a.key_id.cmp(&b.key_id))
            .then(a.scope.cmp(b.scope))
    });
    ranked.truncate(budget.top_keys);
    for r in ratios {
        if budget.keys.contains(&r.key_id) && !ranked.iter().any(|x| std::ptr::eq(*x, r)) {
            ranked.push(r);
        }
    }
    ranked.sort_by(|a, b| a.key_id.cmp(&b.key_id).then(a.scope.cmp(b.scope)));
    ranked
}

/// Thresholds `metis_quota_keys` counts keys at or over.
pub(crate) const QUOTA_THRESHOLDS: [(&str, f64); 3] = [("0.8", 0.8), ("0.95", 0.95), ("1", 1.0)];

/// Capped keys at or over each threshold, by scope: `(scope, threshold, count)`.
pub(crate) fn quota_counts(ratios: &[QuotaRatio]) -> Vec<(&'static str, &'static str, u64)> {
    let mut out = Vec::new();
    for scope in ["key_daily", "key_monthly"] {
        for (label, t) in QUOTA_THRESHOLDS {
            let n = ratios
                .iter()
                .filter(|r| r.scope == scope && r.ratio >= t)
                .count();
            out.push((scope, label, n as u64));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(book: &mut KeyBook, key: &str, cost: f64, tokens: f64) {
        let t = book.entry(key.to_owned()).or_default();
        t.all.add(&[tokens, 0.0, 0.0, 0.0], cost);
    }

    #[test]
    fn label_values_beyond_the_limit_fold_into_other() {
        let mut s = LabelSet::new(2);
        assert_eq!(s.admit(Some("a")), ("a".to_owned(), false));
        assert_eq!(s.admit(Some("b")), ("b".to_owned(), false));
        assert_eq!(s.admit(Some("c")), (OTHER.to_owned(), true));
        // Admitted values stay admitted; missing tags are `none` and never fold.
        assert_eq!(s.admit(Some("a")), ("a".to_owned(), false));
        assert_eq!(s.admit(None), (NONE.to_owned(), false));
        assert_eq!(s.admit(Some("")), (NONE.to_owned(), false));
    }

    #[test]
    fn the_biggest_spenders_and_the_opt_in_keys_are_selected() {
        let mut book = KeyBook::new();
        spend(&mut book, "gk_a", 1.0, 10.0);
        spend(&mut book, "gk_b", 3.0, 10.0);
        spend(&mut book, "gk_c", 2.0, 10.0);
        spend(&mut book, "gk_d", 0.0, 50.0);
        spend(&mut book, "gk_e", 0.0, 40.0);
        let budget = SeriesBudget {
            top_keys: 2,
            keys: ["gk_e".to_owned(), "gk_never_used".to_owned()].into(),
            ..SeriesBudget::default()
        };
        assert_eq!(selected_keys(&book, &budget), vec!["gk_b", "gk_c", "gk_e"]);
        // Free models: tokens break the tie.
        let budget = SeriesBudget {
            top_keys: 4,
            ..SeriesBudget::default()
        };
        assert_eq!(
            selected_keys(&book, &budget),
            vec!["gk_a", "gk_b", "gk_c", "gk_d"]
        );
        let none = SeriesBudget {
            top_keys: 0,
            ..SeriesBudget::default()
        };
        assert!(selected_keys(&book, &none).is_empty());
    }

    #[test]
    fn the_ratios_nearest_their_caps_are_selected_and_all_are_counted() {
        let r = |k: &str, scope: &'static str, ratio: f64| QuotaRatio {
            key_id: k.to_owned(),
            scope,
            ratio,
        };
        let ratios = vec![
            r("gk_a", "key_daily", 0.5),
            r("gk_b", "key_daily", 0.99),
            r("gk_c", "key_daily", 1.2),
            r("gk_d", "key_monthly", 0.85),
            r("gk_e", "key_daily", 0.0),
        ];
        let budget = SeriesBudget {
            top_keys: 2,
            keys: ["gk_e".to_owned()].into(),
            ..SeriesBudget::default()
        };
        let chosen: Vec<(&str, f64)> = selected_ratios(&ratios, &budget)
            .iter()
            .map(|r| (r.key_id.as_str(), r.ratio))
            .collect();
        assert_eq!(chosen, vec![("gk_b", 0.99), ("gk_c", 1.2), ("gk_e", 0.0)]);
        let counts = quota_counts(&ratios);
        assert!(counts.contains(&("key_daily", "0.8", 2)));
        assert!(counts.contains(&("key_daily", "0.95", 2)));
        assert!(counts.contains(&("key_daily", "1", 1)));
        assert!(counts.contains(&("key_monthly", "0.8", 1)));
        assert!(counts.contains(&("key_monthly", "1", 0)));
    }
}
