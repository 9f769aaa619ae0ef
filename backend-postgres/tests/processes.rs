//! Fault runs with real OS processes: three engines, each its own process, on one real
//! PostgreSQL, with SIGKILL, SIGSTOP past the lease TTL then SIGCONT, graceful SIGTERM,
//! `pg_terminate_backend` of keyloop's connections and server restarts, in an order and with
//! timings drawn from a seed. Every loop records what it did in a history table, timestamped
//! by the database's `clock_timestamp()` — one clock for every process. After the faults
//! stop, the run waits for convergence and checks the history (see [`check_history`]).
//!
//! The test binary is its own node program: the driver runs it again with
//! `--exact process_node` and the node's settings in [`NODE_ENV`].
//!
//! `KEYLOOP_PROCESS_RUNS` sets the number of runs (default 3, the CI slice) and
//! `KEYLOOP_PROCESS_SEED` the first seed (default 1); a failing run prints its seed, and
//! `KEYLOOP_PROCESS_RUNS=1 KEYLOOP_PROCESS_SEED=<seed>` replays its schedule (the timing of a
//! real-process run never replays exactly).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use common::{PostgresServer, dedicated_postgres_server, fresh_schema};
use keyloop_core::{
    BoxError, Client, Controller, Coordinator, Decision, Defect, Engine, Key, LoopContext,
};
use keyloop_postgres::{PostgresConfig, PostgresCoordinator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustix::process::{Pid, Signal, kill_process};
use tokio::sync::Mutex;
use tokio_postgres::NoTls;

/// Seeded runs within which `defective_engines_are_caught` must see the defect.
const RUNS_TO_CATCH: u64 = 8;
/// Set in a node process: `url|schema|name|ttl_ms`.
const NODE_ENV: &str = "KEYLOOP_PROCESS_NODE";
/// Engine defects the node processes run with (comma-separated `Defect` names), to show
/// what the runs catch: see `defective_engines_are_caught`.
const DEFECTS_ENV: &str = "KEYLOOP_PROCESS_DEFECTS";
const NODES: usize = 3;
const KEYS: usize = 24;
const STEPS: usize = 8;
const TTL: Duration = Duration::from_millis(2000);
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
/// The nodes' fence margin (`TTL / 4`), in microseconds, for the check.
const FENCE_MARGIN_US: i64 = 500_000;

// ---------------------------------------------------------------------------------------
// The node process.

/// Runs only as a child process (with [`NODE_ENV`] set); a no-op in the normal test run.
#[test]
fn process_node() {
    let Ok(spec) = std::env::var(NODE_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [url, schema, name, ttl_ms] = parts[..] else {
        panic!("bad {NODE_ENV}: {spec}");
    };
    let ttl = Duration::from_millis(ttl_ms.parse().expect("ttl in ms"));
    // The node's log (its stderr goes to a file the driver keeps when a run fails).
    tracing_subscriber::fmt()
        .with_env_filter("keyloop_core=debug,keyloop_postgres=debug")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(node_main(url, schema, name, ttl));
    std::process::exit(0);
}

async fn node_main(url: &str, schema: &str, name: &str, ttl: Duration) {
    let config = PostgresConfig::builder(url)
        .schema(schema)
        .pool_size(4)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .expect("config");
    let controller = Reconciler {
        db: Workload::new(url, schema, name),
    };
    let defects: Vec<Defect> = std::env::var(DEFECTS_ENV)
        .unwrap_or_default()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|name| {
            *Defect::ALL
                .iter()
                .find(|d| format!("{d:?}") == name)
                .unwrap_or_else(|| panic!("unknown defect {name}"))
        })
        .collect();
    // The server may be restarting when a node is (re)started: retry until it answers.
    let engine = loop {
        let coordinator = match PostgresCoordinator::connect(config.clone()).await {
            Ok(c) => Arc::new(c),
            Err(e) => {
                eprintln!("{name}: connect failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let started = Engine::builder(coordinator, controller.clone())
            .config(|c| {
                let c = c
                    .node_name(name)
                    .lease_ttl(ttl)
                    .heartbeat_interval(ttl / 6)
                    .fence_margin(Duration::from_micros(FENCE_MARGIN_US as u64))
                    .claim_interval(Duration::from_millis(300))
                    // Frequent resyncs and hand-offs widen the races at the edges of
                    // ownership the runs are meant to find.
                    .resync_interval(Duration::from_millis(250))
                    .handoff_avoid(Duration::from_millis(200))
                    .shutdown_grace(Duration::from_secs(3))
                    .max_failures(1_000);
                defects.iter().fold(c, |c, d| c.inject_defect(*d))
            })
            .start()
            .await;
        match started {
            Ok(engine) => break engine,
            Err(e) => {
                eprintln!("{name}: start failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    eprintln!("{name}: running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    term.recv().await;
    let report = engine.shutdown().await;
    eprintln!(
        "{name}: shut down, {} keys handed off",
        report.handed_off.len()
    );
}

/// The workload's own connection to the database (not keyloop's: its application name
/// differs, so the `pg_terminate_backend` fault aims at keyloop's connections only, as a
/// proxy or an operator cutting the framework's sessions would). Reconnects after a failure.
#[derive(Clone)]
struct Workload {
    url: String,
    schema: String,
    node: String,
    client: Arc<Mutex<Option<Arc<tokio_postgres::Client>>>>,
}

impl Workload {
    fn new(url: &str, schema: &str, node: &str) -> Workload {
        Workload {
            url: url.to_owned(),
            schema: schema.to_owned(),
            node: node.to_owned(),
            client: Arc::new(Mutex::new(None)),
        }
    }

    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, BoxError> {
        let mut guard = self.client.lock().await;
        if let Some(client) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        let mut config: tokio_postgres::Config = self.url.parse()?;
        config
            .application_name(format!("workload-{}", self.node))
            .connect_timeout(Duration::from_secs(1));
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        let client = Arc::new(client);
        *guard = Some(Arc::clone(&client));
        Ok(client)
    }

    /// `sql` with `{s}` replaced by the schema.
    fn sql(&self, sql: &str) -> String {
        sql.replace("{s}", &self.schema)
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, BoxError> {
        Ok(self.client().await?.execute(&self.sql(sql), params).await?)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, BoxError> {
        Ok(self.client().await?.query(&self.sql(sql), params).await?)
    }

    /// Appends one event to the history, at the database's clock when it lands.
    async fn record(
        &self,
        key: &str,
        kind: &str,
        epoch: i64,
        run: i64,
        gen_: Option<i64>,
        ok: Option<bool>,
    ) -> Result<(), BoxError> {
        self.record_at(key, kind, epoch, run, gen_, ok, None).await
    }

    /// Appends one event that happened at `at` (read from the system's real-time clock,
    /// which on one machine is the clock `clock_timestamp()` reads), or when it lands.
    #[allow(clippy::too_many_arguments)]
    async fn record_at(
        &self,
        key: &str,
        kind: &str,
        epoch: i64,
        run: i64,
        gen_: Option<i64>,
        ok: Option<bool>,
        at: Option<SystemTime>,
    ) -> Result<(), BoxError> {
        self.execute(
            "INSERT INTO {s}.w_history (node, key, kind, epoch, run, gen, ok, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, COALESCE($8, clock_timestamp()))",
            &[&self.node, &key, &kind, &epoch, &run, &gen_, &ok, &at],
        )
        .await?;
        Ok(())
    }
}

/// The reconcile loop: record the start, read the desired generation, save it as keyloop
/// state (fenced by the backend), check ownership and write it to the external `w_actual`
/// table (fenced by epoch: accepted unless a higher epoch was accepted), then `Complete`.
///
/// The external write and its record are one statement, so an accepted write is never
/// missing from the history. A save is recorded as attempted before it is sent, so
/// "attempted after a newer owner started, and accepted" is a fencing violation whatever
/// the timing of its answer. Any failure returns an error: the engine restarts the loop.
#[derive(Clone)]
struct Reconciler {
    db: Workload,
}

#[async_trait]
impl Controller for Reconciler {
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        // Read first: a process frozen (SIGSTOP) before its record lands must not make the
        // start look later than it was.
        let began = SystemTime::now();
        let db = &self.db;
        let key = key.as_str();
        let epoch = i64::try_from(ctx.epoch().0)?;
        let run = rand::random::<i64>().abs();
        db.record_at(key, "start", epoch, run, None, None, Some(began))
            .await?;
        let rows = db
            .query(
                "SELECT d.gen, c.drain FROM {s}.w_desired d, {s}.w_control c WHERE d.key = $1",
                &[&key],
            )
            .await?;
        let (desired, drain): (i64, bool) =
            rows.first().map_or((0, true), |r| (r.get(0), r.get(1)));
        // Half the runs save keyloop state first (fenced by the backend); the others write
        // to the external system with only the ownership check and the epoch, as a loop
        // driving an outside API does.
        if rand::random::<bool>() {
            db.record(key, "save_try", epoch, run, Some(desired), None)
                .await?;
            let saved = ctx.state().save(desired.to_be_bytes().to_vec()).await;
            db.record(key, "save", epoch, run, Some(desired), Some(saved.is_ok()))
                .await?;
            saved?;
        }
        // Work before the write (an API call): a freeze here leaves the loop to find out
        // on resume whether it still owns the key.
        let work = Duration::from_millis(rand::random::<u64>() % 150);
        tokio::select! {
            () = tokio::time::sleep(work) => {}
            _ = ctx.shutdown() => {}
        }
        let checked = SystemTime::now();
        if !ctx.is_owner() {
            return Err("ownership lost before the external write".into());
        }
        db.execute(
            "WITH w AS ( \
               INSERT INTO {s}.w_actual (key, gen, epoch) VALUES ($1, $2, $3) \
               ON CONFLICT (key) DO UPDATE SET gen = EXCLUDED.gen, epoch = EXCLUDED.epoch \
               WHERE {s}.w_actual.epoch <= EXCLUDED.epoch RETURNING 1) \
             INSERT INTO {s}.w_history (node, key, kind, epoch, run, gen, ok, checked) \
             SELECT $4, $1, 'write', $3, $5, $2, EXISTS (SELECT 1 FROM w), $6",
            &[&key, &desired, &epoch, &db.node, &run, &checked],
        )
        .await?;
        // While faults run, some runs hand their key to another node after a moment;
        // once the driver drains, every run completes so the registry can empty.
        let hand_off = !drain && rand::random::<f64>() < 0.3;
        if hand_off {
            let linger = Duration::from_millis(rand::random::<u64>() % 30);
            tokio::select! {
                () = tokio::time::sleep(linger) => {}
                _ = ctx.shutdown() => {}
            }
        }
        db.record(key, "end", epoch, run, None, None).await?;
        Ok(if hand_off {
            Decision::Continue
        } else {
            Decision::Complete
        })
    }
}

// ---------------------------------------------------------------------------------------
// The driver.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    Kill,
    Stop,
    Terminate,
    GracefulRestart,
    ServerRestart,
}

struct NodeProcess {
    name: String,
    child: Option<Child>,
}

struct Run<'a> {
    server: &'a PostgresServer,
    schema: String,
    seed: u64,
    driver: Workload,
    nodes: Vec<NodeProcess>,
    faults: BTreeMap<Fault, usize>,
    log_dir: PathBuf,
    /// For [`DEFECTS_ENV`].
    defects: String,
}

impl Run<'_> {
    fn spawn(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let log = self.log_dir.join(format!("{}.log", node.name));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("node log");
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "process_node", "--nocapture", "--test-threads=1"])
            .env(
                NODE_ENV,
                format!(
                    "{}|{}|{}|{}",
                    self.server.url(),
                    self.schema,
                    node.name,
                    TTL.as_millis()
                ),
            )
            .env(DEFECTS_ENV, &self.defects)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn node process");
        node.child = Some(child);
    }

    /// Sends `signal` to a node process (through the system call: a fresh machine need not
    /// have a `kill` binary).
    fn signal(&self, index: usize, signal: Signal) {
        let Some(child) = &self.nodes[index].child else {
            return;
        };
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(Pid::from_raw)
            .expect("a child's pid");
        kill_process(pid, signal).unwrap_or_else(|e| panic!("signal {signal:?} failed: {e}"));
    }

    /// Records a driver-side event (a fault) at the database clock, retrying while the
    /// server is down (the fault's time is when the record lands, later than the fault).
    async fn note(&self, node: &str, kind: &str) {
        for _ in 0..100 {
            if self
                .driver
                .record(node, kind, 0, 0, None, None)
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("seed {}: could not record {kind} for {node}", self.seed);
    }

    /// Stops a node process for good: SIGTERM, then SIGKILL if it does not exit in time.
    async fn stop_node(&mut self, index: usize, graceful: bool) {
        if graceful {
            self.signal(index, Signal::TERM);
        }
        let Some(mut child) = self.nodes[index].child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        if graceful {
            while Instant::now() < deadline {
                if child.try_wait().expect("wait").is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// What one run saw.
#[derive(Debug, Default)]
struct Outcome {
    operations: usize,
    faults: BTreeMap<Fault, usize>,
    converged_after: Duration,
    events: usize,
    violations: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_process_fault_runs() {
    let Some(server) = dedicated_postgres_server() else {
        return;
    };
    let runs: u64 = env_or("KEYLOOP_PROCESS_RUNS", 3);
    let first_seed: u64 = env_or("KEYLOOP_PROCESS_SEED", 1);
    let mut total = Outcome::default();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for seed in first_seed..first_seed + runs {
        let outcome = run_schedule(&server, seed, &[]).await;
        println!(
            "seed {seed}: {} operations, faults {:?}, {} events, converged {:?} after the \
             faults stopped, {} violations",
            outcome.operations,
            outcome.faults,
            outcome.events,
            outcome.converged_after,
            outcome.violations.len()
        );
        assert!(
            outcome.violations.is_empty(),
            "seed {seed} (rerun with KEYLOOP_PROCESS_RUNS=1 KEYLOOP_PROCESS_SEED={seed}):\n{}",
            outcome.violations.join("\n")
        );
        total.operations += outcome.operations;
        total.events += outcome.events;
        for (fault, n) in outcome.faults {
            *total.faults.entry(fault).or_default() += n;
        }
        slowest = slowest.max(outcome.converged_after);
    }
    println!(
        "postgres real processes: {runs} runs, {NODES} nodes, {KEYS} keys, {} operations, \
         faults {:?}, {} events, 0 violations, slowest convergence {slowest:?}, {:?} in all, \
         load {}",
        total.operations,
        total.faults,
        total.events,
        started.elapsed(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

/// The runs find real engine breakage: with a defect the correctness work fixed brought
/// back, a few seeded runs report a violation. `LoopsIgnoreLeaseClock` (loops judge their
/// ownership by the signal alone, not by the lease clock) shows when a node resumes from
/// SIGSTOP past its lease: its loops pass `is_owner()` though another node took their keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defective_engines_are_caught() {
    let Some(server) = dedicated_postgres_server() else {
        return;
    };
    for defect in [Defect::LoopsIgnoreLeaseClock] {
        let mut caught = None;
        // Caught by seed 1 or 2 in three runs of this test, and missed by all of seeds 1–4
        // once (CI): a run catches it only when a SIGSTOP lands mid-run on a loop, so the
        // bound is 8 runs.
        for seed in 1..=RUNS_TO_CATCH {
            let outcome = run_schedule(&server, seed, &[defect]).await;
            if let Some(v) = outcome.violations.first() {
                caught = Some((seed, v.lines().next().unwrap_or_default().to_owned()));
                break;
            }
        }
        let (seed, violation) = caught
            .unwrap_or_else(|| panic!("{defect:?} went unnoticed in {RUNS_TO_CATCH} seeded runs"));
        println!("{defect:?}: caught by seed {seed}: {violation}");
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

fn key_name(i: usize) -> String {
    format!("proc/{i:02}")
}

async fn run_schedule(server: &PostgresServer, seed: u64, defects: &[Defect]) -> Outcome {
    let schema = fresh_schema("procs");
    let driver = Workload::new(&server.url(), &schema, "driver");
    for sql in [
        "CREATE SCHEMA IF NOT EXISTS {s}",
        "CREATE TABLE {s}.w_desired (key text PRIMARY KEY, gen bigint NOT NULL)",
        "CREATE TABLE {s}.w_control (drain boolean NOT NULL)",
        "INSERT INTO {s}.w_control VALUES (false)",
        "CREATE TABLE {s}.w_actual (key text PRIMARY KEY, gen bigint NOT NULL, epoch bigint NOT NULL)",
        "CREATE TABLE {s}.w_history (id bigserial PRIMARY KEY, \
           at timestamptz NOT NULL DEFAULT clock_timestamp(), node text NOT NULL, \
           key text NOT NULL, kind text NOT NULL, epoch bigint NOT NULL, run bigint NOT NULL, \
           gen bigint, ok boolean, checked timestamptz)",
    ] {
        driver.execute(sql, &[]).await.expect("workload schema");
    }
    for i in 0..KEYS {
        driver
            .execute("INSERT INTO {s}.w_desired VALUES ($1, 0)", &[&key_name(i)])
            .await
            .expect("desired row");
    }
    let log_dir = std::env::temp_dir().join(format!("keyloop-processes-{schema}"));
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let mut run = Run {
        server,
        schema: schema.clone(),
        seed,
        driver,
        nodes: (0..NODES)
            .map(|i| NodeProcess {
                name: format!("p{i}"),
                child: None,
            })
            .collect(),
        faults: BTreeMap::new(),
        log_dir,
        defects: defects
            .iter()
            .map(|d| format!("{d:?}"))
            .collect::<Vec<_>>()
            .join(","),
    };
    for i in 0..NODES {
        run.spawn(i);
    }
    let config = PostgresConfig::builder(server.url())
        .schema(&schema)
        .pool_size(2)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .expect("config");
    let coordinator: Arc<dyn Coordinator> = Arc::new(
        PostgresCoordinator::connect(config)
            .await
            .expect("driver coordinator"),
    );
    let client = Client::new(Arc::clone(&coordinator));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut operations = 0;
    let mut op_id: i64 = 0;
    // Keys whose desired generation moved without an acknowledged trigger since.
    let mut owed: HashSet<String> = HashSet::new();
    let mut killed: Vec<usize> = Vec::new();
    for _step in 0..STEPS {
        for _ in 0..rng.random_range(1..=8) {
            let key = key_name(rng.random_range(0..KEYS));
            op_id += 1;
            operations += 1;
            trigger_recorded(&run.driver, &client, &key, op_id, &mut owed).await;
        }
        // Restart what an earlier step killed.
        for index in killed.drain(..) {
            run.spawn(index);
        }
        let fault = match rng.random_range(0..6) {
            0 => Fault::Kill,
            1 => Fault::Stop,
            2 => Fault::Terminate,
            3 => Fault::GracefulRestart,
            4 => Fault::ServerRestart,
            _ => {
                pace(&mut rng).await;
                continue;
            }
        };
        *run.faults.entry(fault).or_default() += 1;
        let index = rng.random_range(0..NODES);
        let name = run.nodes[index].name.clone();
        match fault {
            Fault::Kill => {
                run.stop_node(index, false).await;
                run.note(&name, "killed").await;
                killed.push(index);
            }
            Fault::Stop => {
                run.signal(index, Signal::STOP);
                run.note(&name, "stopped").await;
                let frozen = TTL + TTL / 2 + Duration::from_millis(rng.random_range(0..1000));
                // Triggers while the node is frozen: its keys fail over and must still
                // reach a loop.
                let until = Instant::now() + frozen;
                while Instant::now() < until {
                    let key = key_name(rng.random_range(0..KEYS));
                    op_id += 1;
                    operations += 1;
                    trigger_recorded(&run.driver, &client, &key, op_id, &mut owed).await;
                    tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
                }
                run.signal(index, Signal::CONT);
                run.note(&name, "continued").await;
            }
            Fault::Terminate => {
                run.driver
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name LIKE 'keyloop%' AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .expect("terminate keyloop's connections");
            }
            Fault::GracefulRestart => {
                run.stop_node(index, true).await;
                run.note(&name, "exited").await;
                run.spawn(index);
            }
            Fault::ServerRestart => {
                let down = Duration::from_millis(rng.random_range(200..1500));
                tokio::task::block_in_place(|| server.stop()).expect("stop server");
                tokio::time::sleep(down).await;
                tokio::task::block_in_place(|| server.resume()).expect("restart server");
            }
        }
        pace(&mut rng).await;
    }
    for index in killed.drain(..) {
        run.spawn(index);
    }
    // The faults stop here; from now on every run completes.
    while run
        .driver
        .execute("UPDATE {s}.w_control SET drain = true", &[])
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Triggers that were never acknowledged are sent again (their
    // desired generation moved); then every key must reach its desired generation and
    // leave the registry.
    let healed = Instant::now();
    let owed_keys: Vec<String> = owed.iter().cloned().collect();
    for key in owed_keys {
        while owed.contains(&key) {
            op_id += 1;
            operations += 1;
            trigger_recorded(&run.driver, &client, &key, op_id, &mut owed).await;
            assert!(
                healed.elapsed() < CONVERGE_WITHIN,
                "seed {seed}: triggers still fail after the faults stopped"
            );
        }
    }
    let mut violations = Vec::new();
    let converged_after = loop {
        let differing: i64 = run
            .driver
            .query(
                "SELECT count(*) FROM {s}.w_desired d LEFT JOIN {s}.w_actual a USING (key) \
                 WHERE COALESCE(a.gen, 0) <> d.gen",
                &[],
            )
            .await
            .map_or(-1, |rows| rows[0].get(0));
        let registered = coordinator
            .inspect()
            .await
            .map_or(usize::MAX, |s| s.keys.len());
        if differing == 0 && registered == 0 {
            break healed.elapsed();
        }
        if healed.elapsed() > CONVERGE_WITHIN {
            let rows = run
                .driver
                .query(
                    "SELECT d.key, d.gen, a.gen, a.epoch FROM {s}.w_desired d \
                     LEFT JOIN {s}.w_actual a USING (key) WHERE COALESCE(a.gen, 0) <> d.gen",
                    &[],
                )
                .await
                .unwrap_or_default();
            for r in rows {
                let (key, desired, actual, epoch): (String, i64, Option<i64>, Option<i64>) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                violations.push(format!(
                    "{key}: desired {desired}, actual {actual:?} at epoch {epoch:?}"
                ));
            }
            violations.push(format!(
                "no convergence {CONVERGE_WITHIN:?} after the faults stopped: {differing} keys \
                 differ from their desired generation, {registered} still registered"
            ));
            break healed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for index in 0..NODES {
        run.stop_node(index, true).await;
    }
    let history = read_history(&run.driver).await;
    violations.extend(check_history(&history));
    if !violations.is_empty() {
        let mut faults = String::from("faults (driver records, database clock):\n");
        for e in history
            .iter()
            .filter(|e| e.node == "driver" && !e.kind.starts_with("trigger"))
        {
            let _ = writeln!(faults, "    {} {} {}", e.at, e.kind, e.key);
        }
        violations.push(faults);
    }
    if violations.is_empty() {
        let _ = std::fs::remove_dir_all(&run.log_dir);
    } else {
        violations.push(format!("node logs: {}", run.log_dir.display()));
    }
    Outcome {
        operations,
        faults: run.faults,
        converged_after,
        events: history.len(),
        violations,
    }
}

async fn pace(rng: &mut StdRng) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(100..700))).await;
}

/// Bumps the key's desired generation, then triggers it; the call and its acknowledgement
/// are recorded around the trigger. A failed step leaves the key owed a trigger.
async fn trigger_recorded(
    driver: &Workload,
    client: &Client,
    key: &str,
    op: i64,
    owed: &mut HashSet<String>,
) {
    // Owed before the bump: a bump whose answer was lost may still have committed.
    owed.insert(key.to_owned());
    if driver
        .execute(
            "UPDATE {s}.w_desired SET gen = gen + 1 WHERE key = $1",
            &[&key],
        )
        .await
        .is_err()
    {
        return;
    }
    if driver
        .record(key, "trigger_called", 0, op, None, None)
        .await
        .is_err()
    {
        return;
    }
    if client.trigger(key).await.is_err() {
        return;
    }
    if driver
        .record(key, "trigger_acked", 0, op, None, None)
        .await
        .is_ok()
    {
        owed.remove(key);
    }
}

// ---------------------------------------------------------------------------------------
// The history and its check.

/// One recorded event; `at` in microseconds of the database clock.
#[derive(Debug, Clone)]
struct Event {
    at: i64,
    node: String,
    key: String,
    kind: String,
    epoch: i64,
    run: i64,
    ok: Option<bool>,
    /// For a write: when the loop's `is_owner()` check before it passed.
    checked: Option<i64>,
}

async fn read_history(driver: &Workload) -> Vec<Event> {
    let rows = driver
        .query(
            "SELECT (extract(epoch FROM at) * 1000000)::bigint, node, key, kind, epoch, run, ok, \
                    (extract(epoch FROM checked) * 1000000)::bigint \
             FROM {s}.w_history ORDER BY at, id",
            &[],
        )
        .await
        .expect("read history");
    rows.iter()
        .map(|r| Event {
            at: r.get(0),
            node: r.get(1),
            key: r.get(2),
            kind: r.get(3),
            epoch: r.get(4),
            run: r.get(5),
            ok: r.get(6),
            checked: r.get(7),
        })
        .collect()
}

/// Checks a run's history, per key:
///
/// - **epochs** (G1): loop starts, in the order the runs began, never go to a lower epoch, and one epoch
///   is never started on two nodes;
/// - **fenced saves** (G2): a state save attempted after a loop of a higher epoch started
///   is never accepted (the backend knows the newer epoch by then);
/// - **ownership checks** (G1/G2): when a loop's `is_owner()` passes at `t`, no loop of a
///   higher epoch starts before `t` plus the fence margin while that run is still live
///   (a run that ended released the key itself, and may be followed at once) — the engine vouches for the
///   lease only while its own clock is a margin short of the backend's expiry, and another
///   node can claim only after that expiry. (A write itself may land later than that:
///   a check and a write are never atomic, which is what the store's epoch fencing is for.)
///   With one clock for every process this holds even for a process frozen between check
///   and write; a loop that resumes from a freeze and still passes the check fails it;
/// - **store fencing**: accepted external writes never go to a lower epoch;
/// - **lost triggers** (G3): every acknowledged trigger is followed by a loop start after
///   its call (the reconcile loop never waits for triggers, so every run that could see
///   it starts after it: a run that started before and completed is answered
///   `Retriggered` and runs again).
fn check_history(history: &[Event]) -> Vec<String> {
    let mut violations = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in history
        .iter()
        .filter(|e| e.node != "driver" || e.kind.starts_with("trigger"))
    {
        by_key.entry(&e.key).or_default().push(e);
    }
    for (key, events) in &by_key {
        let excerpt = || {
            let mut s = String::new();
            for e in events {
                let _ = writeln!(
                    s,
                    "    {} {:<14} node={} epoch={} run={} ok={:?}",
                    e.at, e.kind, e.node, e.epoch, e.run, e.ok
                );
            }
            s
        };
        let mut found = Vec::new();
        let starts: Vec<&&Event> = events.iter().filter(|e| e.kind == "start").collect();
        let mut epoch_node: HashMap<i64, &str> = HashMap::new();
        let mut highest = 0;
        for s in &starts {
            if s.epoch < highest {
                found.push(format!("start at epoch {} after epoch {highest}", s.epoch));
            }
            highest = highest.max(s.epoch);
            if let Some(other) = epoch_node.insert(s.epoch, &s.node)
                && other != s.node
            {
                found.push(format!(
                    "epoch {} started on {other} and {}",
                    s.epoch, s.node
                ));
            }
        }
        // When a loop of an epoch higher than `epoch` first started, if one did.
        let newer_start = |epoch: i64| {
            starts
                .iter()
                .filter(|s| s.epoch > epoch)
                .map(|s| s.at)
                .min()
        };
        for e in events.iter().filter(|e| e.kind == "save") {
            let tried = events
                .iter()
                .find(|t| t.kind == "save_try" && t.run == e.run)
                .map_or(e.at, |t| t.at);
            if e.ok == Some(true)
                && let Some(newer) = newer_start(e.epoch)
                && newer < tried
            {
                found.push(format!(
                    "save of epoch {} attempted at {tried}, after epoch {} started at {newer}, \
                     was accepted",
                    e.epoch,
                    starts.iter().find(|s| s.at == newer).map_or(0, |s| s.epoch)
                ));
            }
        }
        let mut highest_written = 0;
        for e in events
            .iter()
            .filter(|e| e.kind == "write" && e.ok == Some(true))
        {
            if e.epoch < highest_written {
                found.push(format!(
                    "external write of epoch {} accepted after epoch {highest_written}",
                    e.epoch
                ));
            }
            highest_written = highest_written.max(e.epoch);
        }
        let run_end: HashMap<i64, i64> = events
            .iter()
            .filter(|e| e.kind == "end")
            .map(|e| (e.run, e.at))
            .collect();
        for e in events.iter().filter(|e| e.kind == "write") {
            let Some(checked) = e.checked else { continue };
            // A run that ended before the newer loop began let go of the key itself (its
            // release follows its end): no lease expiry is involved.
            let ended = run_end.get(&e.run).copied().unwrap_or(i64::MAX);
            if let Some(newer) = newer_start(e.epoch)
                && newer <= checked + FENCE_MARGIN_US
                && newer < ended
            {
                found.push(format!(
                    "is_owner() passed for epoch {} on {} at {checked}, but a newer loop \
                     started at {newer}, less than the fence margin later (or before)",
                    e.epoch, e.node
                ));
            }
        }
        for called in events.iter().filter(|e| e.kind == "trigger_called") {
            let acked = events
                .iter()
                .any(|e| e.kind == "trigger_acked" && e.run == called.run);
            if acked && !starts.iter().any(|s| s.at > called.at) {
                found.push(format!(
                    "trigger {} called at {} and acknowledged, but no loop started after it",
                    called.run, called.at
                ));
            }
        }
        for f in found {
            violations.push(format!("{key}: {f}\n{}", excerpt()));
        }
    }
    violations
}

/// The checker flags each kind of violation in a hand-made history, and passes a legal one
/// (a rerun at the same epoch, a handoff, a late write by a frozen node that the store
/// rejects).
#[test]
fn checker_flags_each_violation_kind() {
    const S: i64 = 1_000_000;
    fn ev(at: i64, node: &str, kind: &str, epoch: i64, run: i64, ok: Option<bool>) -> Event {
        Event {
            at,
            node: node.into(),
            key: "k".into(),
            kind: kind.into(),
            epoch,
            run,
            ok,
            checked: (kind == "write").then_some(at - 1),
        }
    }
    let late_write = Event {
        checked: Some(5 * S),
        ..ev(20 * S, "p0", "write", 1, 11, Some(false))
    };
    let legal = vec![
        ev(S, "driver", "trigger_called", 0, 1, None),
        ev(2 * S, "driver", "trigger_acked", 0, 1, None),
        ev(3 * S, "p0", "start", 1, 10, None),
        ev(3 * S + 1, "p0", "save_try", 1, 10, None),
        ev(3 * S + 2, "p0", "save", 1, 10, Some(true)),
        ev(3 * S + 3, "p0", "write", 1, 10, Some(true)),
        ev(4 * S, "p0", "start", 1, 11, None),
        ev(9 * S, "p1", "start", 2, 20, None),
        ev(9 * S + 5, "p1", "write", 2, 20, Some(true)),
        ev(9 * S + 6, "p1", "end", 2, 20, None),
        ev(9 * S + 7, "p2", "start", 3, 30, None),
        late_write,
    ];
    assert_eq!(check_history(&legal), Vec::<String>::new());
    let cases: Vec<(&str, Vec<Event>)> = vec![
        (
            "start at epoch 1 after epoch 2",
            vec![
                ev(S, "p0", "start", 2, 1, None),
                ev(2 * S, "p1", "start", 1, 2, None),
            ],
        ),
        (
            "epoch 3 started on p0 and p1",
            vec![
                ev(S, "p0", "start", 3, 1, None),
                ev(2 * S, "p1", "start", 3, 2, None),
            ],
        ),
        (
            "was accepted",
            vec![
                ev(S, "p0", "start", 1, 1, None),
                ev(2 * S, "p1", "start", 2, 2, None),
                ev(3 * S, "p0", "save_try", 1, 1, None),
                ev(4 * S, "p0", "save", 1, 1, Some(true)),
            ],
        ),
        (
            "accepted after epoch 2",
            vec![
                ev(S, "p1", "write", 2, 2, Some(true)),
                ev(2 * S, "p0", "write", 1, 1, Some(true)),
            ],
        ),
        (
            "less than the fence margin later",
            vec![
                ev(S, "p0", "start", 1, 1, None),
                ev(2 * S, "p0", "write", 1, 1, Some(true)),
                ev(2 * S + 100_000, "p1", "start", 2, 2, None),
            ],
        ),
        (
            "no loop started after it",
            vec![
                ev(S, "p0", "start", 1, 1, None),
                ev(2 * S, "driver", "trigger_called", 0, 7, None),
                ev(3 * S, "driver", "trigger_acked", 0, 7, None),
            ],
        ),
    ];
    for (expected, history) in cases {
        let found = check_history(&history);
        assert!(
            found.iter().any(|v| v.contains(expected)),
            "expected a violation containing {expected:?}, got {found:?}"
        );
    }
}
