//! The spend guard: how the request path checks, reserves and settles against the spend
//! admission port, and what it does when a store shared by replicas does not answer
//! (`--spend-outage`).
//!
//! Invariants:
//! - A budget without caps on any line (key, user, team, customer, org) never waits for the
//!   store and is never refused for an outage: it is neither checked nor reserved, and only
//!   its settlement (its cost, charged to every line's account) goes to the store.
//! - Every reservation is settled exactly once: with the actual cost ([`SpendHold::settle`]),
//!   or released when the hold is dropped. A settlement the store did not take is kept in a
//!   bounded backlog and replayed, in order, when the store answers again (retried every
//!   [`REPLAY_RETRY`] meanwhile); the store applies each [`HoldId`] at most once, so a replay
//!   of a settlement whose answer was lost does not charge twice.
//! - Fail-closed (the default): while the store does not answer, requests of capped keys are
//!   refused (503 `spend_store_unavailable`). Fail-open: they are decided on this process's
//!   last known balances (the spend the trace showed at start, then every answer the store
//!   gave), with the domain rule; what they cost is charged there at once and replayed into
//!   the store later. An account this process has not seen counts from its spend at start.
//! - With the in-process ledger (`shared()` false) there is no outage, no backlog and no
//!   second copy of the balances: the guard adds nothing to the request path but the call.

use super::SpendLedger;
use metis_domain::spend::{Alert, Budget, BudgetLine, Caps, Exceeded, SpendState, hold_amount};
use metis_domain::time::{Calendar, Timestamp};
use metis_ports::admission::{
    Answer, Balances, HoldId, Settlement, SpendAdmission, StoreUnavailable,
};
use metis_ports::metrics::Metrics;
use metis_ports::queue::LogLimiter;
use metis_ports::system::Background;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Settlements kept for replay at most (about 100 bytes each); beyond that the oldest is
/// dropped and counted (`spend_settlement` / `dropped`): its cost stays in the trace.
pub const MAX_BACKLOG: usize = 100_000;

/// How often a backlog is retried while the store does not answer.
pub const REPLAY_RETRY: Duration = Duration::from_secs(1);

/// How long the charges of holds a shared store reserved nothing for (keys without caps) are
/// summed per account before one settlement carries them: a store round trip per account per
/// window instead of one per request, which a fleet's database could not keep up with at
/// thousands of requests per second. Nothing is admitted on these balances, so the delay
/// changes no decision; usage reads the trace.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(250);

/// What to do with capped keys while a shared spend store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutagePolicy {
    /// Refuse them (503 `spend_store_unavailable`): no cap can be passed.
    #[default]
    FailClosed,
    /// Admit them against this process's last known balances; settle into the store later.
    FailOpen,
}

impl OutagePolicy {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            OutagePolicy::FailClosed => "fail-closed",
            OutagePolicy::FailOpen => "fail-open",
        }
    }
}

/// Why a request may not spend.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// A cap is reached.
    Exceeded(Exceeded),
    /// The spend store did not answer and the policy is fail-closed.
    Unavailable(StoreUnavailable),
}

/// What a [`SpendGuard`] is built from.
pub struct SpendGuardParts {
    pub store: Arc<dyn SpendAdmission>,
    pub outage: OutagePolicy,
    /// The balances this process knows at start (the trace's spend), the first "last known
    /// balances" of a shared store. Unused with the in-process ledger.
    pub known: SpendLedger,
    pub metrics: Arc<dyn Metrics>,
    /// Runs settlements that need a round trip, and the backlog replay.
    pub background: Arc<dyn Background>,
    /// Random bits that make this process's hold ids unique across the fleet.
    pub process_nonce: u64,
    /// The windows' calendar (`--budget-month-start-day`).
    pub calendar: Calendar,
}

/// (account, UTC day) → (summed cost, latest time incurred).
type PendingSums = HashMap<(Arc<str>, Timestamp), (f64, Timestamp)>;

