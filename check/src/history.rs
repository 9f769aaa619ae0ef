//! A [`History`]: the events of one or more recorders, in one order.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use keyloop_core::Key;

use crate::{Error, Event};

/// Events in the order the checker judges them: by timestamp, and for equal timestamps in
/// the order they were recorded (or merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    events: Vec<Event>,
}

impl History {
    /// A history of `events`, put in order by timestamp (a stable sort: events recorded
    /// with equal timestamps keep their order).
    pub fn from_events(mut events: Vec<Event>) -> History {
        events.sort_by_key(|e| e.at_ns);
        History { events }
    }

    /// Merges histories (of several processes, say) into one, ordered by timestamp; at
    /// equal timestamps, the events of earlier histories come first.
    pub fn merge(histories: impl IntoIterator<Item = History>) -> History {
        History::from_events(histories.into_iter().flat_map(|h| h.events).collect())
    }

    /// Every event, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The events of each key, in order.
    pub fn by_key(&self) -> BTreeMap<Key, Vec<Event>> {
        let mut keys: BTreeMap<Key, Vec<Event>> = BTreeMap::new();
        for event in &self.events {
            keys.entry(event.key.clone())
                .or_default()
                .push(event.clone());
        }
        keys
    }

    /// Writes the history as JSON lines, one event per line.
    pub fn write_jsonl(&self, mut out: impl Write) -> Result<(), Error> {
        for event in &self.events {
            serde_json::to_writer(&mut out, event).map_err(|source| Error::Encode { source })?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }

    /// Reads a history written as JSON lines (blank lines are skipped).
    pub fn read_jsonl(input: impl BufRead) -> Result<History, Error> {
        let mut events = Vec::new();
        for (index, line) in input.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let event = serde_json::from_str(&line).map_err(|source| Error::Decode {
                line: index + 1,
                source,
            })?;
            events.push(event);
        }
        Ok(History::from_events(events))
    }
}
