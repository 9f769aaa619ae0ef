use std::fmt;

/// Identifies one node (one [`Engine`](crate::Engine) incarnation).
///
/// Fresh and random for every start (and every re-join after a lost lease), never reused.
/// Displays as 32 lowercase hex digits, which every backend can use verbatim (PostgreSQL
/// channel names, Consul session names).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(u128);

impl NodeId {
    /// A new random node id.
    pub fn random() -> NodeId {
        NodeId(uuid::Uuid::new_v4().as_u128())
    }

    /// Rebuilds a node id from its numeric form (as stored by a backend).
    pub fn from_u128(value: u128) -> NodeId {
        NodeId(value)
    }

    /// The numeric form, for backends to store.
    pub fn as_u128(&self) -> u128 {
        self.0
    }

    /// Parses the 32-hex-digit form produced by `Display`.
    pub fn parse(s: &str) -> Option<NodeId> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(NodeId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:08x}…)", (self.0 >> 96) as u32)
    }
}

/// A node's identity as registered with the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's unique id.
    pub id: NodeId,
    /// A human-readable name (for logs and `inspect`); need not be unique.
    pub name: String,
}

/// The fencing token of one acquisition of a key.
///
/// Every acquisition of a key gets an epoch strictly greater than every earlier acquisition
/// of that key, across owners, retirements, and restarts of nodes and of the backend. Loops
/// can pass it to external systems to fence their own writes.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize, serde::Deserialize,
)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A key's trigger sequence: bumped by every trigger, never decreasing for a key (also
/// across retirement and re-registration).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Debug,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct TriggerSeq(pub u64);

impl fmt::Display for TriggerSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_display_roundtrips() {
        let id = NodeId::random();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(NodeId::parse(&s), Some(id));
        assert_eq!(NodeId::parse("zz"), None);
    }
}
