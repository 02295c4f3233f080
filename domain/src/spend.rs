//! Spend-cap arithmetic (SPEC §3.2 step 3, issue 20): the spend of every account a request
//! is charged to — its key's and one per scope tag it carries (user, team, customer, org) —
//! in the current day, week and month, the reservations of calls in flight, and the alerts.
//!
//! Every spend admission (the in-process ledger, a database shared by replicas) holds one
//! [`SpendState`] per account and changes the states of a request's [`Budget`] lines only
//! through [`check`], [`reserve`] and [`settle`], so the rule exists once: a database
//! implementation locks the lines' rows (`SELECT … FOR UPDATE`, in sorted account order),
//! applies the same function, and writes them back in one transaction.
//!
//! Invariants:
//! - A request is admitted only while `spent + reserved < cap` for every cap of every line,
//!   and [`reserve`] adds its worst-case cost to `reserved` on every capped line in the same
//!   step as the check. So N concurrent requests overshoot any cap at any level by at most
//!   one request's worth, and a refusal holds nothing anywhere.
//! - Windows: the UTC day, the ISO week (Monday 00:00 UTC), and the budget month starting on
//!   the gateway-wide day of a [`Calendar`]. They roll over on the first operation after
//!   their end, and only forward (a late or replayed settlement never moves a window back).
//! - Uncapped lines are never checked and hold nothing, but are charged on settlement, so a
//!   budget added later starts from the true spend.
//! - Alerts (each line's levels, default 80/95/100 % of each cap, on settled spend) are
//!   evaluated at every check — a refused one included, so 100 % is raised by the first
//!   request refused at a cap — and raised at most once per window and level: the raised
//!   levels are bits of the state, so a store shared by replicas raises each once per fleet.

use crate::budgets::{
    BudgetPolicy, DEFAULT_ALERT_LEVELS, MAX_ALERT_LEVELS, PolicyIndex, ScopeKind, Window, cap_name,
    scope_account, tags_of,
};
use crate::keys::{KeyRecord, validate_cap};
use crate::time::{Calendar, Timestamp, day_start, week_start};
use std::sync::Arc;

/// The scope of a key's daily cap (in events, metrics and refusals).
pub const KEY_DAILY: &str = "key_daily";
/// The scope of a key's monthly cap.
pub const KEY_MONTHLY: &str = "key_monthly";

/// The windows, in the order they are checked and named.
pub const WINDOWS: [Window; 3] = [Window::Day, Window::Week, Window::Month];

/// Most lines in a budget: the key and one per tag kind.
pub const MAX_LINES: usize = 5;

/// The alert levels of one line (percent of each cap), fixed-size so [`Caps`] stays `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertLevels {
    levels: [u8; MAX_ALERT_LEVELS],
    len: u8,
}

impl Default for AlertLevels {
    fn default() -> Self {
        let mut levels = [0; MAX_ALERT_LEVELS];
        levels[..DEFAULT_ALERT_LEVELS.len()].copy_from_slice(&DEFAULT_ALERT_LEVELS);
        AlertLevels {
            levels,
            len: DEFAULT_ALERT_LEVELS.len() as u8,
        }
    }
}

impl AlertLevels {
    /// The levels of `raw` when they are valid (`validate_alert_levels`), else the defaults
    /// (the store validates on write, so only a hand-edited store holds bad ones).
    #[must_use]
    pub fn of(raw: Option<&[u8]>) -> AlertLevels {
        let Some(raw) = raw else {
            return AlertLevels::default();
        };
        if crate::budgets::validate_alert_levels("alert_at", raw).is_err() {
            return AlertLevels::default();
        }
        let mut levels = [0; MAX_ALERT_LEVELS];
        levels[..raw.len()].copy_from_slice(raw);
        AlertLevels {
            levels,
            len: u8::try_from(raw.len()).unwrap_or(0),
        }
    }

    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        &self.levels[..usize::from(self.len)]
    }
}

/// The caps of one budget line, parsed from decimal strings. Built once per key when the key
/// ring is loaded (`KeyIndex`), so admission never parses them per request.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Caps {
    pub daily_usd: Option<f64>,
    pub weekly_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    pub alert_at: AlertLevels,
}

fn parse_cap(field: &str, v: Option<&String>) -> Option<f64> {
    v.and_then(|raw| validate_cap(field, raw).ok())
}

