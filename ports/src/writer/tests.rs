use super::*;
use crate::queue::bounded;
use crate::sessions::SessionError;
use metis_domain::events::{Actor, Sensitivity};
use std::sync::Mutex;
use std::sync::mpsc;

/// A store that records what it was asked and fails as scripted.
#[derive(Default)]
struct Script {
    calls: Vec<&'static str>,
    /// Errors the next write/probe calls give, in order (`true`: one that latches).
    failures: Vec<bool>,
    written: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeStore(Arc<Mutex<Script>>);

impl FakeStore {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn step(&mut self, call: &'static str) -> Result<(), (bool, &'static str)> {
        let mut s = self.script();
        s.calls.push(call);
        if s.failures.is_empty() {
            Ok(())
        } else {
            Err((s.failures.remove(0), "disk full"))
        }
    }
}

impl BatchStore for FakeStore {
    type Error = String;

    fn name(&self) -> &'static str {
        "fake"
    }

    fn write_batch(
        &mut self,
        events: &[Event],
        _turns: &[SessionTurn],
    ) -> Result<BatchOutcome, String> {
        self.step("write")
            .map_err(|(latch, e)| format!("{e}{}", if latch { " (latched)" } else { "" }))?;
        let ids = events.iter().map(|e| e.id.clone());
        self.script().written.extend(ids);
        Ok(BatchOutcome::default())
    }

    fn probe(&mut self) -> Result<(), String> {
        self.step("probe")
            .map_err(|(latch, e)| format!("{e}{}", if latch { " (latched)" } else { "" }))
    }

    fn needs_reopen(&self, e: &String) -> bool {
        e.ends_with("(latched)")
    }

    fn close(&mut self) {
        self.script().calls.push("close");
    }

    fn reopen(&mut self) -> Result<(), String> {
        self.script().calls.push("reopen");
        Ok(())
    }
}

fn cfg(linger: Duration, max_batch: usize) -> WriterConfig {
    WriterConfig {
        max_batch,
        retry_attempts: 1,
        retry_backoff: Duration::ZERO,
        linger,
        commit_deadline: Duration::from_secs(7200),
    }
}

fn writer(linger: Duration, max_batch: usize) -> Writer<FakeStore> {
    Writer::new(
        FakeStore::default(),
        Arc::new(Counters::default()),
        cfg(linger, max_batch),
    )
}

fn event(i: u32) -> Msg {
    Msg::Event(Event {
        id: format!("01TEST{i:020}"),
        timestamp_us: 1,
        session_id: "s".into(),
        turn_id: None,
        parent_event_id: None,
        event_type: "route.decided",
        actor: Actor::Agent,
        sensitivity: Sensitivity::Pseudonymous,
        payload_json: "{}".into(),
    })
}

fn flush_marker() -> (Msg, mpsc::Receiver<Result<(), String>>) {
    let (tx, rx) = mpsc::channel();
    (
        Msg::Flush(Box::new(move |r| {
            let _ = tx.send(r);
        })),
        rx,
    )
}

/// A backlog that already fills a batch is taken at once: lingering then would cap the
/// writer at `max_batch` events per linger and overflow the queue under load. (With a
/// one-hour linger this test would hang, not pass, if `collect` slept.)
#[test]
fn a_full_backlog_is_collected_without_lingering() {
    let (tx, rx) = bounded(64);
    for i in 0..10 {
        assert!(tx.try_send(event(i)).is_ok());
    }
    let mut w = writer(Duration::from_secs(3600), 4);
    let Ok(first) = rx.recv() else {
        unreachable!("queued above")
    };
    assert!(!w.collect(&rx, first));
    assert_eq!(w.batch.len(), 4);
    assert_eq!(rx.len(), 6);
}

/// A control marker is answered without the linger, and collection stops at it.
#[test]
fn a_flush_marker_is_not_delayed() {
    let (tx, rx) = bounded(64);
    let (flush, _answer) = flush_marker();
    assert!(tx.send(flush).is_ok());
    assert!(tx.try_send(event(1)).is_ok());
    let mut w = writer(Duration::from_secs(3600), 4);
    let Ok(first) = rx.recv() else {
        unreachable!("queued above")
    };
    assert!(!w.collect(&rx, first));
    assert_eq!((w.waiters.len(), w.batch.len()), (1, 0));
}

/// A small backlog lingers, then takes what arrived meanwhile.
#[test]
fn a_short_backlog_lingers_then_collects_what_arrived() {
    let (tx, rx) = bounded(64);
    assert!(tx.try_send(event(0)).is_ok());
    let late = std::thread::spawn({
        let tx = tx.clone();
        move || {
            for i in 1..3 {
                assert!(tx.try_send(event(i)).is_ok());
            }
        }
    });
    let mut w = writer(Duration::from_secs(2), 16);
    let Ok(first) = rx.recv() else {
        unreachable!("queued above")
    };
    assert!(!w.collect(&rx, first));
    assert!(late.join().is_ok());
    assert_eq!(w.batch.len(), 3);
}

