//! Throw-away PostgreSQL servers for tests.
//!
//! [`PostgresServer::start`] runs `initdb` and `postgres` from the machine's binaries (found on
//! `PATH`, through `pg_config --bindir`, or under `/usr/lib/postgresql/*/bin`) in a temporary
//! directory on a free loopback port. PostgreSQL refuses to run as root, so when the tests run
//! as root the server runs as the `postgres` user (through `runuser`) and the temporary
//! directory is handed to that user.
//!
//! The server is watched by a small shell process that holds a pipe from the test process:
//! when the test process exits for any reason (even `SIGKILL`), the pipe closes and the
//! server is shut down and its directory removed, so no server outlives its tests.
//!
//! [`test_postgres_url`] is what most tests want: the server named by
//! `KEYLOOP_TEST_POSTGRES_URL`, or one shared server per test process started on first use.
//! Tests isolate themselves in their own schema or database.

use std::fmt;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The environment variable naming an existing server to use instead of starting one.
pub const POSTGRES_URL_ENV: &str = "KEYLOOP_TEST_POSTGRES_URL";

/// The superuser password of servers started by [`PostgresServer`]. Connections over TCP
/// must present it (`scram-sha-256`), so tests can also exercise wrong credentials.
pub const TEST_PASSWORD: &str = "keyloop-test-password";

