//! Driving the real `metis` binary as a separate process: one-shot CLI commands with a
//! deadline, and long-running gateways whose stderr boot line gives their URL.
//!
//! The binary is found the way the Python harness finds it: `target/debug/metis` under the
//! workspace root, honouring `CARGO_TARGET_DIR` (relative values are taken from the workspace
//! root) and a `METIS_BIN` override. It is not built here: `scripts/test.sh` runs
//! `cargo build --workspace --bins` before the tests (a missing binary is a clear error).
//!
//! Invariants:
//! - Every child runs with a clean environment for the gateway: no `METIS_GATEWAY_*`, no
//!   provider credentials or SDK base URLs from the developer's shell, `RUST_LOG=info`.
//! - Output goes to files (not pipes) for long-running gateways, so a chatty process can never
//!   block on a full pipe; one-shot commands are read by helper threads.
//! - Every wait has a deadline; a gateway still running when its handle is dropped is killed
//!   (SIGKILL) and reaped.
//! - Signals are sent with `kill -TERM <pid>` (no `unsafe`, no libc binding).

use anyhow::{Context, bail};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a gateway may take to print its boot line.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default deadline of a one-shot CLI command.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of the gateway's stderr boot line.
pub const BOOT_PREFIX: &str = "metis gateway listening on ";

/// The workspace root (the parent of the `tests` crate).
#[must_use]
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root when
/// relative), else `<root>/target`.
#[must_use]
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let p = PathBuf::from(dir);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// A binary of the workspace's debug build (`env_override`, when set, wins).
///
/// # Errors
/// When the binary does not exist (the message says how to build it).
pub fn workspace_bin(name: &str, env_override: &str) -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os(env_override) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => target_dir().join("debug").join(name),
    };
    if !path.is_file() {
        bail!(
            "{} not found: build the binaries first with `cargo build --workspace --bins` \
             (scripts/test.sh does), or point {env_override} at it",
            path.display()
        );
    }
    Ok(path)
}

/// The `metis` binary.
///
/// # Errors
/// When it has not been built.
pub fn metis_bin() -> anyhow::Result<PathBuf> {
    workspace_bin("metis", "METIS_BIN")
}

/// A `Command` for `metis` with a clean environment (see the module docs).
///
/// # Errors
/// When the binary has not been built.
pub fn metis_command() -> anyhow::Result<Command> {
    let mut cmd = Command::new(metis_bin()?);
    clean_env(&mut cmd);
    Ok(cmd)
}

/// A `Command` running `metis` under `sh` with the descriptor limit (soft and hard) set to
/// `nofile` first (`ulimit -n`), with the same clean environment as [`metis_command`].
///
/// # Errors
/// When the binary has not been built.
pub fn metis_command_with_nofile(nofile: u64) -> anyhow::Result<Command> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(metis_bin()?);
    clean_env(&mut cmd);
    Ok(cmd)
}

fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("METIS_GATEWAY_")
            || matches!(
                key,
                "OPENAI_API_KEY"
                    | "ANTHROPIC_API_KEY"
                    | "OPENROUTER_API_KEY"
                    | "OPENAI_BASE_URL"
                    | "ANTHROPIC_BASE_URL"
                    | "OTEL_EXPORTER_OTLP_ENDPOINT"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info").stdin(Stdio::null());
}

