//! Benchmarks of the PostgreSQL coordinator, each next to a peer measured on the same server
//! in the same run (subject and peer alternating, several rounds, medians):
//!
//! - P5: claims per second in batches, next to a single-row `UPDATE` loop;
//! - P6: trigger-to-loop latency p50/p99, next to a raw `NOTIFY` round trip;
//! - P7: failover time after `SIGKILL` of a process, next to the lease TTL;
//! - P8: liveness writes per second with 1,000 and 100,000 owned keys.
//!
//! `cargo run --release -p keyloop-postgres --example pg_bench [p5|p6|p7|p8 ...]`
//!
//! Starts a durable (fsync on) throw-away server unless `KEYLOOP_TEST_POSTGRES_URL` is set.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyloop_conformance::{POSTGRES_URL_ENV, PostgresServer};
use keyloop_core::{
    BoxError, Controller, Coordinator, Decision, Engine, EventSink, Key, LoopContext, NodeId,
    NodeInfo, Wake, async_trait,
};
use keyloop_postgres::{PostgresConfig, PostgresCoordinator};
use tokio::sync::mpsc;

const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

async fn coordinator(url: &str, schema: &str) -> PostgresCoordinator {
    let config = PostgresConfig::builder(url).schema(schema).build().unwrap();
    PostgresCoordinator::connect(config).await.unwrap()
}

fn schema(tag: &str) -> String {
    format!("bench_{tag}_{}", &NodeId::random().to_string()[..8])
}

/// Registers `n` keys directly (the benchmarks measure claims, not registration).
async fn register(db: &tokio_postgres::Client, schema: &str, n: usize) {
    db.execute(
        &format!(
            "INSERT INTO \"{schema}\".keys (key, trigger_seq)
             SELECT 'k/' || lpad(i::text, 7, '0'), nextval('\"{schema}\".trigger_seq')
             FROM generate_series(1, $1::bigint) i"
        ),
        &[&(n as i64)],
    )
    .await
    .unwrap();
}

// --- P5 --------------------------------------------------------------------------------

async fn p5(url: &str) {
    const KEYS: usize = 20_000;
    const BATCH: usize = 1000;
    const PEER_ROWS: usize = 3000;
    let s = schema("p5");
    let c = coordinator(url, &s).await;
    let db = raw(url).await;
    register(&db, &s, KEYS).await;
    db.batch_execute(&format!(
        "CREATE TABLE \"{s}\".peer (id bigint PRIMARY KEY, owner uuid, epoch bigint NOT NULL DEFAULT 0);
         INSERT INTO \"{s}\".peer (id) SELECT generate_series(1, {PEER_ROWS})"
    ))
    .await
    .unwrap();
    let node = NodeInfo {
        id: NodeId::random(),
        name: "bench".into(),
    };
    c.join(&node, Duration::from_secs(600), EventSink::discard())
        .await
        .unwrap();
    let owner = uuid::Uuid::from_u128(node.id.as_u128());
    let peer_stmt = db
        .prepare(&format!(
            "UPDATE \"{s}\".peer SET owner = $1, epoch = epoch + 1 WHERE id = $2"
        ))
        .await
        .unwrap();
    let (mut subject, mut peer) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        db.execute(&format!("UPDATE \"{s}\".keys SET owner_node = NULL"), &[])
            .await
            .unwrap();
        let t = Instant::now();
        let mut claimed = 0;
        loop {
            let got = c.claim(&node.id, BATCH).await.unwrap().len();
            if got == 0 {
                break;
            }
            claimed += got;
        }
        assert_eq!(claimed, KEYS);
        let rate = claimed as f64 / t.elapsed().as_secs_f64();
        subject.push(rate);

        let t = Instant::now();
        for id in 1..=PEER_ROWS as i64 {
            db.execute(&peer_stmt, &[&owner, &id]).await.unwrap();
        }
        let peer_rate = PEER_ROWS as f64 / t.elapsed().as_secs_f64();
        peer.push(peer_rate);
        println!(
            "P5 round {round}: batched claims {rate:.0} keys/s, single-row UPDATE {peer_rate:.0} rows/s"
        );
    }
    let (s_med, p_med) = (median(subject), median(peer));
    println!(
        "P5 claims/s (batch {BATCH}): {s_med:.0}  peer single-row UPDATE: {p_med:.0}  ratio {:.1}x (floor 2x)",
        s_med / p_med
    );
}

// --- P6 --------------------------------------------------------------------------------

struct Observe(mpsc::UnboundedSender<Instant>);