/// The superuser of servers started by [`PostgresServer`].
pub const TEST_USER: &str = "postgres";

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a test server could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum PostgresServerError {
    /// No PostgreSQL server binaries were found.
    BinariesNotFound {
        /// Where they were looked for.
        searched: String,
    },
    /// Running as root, but there is no `postgres` user to run the server as.
    NoPostgresUser,
    /// A command could not be run or failed.
    Command {
        /// The command.
        command: String,
        /// What happened, including its output.
        detail: String,
    },
    /// The server did not become ready in time.
    NotReady {
        /// The end of the server log.
        log_tail: String,
    },
    /// A filesystem or process error.
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl fmt::Display for PostgresServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostgresServerError::BinariesNotFound { searched } => write!(
                f,
                "postgresql server binaries (initdb, postgres) not found; searched {searched}; \
                 install the postgresql server package or set {POSTGRES_URL_ENV}"
            ),
            PostgresServerError::NoPostgresUser => write!(
                f,
                "running as root but there is no `postgres` user to run the server as; \
                 create one or set {POSTGRES_URL_ENV}"
            ),
            PostgresServerError::Command { command, detail } => {
                write!(f, "`{command}` failed: {detail}")
            }
            PostgresServerError::NotReady { log_tail } => {
                write!(f, "postgres did not become ready; log tail:\n{log_tail}")
            }
            PostgresServerError::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for PostgresServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PostgresServerError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PostgresServerError {
    let context = context.into();
    move |source| PostgresServerError::Io { context, source }
}

/// A PostgreSQL server in a temporary directory, stopped (and its directory removed) when
/// dropped or when the test process exits.
pub struct PostgresServer {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as_postgres: bool,
    settings: Vec<(String, String)>,
    running: Mutex<Option<Running>>,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
}

impl fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresServer")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl PostgresServer {
    /// Starts a new server with test-friendly settings (`fsync` off, 500 connections). Its
    /// data directory is a copy of a per-process template made by `initdb` once, on
    /// `/dev/shm` when available, so starting many servers is cheap.
    pub fn start() -> Result<PostgresServer, PostgresServerError> {
        Self::launch(&[("fsync", "off"), ("synchronous_commit", "off")], true)
    }

    /// Like [`start`](PostgresServer::start) but durable (`fsync` on, data on disk, fresh
    /// `initdb`), for benchmarks whose figures should reflect a real server.
    pub fn start_durable() -> Result<PostgresServer, PostgresServerError> {
        Self::launch(&[], false)
    }

    /// Initializes (fresh `initdb`, on disk) and starts a new server with extra
    /// `postgresql.conf` settings.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<PostgresServer, PostgresServerError> {
        Self::launch(settings, false)
    }

    fn launch(
        settings: &[(&str, &str)],
        fast: bool,
    ) -> Result<PostgresServer, PostgresServerError> {
        let bindir = find_bindir()?;
        let run_as_postgres = is_root();
        let root = if fast { fast_root() } else { None };
        let dir = server_dir(root.as_deref(), run_as_postgres)?;
        let mut all = vec![
            ("max_connections".to_owned(), "500".to_owned()),
            ("shared_buffers".to_owned(), "64MB".to_owned()),
        ];
        all.extend(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let mut server = PostgresServer {
            bindir,
            port: 0,
            dir,
            run_as_postgres,
            settings: all,
            running: Mutex::new(None),
        };
        let template = if fast {
            template(&server.bindir, root.as_deref(), run_as_postgres)
        } else {
            Err(String::new())
        };
        match template {
            Ok(data) => {
                let mut cmd = Command::new("cp");
                cmd.arg("-a").arg(data).arg(server.data_dir());
                run(cmd, "cp -a <template> <data>")?;
            }
            Err(_) => initdb(&server.bindir, &server.dir, run_as_postgres)?,
        }
        server.port = free_port()?;
        server.resume()?;
        Ok(server)
    }

    /// The host the server listens on.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// The server's TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A connection URL for `database` as the superuser, with the password.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgresql://{TEST_USER}:{TEST_PASSWORD}@{}:{}/{database}",
            self.host(),
            self.port
        )
    }

    /// A connection URL for the `postgres` database as the superuser, with the password.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// Whether the server is running (not [`stop`](PostgresServer::stop)ped).
    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap().is_some()
    }

    /// Stops the server (fast shutdown: open connections are closed), keeping its data, so
    /// that [`resume`](PostgresServer::resume) can start it again on the same port.
    pub fn stop(&self) -> Result<(), PostgresServerError> {
        let running = self.running.lock().unwrap().take();
        if let Some(mut running) = running {
            // "keep" tells the watcher to leave the data directory in place.
            let _ = running.stdin.write_all(b"keep\n");
            drop(running.stdin);
            running
                .child
                .wait()
                .map_err(io_err("waiting for postgres to stop"))?;
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port with the same data.
    pub fn resume(&self) -> Result<(), PostgresServerError> {
        let mut guard = self.running.lock().unwrap();
        if guard.is_some() {
            return Ok(());
        }
        let data = self.data_dir();
        let log = self.dir.join("postgres.log");
        // A stale pid file from an earlier run would make readiness polling see the old
        // state; postgres itself rewrites it.
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        let mut args: Vec<String> = vec![
            "-D".into(),
            data.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            format!("unix_socket_directories={}", self.dir.display()),
        ];
        for (k, v) in &self.settings {
            args.push("-c".into());
            args.push(format!("{k}={v}"));
        }
        // The watcher: runs postgres and exits when it exits. A reader of our pipe stops it:
        // EOF (we exited or dropped the server) means stop and remove the directory; a
        // "keep" line means stop only. Asynchronous lists get /dev/null as stdin unless
        // redirected, hence fd 3.
        let script = r#"
dir="$1"; log="$2"; shift 2
exec 3<&0
"$@" >>"$log" 2>&1 </dev/null &
pid=$!
(
  if read cmd && [ "$cmd" = keep ]; then :; else : >"$dir/.eof"; fi
  kill -INT "$pid" 2>/dev/null
) <&3 &
exec 3<&-
wait "$pid"
status=$?
if [ -e "$dir/.eof" ]; then rm -rf "$dir"; fi
exit $status
"#;
        let mut cmd = self.command("sh");
        cmd.arg("-c")
            .arg(script)
            .arg("keyloop-pg-watcher")
            .arg(&self.dir)
            .arg(&log)
            .arg(self.bindir.join("postgres"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(io_err("spawning postgres"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        *guard = Some(Running { child, stdin });
        drop(guard);
        self.wait_ready(&log)
    }

    fn wait_ready(&self, log: &Path) -> Result<(), PostgresServerError> {
        let pid_file = self.data_dir().join("postmaster.pid");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // Line 8 of postmaster.pid is the server status; "ready" means it accepts
            // connections (plain TCP accept happens earlier, during recovery).
            if let Ok(text) = std::fs::read_to_string(&pid_file)
                && text.lines().nth(7).map(str::trim) == Some("ready")
            {
                return Ok(());
            }
            let exited = {
                let mut guard = self.running.lock().unwrap();
                match guard.as_mut() {
                    Some(r) => matches!(r.child.try_wait(), Ok(Some(_))),
                    None => true,
                }
            };
            if exited || Instant::now() > deadline {
                let log_text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = log_text.lines().rev().take(20).collect();
                let log_tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                let _ = self.stop();
                return Err(PostgresServerError::NotReady { log_tail });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        server_user_command(self.run_as_postgres, &self.dir, program)
    }
}

/// `program` run as the user that runs the server.
fn server_user_command(
    run_as_postgres: bool,
    dir: &Path,
    program: impl AsRef<std::ffi::OsStr>,
) -> Command {
    if run_as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd.current_dir(dir);
        cmd
    } else {
        Command::new(program)
    }
}

/// A fresh directory for one server (or the template), kept by us: it is removed by the
/// watcher script or by `Drop`.
fn server_dir(root: Option<&Path>, run_as_postgres: bool) -> Result<PathBuf, PostgresServerError> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("keyloop-pg-");
    let dir = match root {
        Some(root) => builder.tempdir_in(root),
        None => builder.tempdir(),
    }
    .map_err(io_err("creating a temporary directory"))?
    .keep();
    if run_as_postgres {
        let (uid, gid) = postgres_ids()?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(io_err(format!("handing {} to postgres", dir.display())))?;
    }
    Ok(dir)
}

/// `/dev/shm` if it is a usable directory: test servers there start and run faster.
fn fast_root() -> Option<PathBuf> {
    let shm = PathBuf::from("/dev/shm");
    let probe = tempfile::Builder::new()
        .prefix("keyloop-probe-")
        .tempdir_in(&shm);
    probe.is_ok().then_some(shm)
}

/// Runs `initdb` into `dir/data` with the test superuser and password.
fn initdb(bindir: &Path, dir: &Path, run_as_postgres: bool) -> Result<(), PostgresServerError> {
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, TEST_PASSWORD).map_err(io_err("writing the password file"))?;
    if run_as_postgres {
        let (uid, gid) = postgres_ids()?;
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))
            .map_err(io_err("handing the password file to postgres"))?;
    }
    let mut cmd = server_user_command(run_as_postgres, dir, bindir.join("initdb"));
    cmd.arg("-D")
        .arg(dir.join("data"))
        .args(["-U", TEST_USER, "-E", "UTF8", "--locale=C"])
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .arg("--no-sync");
    run(cmd, "initdb")
}

/// A data directory made by `initdb` once per process, copied for each fast server.
struct Template {
    data: PathBuf,
    /// Our end of the pipe to the cleanup watcher: closed at process exit, which removes
    /// the template (statics are never dropped).
    _cleanup: ChildStdin,
}

fn template(
    bindir: &Path,
    root: Option<&Path>,
    run_as_postgres: bool,
) -> Result<&'static Path, String> {
    static TEMPLATE: OnceLock<Result<Template, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let make = || -> Result<Template, PostgresServerError> {
                let dir = server_dir(root, run_as_postgres)?;
                let mut watcher = Command::new("sh")
                    .arg("-c")
                    .arg(r#"read _; rm -rf "$1""#)
                    .arg("keyloop-pg-template")
                    .arg(&dir)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(io_err("spawning the template cleaner"))?;
                let cleanup = watcher.stdin.take().expect("piped stdin");
                initdb(bindir, &dir, run_as_postgres)?;
                Ok(Template {
                    data: dir.join("data"),
                    _cleanup: cleanup,
                })
            };
            make().map_err(|e| e.to_string())
        })
        .as_ref()
        .map(|t| t.data.as_path())
        .map_err(Clone::clone)
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let running = self.running.get_mut().unwrap().take();
        if let Some(mut running) = running {
            // EOF: the watcher stops the server and removes the directory.
            drop(running.stdin);
            let _ = running.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(mut cmd: Command, name: &str) -> Result<(), PostgresServerError> {
    let out = cmd.output().map_err(io_err(format!("running {name}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PostgresServerError::Command {
            command: name.to_owned(),
            detail: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

fn is_root() -> bool {
    // std has no geteuid; /proc/self/status is always there on Linux.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn postgres_ids() -> Result<(u32, u32), PostgresServerError> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(io_err("reading /etc/passwd"))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or(PostgresServerError::NoPostgresUser)
}

fn free_port() -> Result<u16, PostgresServerError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("finding a port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("finding a port"))?
        .port();
    Ok(port)
}

fn find_bindir() -> Result<PathBuf, PostgresServerError> {
    let mut searched = Vec::new();
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                return Ok(dir);
            }
        }
        searched.push("PATH".to_owned());
    }
    searched.push("pg_config --bindir".to_owned());
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_both(&dir) {
            return Ok(dir);
        }
    }
    searched.push("/usr/lib/postgresql/*/bin".to_owned());
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|d| has_both(d))
            .collect();
        dirs.sort();
        if let Some(dir) = dirs.pop() {
            return Ok(dir);
        }
    }
    Err(PostgresServerError::BinariesNotFound {
        searched: searched.join(", "),
    })
}

