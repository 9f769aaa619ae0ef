//! Go-style duration strings (`10s`, `1.5s`, `500ms`, `1m0s`) as Consul reads and writes them.

use std::time::Duration;

/// Parses a Go `time.ParseDuration` string (unsigned).
pub(crate) fn parse(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * nanos_per;
    }
    Some(Duration::from_nanos(total.round() as u64))
}

/// Formats like Go's `Duration.String` for the values the emulator reports.
pub(crate) fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    if d < Duration::from_secs(1) {
        let ms = d.as_secs_f64() * 1e3;
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        return format!("{secs}s");
    }
    let whole = d.as_secs();
    let (h, m, s) = (
        whole / 3600,
        (whole % 3600) / 60,
        secs - (whole / 60 * 60) as f64,
    );
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else {
        format!("{m}m{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(parse("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse(""), None);
        assert_eq!(parse("10"), None);
        assert_eq!(parse("s"), None);
        assert_eq!(parse("3 days"), None);
    }

    #[test]
    fn formats_roundtrip() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(250),
            Duration::from_secs(10),
            Duration::from_millis(1500),
            Duration::from_secs(90),
            Duration::from_secs(86400),
        ] {
            assert_eq!(parse(&format(d)), Some(d), "{}", format(d));
        }
    }
}