/// An error that latches the handle closes it; with no traffic the writer reopens and
/// probes on the back-off, and the store is writable again; the flush after the lost batch
/// reports it, the next one does not.
#[test]
fn a_latched_error_closes_the_store_then_an_idle_writer_reopens_and_probes() {
    let store = FakeStore::default();
    store.script().failures = vec![true];
    let counters = Arc::new(Counters::default());
    counters.writer_alive.store(true, Ordering::Release);
    counters.last_batch_ok.store(true, Ordering::Release);
    let (tx, rx) = bounded(64);
    let thread = std::thread::spawn({
        let (store, counters) = (store.clone(), Arc::clone(&counters));
        move || run(store, &rx, counters, cfg(Duration::ZERO, 16))
    });
    counters.queued.fetch_add(1, Ordering::Relaxed);
    assert!(tx.try_send(event(1)).is_ok());
    let (flush, answer) = flush_marker();
    assert!(tx.send(flush).is_ok());
    let first = answer.recv_timeout(Duration::from_secs(30));
    assert!(
        matches!(&first, Ok(Err(m)) if m.starts_with("1 trace events")),
        "{first:?}"
    );
    let waited = Instant::now();
    while !counters.is_writable() && waited.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(counters.is_writable(), "the idle writer never recovered");
    counters.queued.fetch_add(1, Ordering::Relaxed);
    assert!(tx.try_send(event(2)).is_ok());
    let (flush, answer) = flush_marker();
    assert!(tx.send(flush).is_ok());
    assert_eq!(answer.recv_timeout(Duration::from_secs(30)), Ok(Ok(())));
    assert!(tx.send(Msg::Shutdown).is_ok());
    assert!(thread.join().is_ok());
    let s = store.script();
    assert_eq!(s.calls, ["write", "close", "reopen", "probe", "write"]);
    assert_eq!(s.written, [format!("01TEST{:020}", 2)]);
    let stats = counters.stats();
    assert_eq!((stats.written, stats.failed, stats.queued), (1, 1, 0));
    assert!(!counters.writer_alive.load(Ordering::Acquire));
}

/// A plain (not latching) failure leaves the handle open; the idle writer probes on the
/// back-off, retrying a failed probe, until one commits.
#[test]
fn a_failed_probe_is_retried_on_the_back_off() {
    let store = FakeStore::default();
    store.script().failures = vec![false, false];
    let counters = Arc::new(Counters::default());
    counters.last_batch_ok.store(true, Ordering::Release);
    counters.writer_alive.store(true, Ordering::Release);
    let (tx, rx) = bounded(64);
    let thread = std::thread::spawn({
        let (store, counters) = (store.clone(), Arc::clone(&counters));
        move || run(store, &rx, counters, cfg(Duration::ZERO, 16))
    });
    assert!(tx.try_send(event(1)).is_ok());
    let waited = Instant::now();
    while store.script().calls.len() < 3 && waited.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(tx.send(Msg::Shutdown).is_ok());
    assert!(thread.join().is_ok());
    assert_eq!(store.script().calls, ["write", "probe", "probe"]);
    assert!(counters.last_batch_ok.load(Ordering::Acquire));
}

/// Rows that refuse a link (rejected) leave the chain where it was; the tail is read once.
#[test]
fn insert_events_links_audit_rows_and_counts_refusals() {
    struct Rows {
        tail_reads: u32,
        stored: Vec<(String, String, Option<u64>)>,
    }
    impl EventRows for Rows {
        type Error = ();
        fn chain_tail(&mut self) -> Result<ChainTail, ()> {
            self.tail_reads += 1;
            Ok(ChainTail::genesis())
        }
        fn insert(
            &mut self,
            e: &Event,
            payload: &str,
            link: Option<&Link>,
        ) -> Result<RowOutcome, ()> {
            if self.stored.iter().any(|(id, _, _)| *id == e.id) {
                return Ok(RowOutcome::Rejected("duplicate id".into()));
            }
            self.stored
                .push((e.id.clone(), payload.to_owned(), link.map(|l| l.seq)));
            Ok(RowOutcome::Stored)
        }
    }
    let audit = |id: &str| Event {
        event_type: "gateway.key_issued",
        id: id.to_owned(),
        ..match event(0) {
            Msg::Event(e) => e,
            _ => unreachable!("an event"),
        }
    };
    let mut rows = Rows {
        tail_reads: 0,
        stored: Vec::new(),
    };
    let events = [audit("A"), audit("A"), audit("B")];
    assert_eq!(insert_events(&mut rows, &events), Ok(1));
    assert_eq!(rows.tail_reads, 1);
    let seqs: Vec<_> = rows.stored.iter().map(|r| (r.0.as_str(), r.2)).collect();
    assert_eq!(seqs, [("A", Some(1)), ("B", Some(2))]);
    assert!(rows.stored[1].1.contains("\"audit_seq\":2"));
}

