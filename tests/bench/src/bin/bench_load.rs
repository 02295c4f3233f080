//! `bench-load`: HTTP/1.1 load generator for the gateway benchmarks, and the results report.
//!
//! `bench-load run` sends one fixed request (URL, headers, body) over keep-alive connections
//! from a single-threaded runtime (pin it to its own core with `taskset`), in one of two
//! modes:
//! - closed loop (`--concurrency C`): C connections, each sends its next request as soon as
//!   the previous response ended;
//! - open loop (`--rate R`): request *i* is due at `start + i/R`, taken by whichever of
//!   `--connections` connections is free. Latency is reported from the actual send; the
//!   coordinated-omission view (from the due time) is reported beside it.
//!
//! It reports throughput, latency p50/p90/p99/p99.9/max, time to the first body byte (for
//! streams: the first SSE bytes), errors by kind, and — for the processes named with
//! `--target-pid` / `--mock-pid` (each with its descendants) — CPU time over the measured
//! window from `/proc` divided by the successful requests, and peak resident memory. For
//! streams it counts the SSE events each successful response carried (so CPU can be divided
//! per forwarded chunk). With `--metrics-url` it reads the gateway's
//! `metis_trace_events_overflowed_total` before the warm-up and after the last response, and
//! records the difference: trace events the gateway dropped during the run. One JSON object
//! per run goes to stdout (and is appended to `--json-out`); a summary to stderr.
//!
//! Invariants:
//! - Bounded: no request is sent after `warmup + duration`; in-flight requests get at most
//!   `--timeout` more; only 127.0.0.1/localhost/[::1] URLs are accepted.
//! - A response counts as successful only with a 2xx status, a complete body, and (with
//!   `--expect`) the expected text in its decoded body. Everything else is an error, by kind.
//! - Only requests that complete inside the measured window are counted (closed loop); in the
//!   open loop, requests due inside it.
//!
//! `bench-load report --runs FILE --out-dir DIR` turns the JSON lines written by the runs (and
//! by `scripts/bench.sh`) into `results.md` and `results.json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use metis_bench::http1::{ChunkedDecoder, Framing, parse_head};
use metis_bench::procfs::{self, ProcSet};
use metis_bench::report::{self, Load, RunRecord};
use metis_bench::scan::{prometheus_value, sse_events};
use metis_bench::stats::summarize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(
    name = "bench-load",
    about = "Load generator and results report for the gateway benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one load test and print its JSON record.
    Run(Box<RunArgs>),
    /// Write results.md and results.json from the recorded JSON lines.
    Report {
        /// JSON lines file (runs and facts).
        #[arg(long)]
        runs: PathBuf,
        /// Output directory.
        #[arg(long)]
        out_dir: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// `http://127.0.0.1:PORT/path` (loopback only).
    #[arg(long)]
    url: String,
    /// Extra request header `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Request body (a POST is sent when a body is given, a GET otherwise).
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Request body from a file.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Closed loop with this many connections.
    #[arg(long, conflicts_with = "rate")]
    concurrency: Option<usize>,
    /// Open loop at this many requests per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: connections available (each carries one request at a time).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds of the same load before the measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Per-request timeout in seconds (also the longest wait for in-flight requests at the end).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// The decoded body must contain this text (e.g. `[DONE]` for OpenAI streams).
    #[arg(long)]
    expect: Option<String>,
    /// Process whose CPU time and memory are measured (with its descendants; repeatable).
    #[arg(long = "target-pid")]
    target_pids: Vec<u32>,
    /// The mock upstream's process, measured the same way (repeatable).
    #[arg(long = "mock-pid")]
    mock_pids: Vec<u32>,
    /// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Target name for the report (`direct`, `metis`, `nginx`, …).
    #[arg(long, default_value = "target")]
    target: String,
    /// Workload name for the report (`openai-sync`, `anthropic-stream`, …).
    #[arg(long, default_value = "workload")]
    scenario: String,
    /// Workload of the `direct` run to compare with in the report (default: `--scenario`).
    #[arg(long)]
    baseline_scenario: Option<String>,
    /// Free-text note carried into the record.
    #[arg(long, default_value = "")]
    note: String,
    /// Append the JSON record to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// The gateway's `/metrics` (loopback): its dropped-event counter is read before and
    /// after the run and the difference recorded as `trace_overflowed`.
    #[arg(long)]
    metrics_url: Option<String>,
}

/// The counter of trace events the gateway refused because its writer's queue was full.
const OVERFLOW_METRIC: &str = "metis_trace_events_overflowed_total";

/// GET a loopback URL on a fresh connection and return its decoded body as text (bounded
/// by a 2 s timeout).
async fn get_text(url: &str) -> anyhow::Result<String> {
    let (host, port, path) = parse_url(url)?;
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let fetch = async {
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .context("timed out")??;
    let head = parse_head(&buf)?.context("incomplete response head")?;
    if !(200..300).contains(&head.status) {
        bail!("status {}", head.status);
    }
    let raw = &buf[head.len..];
    let body = match head.framing {
        Framing::Length(n) => raw.get(..n).context("truncated body")?.to_vec(),
        Framing::UntilClose => raw.to_vec(),
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::default();
            let mut out = Vec::new();
            dec.feed(raw, Some(&mut out))?;
            if !dec.is_done() {
                bail!("truncated chunked body");
            }
            out
        }
    };
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The gateway's dropped-event counter now. A counter that cannot be read is reported on
/// stderr and leaves the run's count empty (`–` in the report), never 0.
async fn overflowed(url: &str) -> Option<f64> {
    let read = async {
        let text = get_text(url).await.with_context(|| format!("GET {url}"))?;
        prometheus_value(&text, OVERFLOW_METRIC)
            .with_context(|| format!("{url} has no {OVERFLOW_METRIC} sample"))
    };
    match read.await {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("bench-load: overflow count not read: {e:#}");
            None
        }
    }
}

/// Host, port and path of a loopback `http://` URL.
fn parse_url(url: &str) -> anyhow::Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority.ends_with(']') => (&authority[..i], authority[i + 1..].parse()?),
        _ => (authority, 80),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1") {
        bail!("bench-load only targets loopback addresses, not {host}");
    }
    Ok((host, port, path))
}