/// One server shared by every test in this process, started on first use.
pub fn shared_postgres_server() -> Result<&'static PostgresServer, String> {
    static SHARED: OnceLock<Result<PostgresServer, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| PostgresServer::start().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// The server tests should use: `KEYLOOP_TEST_POSTGRES_URL` if set, else the
/// [shared](shared_postgres_server) server.
///
/// Returns `None` (after printing why) when no server can be found or started, so the test
/// can return early; when the `CI` environment variable is set it panics instead with a
/// message that says what is missing, so a CI run never passes without PostgreSQL.
pub fn test_postgres_url() -> Option<String> {
    if let Ok(url) = std::env::var(POSTGRES_URL_ENV)
        && !url.is_empty()
    {
        return Some(url);
    }
    match shared_postgres_server() {
        Ok(server) => Some(server.url()),
        Err(e) => unavailable(&e),
    }
}

/// A dedicated server (for tests that stop and restart it), or `None` as in
/// [`test_postgres_url`] when none can be started (and a panic when `CI` is set).
pub fn dedicated_postgres_server() -> Option<PostgresServer> {
    match PostgresServer::start() {
        Ok(server) => Some(server),
        Err(e) => unavailable(&e.to_string()),
    }
}

fn unavailable<T>(why: &str) -> Option<T> {
    unavailable_in(std::env::var_os("CI").is_some(), why)
}

fn unavailable_in<T>(ci: bool, why: &str) -> Option<T> {
    if ci {
        panic!("PostgreSQL is required in CI but unavailable: {why}");
    }
    eprintln!("SKIPPED: no PostgreSQL for this test: {why}");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(
        expected = "PostgreSQL is required in CI but unavailable: postgresql server binaries"
    )]
    fn missing_server_fails_in_ci_saying_what_is_missing() {
        let why = PostgresServerError::BinariesNotFound {
            searched: "PATH".into(),
        };
        unavailable_in::<()>(true, &why.to_string());
    }

    #[test]
    fn missing_server_skips_outside_ci() {
        assert_eq!(unavailable_in::<()>(false, "no binaries"), None);
    }

    #[test]
    fn server_starts_stops_and_resumes() {
        let Some(server) = dedicated_postgres_server() else {
            return;
        };
        let port = server.port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        server.stop().unwrap();
        assert!(!server.is_running());
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        server.resume().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        let dir = server.dir.clone();
        drop(server);
        assert!(!dir.exists(), "data directory removed on drop");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
