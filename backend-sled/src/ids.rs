//! Epochs and trigger sequences: one counter that never goes backwards, even after a crash.
//!
//! sled's `generate_id` promises this but does not keep it: when a process recovers and
//! then crashes before sled's next flush, the counter it persisted on recovery is lost and
//! the next process hands out ids already issued (seen in `tests/crash.rs` with batched
//! flushing). So ids are issued only below a *ceiling* that is already on disk: when the
//! counter reaches the ceiling, a new ceiling `BLOCK` higher is written and flushed before
//! any id above the old one is handed out. After any crash the next process starts at the
//! durable ceiling, above every id ever issued. The cost is one flush per `BLOCK` ids.

use std::sync::Mutex;

use crate::schema;

/// Ids reserved per flush of the ceiling.
const BLOCK: u64 = 100_000;

pub(crate) struct Ids {
    /// (next id to hand out, durable ceiling): ids are issued while `next < ceiling`.
    state: Mutex<(u64, u64)>,
}

impl Ids {
    /// Starts above the stored ceiling and above `floor` (the largest id found in the
    /// records), and makes the first block durable.
    pub(crate) fn open(db: &sled::Db, floor: u64) -> sled::Result<Ids> {
        let stored = read_ceiling(db)?;
        let next = stored.max(floor.saturating_add(1)).max(1);
        let ceiling = next.saturating_add(BLOCK);
        write_ceiling(db, ceiling)?;
        Ok(Ids {
            state: Mutex::new((next, ceiling)),
        })
    }

    /// The next id. Blocks for a flush once every `BLOCK` ids.
    pub(crate) fn next(&self, db: &sled::Db) -> sled::Result<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (next, ceiling) = *state;
        if next >= ceiling {
            let raised = ceiling.saturating_add(BLOCK);
            write_ceiling(db, raised)?;
            state.1 = raised;
        }
        state.0 = next.saturating_add(1);
        Ok(next)
    }
}

fn read_ceiling(db: &sled::Db) -> sled::Result<u64> {
    Ok(db
        .get(schema::ID_CEILING_KEY)?
        .and_then(|raw| <[u8; 8]>::try_from(raw.as_ref()).ok())
        .map_or(0, u64::from_be_bytes))
}

fn write_ceiling(db: &sled::Db, ceiling: u64) -> sled::Result<()> {
    db.insert(schema::ID_CEILING_KEY, &ceiling.to_be_bytes())?;
    db.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_the_ceiling_stays_ahead() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let ids = Ids::open(&db, 0).unwrap();
        let mut last = 0;
        for _ in 0..(BLOCK + 10) {
            let id = ids.next(&db).unwrap();
            assert!(id > last);
            last = id;
            assert!(
                read_ceiling(&db).unwrap() > id,
                "id {id} issued above the ceiling"
            );
        }
    }

    #[test]
    fn reopening_starts_above_every_issued_id_and_the_floor() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let ids = Ids::open(&db, 0).unwrap();
        let issued = (0..50).map(|_| ids.next(&db).unwrap()).max().unwrap();
        // A "crash": the in-memory counter is gone, only the durable ceiling is left.
        let again = Ids::open(&db, 0).unwrap();
        assert!(again.next(&db).unwrap() > issued);
        let floored = Ids::open(&db, u64::MAX / 2).unwrap();
        assert!(floored.next(&db).unwrap() > u64::MAX / 2);
    }
}