/// Everything the workers share.
struct Ctx {
    addr: String,
    request: Vec<u8>,
    expect: Option<Vec<u8>>,
    timeout: Duration,
    t0: Instant,
    measure_start: Instant,
    end: Instant,
    rate: Option<f64>,
    ticket: AtomicU64,
}

/// One completed exchange.
struct Resp {
    status: u16,
    /// Send to first body byte.
    ttfb: Duration,
    body_ok: bool,
    /// SSE events in the body (0 when the body was not kept or is not a stream).
    sse_events: u64,
}

/// Why an exchange failed. `Stale` is a keep-alive connection the server had already closed
/// (retried once on a fresh connection).
enum Failure {
    Stale,
    Kind(&'static str),
}

struct Conn {
    stream: Option<TcpStream>,
    reused: bool,
    buf: Vec<u8>,
    body: Vec<u8>,
}

impl Conn {
    fn new() -> Self {
        Self {
            stream: None,
            reused: false,
            buf: Vec::with_capacity(64 * 1024),
            body: Vec::new(),
        }
    }

    async fn request(&mut self, ctx: &Ctx, sent: Instant) -> Result<Resp, &'static str> {
        match tokio::time::timeout(ctx.timeout, self.request_inner(ctx, sent)).await {
            Ok(r) => r,
            Err(_) => {
                self.stream = None;
                Err("timeout")
            }
        }
    }

