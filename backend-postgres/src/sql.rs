//! The statements the coordinator runs, built once per schema.
//!
//! Conventions: `$node` parameters are `uuid`, keys `text`, epochs and sequences `bigint`.
//! A node is live while `expires_at > now()`; `now()` is the transaction's start on the
//! database clock, the only clock that decides expiry. Every statement is one short
//! autocommit transaction unless noted.

use crate::schema::quote;

pub(crate) struct Sql {
    pub(crate) join: String,
    pub(crate) reap: String,
    pub(crate) heartbeat: String,
    pub(crate) trigger: String,
    pub(crate) claim_unowned: String,
    pub(crate) claim_orphaned: String,
    pub(crate) claim_due: String,
    pub(crate) sleep: String,
    pub(crate) next_wake: String,
    pub(crate) alive: String,
    pub(crate) claim_key: String,
    pub(crate) claim_key_existing: String,
    pub(crate) complete: String,
    pub(crate) release_continue: String,
    pub(crate) park: String,
    pub(crate) owned: String,
    pub(crate) load_state: String,
    pub(crate) save_state: String,
    pub(crate) key_info: String,
    pub(crate) all_keys: String,
    pub(crate) all_nodes: String,
    pub(crate) leave_release: String,
    pub(crate) leave_delete: String,
    pub(crate) notify_shared: String,
}

