//! The console's reads ([`OpsService`]): live counters from the [`LiveWindow`], usage series
//! from the trace store's roll-up, the audit chain check and export (the same rules and lines
//! as `metis audit verify|export`), and sessions with their worker trees.
//!
//! Like the admin API, reads see what was emitted before them: the trace writer (and the
//! session writer) are flushed first.

use crate::live::LiveWindow;
use crate::storage::audit::{CSV_HEADER, csv_line, jsonl_line, resolve_window, select_types};
use async_trait::async_trait;
use metis_domain::sessions::{SessionId, SessionNode, SessionRecord, build_tree};
use metis_ports::admin::AdminFailure;
use metis_ports::console::{
    AuditChainReader, AuditExport, AuditFormat, ChainStatus, MAX_SERIES_BUCKETS, OpsService,
    Overview, SeriesPoint, SeriesQuery, UsageSeries,
};
use metis_ports::sessions::SessionStore;
use metis_ports::system::Clock;
use metis_ports::trace::{EventSink, TraceQuery};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Most sessions a tree loads (as `metis sessions show`).
const MAX_TREE: usize = 10_000;

/// The stores and counters the console reads.
pub struct OpsParts {
    pub live: Arc<LiveWindow>,
    pub query: Arc<dyn TraceQuery>,
    pub sink: Arc<dyn EventSink>,
    pub sessions: Arc<dyn SessionStore>,
    pub chain: Arc<dyn AuditChainReader>,
    pub clock: Arc<dyn Clock>,
    /// The routes whose deployments `GET /admin/v1/routes` reports.
    pub router: Arc<crate::routing::Router>,
}

/// Implements [`OpsService`].
pub struct OpsFacade {
    p: OpsParts,
}

impl OpsFacade {
    #[must_use]
    pub fn new(parts: OpsParts) -> Self {
        OpsFacade { p: parts }
    }

    async fn settle(&self) {
        if let Err(e) = self.p.sink.flush().await {
            tracing::warn!(error = %e, "trace writer flush before a console read failed");
        }
    }

