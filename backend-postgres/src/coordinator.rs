use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Pool, Runtime};
use keyloop_core::{
    Claim, ClusterSnapshot, Coordinator, CoordinatorError, Epoch, EventSink, Key, KeyInfo, Lease,
    Limits, NodeId, NodeInfo, NodeSnapshot, Release, Released, TriggerOutcome, TriggerSeq,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::error::Endpoint;
use crate::listener::{self, Listener};
use crate::schema::{self, fnv1a};
use crate::sql::Sql;
use crate::tls::Connector;
use crate::{PostgresConfig, PostgresError};

/// The PostgreSQL [`Coordinator`]: the clustered backend.
///
/// Node leases live in a `nodes` table and expire on the database clock; keys, owners,
/// epochs, trigger sequences and state live in a `keys` table. Ordinary queries go through
/// a connection pool; each joined node additionally holds one dedicated connection that
/// `LISTEN`s for its notifications. Cloning is cheap and shares everything.
#[derive(Clone)]
pub struct PostgresCoordinator {
    inner: Arc<Inner>,
}

struct Inner {
    config: PostgresConfig,
    connector: Connector,
    pool: Pool,
    sql: Sql,
    shared_channel: String,
    listeners: Mutex<HashMap<NodeId, Listener>>,
}

impl std::fmt::Debug for PostgresCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCoordinator")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn uuid(node: &NodeId) -> Uuid {
    Uuid::from_u128(node.as_u128())
}

fn node_id(u: Uuid) -> NodeId {
    NodeId::from_u128(u.as_u128())
}

fn epoch(v: i64) -> Epoch {
    Epoch(v as u64)
}

fn seq(v: i64) -> TriggerSeq {
    TriggerSeq(v as u64)
}

fn micros(d: Duration) -> i64 {
    // Round up: a lease must last at least the requested TTL.
    i64::try_from(d.as_nanos().div_ceil(1000)).unwrap_or(i64::MAX)
}

