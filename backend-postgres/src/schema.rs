//! keyloop's tables and their migrations.
//!
//! Migrations are embedded SQL applied in one transaction under a transaction-scoped
//! advisory lock, so nodes starting together do not race, and the lock is safe behind
//! transaction-pooling proxies. `{s}` in the SQL is replaced by the quoted schema name.

use tokio_postgres::Client;

use crate::PostgresError;
use crate::error::Endpoint;

/// Migration `i` brings the schema from version `i` to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    r#"
    -- Fencing tokens and trigger sequences come from global sequences: they only grow,
    -- also when a key is retired (its row deleted) and registered again.
    CREATE SEQUENCE {s}.epoch_seq;
    CREATE SEQUENCE {s}.trigger_seq;

    CREATE TABLE {s}.nodes (
        node_id    uuid PRIMARY KEY,
        name       text NOT NULL,
        ttl_us     bigint NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        -- Only the database clock decides expiry: expires_at is set and compared with now().
        expires_at timestamptz NOT NULL
    );

    CREATE TABLE {s}.keys (
        -- "C" collation: byte order, the order of Rust strings.
        key         text COLLATE "C" PRIMARY KEY,
        owner_node  uuid REFERENCES {s}.nodes (node_id) ON DELETE SET NULL,
        epoch       bigint,
        trigger_seq bigint NOT NULL,
        state       bytea,
        parked      text,
        avoid_node  uuid,
        avoid_until timestamptz,
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX keys_owner_idx ON {s}.keys (owner_node);
    -- Claims of unowned keys walk this index in key order and stop after the batch.
    CREATE INDEX keys_claimable_idx ON {s}.keys (key) WHERE owner_node IS NULL AND parked IS NULL;
    "#,
    // Version 2: durable wake-ups. Sleeping keys leave the claimable index (claims of
    // ready keys never walk past them) and get their own, ordered by due time.
    r#"
    ALTER TABLE {s}.keys ADD COLUMN wake_at timestamptz;
    DROP INDEX {s}.keys_claimable_idx;
    CREATE INDEX keys_claimable_idx ON {s}.keys (key)
        WHERE owner_node IS NULL AND parked IS NULL AND wake_at IS NULL;
    CREATE INDEX keys_wake_idx ON {s}.keys (wake_at)
        WHERE owner_node IS NULL AND parked IS NULL AND wake_at IS NOT NULL;
    "#,
];

/// The schema version this code writes.
pub(crate) const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock key for migrating `schema` (FNV-1a of a prefix and the name, so
/// deployments in different schemas do not wait for each other).
fn lock_key(schema: &str) -> i64 {
    fnv1a(format!("keyloop-migrate:{schema}").as_bytes()) as i64
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Creates or upgrades the schema. A database schema newer than this code is an error and
/// nothing is changed (the transaction is rolled back).
pub(crate) async fn migrate(
    client: &mut Client,
    schema: &str,
    endpoint: &Endpoint,
) -> Result<(), PostgresError> {
    let db = |e| endpoint.connect_error("migrating the schema", e);
    let q = quote(schema);
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(schema)])
        .await
        .map_err(db)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {q};
         CREATE TABLE IF NOT EXISTS {q}.schema_version (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(db)?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {q}.schema_version"),
            &[],
        )
        .await
        .map_err(db)?;
    let found: i32 = row.get(0);
    if found > SCHEMA_VERSION {
        tx.rollback().await.map_err(db)?;
        return Err(PostgresError::SchemaTooNew {
            schema: schema.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(&sql.replace("{s}", &q))
            .await
            .map_err(db)?;
        let version = i as i32 + 1;
        tx.execute(
            &format!("INSERT INTO {q}.schema_version (version) VALUES ($1)"),
            &[&version],
        )
        .await
        .map_err(db)?;
        tracing::info!(schema, version, "applied keyloop schema migration");
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}

/// Quotes an identifier (already validated as lowercase letters, digits and `_`).
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}