    async fn request_inner(&mut self, ctx: &Ctx, sent: Instant) -> Result<Resp, &'static str> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                let s = TcpStream::connect(&ctx.addr).await.map_err(|_| "connect")?;
                let _ = s.set_nodelay(true);
                self.stream = Some(s);
                self.reused = false;
            }
            let reused = self.reused;
            match self.exchange(ctx, sent).await {
                Ok((resp, close)) => {
                    if close {
                        self.stream = None;
                    } else {
                        self.reused = true;
                    }
                    return Ok(resp);
                }
                Err(Failure::Stale) if reused && attempt == 0 => {
                    self.stream = None;
                }
                Err(Failure::Stale) => {
                    self.stream = None;
                    return Err("closed");
                }
                Err(Failure::Kind(k)) => {
                    self.stream = None;
                    return Err(k);
                }
            }
        }
        Err("closed")
    }

    /// Read more bytes into `buf`; `Ok(0)` at EOF.
    async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, Failure> {
        buf.reserve(16 * 1024);
        stream.read_buf(buf).await.map_err(|_| Failure::Kind("io"))
    }

    async fn exchange(&mut self, ctx: &Ctx, sent: Instant) -> Result<(Resp, bool), Failure> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(Failure::Kind("closed"));
        };
        if stream.write_all(&ctx.request).await.is_err() {
            return Err(Failure::Stale);
        }
        self.buf.clear();
        self.body.clear();
        let head = loop {
            match stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) if self.buf.is_empty() => return Err(Failure::Stale),
                Ok(0) => return Err(Failure::Kind("eof")),
                Err(_) => return Err(Failure::Kind("io")),
                Ok(_) => {}
            }
            match parse_head(&self.buf) {
                Ok(Some(h)) => break h,
                Ok(None) => self.buf.reserve(16 * 1024),
                Err(_) => return Err(Failure::Kind("parse")),
            }
        };
        let head_at = Instant::now();
        let keep_body = ctx.expect.is_some();
        let mut ttfb = None;
        let mut pos = head.len;
        let mut close = head.close;
        match head.framing {
            Framing::Length(n) => {
                if n == 0 {
                    ttfb = Some(head_at);
                }
                loop {
                    if ttfb.is_none() && self.buf.len() > pos {
                        ttfb = Some(Instant::now());
                    }
                    if self.buf.len() - pos >= n {
                        break;
                    }
                    if Self::fill(stream, &mut self.buf).await? == 0 {
                        return Err(Failure::Kind("eof"));
                    }
                }
                if keep_body {
                    self.body.extend_from_slice(&self.buf[pos..pos + n]);
                }
            }
            Framing::Chunked => {
                let mut dec = ChunkedDecoder::default();
                loop {
                    let out = keep_body.then_some(&mut self.body);
                    let fed = dec
                        .feed(&self.buf[pos..], out)
                        .map_err(|_| Failure::Kind("parse"))?;
                    if ttfb.is_none() && fed.payload > 0 {
                        ttfb = Some(Instant::now());
                    }
                    if dec.is_done() {
                        break;
                    }
                    // Not done means every buffered byte was consumed; reuse the buffer.
                    self.buf.clear();
                    pos = 0;
                    if Self::fill(stream, &mut self.buf).await? == 0 {
                        return Err(Failure::Kind("eof"));
                    }
                }
            }
            Framing::UntilClose => {
                close = true;
                loop {
                    if ttfb.is_none() && self.buf.len() > pos {
                        ttfb = Some(Instant::now());
                    }
                    if Self::fill(stream, &mut self.buf).await? == 0 {
                        break;
                    }
                }
                if keep_body {
                    self.body.extend_from_slice(&self.buf[pos..]);
                }
            }
        }
        let body_ok = match &ctx.expect {
            Some(e) => self.body.windows(e.len()).any(|w| w == e.as_slice()),
            None => true,
        };
        let ttfb = ttfb.unwrap_or(head_at).saturating_duration_since(sent);
        Ok((
            Resp {
                status: head.status,
                ttfb,
                body_ok,
                sse_events: if keep_body { sse_events(&self.body) } else { 0 },
            },
            close,
        ))
    }
}