impl Caps {
    /// The caps of `key`. A cap that is not a valid positive number counts as absent (the key
    /// store validates caps on write, so only a hand-edited store can hold one).
    #[must_use]
    pub fn of(key: &KeyRecord) -> Caps {
        Caps {
            daily_usd: parse_cap("daily_cap_usd", key.daily_cap_usd.as_ref()),
            weekly_usd: parse_cap("weekly_cap_usd", key.weekly_cap_usd.as_ref()),
            monthly_usd: parse_cap("monthly_cap_usd", key.monthly_cap_usd.as_ref()),
            alert_at: AlertLevels::of(key.alert_at.as_deref()),
        }
    }

    /// The caps of a scope's budget.
    #[must_use]
    pub fn of_policy(p: &BudgetPolicy) -> Caps {
        Caps {
            daily_usd: parse_cap("daily_usd", p.daily_usd.as_ref()),
            weekly_usd: parse_cap("weekly_usd", p.weekly_usd.as_ref()),
            monthly_usd: parse_cap("monthly_usd", p.monthly_usd.as_ref()),
            alert_at: AlertLevels::of(p.alert_at.as_deref()),
        }
    }

    /// The cap of one window.
    #[must_use]
    pub fn cap(&self, w: Window) -> Option<f64> {
        match w {
            Window::Day => self.daily_usd,
            Window::Week => self.weekly_usd,
            Window::Month => self.monthly_usd,
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.daily_usd.is_none() && self.weekly_usd.is_none() && self.monthly_usd.is_none()
    }
}

/// One account a request is charged to, with its caps.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetLine {
    pub kind: ScopeKind,
    /// The spend account: the key's own (its id, or its predecessor's after rotation) or the
    /// scope's (`team:platform`).
    pub account: Arc<str>,
    pub caps: Caps,
}

/// What a request is charged to: line 0 is the key, then one line per tag the key carries, in
/// `SCOPE_ORDER`, capped by the scope's budget when one is set. Built once per key, when the
/// key ring is built, so the request path clones an `Arc` instead of strings.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub lines: Arc<[BudgetLine]>,
}

impl Budget {
    /// The budget of `key` under the scope budgets of `policies`. Every tag gets a line, with
    /// or without a budget: its account is charged either way.
    #[must_use]
    pub fn for_key(key: &KeyRecord, policies: &PolicyIndex) -> Budget {
        let mut lines = Vec::with_capacity(MAX_LINES);
        lines.push(BudgetLine {
            kind: ScopeKind::Key,
            account: Arc::from(key.account()),
            caps: Caps::of(key),
        });
        for (kind, id) in tags_of(key) {
            lines.push(BudgetLine {
                kind,
                account: Arc::from(scope_account(kind, id)),
                caps: policies
                    .get(kind, id)
                    .map(Caps::of_policy)
                    .unwrap_or_default(),
            });
        }
        Budget {
            lines: lines.into(),
        }
    }

    /// A budget of one key line (a key without tags).
    #[must_use]
    pub fn key_only(account: &str, caps: Caps) -> Budget {
        Budget {
            lines: Arc::new([BudgetLine {
                kind: ScopeKind::Key,
                account: Arc::from(account),
                caps,
            }]),
        }
    }

    /// Whether any line has a cap (else the request is never refused and holds nothing).
    #[must_use]
    pub fn is_capped(&self) -> bool {
        self.lines.iter().any(|l| !l.caps.is_empty())
    }

    /// The key's own account (line 0).
    #[must_use]
    pub fn key_account(&self) -> Option<&Arc<str>> {
        self.lines.first().map(|l| &l.account)
    }
}

/// A cap that is reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    /// The cap's name (`cap_name`): `key_daily`, `team_monthly`, …
    pub scope: &'static str,
    pub kind: ScopeKind,
    pub account: Arc<str>,
    pub limit_usd: f64,
    /// Settled spend in the window (reservations not included).
    pub current_usd: f64,
    /// The alerts the refused step raised (the 100 % level is raised by the first refusal).
    pub alerts: Vec<Alert>,
}

/// A budget alert to raise.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// The cap's name (`team_monthly`).
    pub scope: &'static str,
    pub kind: ScopeKind,
    pub window: Window,
    pub account: Arc<str>,
    /// The level crossed, percent of the cap.
    pub level: u8,
    /// `warning` (< 95 %), `critical` (< 100 %) or `exhausted` (100 %).
    pub severity: &'static str,
    pub limit_usd: f64,
    pub current_usd: f64,
    pub ratio: f64,
}