    async fn settle_sessions(&self) {
        if let Err(e) = self.p.sessions.flush().await {
            tracing::warn!(error = %e, "session writer flush before a console read failed");
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> AdminFailure {
    AdminFailure::Unavailable(e.to_string())
}

/// `[since, until)` widened to whole buckets, and how many buckets that is.
///
/// # Errors
/// `Invalid` for an empty window or more than [`MAX_SERIES_BUCKETS`] buckets.
pub fn align_window(
    since_us: i64,
    until_us: i64,
    width_us: i64,
) -> Result<(i64, i64, i64), AdminFailure> {
    if since_us >= until_us {
        return Err(AdminFailure::Invalid(
            "the window is empty: 'since' must be before 'until'".to_owned(),
        ));
    }
    let start = since_us.div_euclid(width_us) * width_us;
    let end = until_us.div_euclid(width_us) * width_us
        + if until_us.rem_euclid(width_us) == 0 {
            0
        } else {
            width_us
        };
    let buckets = (end - start) / width_us;
    if buckets > MAX_SERIES_BUCKETS {
        return Err(AdminFailure::Invalid(format!(
            "the window spans {buckets} buckets; at most {MAX_SERIES_BUCKETS} are allowed (narrow since/until or use bucket=day)"
        )));
    }
    Ok((start, end, buckets))
}

#[async_trait]
impl OpsService for OpsFacade {
    fn overview(&self) -> Overview {
        self.p.live.overview()
    }

    fn routes(&self) -> Vec<metis_ports::console::RouteStatus> {
        self.p.router.statuses()
    }

    async fn usage_series(&self, q: SeriesQuery) -> Result<UsageSeries, AdminFailure> {
        let width = q.bucket.width_us();
        let (start, end, buckets) = align_window(q.since_us, q.until_us, width)?;
        self.settle().await;
        let n = usize::try_from(buckets).unwrap_or(0);
        // One roll-up per bucket through the same query as `/admin/v1/usage`, so a series
        // always sums to the report of its window.
        let mut groups: BTreeMap<Option<String>, Vec<SeriesPoint>> = BTreeMap::new();
        for i in 0..n {
            let b_start = start + width * i64::try_from(i).unwrap_or(0);
            let rows = self
                .p
                .query
                .usage(b_start, b_start + width, q.group, q.filter.clone())
                .await
                .map_err(unavailable)?;
            for r in rows {
                let points = groups.entry(r.group).or_insert_with(|| {
                    (0..n)
                        .map(|j| SeriesPoint {
                            start_us: start + width * i64::try_from(j).unwrap_or(0),
                            ..SeriesPoint::default()
                        })
                        .collect()
                });
                let p = &mut points[i];
                p.cost_usd += r.cost_usd;
                p.input_tokens += r.input_tokens;
                p.output_tokens += r.output_tokens;
                p.calls += r.calls;
                p.failed_calls += r.failed_calls;
            }
        }
        let mut series: Vec<metis_ports::console::Series> = groups
            .into_iter()
            .map(|(group, points)| metis_ports::console::Series { group, points })
            .collect();
        // Biggest spenders first, as the usage report; then by group value.
        let total =
            |s: &metis_ports::console::Series| s.points.iter().map(|p| p.cost_usd).sum::<f64>();
        series.sort_by(|a, b| {
            total(b)
                .total_cmp(&total(a))
                .then_with(|| a.group.cmp(&b.group))
        });
        Ok(UsageSeries {
            since_us: start,
            until_us: end,
            series,
        })
    }

    async fn verify_audit(&self) -> Result<ChainStatus, AdminFailure> {
        self.settle().await;
        let (chain, unchained) = self.p.chain.verify_chain().await.map_err(unavailable)?;
        let (events_checked, broken) = match chain {
            Ok(n) => (n, None),
            Err(b) => (b.expected_seq.saturating_sub(1), Some(b)),
        };
        Ok(ChainStatus {
            events_checked,
            broken,
            unchained,
            checked_at_us: self.p.clock.now_us(),
        })
    }

    async fn export_audit(
        &self,
        since_us: Option<i64>,
        until_us: Option<i64>,
        types: &[String],
        format: AuditFormat,
    ) -> Result<AuditExport, AdminFailure> {
        let (since, until) = resolve_window(since_us, until_us, self.p.clock.now_us())
            .map_err(|m| AdminFailure::Invalid(m.replace("--", "")))?;
        let selection = select_types(types).map_err(AdminFailure::Invalid)?;
        self.settle().await;
        let rows = if selection.requested && selection.audit.is_empty() {
            Vec::new()
        } else {
            self.p
                .query
                .audit_events(since, until, &selection.audit)
                .await
                .map_err(unavailable)?
        };
        let mut body = String::new();
        if format == AuditFormat::Csv {
            body.push_str(CSV_HEADER);
            body.push('\n');
        }
        for e in &rows {
            let line = match format {
                AuditFormat::Jsonl => jsonl_line(e),
                AuditFormat::Csv => csv_line(e),
            }
            .map_err(unavailable)?;
            body.push_str(&line);
            body.push('\n');
        }
        Ok(AuditExport {
            since_us: since,
            until_us: until,
            events: rows.len() as u64,
            body,
        })
    }

    async fn sessions(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, AdminFailure> {
        self.settle_sessions().await;
        self.p
            .sessions
            .list(workspace, limit)
            .await
            .map_err(unavailable)
    }

    async fn session_tree(&self, id: &str) -> Result<SessionNode, AdminFailure> {
        let id = SessionId::parse(id).map_err(AdminFailure::Invalid)?;
        self.settle_sessions().await;
        let root = self
            .p
            .sessions
            .get(&id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                AdminFailure::NotFound(format!("session '{}' not found", id.as_str()))
            })?;
        // Depth-first through the parent index, cycles cut, at most MAX_TREE sessions (the
        // walk of `metis sessions show`).
        let mut out: Vec<SessionRecord> = Vec::new();
        let mut seen: HashSet<String> = HashSet::from([root.id.clone()]);
        let mut frontier = vec![root.id.clone()];
        'walk: while let Some(parent) = frontier.pop() {
            let parent = SessionId::parse(&parent).map_err(AdminFailure::Invalid)?;
            for c in self
                .p
                .sessions
                .children(&parent)
                .await
                .map_err(unavailable)?
            {
                if out.len() >= MAX_TREE {
                    break 'walk;
                }
                if seen.insert(c.id.clone()) {
                    frontier.push(c.id.clone());
                    out.push(c);
                }
            }
        }
        Ok(build_tree(root, out))
    }

    fn now_us(&self) -> i64 {
        self.p.clock.now_us()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000;

    #[test]
    fn windows_widen_to_whole_buckets_and_are_capped() {
        assert_eq!(align_window(H + 5, 3 * H - 1, H), Ok((H, 3 * H, 2)));
        assert_eq!(align_window(H, 3 * H, H), Ok((H, 3 * H, 2)));
        assert_eq!(align_window(0, 744 * H, H), Ok((0, 744 * H, 744)));
        let err = align_window(0, 744 * H + 1, H).unwrap_err();
        assert!(err.to_string().contains("at most 744"), "{err}");
        assert!(align_window(5, 5, H).is_err());
    }
}