/// A budget of one uncapped line: what a coalesced sum settles (only charged, never checked).
fn charge_only(account: Arc<str>) -> Budget {
    Budget {
        lines: Arc::new([BudgetLine {
            kind: metis_domain::budgets::ScopeKind::Key,
            account,
            caps: Caps::default(),
        }]),
    }
}

/// The request path's view of spend caps.
pub struct SpendGuard {
    store: Arc<dyn SpendAdmission>,
    outage: OutagePolicy,
    /// Last known balances: only with a shared store.
    known: Option<SpendLedger>,
    metrics: Arc<dyn Metrics>,
    background: Arc<dyn Background>,
    nonce: u64,
    calendar: Calendar,
    next_hold: AtomicU64,
    backlog: Mutex<VecDeque<Settlement>>,
    /// `backlog.len()`, readable without the lock (the request path reads it).
    backlog_len: AtomicUsize,
    replaying: AtomicBool,
    /// Charges waiting for the next coalesced settlement: (account, its UTC day) → (cost, the
    /// latest time it was incurred). Keyed by day so a sum never crosses a window.
    pending: Mutex<PendingSums>,
    flush_scheduled: AtomicBool,
    outage_log: LogLimiter,
}

impl std::fmt::Debug for SpendGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpendGuard")
            .field("shared", &self.known.is_some())
            .field("outage", &self.outage)
            .field("backlog", &self.backlog_len.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SpendGuard {
    #[must_use]
    pub fn new(parts: SpendGuardParts) -> Arc<SpendGuard> {
        let shared = parts.store.shared();
        Arc::new(SpendGuard {
            store: parts.store,
            outage: parts.outage,
            known: shared.then_some(parts.known),
            metrics: parts.metrics,
            background: parts.background,
            nonce: parts.process_nonce,
            calendar: parts.calendar,
            next_hold: AtomicU64::new(0),
            backlog: Mutex::new(VecDeque::new()),
            backlog_len: AtomicUsize::new(0),
            replaying: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            flush_scheduled: AtomicBool::new(false),
            outage_log: LogLimiter::new(Duration::from_secs(10)),
        })
    }

    /// The windows' calendar.
    #[must_use]
    pub fn calendar(&self) -> Calendar {
        self.calendar
    }

    /// The policy in force.
    #[must_use]
    pub fn outage_policy(&self) -> OutagePolicy {
        self.outage
    }

    /// Settlements waiting for the store.
    #[must_use]
    pub fn backlog(&self) -> usize {
        self.backlog_len.load(Ordering::Acquire)
    }

    fn lock_backlog(&self) -> MutexGuard<'_, VecDeque<Settlement>> {
        self.backlog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh hold id. Only a shared store reads ids (for idempotence), so the in-process
    /// path does not touch the counter.
    fn mint(&self) -> HoldId {
        if self.known.is_none() {
            return HoldId(0);
        }
        let n = self.next_hold.fetch_add(1, Ordering::Relaxed);
        HoldId((u128::from(self.nonce) << 64) | u128::from(n))
    }

    /// The store answered: keep its balances as the last known ones, and replay what waits.
    fn answered(self: &Arc<Self>, balances: &Balances) {
        if let Some(known) = &self.known {
            for (account, balance) in balances {
                known.put(account, *balance);
            }
        }
        if self.backlog_len.load(Ordering::Acquire) > 0 {
            self.schedule_replay(Duration::ZERO);
        }
    }

    /// The store did not answer a check or a reservation of a capped key: apply the policy.
    fn on_outage<T>(
        &self,
        err: StoreUnavailable,
        local: impl FnOnce(&SpendLedger) -> Result<T, Exceeded>,
    ) -> Result<T, Refusal> {
        match (self.outage, &self.known) {
            (OutagePolicy::FailOpen, Some(known)) => {
                self.metrics.admission_outage("spend", "local");
                if self.outage_log.allow() {
                    tracing::warn!(error = %err, "spend store unavailable: capped keys are admitted against this process's last known balances (--spend-outage fail-open)");
                }
                local(known).map_err(Refusal::Exceeded)
            }
            _ => {
                self.metrics.admission_outage("spend", "refused");
                if self.outage_log.allow() {
                    tracing::warn!(error = %err, "spend store unavailable: requests of capped keys are refused with 503 (--spend-outage fail-closed)");
                }
                Err(Refusal::Unavailable(err))
            }
        }
    }

    /// The check before the body is read. Budgets without caps pass without a store call.
    ///
    /// # Errors
    /// A cap is reached, or the store is unavailable under fail-closed.
    pub async fn check(
        self: &Arc<Self>,
        budget: &Budget,
        now: Timestamp,
    ) -> Result<Vec<Alert>, Refusal> {
        if !budget.is_capped() {
            return Ok(Vec::new());
        }
        let cal = self.calendar;
        match self.store.check(budget, cal, now).get().await {
            Ok(c) => {
                self.answered(&c.balances);
                c.verdict.map_err(Refusal::Exceeded)
            }
            Err(e) => self.on_outage(e, |known| known.check_now(budget, cal, now)),
        }
    }

    /// Check the caps and hold `estimate_usd` for the call until it settles.
    ///
    /// # Errors
    /// A cap is reached (nothing is held), or the store is unavailable under fail-closed.
    pub async fn reserve(
        self: &Arc<Self>,
        budget: &Budget,
        estimate_usd: f64,
        now: Timestamp,
    ) -> Result<(SpendHold, Vec<Alert>), Refusal> {
        let id = self.mint();
        if !budget.is_capped() {
            return Ok((self.hold(id, budget, 0.0, now, false), Vec::new()));
        }
        let amount = hold_amount(estimate_usd);
        let cal = self.calendar;
        match self
            .store
            .reserve(id, budget, estimate_usd, cal, now)
            .get()
            .await
        {
            Ok(c) => {
                self.answered(&c.balances);
                let alerts = c.verdict.map_err(Refusal::Exceeded)?;
                Ok((self.hold(id, budget, amount, now, false), alerts))
            }
            Err(e) => {
                let alerts =
                    self.on_outage(e, |known| known.reserve_now(budget, estimate_usd, cal, now))?;
                Ok((self.hold(id, budget, amount, now, true), alerts))
            }
        }
    }

    fn hold(
        self: &Arc<Self>,
        id: HoldId,
        budget: &Budget,
        reserved_usd: f64,
        at: Timestamp,
        local: bool,
    ) -> SpendHold {
        SpendHold {
            guard: Arc::clone(self),
            id,
            budget: budget.clone(),
            reserved_usd,
            at,
            local,
            done: false,
        }
    }

    /// Settle one hold (from [`SpendHold`]; never waits).
    fn finish(self: &Arc<Self>, h: &SpendHold, cost_usd: f64, at: Timestamp) {
        let s = Settlement {
            id: h.id,
            budget: h.budget.clone(),
            reserved_usd: if h.local { 0.0 } else { h.reserved_usd },
            cost_usd,
            at,
            calendar: self.calendar,
        };
        if h.local {
            // Admitted during an outage: charged to the last known balances now, and to the
            // store when it answers again (it never reserved anything for this hold).
            if let Some(known) = &self.known {
                known.settle_now(&h.budget, h.reserved_usd, cost_usd, self.calendar, at);
            }
            if cost_usd > 0.0 {
                self.defer(s);
            }
            return;
        }
        if s.reserved_usd <= 0.0 && cost_usd <= 0.0 {
            return;
        }
        if s.reserved_usd <= 0.0 && self.known.is_some() {
            self.coalesce(&s);
            return;
        }
        self.settle_now(s);
    }

    /// Send one settlement to the store; what it does not take waits in the backlog.
    fn settle_now(self: &Arc<Self>, s: Settlement) {
        match self.store.settle(&s) {
            Answer::Now(Ok(balances)) => self.answered(&balances),
            Answer::Now(Err(_)) => self.defer(s),
            Answer::Later(pending) => {
                let guard = Arc::clone(self);
                self.background.spawn(Box::pin(async move {
                    match pending.await {
                        Ok(balances) => guard.answered(&balances),
                        Err(_) => guard.defer(s),
                    }
                }));
            }
        }
    }

    /// Add a charge the store holds nothing for to the sum of each of its lines' accounts;
    /// the first charge of a window schedules the settlement of every sum after
    /// [`COALESCE_WINDOW`].
    fn coalesce(self: &Arc<Self>, s: &Settlement) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let day = metis_domain::time::day_start(s.at);
            for line in s.budget.lines.iter() {
                let e = pending
                    .entry((Arc::clone(&line.account), day))
                    .or_insert((0.0, s.at));
                e.0 += s.cost_usd;
                e.1 = e.1.max(s.at);
            }
        }
        if !self.flush_scheduled.swap(true, Ordering::AcqRel) {
            let guard = Arc::clone(self);
            self.background.spawn_after(
                COALESCE_WINDOW,
                Box::pin(async move { guard.settle_pending() }),
            );
        }
    }

    /// Every sum as one settlement (a fresh hold id each, so a retry is applied once).
    fn take_sums(&self) -> Vec<Settlement> {
        let sums =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        sums.into_iter()
            .map(|((account, _), (cost_usd, at))| Settlement {
                id: self.mint(),
                budget: charge_only(account),
                reserved_usd: 0.0,
                cost_usd,
                at,
                calendar: self.calendar,
            })
            .collect()
    }

    fn settle_pending(self: &Arc<Self>) {
        self.flush_scheduled.store(false, Ordering::Release);
        for s in self.take_sums() {
            self.settle_now(s);
        }
    }

    /// Keep a settlement the store did not take, to replay.
    fn defer(self: &Arc<Self>, s: Settlement) {
        let dropped = {
            let mut q = self.lock_backlog();
            let dropped = if q.len() >= MAX_BACKLOG {
                q.pop_front()
            } else {
                None
            };
            q.push_back(s);
            self.backlog_len.store(q.len(), Ordering::Release);
            dropped
        };
        self.metrics
            .admission_outage("spend_settlement", "deferred");
        if let Some(lost) = dropped {
            self.metrics.admission_outage("spend_settlement", "dropped");
            if self.outage_log.allow() {
                tracing::error!(
                    account = %lost.budget.key_account().map_or("", |a| &**a),
                    cost_usd = lost.cost_usd,
                    backlog = MAX_BACKLOG,
                    "spend settlement backlog full: the oldest settlement was dropped (its cost is in the trace, not in the spend store)"
                );
            }
        }
        self.schedule_replay(REPLAY_RETRY);
    }

    /// Start the replay after `delay` unless one is already running or scheduled.
    fn schedule_replay(self: &Arc<Self>, delay: Duration) {
        if self.replaying.swap(true, Ordering::AcqRel) {
            return;
        }
        let guard = Arc::clone(self);
        self.background
            .spawn_after(delay, Box::pin(async move { guard.replay().await }));
    }

    /// Replay the backlog in order until it is empty or the store fails again (then retry
    /// after [`REPLAY_RETRY`]).
    async fn replay(self: Arc<Self>) {
        loop {
            let next = {
                let mut q = self.lock_backlog();
                let next = q.pop_front();
                self.backlog_len.store(q.len(), Ordering::Release);
                next
            };
            let Some(s) = next else {
                self.replaying.store(false, Ordering::Release);
                // A settlement deferred between the pop and the flag saw a replay running.
                if self.backlog_len.load(Ordering::Acquire) > 0 {
                    self.schedule_replay(Duration::ZERO);
                }
                return;
            };
            match self.store.settle(&s).get().await {
                Ok(balances) => {
                    self.metrics
                        .admission_outage("spend_settlement", "replayed");
                    if let Some(known) = &self.known {
                        for (account, balance) in &balances {
                            known.put(account, *balance);
                        }
                    }
                }
                Err(_) => {
                    {
                        let mut q = self.lock_backlog();
                        q.push_front(s);
                        self.backlog_len.store(q.len(), Ordering::Release);
                    }
                    self.replaying.store(false, Ordering::Release);
                    self.schedule_replay(REPLAY_RETRY);
                    return;
                }
            }
        }
    }

    /// Replay what waits now (shutdown): the coalesced sums, then the backlog. The number of
    /// settlements still waiting.
    pub async fn flush(self: &Arc<Self>) -> usize {
        let sums =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for ((account, _), (cost_usd, at)) in sums {
            let s = Settlement {
                id: self.mint(),
                budget: charge_only(account),
                reserved_usd: 0.0,
                cost_usd,
                at,
                calendar: self.calendar,
            };
            if let Err(e) = self.store.settle(&s).get().await {
                tracing::warn!(error = %e, "a coalesced settlement waits in the backlog");
                self.defer(s);
            }
        }
        loop {
            let next = {
                let mut q = self.lock_backlog();
                let next = q.pop_front();
                self.backlog_len.store(q.len(), Ordering::Release);
                next
            };
            let Some(s) = next else { return 0 };
            match self.store.settle(&s).get().await {
                Ok(_) => self
                    .metrics
                    .admission_outage("spend_settlement", "replayed"),
                Err(e) => {
                    let mut q = self.lock_backlog();
                    q.push_front(s);
                    self.backlog_len.store(q.len(), Ordering::Release);
                    tracing::error!(error = %e, waiting = q.len(), "spend settlements could not reach the spend store before exit (their costs are in the trace)");
                    return q.len();
                }
            }
        }
    }

    /// An account's current spend, from the store (the usage API). When the store does not
    /// answer: the last known balance.
    pub async fn balance(&self, account: &str, now: Timestamp) -> SpendState {
        match self.store.balance(account, self.calendar, now).get().await {
            Ok(b) => b,
            Err(e) => {
                if self.outage_log.allow() {
                    tracing::warn!(error = %e, "spend store unavailable: spend figures are this process's last known balances");
                }
                self.known_balance(account, now)
            }
        }
    }

    /// An account's spend without waiting (a metrics scrape): the in-process ledger's, or a
    /// shared store's last known balance.
    #[must_use]
    pub fn known_balance(&self, account: &str, now: Timestamp) -> SpendState {
        match &self.known {
            Some(known) => known.snapshot(account, self.calendar, now),
            None => match self.store.balance(account, self.calendar, now) {
                Answer::Now(Ok(b)) => b,
                _ => SpendState::new(now, self.calendar),
            },
        }
    }
}

/// An in-flight call's hold on its budget's lines: settled once, with the actual cost, or
/// released when dropped.
pub struct SpendHold {
    guard: Arc<SpendGuard>,
    id: HoldId,
    /// The lines it was reserved on (what the settlement releases and charges).
    budget: Budget,
    reserved_usd: f64,
    at: Timestamp,
    /// Admitted against the last known balance during an outage (fail-open).
    local: bool,
    done: bool,
}

impl std::fmt::Debug for SpendHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpendHold")
            .field("account", &self.budget.key_account())
            .field("reserved_usd", &self.reserved_usd)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl SpendHold {
    /// Replace the hold by the call's actual cost, incurred at `now`.
    pub fn settle(&mut self, cost_usd: f64, now: Timestamp) {
        if !self.done {
            self.done = true;
            let this: &SpendHold = self;
            this.guard.finish(this, cost_usd, now);
        }
    }
}

impl Drop for SpendHold {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            let this: &SpendHold = self;
            this.guard.finish(this, 0.0, this.at);
        }
    }
}