#[async_trait]
impl Controller for Observe {
    async fn run(&self, _key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        let _ = self.0.send(Instant::now());
        while let Wake::Triggered = ctx.next().await {
            let _ = self.0.send(Instant::now());
        }
        Ok(Decision::Continue)
    }
}

async fn p6(url: &str) {
    const SAMPLES: usize = 300;
    let s = schema("p6");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let engine = Engine::builder(Arc::new(coordinator(url, &s).await), Observe(tx))
        .config(|c| c.node_name("p6"))
        .start()
        .await
        .unwrap();
    // Triggers come from another "process": a client on its own coordinator.
    let client = keyloop_core::Client::new(Arc::new(coordinator(url, &s).await));
    client.trigger("latency").await.unwrap();
    rx.recv().await.unwrap();

    let listener_url = url.to_owned();
    let (note_tx, mut note_rx) = mpsc::unbounded_channel();
    let config: tokio_postgres::Config = listener_url.parse().unwrap();
    let (listen, mut conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(_) = m {
                let _ = note_tx.send(Instant::now());
            }
        }
    });
    listen.batch_execute("LISTEN bench_p6").await.unwrap();
    let notifier = raw(url).await;

    // A second peer: the same commit work as a trigger (a durable row update) plus NOTIFY,
    // to show how much of the trigger's latency is the commit itself.
    notifier
        .batch_execute(&format!(
            "CREATE TABLE \"{s}\".p6_row (id int PRIMARY KEY, n bigint);
             INSERT INTO \"{s}\".p6_row VALUES (1, 0)"
        ))
        .await
        .unwrap();
    let update_notify = notifier
        .prepare(&format!(
            "WITH u AS (UPDATE \"{s}\".p6_row SET n = n + 1 WHERE id = 1 RETURNING n)
             SELECT pg_notify('bench_p6', n::text) FROM u"
        ))
        .await
        .unwrap();
    let (mut subject, mut peer, mut peer2) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        let t = Instant::now();
        client.trigger("latency").await.unwrap();
        let seen = rx.recv().await.unwrap();
        subject.push(seen - t);

        let t = Instant::now();
        notifier
            .execute("SELECT pg_notify('bench_p6', 'x')", &[])
            .await
            .unwrap();
        let seen = note_rx.recv().await.unwrap();
        peer.push(seen - t);

        let t = Instant::now();
        notifier.query(&update_notify, &[]).await.unwrap();
        let seen = note_rx.recv().await.unwrap();
        peer2.push(seen - t);
    }
    subject.sort();
    peer.sort();
    peer2.sort();
    println!(
        "P6 peer UPDATE+NOTIFY in one transaction p50 {:?} p99 {:?}",
        percentile(&peer2, 0.5),
        percentile(&peer2, 0.99)
    );
    println!(
        "P6 trigger->loop p50 {:?} p99 {:?}  peer NOTIFY round trip p50 {:?} p99 {:?}  ratio p50 {:.1}x",
        percentile(&subject, 0.5),
        percentile(&subject, 0.99),
        percentile(&peer, 0.5),
        percentile(&peer, 0.99),
        percentile(&subject, 0.5).as_secs_f64() / percentile(&peer, 0.5).as_secs_f64()
    );
    engine.shutdown().await;
}

// --- P7 --------------------------------------------------------------------------------

const P7_KEYS: usize = 1000;
const P7_TTL: Duration = Duration::from_secs(3);
const P7_CLAIM: Duration = Duration::from_millis(500);

struct Count(mpsc::UnboundedSender<()>);

#[async_trait]
impl Controller for Count {
    async fn run(&self, _key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        let _ = self.0.send(());
        ctx.shutdown().await;
        Ok(Decision::Continue)
    }
}

async fn p7_engine(url: &str, schema: &str, name: &str, tx: mpsc::UnboundedSender<()>) -> Engine {
    Engine::builder(Arc::new(coordinator(url, schema).await), Count(tx))
        .config(|c| {
            c.node_name(name)
                .lease_ttl(P7_TTL)
                .claim_interval(P7_CLAIM)
                .claim_batch(500)
        })
        .start()
        .await
        .unwrap()
}

/// The victim process: owns every key, prints `ready`, waits to be killed.
async fn p7_victim(url: &str, schema: &str) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _engine = p7_engine(url, schema, "victim", tx).await;
    for _ in 0..P7_KEYS {
        rx.recv().await.unwrap();
    }
    println!("ready");
    std::future::pending::<()>().await;
}