/// The severity of an alert level.
#[must_use]
pub fn severity(level: u8) -> &'static str {
    match level {
        0..95 => "warning",
        95..100 => "critical",
        _ => "exhausted",
    }
}

/// One spend account: settled spend in the current day, week and month, reservations held by
/// calls in flight, and the alert levels already raised in the current windows. Plain data
/// (a database row: every field is a column).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SpendState {
    /// Start of the current UTC day (µs).
    pub day_start: Timestamp,
    pub day_usd: f64,
    /// Start of the current week (Monday 00:00 UTC, µs).
    pub week_start: Timestamp,
    pub week_usd: f64,
    /// Start of the current budget month (µs).
    pub month_start: Timestamp,
    pub month_usd: f64,
    /// Worst-case cost of the calls in flight.
    pub reserved_usd: f64,
    /// Levels raised in the current windows: bit `window * 8 + level index` ([`alert_bit`]).
    pub alerted: u32,
}

/// The bit of [`SpendState::alerted`] for a window and the index of a level in its line's
/// levels. Bits follow the index, so changing a scope's levels mid-window can repeat or skip
/// one alert in that window; the next window starts clean.
#[must_use]
pub fn alert_bit(w: Window, level_index: usize) -> u32 {
    1 << (window_index(w) * MAX_ALERT_LEVELS + level_index)
}

fn window_index(w: Window) -> usize {
    match w {
        Window::Day => 0,
        Window::Week => 1,
        Window::Month => 2,
    }
}

/// Every alert bit of one window.
fn window_bits(w: Window) -> u32 {
    ((1u32 << MAX_ALERT_LEVELS) - 1) << (window_index(w) * MAX_ALERT_LEVELS)
}

/// The amount a reservation holds for an estimate: the estimate when it is a positive finite
/// number, else nothing.
#[must_use]
pub fn hold_amount(estimate_usd: f64) -> f64 {
    if estimate_usd.is_finite() && estimate_usd > 0.0 {
        estimate_usd
    } else {
        0.0
    }
}

/// Start of `w`'s window containing `ts`.
#[must_use]
pub fn window_start(w: Window, cal: Calendar, ts: Timestamp) -> Timestamp {
    match w {
        Window::Day => day_start(ts),
        Window::Week => week_start(ts),
        Window::Month => cal.month_start(ts),
    }
}

impl SpendState {
    /// An account with no spend, its windows those of `now`.
    #[must_use]
    pub fn new(now: Timestamp, cal: Calendar) -> SpendState {
        SpendState {
            day_start: day_start(now),
            week_start: week_start(now),
            month_start: cal.month_start(now),
            ..SpendState::default()
        }
    }

    fn window(&mut self, w: Window) -> (&mut Timestamp, &mut f64) {
        match w {
            Window::Day => (&mut self.day_start, &mut self.day_usd),
            Window::Week => (&mut self.week_start, &mut self.week_usd),
            Window::Month => (&mut self.month_start, &mut self.month_usd),
        }
    }

    /// Settled spend in the current `w` window.
    #[must_use]
    pub fn spent(&self, w: Window) -> f64 {
        match w {
            Window::Day => self.day_usd,
            Window::Week => self.week_usd,
            Window::Month => self.month_usd,
        }
    }

    /// Move the windows forward to those of `now`: a new window starts with no spend and no
    /// alert raised. A `now` in an earlier window changes nothing.
    pub fn roll(&mut self, now: Timestamp, cal: Calendar) {
        for w in WINDOWS {
            let s = window_start(w, cal, now);
            let (start, usd) = self.window(w);
            if s > *start {
                *start = s;
                *usd = 0.0;
                self.alerted &= !window_bits(w);
            }
        }
    }

    /// Replace a reservation of `reserved_usd` by the call's actual cost, incurred at `at`.
    /// The cost is charged to the windows that contain `at` and are still current: a
    /// settlement replayed after its day (or week, month) ended adds nothing to the new one.
    pub fn settle(&mut self, reserved_usd: f64, cost_usd: f64, at: Timestamp, cal: Calendar) {
        self.roll(at, cal);
        self.release(reserved_usd);
        if cost_usd > 0.0 {
            for w in WINDOWS {
                let s = window_start(w, cal, at);
                let (start, usd) = self.window(w);
                if s == *start {
                    *usd += cost_usd;
                }
            }
        }
    }