/// A send later than this after its due time is counted as late: beyond the tokio timer's
/// 1 ms resolution, it means every connection was busy (the target fell behind).
const LATE: Duration = Duration::from_millis(2);

#[derive(Default)]
struct WorkerStats {
    ok: u64,
    latency_ns: Vec<u64>,
    co_latency_ns: Vec<u64>,
    ttfb_ns: Vec<u64>,
    late_sends: u64,
    /// SSE events over the successful responses.
    sse_events: u64,
    errors: BTreeMap<String, u64>,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl WorkerStats {
    fn record(
        &mut self,
        res: Result<Resp, &'static str>,
        sent: Instant,
        due: Option<Instant>,
        done: Instant,
    ) -> bool {
        match res {
            Ok(r) if (200..300).contains(&r.status) && r.body_ok => {
                self.ok += 1;
                self.sse_events += r.sse_events;
                self.latency_ns.push(ns(done - sent));
                self.ttfb_ns.push(ns(r.ttfb));
                if let Some(due) = due {
                    self.co_latency_ns
                        .push(ns(done.saturating_duration_since(due)));
                    if sent.saturating_duration_since(due) > LATE {
                        self.late_sends += 1;
                    }
                }
                true
            }
            Ok(r) if !r.body_ok => {
                *self.errors.entry("unexpected_body".into()).or_default() += 1;
                true
            }
            Ok(r) => {
                *self
                    .errors
                    .entry(format!("status_{}", r.status))
                    .or_default() += 1;
                true
            }
            Err(kind) => {
                *self.errors.entry(kind.into()).or_default() += 1;
                false
            }
        }
    }
}

async fn closed_worker(ctx: Arc<Ctx>) -> WorkerStats {
    let mut conn = Conn::new();
    let mut st = WorkerStats::default();
    loop {
        let sent = Instant::now();
        if sent >= ctx.end {
            break;
        }
        let res = conn.request(&ctx, sent).await;
        let done = Instant::now();
        if done >= ctx.measure_start && done <= ctx.end {
            if !st.record(res, sent, None, done) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else if res.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    st
}

async fn open_worker(ctx: Arc<Ctx>, rate: f64) -> WorkerStats {
    let mut conn = Conn::new();
    let mut st = WorkerStats::default();
    loop {
        let i = ctx.ticket.fetch_add(1, Ordering::Relaxed);
        let due = ctx.t0 + Duration::from_secs_f64(i as f64 / rate);
        if due >= ctx.end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let sent = Instant::now();
        let res = conn.request(&ctx, sent).await;
        let done = Instant::now();
        if due >= ctx.measure_start {
            st.record(res, sent, Some(due), done);
        }
    }
    st
}

/// CPU and memory observed over the measured window.
#[derive(Default)]
struct Observed {
    target_ticks: u64,
    mock_ticks: u64,
    self_ticks: u64,
    target_rss_start_kb: u64,
    target_rss_max_kb: u64,
    /// CPU ticks by thread name over the window.
    target_threads: BTreeMap<String, u64>,
}

async fn observe(ctx: Arc<Ctx>, target: ProcSet, mock: ProcSet) -> Observed {
    let me = std::process::id();
    tokio::time::sleep_until(ctx.measure_start).await;
    let t0 = (
        target.cpu_ticks(),
        mock.cpu_ticks(),
        procfs::cpu_ticks(me).unwrap_or(0),
    );
    let threads0 = target.thread_ticks();
    let rss_start = target.rss_kb();
    let mut rss_max = rss_start;
    let mut next = ctx.measure_start;
    loop {
        next += Duration::from_millis(100);
        if next >= ctx.end {
            break;
        }
        tokio::time::sleep_until(next).await;
        rss_max = rss_max.max(target.rss_kb());
    }
    tokio::time::sleep_until(ctx.end).await;
    let t1 = (
        target.cpu_ticks(),
        mock.cpu_ticks(),
        procfs::cpu_ticks(me).unwrap_or(0),
    );
    rss_max = rss_max.max(target.rss_kb());
    let mut target_threads = target.thread_ticks();
    for (name, t) in &mut target_threads {
        *t = t.saturating_sub(threads0.get(name).copied().unwrap_or(0));
    }
    Observed {
        target_ticks: t1.0.saturating_sub(t0.0),
        mock_ticks: t1.1.saturating_sub(t0.1),
        self_ticks: t1.2.saturating_sub(t0.2),
        target_rss_start_kb: rss_start,
        target_rss_max_kb: rss_max,
        target_threads,
    }
}

fn build_request(a: &RunArgs, host: &str, port: u16, path: &str) -> anyhow::Result<Vec<u8>> {
    let body = match (&a.body, &a.body_file) {
        (Some(b), _) => Some(b.clone().into_bytes()),
        (None, Some(f)) => Some(std::fs::read(f).with_context(|| format!("read {}", f.display()))?),
        (None, None) => None,
    };
    let method = if body.is_some() { "POST" } else { "GET" };
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: bench-load\r\nAccept: */*\r\n"
    );
    let mut has_ct = false;
    for h in &a.headers {
        let Some((name, value)) = h.split_once(':') else {
            bail!("header {h:?} is not `Name: value`");
        };
        has_ct |= name.trim().eq_ignore_ascii_case("content-type");
        req.push_str(&format!("{}: {}\r\n", name.trim(), value.trim()));
    }
    if let Some(b) = &body {
        if !has_ct {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(&b);
    }
    Ok(bytes)
}

async fn run(a: RunArgs) -> anyhow::Result<RunRecord> {
    let (host, port, path) = parse_url(&a.url)?;
    let request = build_request(&a, &host, port, &path)?;
    let load = match (a.concurrency, a.rate) {
        (Some(c), None) if c > 0 => Load::Closed { concurrency: c },
        (None, Some(r)) if r > 0.0 => Load::Open {
            rate: r,
            connections: a.connections.max(1),
        },
        _ => bail!("give either --concurrency N (N > 0) or --rate R (R > 0)"),
    };
    if !(a.duration > 0.0 && a.duration <= 600.0 && a.warmup >= 0.0 && a.warmup <= 600.0) {
        bail!("--duration must be in (0, 600] and --warmup in [0, 600] seconds");
    }
    let target = ProcSet::new(&a.target_pids);
    let mock = ProcSet::new(&a.mock_pids);
    if !a.target_pids.is_empty() && target.is_empty() {
        bail!("no process {:?} to measure", a.target_pids);
    }
    let overflow_before = match &a.metrics_url {
        Some(u) => overflowed(u).await,
        None => None,
    };
    let t0 = Instant::now() + Duration::from_millis(20);
    let measure_start = t0 + Duration::from_secs_f64(a.warmup);
    let end = measure_start + Duration::from_secs_f64(a.duration);
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let ctx = Arc::new(Ctx {
        addr,
        request,
        expect: a.expect.clone().map(String::into_bytes),
        timeout: Duration::from_secs_f64(a.timeout.max(0.001)),
        t0,
        measure_start,
        end,
        rate: a.rate,
        ticket: AtomicU64::new(0),
    });
    let observer = tokio::spawn(observe(Arc::clone(&ctx), target.clone(), mock));
    let workers: Vec<_> = match load {
        Load::Closed { concurrency } => (0..concurrency)
            .map(|_| {
                let ctx = Arc::clone(&ctx);
                tokio::spawn(async move {
                    tokio::time::sleep_until(ctx.t0).await;
                    closed_worker(ctx).await
                })
            })
            .collect(),
        Load::Open { connections, .. } => (0..connections)
            .map(|_| {
                let ctx = Arc::clone(&ctx);
                let rate = ctx.rate.unwrap_or(1.0);
                tokio::spawn(open_worker(ctx, rate))
            })
            .collect(),
    };
    let mut all = WorkerStats::default();
    for w in workers {
        let s = w.await.context("worker task")?;
        all.ok += s.ok;
        all.latency_ns.extend(s.latency_ns);
        all.co_latency_ns.extend(s.co_latency_ns);
        all.ttfb_ns.extend(s.ttfb_ns);
        all.late_sends += s.late_sends;
        all.sse_events += s.sse_events;
        for (k, v) in s.errors {
            *all.errors.entry(k).or_default() += v;
        }
    }
    let obs = observer.await.context("observer task")?;
    // Events of the last responses may be emitted just after their final byte.
    let trace_overflowed = match (&a.metrics_url, overflow_before) {
        (Some(u), Some(before)) => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            overflowed(u)
                .await
                .map(|after| (after - before).max(0.0).round() as u64)
        }
        _ => None,
    };
    let tick = 1.0 / a.clk_tck.max(1) as f64;
    let cpu_target_s = obs.target_ticks as f64 * tick;
    let cpu_mock_s = obs.mock_ticks as f64 * tick;
    let per_req = |s: f64| (all.ok > 0).then(|| s * 1e6 / all.ok as f64);
    let open = matches!(load, Load::Open { .. });
    Ok(RunRecord {
        kind: "run".into(),
        target: a.target.clone(),
        scenario: a.scenario.clone(),
        note: a.note.clone(),
        baseline: a.baseline_scenario.clone(),
        load,
        duration_s: a.duration,
        warmup_s: a.warmup,
        ok: all.ok,
        errors: all.errors,
        throughput_rps: all.ok as f64 / a.duration,
        latency: summarize(&mut all.latency_ns),
        ttfb: summarize(&mut all.ttfb_ns),
        co_latency: open.then(|| summarize(&mut all.co_latency_ns)),
        late_sends: open.then_some(all.late_sends),
        cpu_target_s: (!a.target_pids.is_empty()).then_some(cpu_target_s),
        cpu_target_us_per_req: if a.target_pids.is_empty() {
            None
        } else {
            per_req(cpu_target_s)
        },
        target_cpu_util: (!a.target_pids.is_empty()).then(|| cpu_target_s / a.duration),
        cpu_mock_s: (!a.mock_pids.is_empty()).then_some(cpu_mock_s),
        cpu_mock_us_per_req: if a.mock_pids.is_empty() {
            None
        } else {
            per_req(cpu_mock_s)
        },
        loadgen_cpu_util: obs.self_ticks as f64 * tick / a.duration,
        target_rss_start_kb: (!a.target_pids.is_empty()).then_some(obs.target_rss_start_kb),
        target_rss_max_kb: (!a.target_pids.is_empty()).then_some(obs.target_rss_max_kb),
        target_pids: target.pids(),
        target_threads_us_per_req: obs
            .target_threads
            .iter()
            .filter(|_| all.ok > 0)
            .map(|(k, &t)| (k.clone(), t as f64 * tick * 1e6 / all.ok as f64))
            .collect(),
        sse_events_per_req: (all.sse_events > 0).then(|| all.sse_events as f64 / all.ok as f64),
        trace_overflowed,
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let rec = rt.block_on(run((*a).clone()))?;
            let line = serde_json::to_string(&rec)?;
            println!("{line}");
            if let Some(path) = &a.json_out {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("open {}", path.display()))?;
                writeln!(f, "{line}")?;
            }
            eprintln!("{}", report::one_line(&rec));
            Ok(())
        }
        Command::Report { runs, out_dir } => {
            let text = std::fs::read_to_string(&runs)
                .with_context(|| format!("read {}", runs.display()))?;
            let (md, json) = report::render(&text)?;
            std::fs::create_dir_all(&out_dir)?;
            std::fs::write(out_dir.join("results.md"), md)?;
            std::fs::write(out_dir.join("results.json"), json)?;
            eprintln!(
                "wrote {} and {}",
                out_dir.join("results.md").display(),
                out_dir.join("results.json").display()
            );
            Ok(())
        }
    }
}
