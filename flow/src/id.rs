use std::fmt;
use std::sync::Arc;

use crate::BuildError;

/// A flow's name and version, written `name/vN` (e.g. `deploy/v1`).
///
/// Saved state carries it, so a state written by another flow, or by another version of this
/// flow, is rejected instead of being misread.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FlowId {
    name: Arc<str>,
    version: u32,
}

impl FlowId {
    /// A flow id; the name must be non-empty and free of control characters.
    pub fn new(name: impl AsRef<str>, version: u32) -> Result<FlowId, BuildError> {
        let name = name.as_ref();
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(BuildError::BadFlowName(name.to_owned()));
        }
        Ok(FlowId {
            name: name.into(),
            version,
        })
    }

    /// Parses the `name/vN` form produced by `Display`.
    pub fn parse(s: &str) -> Option<FlowId> {
        let (name, version) = s.rsplit_once("/v")?;
        let version = version.parse().ok()?;
        FlowId::new(name, version).ok()
    }

    /// The flow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The flow's version.
    pub fn version(&self) -> u32 {
        self.version
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/v{}", self.name, self.version)
    }
}

impl fmt::Debug for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlowId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_roundtrip() {
        let id = FlowId::new("deploy/web", 3).unwrap();
        assert_eq!(id.to_string(), "deploy/web/v3");
        assert_eq!(FlowId::parse("deploy/web/v3"), Some(id));
        assert_eq!(FlowId::parse("deploy"), None);
        assert_eq!(FlowId::parse("deploy/vx"), None);
        assert_eq!(FlowId::parse("/v1"), None);
    }

    #[test]
    fn bad_names_are_typed_errors() {
        assert!(matches!(
            FlowId::new("", 1),
            Err(BuildError::BadFlowName(_))
        ));
        assert!(matches!(
            FlowId::new("a\nb", 1),
            Err(BuildError::BadFlowName(_))
        ));
    }
}