/// The result of a finished one-shot command.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// The exit code, or -1 when there is none.
    #[must_use]
    pub fn code(&self) -> i32 {
        self.code.unwrap_or(-1)
    }

    /// `code`, stdout and stderr, for assertion messages.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The value of the first stdout line `label: value` (trimmed).
    #[must_use]
    pub fn field(&self, label: &str) -> Option<String> {
        let prefix = format!("{label}:");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_owned())
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Wait for `child` to exit, polling, for at most `timeout`.
///
/// # Errors
/// When waiting fails.
pub fn wait_with_deadline(
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `cmd` to completion with a deadline, capturing its output. A command still running at
/// the deadline is killed and reported as an error.
///
/// # Errors
/// Spawn failure or timeout.
pub fn run_command(mut cmd: Command, timeout: Duration) -> anyhow::Result<CliOutput> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot spawn metis")?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let Some(status) = wait_with_deadline(&mut child, timeout)? else {
        let _ = child.kill();
        let _ = child.wait();
        let stderr = err.join().unwrap_or_default();
        bail!("{cmd:?} did not finish within {timeout:?}; stderr:\n{stderr}");
    };
    Ok(CliOutput {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// `metis <args>` with the default deadline.
///
/// # Errors
/// Missing binary, spawn failure or timeout.
pub fn metis<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> anyhow::Result<CliOutput> {
    let mut cmd = metis_command()?;
    cmd.args(args);
    run_command(cmd, CLI_TIMEOUT)
}

/// `metis gateway issue-key --name NAME --workspace /srv/ws <storage…> <extra…>`; returns
/// `(key_id, token)`.
///
/// # Errors
/// When the command fails or prints no key.
pub fn issue_key(
    storage: &[String],
    name: &str,
    extra: &[&str],
) -> anyhow::Result<(String, String)> {
    let mut args: Vec<String> = vec![
        "gateway".into(),
        "issue-key".into(),
        "--name".into(),
        name.into(),
        "--workspace".into(),
        "/srv/ws".into(),
    ];
    args.extend(storage.iter().cloned());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let out = metis(&args)?;
    if out.code != Some(0) {
        bail!("issue-key failed: {}", out.describe());
    }
    match (out.field("key_id"), out.field("token")) {
        (Some(k), Some(t)) => Ok((k, t)),
        _ => bail!("issue-key printed no key_id/token: {}", out.describe()),
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; another process could take it first,
/// which only makes the caller's bind fail loudly).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// What the boot line announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootLine {
    /// `http` or `https`.
    pub scheme: String,
    /// The host as printed (IPv6 in brackets).
    pub host: String,
    pub port: u16,
    /// The whole line.
    pub line: String,
}

impl BootLine {
    /// `scheme://host:port`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Find and parse `metis gateway listening on http(s)://HOST:PORT (…)` in `text`.
#[must_use]
pub fn parse_boot_line(text: &str) -> Option<BootLine> {
    let line = text.lines().find(|l| l.contains(BOOT_PREFIX))?;
    let start = line.find(BOOT_PREFIX)? + BOOT_PREFIX.len();
    let rest = &line[start..];
    let url = rest.split_whitespace().next()?;
    let (scheme, authority) = url.split_once("://")?;
    let (host, port) = authority.rsplit_once(':')?;
    Some(BootLine {
        scheme: scheme.to_owned(),
        host: host.to_owned(),
        port: port.parse().ok()?,
        line: line.to_owned(),
    })
}

/// A running `metis gateway` process. Killed (SIGKILL) and reaped when dropped while running.
pub struct GatewayProcess {
    child: Child,
    pub pid: u32,
    pub boot: BootLine,
    /// `http://127.0.0.1:PORT` (scheme and host as announced; `0.0.0.0` becomes 127.0.0.1).
    pub url: String,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    exit: Option<ExitStatus>,
    _logs: tempfile::TempDir,
}

impl std::fmt::Debug for GatewayProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayProcess")
            .field("pid", &self.pid)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Where a process's output went (for processes that fail to boot).
#[derive(Debug)]
pub struct StartFailure {
    pub code: Option<i32>,
    pub stderr: String,
}

impl GatewayProcess {
    /// `metis gateway <args>` with extra environment `env`; waits (blocking, up to
    /// [`BOOT_TIMEOUT`]) for the boot line.
    ///
    /// # Errors
    /// When the process exits before announcing itself (the error carries its stderr) or
    /// does not announce itself in time.
    pub fn spawn(args: &[String], env: &[(&str, &str)]) -> anyhow::Result<GatewayProcess> {
        match Self::try_spawn(args, env)? {
            Ok(p) => Ok(p),
            Err(f) => bail!(
                "metis gateway exited with {:?} before its boot line:\n{}",
                f.code,
                f.stderr
            ),
        }
    }

    /// Like [`Self::spawn`], but a process that exits before its boot line is returned as a
    /// [`StartFailure`] (for tests of refused starts).
    ///
    /// # Errors
    /// Missing binary, spawn failure, or no boot line and no exit within [`BOOT_TIMEOUT`].
    pub fn try_spawn(
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Result<GatewayProcess, StartFailure>> {
        Self::try_spawn_command(metis_command()?, args, env)
    }

    /// Like [`Self::spawn`], with the process's descriptor limit (soft and hard) set to
    /// `nofile` before it starts.
    ///
    /// # Errors
    /// As [`Self::spawn`].
    pub fn spawn_with_nofile(
        nofile: u64,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<GatewayProcess> {
        match Self::try_spawn_command(metis_command_with_nofile(nofile)?, args, env)? {
            Ok(p) => Ok(p),
            Err(f) => bail!(
                "metis gateway exited with {:?} before its boot line:\n{}",
                f.code,
                f.stderr
            ),
        }
    }

    fn try_spawn_command(
        mut cmd: Command,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Result<GatewayProcess, StartFailure>> {
        let logs = tempfile::tempdir().context("tempdir for gateway logs")?;
        let stderr_path = logs.path().join("gateway.stderr");
        let stdout_path = logs.path().join("gateway.stdout");
        cmd.arg("gateway").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::from(
            std::fs::File::create(&stdout_path).context("stdout log")?,
        ))
        .stderr(Stdio::from(
            std::fs::File::create(&stderr_path).context("stderr log")?,
        ));
        let mut child = cmd.spawn().context("cannot spawn metis gateway")?;
        let pid = child.id();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            if let Some(boot) = parse_boot_line(&text) {
                let host = match boot.host.as_str() {
                    "0.0.0.0" | "localhost" => "127.0.0.1".to_owned(),
                    "[::]" => "[::1]".to_owned(),
                    h => h.to_owned(),
                };
                let url = format!("{}://{host}:{}", boot.scheme, boot.port);
                return Ok(Ok(GatewayProcess {
                    child,
                    pid,
                    boot,
                    url,
                    stderr_path,
                    stdout_path,
                    exit: None,
                    _logs: logs,
                }));
            }
            if let Some(status) = child.try_wait().context("waiting for metis gateway")? {
                // Let the last write land.
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                return Ok(Err(StartFailure {
                    code: status.code(),
                    stderr,
                }));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("metis gateway did not print its boot line within {BOOT_TIMEOUT:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Async wrapper of [`Self::spawn`] (runs on the blocking pool).
    ///
    /// # Errors
    /// As [`Self::spawn`].
    pub async fn spawn_async(
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<GatewayProcess> {
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Self::spawn(&args, &env)
        })
        .await
        .context("spawn task failed")?
    }

    /// Everything the process wrote to stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything the process wrote to stdout so far.
    #[must_use]
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// `scheme://127.0.0.1:PORT` + `path`.
    #[must_use]
    pub fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Send SIGTERM (`kill -TERM <pid>`).
    ///
    /// # Errors
    /// When `kill` cannot be run or fails (e.g. the process is gone).
    pub fn sigterm(&self) -> anyhow::Result<()> {
        send_signal(self.pid, "TERM")
    }

    /// The exit status if the process has exited.
    ///
    /// # Errors
    /// When waiting fails.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().context("try_wait")?;
        }
        Ok(self.exit)
    }

    /// Wait for the process to exit, polling without blocking the async runtime.
    ///
    /// # Errors
    /// When it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit()? {
                return Ok(s);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "metis gateway (pid {}) still running after {timeout:?}; stderr:\n{}",
                    self.pid,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Blocking variant of [`Self::wait_exit`].
    ///
    /// # Errors
    /// When it is still running after `timeout`.
    pub fn wait_exit_blocking(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(s) = self.exit {
            return Ok(s);
        }
        match wait_with_deadline(&mut self.child, timeout)? {
            Some(s) => {
                self.exit = Some(s);
                Ok(s)
            }
            None => bail!(
                "metis gateway (pid {}) still running after {timeout:?}; stderr:\n{}",
                self.pid,
                self.stderr()
            ),
        }
    }

    /// SIGTERM, then wait (async) for the exit.
    ///
    /// # Errors
    /// Signal failure or timeout.
    pub async fn stop(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if self.try_exit()?.is_none() {
            self.sigterm()?;
        }
        self.wait_exit(timeout).await
    }

    /// SIGTERM, then wait (blocking) for the exit.
    ///
    /// # Errors
    /// Signal failure or timeout.
    pub fn stop_blocking(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if self.try_exit()?.is_none() {
            self.sigterm()?;
        }
        self.wait_exit_blocking(timeout)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `kill -<SIG> <pid>`.
///
/// # Errors
/// When `kill` cannot be run or exits non-zero.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let out = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .context("cannot run kill")?;
    if !out.status.success() {
        bail!(
            "kill -{signal} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The gateway serve flags that point every provider at `upstream` (a [`FakeUpstream`]
/// address) with the fake's default credentials passed through the environment (see
/// [`upstream_env`]), plus `--data-dir`.
///
/// [`FakeUpstream`]: crate::fake_upstream::FakeUpstream
#[must_use]
pub fn upstream_args(upstream_base: &str, data_dir: &Path) -> Vec<String> {
    vec![
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--anthropic-base-url".into(),
        upstream_base.to_owned(),
        "--openai-base-url".into(),
        format!("{upstream_base}/v1"),
    ]
}

/// Provider credentials for the gateway process, as environment variables.
#[must_use]
pub fn upstream_env(anthropic_key: &str, openai_key: &str) -> Vec<(String, String)> {
    vec![
        ("ANTHROPIC_API_KEY".to_owned(), anthropic_key.to_owned()),
        ("OPENAI_API_KEY".to_owned(), openai_key.to_owned()),
    ]
}

/// For the fake servers' binaries: print `<name> listening on <url>` as the one stdout line
/// the harnesses wait for, then serve until SIGTERM or Ctrl-C.
///
/// # Errors
/// Stdout cannot be written.
pub async fn announce_and_wait(name: &str, url: &str) -> anyhow::Result<()> {
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{name} listening on {url}")?;
        out.flush()?;
    }
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_lines_parse() {
        let b = parse_boot_line(
            "x\nmetis gateway listening on https://127.0.0.1:8443 (store=sqlite:/d/metis.db, keystore=/k, providers=mock)\n",
        );
        assert_eq!(
            b.as_ref()
                .map(|b| (b.scheme.as_str(), b.host.as_str(), b.port)),
            Some(("https", "127.0.0.1", 8443))
        );
        let b = parse_boot_line("metis gateway listening on http://[::1]:80 (…)");
        assert_eq!(b.map(|b| b.url()), Some("http://[::1]:80".to_owned()));
        assert!(parse_boot_line("nothing here").is_none());
    }
}