async fn p7(url: &str) {
    let mut results = Vec::new();
    for round in 0..ROUNDS {
        let s = schema("p7");
        let db = raw(url).await;
        drop(coordinator(url, &s).await);
        register(&db, &s, P7_KEYS).await;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["p7-victim", &s])
            .env("KEYLOOP_BENCH_URL", url)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::task::block_in_place(|| std::io::BufRead::read_line(&mut out, &mut line)).unwrap();
        assert_eq!(line.trim(), "ready");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let survivor = p7_engine(url, &s, "survivor", tx).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let killed = Instant::now();
        for _ in 0..P7_KEYS {
            rx.recv().await.unwrap();
        }
        let failover = killed.elapsed();
        println!("P7 round {round}: {P7_KEYS} keys failed over in {failover:?}");
        results.push(failover.as_secs_f64());
        survivor.shutdown().await;
    }
    let m = median(results);
    println!(
        "P7 failover after SIGKILL: {m:.2} s  lease TTL {:.2} s (+ claim interval {:.2} s)  ratio {:.2}x TTL",
        P7_TTL.as_secs_f64(),
        P7_CLAIM.as_secs_f64(),
        m / P7_TTL.as_secs_f64()
    );
}

/// Row writes counted so far: (keys table, nodes table).
async fn read_writes(db: &tokio_postgres::Client, s: &str) -> (i64, i64) {
    let rows = db
        .query(
            &format!("SELECT tbl, n FROM \"{s}\".writes ORDER BY tbl"),
            &[],
        )
        .await
        .unwrap();
    (rows[0].get(1), rows[1].get(1))
}

// --- P8 --------------------------------------------------------------------------------

async fn p8(url: &str) {
    const WINDOW: Duration = Duration::from_secs(10);
    let ttl = Duration::from_secs(6);
    let heartbeat = Duration::from_secs(1);
    let mut lines = Vec::new();
    for keys in [1_000usize, 100_000] {
        let s = schema("p8");
        let db = raw(url).await;
        drop(coordinator(url, &s).await);
        register(&db, &s, keys).await;
        // Count row writes in the database itself.
        db.batch_execute(&format!(
            "CREATE TABLE \"{s}\".writes (tbl text PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO \"{s}\".writes VALUES ('nodes', 0), ('keys', 0);
             CREATE FUNCTION \"{s}\".count_write() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN UPDATE \"{s}\".writes SET n = n + 1 WHERE tbl = TG_TABLE_NAME; RETURN NULL; END $$;
             CREATE TRIGGER count_nodes AFTER INSERT OR UPDATE OR DELETE ON \"{s}\".nodes
                 FOR EACH ROW EXECUTE FUNCTION \"{s}\".count_write();
             CREATE TRIGGER count_keys AFTER INSERT OR UPDATE OR DELETE ON \"{s}\".keys
                 FOR EACH ROW EXECUTE FUNCTION \"{s}\".count_write();"
        ))
        .await
        .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let engine = Engine::builder(Arc::new(coordinator(url, &s).await), Count(tx))
            .config(|c| {
                c.node_name("p8")
                    .lease_ttl(ttl)
                    .heartbeat_interval(heartbeat)
                    .claim_batch(2000)
                    .max_loops(keys + 1)
            })
            .start()
            .await
            .unwrap();
        for _ in 0..keys {
            rx.recv().await.unwrap();
        }
        let before = read_writes(&db, &s).await;
        let t = Instant::now();
        tokio::time::sleep(WINDOW).await;
        let after = read_writes(&db, &s).await;
        let secs = t.elapsed().as_secs_f64();
        let node_rate = (after.1 - before.1) as f64 / secs;
        let key_rate = (after.0 - before.0) as f64 / secs;
        lines.push(format!(
            "P8 {keys} owned keys: liveness writes {node_rate:.2}/s (nodes table), key-row writes {key_rate:.2}/s, heartbeat interval {heartbeat:?}"
        ));
        engine.shutdown().await;
    }
    for l in lines {
        println!("{l}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("p7-victim") {
        let url = std::env::var("KEYLOOP_BENCH_URL").unwrap();
        p7_victim(&url, &args[1]).await;
        return;
    }
    let server;
    let url = match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => {
            server = PostgresServer::start_durable().expect("starting PostgreSQL");
            server.url()
        }
    };
    let all = ["p5", "p6", "p7", "p8"];
    let which: Vec<&str> = if args.is_empty() {
        all.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    for w in which {
        match w {
            "p5" => p5(&url).await,
            "p6" => p6(&url).await,
            "p7" => p7(&url).await,
            "p8" => p8(&url).await,
            other => panic!("unknown benchmark {other:?}; use p5 p6 p7 p8"),
        }
    }
}
