//! The [`CheckReport`] the checker returns.

use std::collections::BTreeMap;
use std::fmt;

use crate::{Violation, ViolationKind};

/// What [`check`](crate::check) found in a history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Keys in the history.
    pub keys: usize,
    /// Events in the history.
    pub events: usize,
    /// Acknowledged triggers judged for G3.
    pub triggers_judged: usize,
    /// Acknowledged triggers whose call was not recorded, so G3 could not judge them.
    pub triggers_unjudged: usize,
    /// Keys with a final `Settled` event, judged for convergence.
    pub keys_settled: usize,
    /// Every violation found, grouped by key in key order.
    pub violations: Vec<Violation>,
}

impl CheckReport {
    /// Whether no violation was found.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many violations of `kind` were found.
    pub fn count(&self, kind: ViolationKind) -> usize {
        self.violations.iter().filter(|v| v.kind == kind).count()
    }

    /// Violations per kind (every kind listed, zeros included).
    pub fn by_kind(&self) -> BTreeMap<ViolationKind, usize> {
        ViolationKind::ALL
            .iter()
            .map(|&kind| (kind, self.count(kind)))
            .collect()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} keys, {} events, {} triggers judged ({} unjudged), {} keys settled: {} violations",
            self.keys,
            self.events,
            self.triggers_judged,
            self.triggers_unjudged,
            self.keys_settled,
            self.violations.len()
        )?;
        for violation in &self.violations {
            write!(f, "{violation}")?;
        }
        Ok(())
    }
}