/// A store whose first write waits for the test to open the gate, so the queue in front of
/// it stays full for as long as the test needs.
struct GatedStore {
    gate: Option<mpsc::Receiver<()>>,
    written: Arc<Mutex<Vec<String>>>,
}

impl BatchStore for GatedStore {
    type Error = String;

    fn name(&self) -> &'static str {
        "gated"
    }

    fn write_batch(
        &mut self,
        events: &[Event],
        turns: &[SessionTurn],
    ) -> Result<BatchOutcome, String> {
        if let Some(gate) = self.gate.take() {
            // A dropped sender opens the gate too.
            let _ = gate.recv();
        }
        let mut w = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.extend(events.iter().map(|e| e.id.clone()));
        Ok(BatchOutcome {
            sessions_applied: turns.len() as u64,
            ..BatchOutcome::default()
        })
    }

    fn probe(&mut self) -> Result<(), String> {
        Ok(())
    }
}

fn plain_event(i: u32) -> Event {
    match event(i) {
        Msg::Event(e) => e,
        _ => unreachable!("an event"),
    }
}

fn turn(id: &str) -> SessionTurn {
    SessionTurn {
        session_id: metis_domain::sessions::SessionId::parse(id)
            .unwrap_or_else(|e| unreachable!("a valid session id: {e}")),
        workspace_path: "/w".into(),
        active_model: None,
        cost_usd: 0.0,
        at_us: 1,
        parent_session_id: None,
        parent_tool_use_id: None,
        is_worker: false,
    }
}

fn flush_now(handle: &WriterHandle) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    handle.send_flush(move |r| {
        let _ = tx.send(r);
    })?;
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| Err("no flush answer".into()))
}

/// With the writer stuck on a slow commit, a full queue is counted (events in `overflowed`,
/// turns in `sessions_failed` with `Overflow`) instead of blocking the caller; every event is
/// counted once, and what was accepted is written once the commit goes through.
#[test]
fn the_handle_counts_overflow_instead_of_blocking_and_writes_what_it_accepted() {
    let (open, gate) = mpsc::channel();
    let written = Arc::new(Mutex::new(Vec::new()));
    let store = GatedStore {
        gate: Some(gate),
        written: Arc::clone(&written),
    };
    let handle = WriterHandle::start(
        store,
        std::path::Path::new("test.db"),
        1,
        // One row per batch: the blocked commit holds exactly one event.
        cfg(Duration::ZERO, 1),
        "test-writer",
    );
    let Ok(handle) = handle else {
        unreachable!("the thread starts")
    };
    // The writer takes at most one event into its blocked commit and the queue holds one
    // more, so at least one of three overflows, whatever the timing.
    for i in 0..3 {
        handle.emit(plain_event(i));
    }
    let turn_result = handle.record_turn(turn("s1"));
    let stats = handle.stats();
    assert_eq!(stats.accepted + stats.overflowed, 3, "{stats:?}");
    assert!(stats.overflowed >= 1, "{stats:?}");
    assert!(
        matches!(turn_result, Err(SessionError::Overflow)),
        "{turn_result:?}"
    );
    assert_eq!(handle.session_stats().failed, 1);
    drop(open);
    assert_eq!(flush_now(&handle), Ok(()));
    let stats = handle.stats();
    assert_eq!((stats.written, stats.queued), (stats.accepted, 0));
    let n = written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len() as u64;
    assert_eq!(n, stats.accepted);
    assert!(handle.is_writable());
}

/// After shutdown nothing is queued: events count as failed, turns and flushes are refused
/// as closed; a second shutdown returns the same counters.
#[test]
fn after_shutdown_the_handle_refuses_and_counts_everything() {
    let store = GatedStore {
        gate: None,
        written: Arc::default(),
    };
    let handle = WriterHandle::start(
        store,
        std::path::Path::new("test.db"),
        8,
        cfg(Duration::ZERO, 16),
        "test-writer",
    );
    let Ok(handle) = handle else {
        unreachable!("the thread starts")
    };
    handle.emit(plain_event(1));
    assert!(handle.record_turn(turn("s1")).is_ok());
    let first = handle.shutdown_blocking();
    assert_eq!((first.accepted, first.written, first.queued), (1, 1, 0));
    assert_eq!(handle.session_stats().recorded, 1);
    handle.emit(plain_event(2));
    let refused = handle.record_turn(turn("s2"));
    assert!(
        matches!(&refused, Err(SessionError::Unavailable(m)) if m == CLOSED),
        "{refused:?}"
    );
    assert_eq!(flush_now(&handle), Err(CLOSED.to_owned()));
    let second = handle.shutdown_blocking();
    assert_eq!((second.accepted, second.failed), (1, 1));
    assert_eq!(handle.session_stats().failed, 1);
}