impl PostgresCoordinator {
    /// Connects, checks the credentials, and creates or migrates the schema (under an
    /// advisory lock, so nodes starting together do not race).
    ///
    /// Errors say what is wrong: [`PostgresError::Unreachable`] names host and port,
    /// [`PostgresError::Authentication`] the user, and [`PostgresError::SchemaTooNew`] the
    /// versions (nothing is changed then).
    pub async fn connect(config: PostgresConfig) -> Result<PostgresCoordinator, PostgresError> {
        let connector = Connector::new(config.tls)?;
        let pool = Pool::builder(connector.manager(config.pg.clone()))
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout * 2))
            .create_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| PostgresError::Database {
                doing: "building the connection pool",
                detail: e.to_string(),
                source: Box::new(e),
            })?;
        let endpoint = config.endpoint.clone();
        let mut client = pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => endpoint.connect_error("connecting", e),
            other => PostgresError::Unreachable {
                host: endpoint.host.clone(),
                port: endpoint.port,
                detail: other.to_string(),
                source: Box::new(other),
            },
        })?;
        schema::migrate(&mut client, &config.schema, &endpoint).await?;
        drop(client);
        let sql = Sql::new(&config.schema);
        let shared_channel = format!("kl_avail_{:016x}", fnv1a(config.schema.as_bytes()));
        Ok(PostgresCoordinator {
            inner: Arc::new(Inner {
                config,
                connector,
                pool,
                sql,
                shared_channel,
                listeners: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration this coordinator was built from.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// Closes the pool and stops every listener. Later operations fail with
    /// [`CoordinatorError::Closed`].
    pub fn close(&self) {
        self.inner.pool.close();
        self.inner.listeners.lock().unwrap().clear();
    }

    fn endpoint(&self) -> &Endpoint {
        &self.inner.config.endpoint
    }

    async fn query(
        &self,
        doing: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, CoordinatorError> {
        let client = self
            .inner
            .pool
            .get()
            .await
            .map_err(|e| self.endpoint().pool_error(e))?;
        let stmt = client
            .prepare_cached(sql)
            .await
            .map_err(|e| self.endpoint().op_error(doing, e))?;
        client
            .query(&stmt, params)
            .await
            .map_err(|e| self.endpoint().op_error(doing, e))
    }

    async fn execute(
        &self,
        doing: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, CoordinatorError> {
        let client = self
            .inner
            .pool
            .get()
            .await
            .map_err(|e| self.endpoint().pool_error(e))?;
        let stmt = client
            .prepare_cached(sql)
            .await
            .map_err(|e| self.endpoint().op_error(doing, e))?;
        client
            .execute(&stmt, params)
            .await
            .map_err(|e| self.endpoint().op_error(doing, e))
    }

    async fn is_alive(&self, node: &NodeId) -> Result<bool, CoordinatorError> {
        let rows = self
            .query("checking a lease", &self.inner.sql.alive, &[&uuid(node)])
            .await?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or(false))
    }

    fn key(&self, s: &str) -> Result<Key, CoordinatorError> {
        Key::new(s).map_err(CoordinatorError::InvalidStoredKey)
    }

    /// The claims of rows a committed claim statement returned. A row whose key cannot be
    /// decoded (written behind keyloop's back) is logged and left out rather than failing
    /// the rest; the error is returned only when no row decodes.
    fn committed_claims(&self, rows: &[Row]) -> Result<Vec<Claim>, CoordinatorError> {
        let mut claims = Vec::with_capacity(rows.len());
        let mut first_error = None;
        for r in rows {
            match self.key(r.get(0)) {
                Ok(key) => claims.push(Claim {
                    key,
                    epoch: epoch(r.get(1)),
                    trigger_seq: seq(r.get(2)),
                }),
                Err(error) => {
                    tracing::error!(%error, "a claimed key cannot be decoded: it stays owned and unrun");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) if claims.is_empty() => Err(error),
            _ => Ok(claims),
        }
    }

    fn claims(&self, rows: &[Row]) -> Result<Vec<Claim>, CoordinatorError> {
        rows.iter()
            .map(|r| {
                Ok(Claim {
                    key: self.key(r.get(0))?,
                    epoch: epoch(r.get(1)),
                    trigger_seq: seq(r.get(2)),
                })
            })
            .collect()
    }

    fn key_info_row(&self, r: &Row) -> Result<KeyInfo, CoordinatorError> {
        Ok(KeyInfo {
            key: self.key(r.get(0))?,
            owner: r.get::<_, Option<Uuid>>(1).map(node_id),
            epoch: r.get::<_, Option<i64>>(2).map(epoch),
            trigger_seq: seq(r.get(3)),
            parked: r.get(4),
            wake_at: r.get::<_, Option<std::time::SystemTime>>(5),
        })
    }

    /// The node's lease is gone for good (it must re-join under a new id): its listener
    /// has nothing left to deliver, so its connection is closed.
    fn expired(&self, node: &NodeId) -> CoordinatorError {
        self.inner.listeners.lock().unwrap().remove(node);
        CoordinatorError::LeaseExpired { node: *node }
    }

    fn fenced(node: &NodeId, key: &Key, e: Epoch) -> CoordinatorError {
        CoordinatorError::Fenced {
            node: *node,
            key: key.clone(),
            epoch: e,
        }
    }
}

#[async_trait]
impl Coordinator for PostgresCoordinator {
    fn limits(&self) -> Limits {
        Limits {
            max_state_bytes: self.inner.config.max_state_bytes,
            // A `wake_at` column on the database clock, claimed through its own index.
            durable_wake_ups: true,
        }
    }

    async fn join(
        &self,
        node: &NodeInfo,
        ttl: Duration,
        events: EventSink,
    ) -> Result<Lease, CoordinatorError> {
        // LISTEN before the node exists, so no notification meant for it can be missed.
        let listener = listener::start(
            self.inner.connector.clone(),
            self.inner.config.pg.clone(),
            node.id,
            self.inner.shared_channel.clone(),
            events,
        )
        .await
        .map_err(|e| self.endpoint().op_error("starting the listener", e))?;
        self.execute("reaping dead nodes", &self.inner.sql.reap, &[])
            .await?;
        self.execute(
            "joining",
            &self.inner.sql.join,
            &[&uuid(&node.id), &node.name, &micros(ttl)],
        )
        .await?;
        self.inner
            .listeners
            .lock()
            .unwrap()
            .insert(node.id, listener);
        Ok(Lease { ttl })
    }

    async fn heartbeat(&self, node: &NodeId) -> Result<Lease, CoordinatorError> {
        let rows = self
            .query(
                "renewing a lease",
                &self.inner.sql.heartbeat,
                &[&uuid(node)],
            )
            .await?;
        match rows.first() {
            Some(r) => Ok(Lease {
                ttl: Duration::from_micros(r.get::<_, i64>(0) as u64),
            }),
            None => Err(self.expired(node)),
        }
    }

    async fn leave(&self, node: &NodeId) -> Result<(), CoordinatorError> {
        let id = uuid(node);
        let endpoint = self.endpoint();
        let mut client = self
            .inner
            .pool
            .get()
            .await
            .map_err(|e| endpoint.pool_error(e))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| endpoint.op_error("leaving", e))?;
        let released = tx
            .execute(&self.inner.sql.leave_release, &[&id])
            .await
            .map_err(|e| endpoint.op_error("releasing keys", e))?;
        tx.execute(&self.inner.sql.leave_delete, &[&id])
            .await
            .map_err(|e| endpoint.op_error("leaving", e))?;
        if released > 0 {
            tx.execute(&self.inner.sql.notify_shared, &[&self.inner.shared_channel])
                .await
                .map_err(|e| endpoint.op_error("leaving", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| endpoint.op_error("leaving", e))?;
        self.inner.listeners.lock().unwrap().remove(node);
        Ok(())
    }

    async fn trigger(&self, key: &Key) -> Result<TriggerOutcome, CoordinatorError> {
        let rows = self
            .query(
                "triggering",
                &self.inner.sql.trigger,
                &[&key.as_str(), &self.inner.shared_channel],
            )
            .await?;
        let r = rows.first().ok_or_else(|| {
            CoordinatorError::backend(self.endpoint().backend(), "trigger returned no row", None)
        })?;
        Ok(TriggerOutcome {
            seq: seq(r.get(0)),
            owner: r.get::<_, Option<Uuid>>(1).map(node_id),
            registered: r.get(2),
        })
    }

    async fn claim(&self, node: &NodeId, max: usize) -> Result<Vec<Claim>, CoordinatorError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let id = uuid(node);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        // Each statement commits on its own: once one has, its claims are this node's and
        // must reach the engine whatever fails after (the contract: Err only when nothing
        // was taken). Due wake-ups go first, so a steady stream of new keys cannot keep
        // them waiting.
        let sql = &self.inner.sql;
        let mut claims = Vec::new();
        for (step, statement) in [
            ("claiming due wake-ups", &sql.claim_due),
            ("claiming", &sql.claim_unowned),
            ("claiming orphaned keys", &sql.claim_orphaned),
        ] {
            if claims.len() >= max {
                break;
            }
            let limit = limit - claims.len() as i64;
            match self.query(step, statement, &[&id, &limit]).await {
                Ok(rows) => match self.committed_claims(&rows) {
                    Ok(more) => claims.extend(more),
                    Err(error) if claims.is_empty() => return Err(error),
                    // Already logged per key by `committed_claims`.
                    Err(_) => {}
                },
                Err(error) if claims.is_empty() => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, step, "claiming failed part-way: returning the claims that committed");
                    return Ok(claims);
                }
            }
        }
        if claims.is_empty() && !self.is_alive(node).await? {
            return Err(self.expired(node));
        }
        Ok(claims)
    }

    async fn claim_key(&self, node: &NodeId, key: &Key) -> Result<Option<Claim>, CoordinatorError> {
        let id = uuid(node);
        let rows = self
            .query(
                "claiming a key",
                &self.inner.sql.claim_key,
                &[&id, &key.as_str()],
            )
            .await?;
        if let Some(claim) = self.claims(&rows)?.pop() {
            return Ok(Some(claim));
        }
        let rows = self
            .query(
                "claiming a key",
                &self.inner.sql.claim_key_existing,
                &[&id, &key.as_str()],
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        if !r.get::<_, bool>(0) {
            return Err(self.expired(node));
        }
        match (r.get::<_, Option<i64>>(1), r.get::<_, Option<i64>>(2)) {
            (Some(e), Some(s)) => Ok(Some(Claim {
                key: key.clone(),
                epoch: epoch(e),
                trigger_seq: seq(s),
            })),
            _ => Ok(None),
        }
    }

    async fn release(
        &self,
        node: &NodeId,
        key: &Key,
        e: Epoch,
        how: Release,
    ) -> Result<Released, CoordinatorError> {
        let id = uuid(node);
        let ep = e.0 as i64;
        let sql = &self.inner.sql;
        match how {
            Release::Complete { observed_seq } => {
                let observed = observed_seq.0 as i64;
                let rows = self
                    .query(
                        "completing",
                        &sql.complete,
                        &[&key.as_str(), &id, &ep, &observed],
                    )
                    .await?;
                let r = rows.first().ok_or_else(|| Self::fenced(node, key, e))?;
                if r.get::<_, bool>(1) {
                    Ok(Released::Retired)
                } else {
                    Ok(Released::Retriggered { seq: seq(r.get(0)) })
                }
            }
            Release::Continue { avoid_for } => {
                let rows = self
                    .query(
                        "releasing",
                        &sql.release_continue,
                        &[
                            &key.as_str(),
                            &id,
                            &ep,
                            &micros(avoid_for),
                            &self.inner.shared_channel,
                        ],
                    )
                    .await?;
                let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
                if n == 0 {
                    return Err(Self::fenced(node, key, e));
                }
                Ok(Released::Released)
            }
            Release::Park {
                error,
                observed_seq,
            } => {
                let observed = observed_seq.0 as i64;
                let rows = self
                    .query(
                        "parking",
                        &sql.park,
                        &[&key.as_str(), &id, &ep, &error, &observed],
                    )
                    .await?;
                let r = rows.first().ok_or_else(|| Self::fenced(node, key, e))?;
                if r.get::<_, bool>(1) {
                    Ok(Released::Released)
                } else {
                    Ok(Released::Retriggered { seq: seq(r.get(0)) })
                }
            }
            Release::Sleep {
                observed_seq,
                until,
            } => {
                let observed = observed_seq.0 as i64;
                // `At` is turned into a delay by this machine's clock at the call; the due
                // time itself is then kept on the database clock.
                let (delay, _) = until.resolve(std::time::SystemTime::now());
                let rows = self
                    .query(
                        "requeueing",
                        &sql.sleep,
                        &[
                            &key.as_str(),
                            &id,
                            &ep,
                            &observed,
                            &micros(delay),
                            &self.inner.shared_channel,
                        ],
                    )
                    .await?;
                let r = rows.first().ok_or_else(|| Self::fenced(node, key, e))?;
                if r.get::<_, bool>(1) {
                    Ok(Released::Released)
                } else {
                    Ok(Released::Retriggered { seq: seq(r.get(0)) })
                }
            }
            other => Err(CoordinatorError::backend(
                self.endpoint().backend(),
                format!("unsupported release {other:?}"),
                None,
            )),
        }
    }

    async fn next_wake(&self) -> Result<Option<Duration>, CoordinatorError> {
        let rows = self
            .query("finding the next wake-up", &self.inner.sql.next_wake, &[])
            .await?;
        let micros: Option<i64> = rows.first().and_then(|r| r.get(0));
        Ok(micros.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))))
    }

    async fn owned(&self, node: &NodeId) -> Result<Vec<Claim>, CoordinatorError> {
        let rows = self
            .query("listing owned keys", &self.inner.sql.owned, &[&uuid(node)])
            .await?;
        if rows.is_empty() && !self.is_alive(node).await? {
            return Err(self.expired(node));
        }
        self.claims(&rows)
    }

    async fn load_state(&self, key: &Key) -> Result<Option<Bytes>, CoordinatorError> {
        let rows = self
            .query(
                "loading state",
                &self.inner.sql.load_state,
                &[&key.as_str()],
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.get::<_, Option<Vec<u8>>>(0))
            .map(Bytes::from))
    }

    async fn save_state(
        &self,
        node: &NodeId,
        key: &Key,
        e: Epoch,
        state: Bytes,
    ) -> Result<(), CoordinatorError> {
        let max = self.inner.config.max_state_bytes;
        if state.len() > max {
            return Err(CoordinatorError::StateTooLarge {
                key: key.clone(),
                size: state.len(),
                max,
            });
        }
        let n = self
            .execute(
                "saving state",
                &self.inner.sql.save_state,
                &[&key.as_str(), &uuid(node), &(e.0 as i64), &&state[..]],
            )
            .await?;
        if n == 0 {
            return Err(Self::fenced(node, key, e));
        }
        Ok(())
    }

    async fn key_info(&self, key: &Key) -> Result<Option<KeyInfo>, CoordinatorError> {
        let rows = self
            .query("reading a key", &self.inner.sql.key_info, &[&key.as_str()])
            .await?;
        rows.first().map(|r| self.key_info_row(r)).transpose()
    }

    async fn inspect(&self) -> Result<ClusterSnapshot, CoordinatorError> {
        let nodes = self
            .query("listing nodes", &self.inner.sql.all_nodes, &[])
            .await?
            .iter()
            .map(|r| NodeSnapshot {
                id: node_id(r.get(0)),
                name: r.get(1),
                alive: r.get(2),
            })
            .collect();
        let keys = self
            .query("listing keys", &self.inner.sql.all_keys, &[])
            .await?
            .iter()
            .map(|r| self.key_info_row(r))
            .collect::<Result<_, _>>()?;
        Ok(ClusterSnapshot { nodes, keys })
    }
}
