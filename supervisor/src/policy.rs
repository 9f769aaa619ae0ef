/// When a supervised service is started again after it ends.
///
/// The names follow Erlang/OTP, where these policies come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RestartPolicy {
    /// Always restarted, whether it failed, panicked or returned `Ok`. For services that must
    /// run for as long as the supervisor does (a heartbeat, an accept loop).
    #[default]
    Permanent,
    /// Restarted only when it fails or panics; returning `Ok` means its work is done.
    Transient,
    /// Never restarted; it runs once and its end, whatever it is, is only reported.
    Temporary,
}

impl RestartPolicy {
    /// Whether a service under this policy is restarted after ending cleanly (`clean`) or not.
    pub fn restarts_after(self, clean: bool) -> bool {
        match self {
            RestartPolicy::Permanent => true,
            RestartPolicy::Transient => !clean,
            RestartPolicy::Temporary => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_decide_restarts() {
        assert!(RestartPolicy::Permanent.restarts_after(true));
        assert!(RestartPolicy::Permanent.restarts_after(false));
        assert!(!RestartPolicy::Transient.restarts_after(true));
        assert!(RestartPolicy::Transient.restarts_after(false));
        assert!(!RestartPolicy::Temporary.restarts_after(true));
        assert!(!RestartPolicy::Temporary.restarts_after(false));
    }
}