    /// Give back a reservation without charging anything (a call that never reached the
    /// upstream). The windows do not move.
    pub fn release(&mut self, reserved_usd: f64) {
        self.reserved_usd = (self.reserved_usd - hold_amount(reserved_usd)).max(0.0);
    }

    /// Raise this line's due alerts into `out`: per window, the highest level its settled
    /// spend reached, unless raised already (the levels below it are marked with it, so a
    /// jump past two levels raises one alert).
    fn alerts(&mut self, line: &BudgetLine, out: &mut Vec<Alert>) {
        for w in WINDOWS {
            let Some(cap) = line.caps.cap(w) else {
                continue;
            };
            let spent = self.spent(w);
            let ratio = spent / cap;
            let levels = line.caps.alert_at;
            let Some((i, level)) = levels
                .as_slice()
                .iter()
                .enumerate()
                .rev()
                .find(|(_, l)| ratio >= f64::from(**l) / 100.0)
            else {
                continue;
            };
            let bit = alert_bit(w, i);
            if self.alerted & bit != 0 {
                continue;
            }
            // This level and every one below it.
            for j in 0..=i {
                self.alerted |= alert_bit(w, j);
            }
            out.push(Alert {
                scope: cap_name(line.kind, w),
                kind: line.kind,
                window: w,
                account: Arc::clone(&line.account),
                level: *level,
                severity: severity(*level),
                limit_usd: cap,
                current_usd: spent,
                ratio,
            });
        }
    }

    /// The first cap of this line (day, week, month) that settled spend plus reservations
    /// reach.
    fn reached(&self, line: &BudgetLine) -> Option<Exceeded> {
        WINDOWS.into_iter().find_map(|w| {
            let cap = line.caps.cap(w)?;
            let spent = self.spent(w);
            (spent + self.reserved_usd >= cap).then(|| Exceeded {
                scope: cap_name(line.kind, w),
                kind: line.kind,
                account: Arc::clone(&line.account),
                limit_usd: cap,
                current_usd: spent,
                alerts: Vec::new(),
            })
        })
    }
}

/// The check before a request's body is read, over the states of `lines` (same order, same
/// length): every window rolled to `now`, the due alerts raised (marked in the states), then
/// refused when any capped line's settled spend plus reservations reach a cap.
///
/// # Errors
/// The first cap reached, in line order (`SCOPE_ORDER`) then day, week, month, carrying the
/// alerts raised by this step.
pub fn check(
    lines: &[BudgetLine],
    states: &mut [SpendState],
    cal: Calendar,
    now: Timestamp,
) -> Result<Vec<Alert>, Exceeded> {
    let mut alerts = Vec::new();
    let mut refused = None;
    for (line, s) in lines.iter().zip(states.iter_mut()) {
        s.roll(now, cal);
        if line.caps.is_empty() {
            continue;
        }
        s.alerts(line, &mut alerts);
        if refused.is_none() {
            refused = s.reached(line);
        }
    }
    match refused {
        Some(mut e) => {
            e.alerts = alerts;
            Err(e)
        }
        None => Ok(alerts),
    }
}

/// [`check`], then hold [`hold_amount`]`(estimate_usd)` on every capped line in the same
/// step. A budget without caps is never refused and holds nothing.
///
/// # Errors
/// The first cap reached; nothing is held on any line then.
pub fn reserve(
    lines: &[BudgetLine],
    states: &mut [SpendState],
    estimate_usd: f64,
    cal: Calendar,
    now: Timestamp,
) -> Result<Vec<Alert>, Exceeded> {
    let alerts = check(lines, states, cal, now)?;
    let amount = hold_amount(estimate_usd);
    for (line, s) in lines.iter().zip(states.iter_mut()) {
        if !line.caps.is_empty() {
            s.reserved_usd += amount;
        }
    }
    Ok(alerts)
}

/// The end of a reservation made by [`reserve`] with `reserved_usd`: released on every capped
/// line (what it held there), and `cost_usd` charged to every line, capped or not.
pub fn settle(
    lines: &[BudgetLine],
    states: &mut [SpendState],
    reserved_usd: f64,
    cost_usd: f64,
    cal: Calendar,
    at: Timestamp,
) {
    for (line, s) in lines.iter().zip(states.iter_mut()) {
        let held = if line.caps.is_empty() {
            0.0
        } else {
            reserved_usd
        };
        s.settle(held, cost_usd, at, cal);
    }
}

#[cfg(test)]
mod tests;