impl Sql {
    pub(crate) fn new(schema: &str) -> Sql {
        let s = quote(schema);
        // A live node: its lease has not expired on the database clock.
        let me_live =
            format!("EXISTS (SELECT 1 FROM {s}.nodes WHERE node_id = $2 AND expires_at > now())");
        let live_owner = format!(
            "(SELECT n.node_id FROM {s}.nodes n WHERE n.node_id = k.owner_node AND n.expires_at > now())"
        );
        let owner_channel = "'kl_' || replace(o.live_owner::text, '-', '')";
        Sql {
            join: format!(
                "INSERT INTO {s}.nodes (node_id, name, ttl_us, expires_at)
                 VALUES ($1::uuid, $2::text, $3::bigint, now() + $3::bigint * interval '1 microsecond')"
            ),
            // Node rows long dead own nothing useful; deleting them frees their keys
            // (ON DELETE SET NULL) and keeps the orphan scan short.
            reap: format!("DELETE FROM {s}.nodes WHERE expires_at < now() - interval '1 hour'"),
            heartbeat: format!(
                "UPDATE {s}.nodes SET expires_at = now() + ttl_us * interval '1 microsecond'
                 WHERE node_id = $1 AND expires_at > now()
                 RETURNING ttl_us"
            ),
            // Register or bump, then notify the live owner or, for an unowned key, every
            // node, in the same transaction: whichever of trigger and claim commits second
            // sees the other.
            //
            // The bump draws its number in the DO UPDATE, which PostgreSQL evaluates after
            // it has locked the conflicting row: racing triggers on one key then draw in
            // commit order and the sequence never goes down. (`EXCLUDED.trigger_seq`, drawn
            // in VALUES before the lock, let an earlier draw commit later and lower it.)
            trigger: format!(
                "WITH up AS (
                    INSERT INTO {s}.keys AS k (key, trigger_seq)
                    VALUES ($1::text, nextval('{s}.trigger_seq'))
                    ON CONFLICT (key) DO UPDATE
                        SET trigger_seq = nextval('{s}.trigger_seq'), parked = NULL,
                            wake_at = NULL, updated_at = now()
                    RETURNING k.trigger_seq, k.owner_node, (k.xmax = 0) AS inserted
                 ), o AS (
                    SELECT up.trigger_seq, up.inserted,
                        (SELECT n.node_id FROM {s}.nodes n
                         WHERE n.node_id = up.owner_node AND n.expires_at > now()) AS live_owner
                    FROM up
                 ), note AS (
                    SELECT CASE WHEN o.live_owner IS NULL THEN pg_notify($2::text, '')
                        ELSE pg_notify({owner_channel}, 'T' || o.trigger_seq || ':' || $1::text)
                        END
                    FROM o
                 )
                 SELECT o.trigger_seq, o.live_owner, o.inserted, (SELECT count(*) FROM note)
                 FROM o"
            ),
            // Unowned keys, in key order through the partial index. SKIP LOCKED: a row
            // locked by a concurrent claimer is theirs.
            claim_unowned: format!(
                "WITH cand AS (
                    SELECT key FROM {s}.keys
                    WHERE owner_node IS NULL AND parked IS NULL AND wake_at IS NULL
                      AND (avoid_node IS NULL OR avoid_node <> $1 OR avoid_until <= now())
                      AND EXISTS (SELECT 1 FROM {s}.nodes WHERE node_id = $1 AND expires_at > now())
                    ORDER BY key
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED
                 )
                 UPDATE {s}.keys k
                 SET owner_node = $1, epoch = nextval('{s}.epoch_seq'),
                     avoid_node = NULL, avoid_until = NULL, updated_at = now()
                 FROM cand WHERE k.key = cand.key
                 RETURNING k.key, k.epoch, k.trigger_seq"
            ),
            // Keys whose owner's lease expired. The previous owners are told they lost
            // everything (they may be stalled rather than dead).
            claim_orphaned: format!(
                "WITH cand AS (
                    SELECT k.key, k.owner_node AS prev FROM {s}.keys k
                    WHERE k.owner_node IN (SELECT node_id FROM {s}.nodes WHERE expires_at <= now())
                      AND k.parked IS NULL
                      AND EXISTS (SELECT 1 FROM {s}.nodes WHERE node_id = $1 AND expires_at > now())
                    LIMIT $2
                    FOR UPDATE OF k SKIP LOCKED
                 ), up AS (
                    UPDATE {s}.keys k
                    SET owner_node = $1, epoch = nextval('{s}.epoch_seq'),
                        avoid_node = NULL, avoid_until = NULL, updated_at = now()
                    FROM cand WHERE k.key = cand.key
                    RETURNING k.key, k.epoch, k.trigger_seq, cand.prev
                 ), note AS (
                    SELECT pg_notify('kl_' || replace(d.prev::text, '-', ''), 'L')
                    FROM (SELECT DISTINCT prev FROM up) d
                 )
                 SELECT key, epoch, trigger_seq, (SELECT count(*) FROM note) FROM up"
            ),
            // Sleeping keys that fell due, earliest first through the wake-up index.
            claim_due: format!(
                "WITH cand AS (
                    SELECT key FROM {s}.keys
                    WHERE owner_node IS NULL AND parked IS NULL AND wake_at <= now()
                      AND EXISTS (SELECT 1 FROM {s}.nodes WHERE node_id = $1 AND expires_at > now())
                    ORDER BY wake_at
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED
                 )
                 UPDATE {s}.keys k
                 SET owner_node = $1, epoch = nextval('{s}.epoch_seq'), wake_at = NULL,
                     avoid_node = NULL, avoid_until = NULL, updated_at = now()
                 FROM cand WHERE k.key = cand.key
                 RETURNING k.key, k.epoch, k.trigger_seq"
            ),
            // Like `park`: lock the row, then sleep only if no trigger arrived that the run
            // did not observe. The due time is on the database clock. Every node is told,
            // so that each schedules a claim round for the earliest wake-up.
            sleep: format!(
                "WITH t AS (
                    SELECT key, trigger_seq FROM {s}.keys
                    WHERE key = $1 AND owner_node = $2 AND epoch = $3 AND {me_live}
                    FOR UPDATE
                 ), p AS (
                    UPDATE {s}.keys k SET owner_node = NULL,
                        wake_at = now() + $5::bigint * interval '1 microsecond', updated_at = now()
                    FROM t WHERE k.key = t.key AND t.trigger_seq <= $4
                    RETURNING k.key
                 ), note AS (SELECT pg_notify($6::text, '') FROM p)
                 SELECT t.trigger_seq, EXISTS (SELECT 1 FROM p), (SELECT count(*) FROM note) FROM t"
            ),
            // Microseconds until the earliest wake-up (min over the wake-up index).
            next_wake: format!(
                "SELECT (extract(epoch FROM (min(wake_at) - now())) * 1000000)::bigint
                 FROM {s}.keys
                 WHERE owner_node IS NULL AND parked IS NULL AND wake_at IS NOT NULL"
            ),
            alive: format!(
                "SELECT coalesce((SELECT expires_at > now() FROM {s}.nodes WHERE node_id = $1), false)"
            ),
            claim_key: format!(
                "UPDATE {s}.keys k
                 SET owner_node = $1, epoch = nextval('{s}.epoch_seq'), wake_at = NULL,
                     avoid_node = NULL, avoid_until = NULL, updated_at = now()
                 WHERE k.key = $2 AND k.parked IS NULL AND (k.wake_at IS NULL OR k.wake_at <= now())
                   AND (k.owner_node IS NULL OR NOT EXISTS (
                        SELECT 1 FROM {s}.nodes n
                        WHERE n.node_id = k.owner_node AND n.expires_at > now()))
                   AND (k.avoid_node IS NULL OR k.avoid_node <> $1 OR k.avoid_until <= now())
                   AND EXISTS (SELECT 1 FROM {s}.nodes WHERE node_id = $1 AND expires_at > now())
                 RETURNING k.key, k.epoch, k.trigger_seq"
            ),
            claim_key_existing: format!(
                "SELECT coalesce((SELECT expires_at > now() FROM {s}.nodes WHERE node_id = $1), false),
                        k.epoch, k.trigger_seq
                 FROM (SELECT 1) one
                 LEFT JOIN {s}.keys k ON k.key = $2 AND k.owner_node = $1"
            ),
            // Lock the row first so a concurrent trigger either commits before (we see its
            // sequence and keep the key) or waits and re-registers after the delete.
            complete: format!(
                "WITH t AS (
                    SELECT key, trigger_seq FROM {s}.keys
                    WHERE key = $1 AND owner_node = $2 AND epoch = $3 AND {me_live}
                    FOR UPDATE
                 ), d AS (
                    DELETE FROM {s}.keys k USING t
                    WHERE k.key = t.key AND t.trigger_seq <= $4
                    RETURNING k.key
                 )
                 SELECT t.trigger_seq, EXISTS (SELECT 1 FROM d) FROM t"
            ),
            release_continue: format!(
                "WITH up AS (
                    UPDATE {s}.keys
                    SET owner_node = NULL, avoid_node = $2,
                        avoid_until = now() + $4::bigint * interval '1 microsecond', updated_at = now()
                    WHERE key = $1 AND owner_node = $2 AND epoch = $3 AND {me_live}
                    RETURNING key
                 ), note AS (SELECT pg_notify($5::text, '') FROM up)
                 SELECT (SELECT count(*) FROM up), (SELECT count(*) FROM note)"
            ),
            // Like `complete`: lock the row, then park only if no trigger arrived that the
            // failing run did not observe (such a trigger resumes the key instead).
            park: format!(
                "WITH t AS (
                    SELECT key, trigger_seq FROM {s}.keys
                    WHERE key = $1 AND owner_node = $2 AND epoch = $3 AND {me_live}
                    FOR UPDATE
                 ), p AS (
                    UPDATE {s}.keys k SET owner_node = NULL, parked = $4, updated_at = now()
                    FROM t WHERE k.key = t.key AND t.trigger_seq <= $5
                    RETURNING k.key
                 )
                 SELECT t.trigger_seq, EXISTS (SELECT 1 FROM p) FROM t"
            ),
            owned: format!(
                "SELECT key, epoch, trigger_seq FROM {s}.keys
                 WHERE owner_node = $1
                   AND EXISTS (SELECT 1 FROM {s}.nodes WHERE node_id = $1 AND expires_at > now())
                 ORDER BY key"
            ),
            load_state: format!("SELECT state FROM {s}.keys WHERE key = $1"),
            save_state: format!(
                "UPDATE {s}.keys SET state = $4, updated_at = now()
                 WHERE key = $1 AND owner_node = $2 AND epoch = $3 AND {me_live}"
            ),
            key_info: format!(
                "SELECT k.key, {live_owner}, k.epoch, k.trigger_seq, k.parked, k.wake_at
                 FROM {s}.keys k WHERE k.key = $1"
            ),
            all_keys: format!(
                "SELECT k.key, {live_owner}, k.epoch, k.trigger_seq, k.parked, k.wake_at
                 FROM {s}.keys k ORDER BY k.key"
            ),
            all_nodes: format!(
                "SELECT node_id, name, expires_at > now() FROM {s}.nodes ORDER BY started_at, node_id"
            ),
            leave_release: format!(
                "UPDATE {s}.keys SET owner_node = NULL, updated_at = now() WHERE owner_node = $1"
            ),
            leave_delete: format!("DELETE FROM {s}.nodes WHERE node_id = $1"),
            notify_shared: "SELECT pg_notify($1::text, '')".to_owned(),
        }
    }
}
