//! Cases a backend skips, each with its reason.

/// The reason `case` is skipped, if the backend skipped it.
pub fn skip_reason(skipped: &[(&'static str, &'static str)], case: &str) -> Option<&'static str> {
    skipped
        .iter()
        .find(|(name, _)| *name == case)
        .map(|(_, why)| *why)
}

/// Panics if a skipped name is not a case (a typo would silently skip nothing) or has no
/// reason.
pub fn check_skipped(skipped: &[(&str, &str)]) {
    for (name, why) in skipped {
        assert!(
            crate::CASES.contains(name),
            "skipped case {name:?} does not exist"
        );
        assert!(
            !why.trim().is_empty(),
            "skipped case {name:?} needs a reason"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_reason_finds_only_listed_cases() {
        let skipped = [("state_roundtrips", "no state")];
        assert_eq!(skip_reason(&skipped, "state_roundtrips"), Some("no state"));
        assert_eq!(skip_reason(&skipped, "triggered_key_runs"), None);
    }

    #[test]
    fn listed_cases_with_reasons_pass_the_check() {
        check_skipped(&[("state_roundtrips", "no state")]);
    }

    #[test]
    #[should_panic(expected = "does not exist")]
    fn a_misspelt_case_is_rejected() {
        check_skipped(&[("state_round_trips", "typo")]);
    }

    #[test]
    #[should_panic(expected = "needs a reason")]
    fn a_skip_without_reason_is_rejected() {
        check_skipped(&[("state_roundtrips", " ")]);
    }
}
