//! Medians and ratio lines.

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values[values.len() / 2]
}

pub(crate) fn spread(values: &[f64]) -> (f64, f64) {
    let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = values.iter().cloned().fold(0.0, f64::max);
    (min, max)
}

/// Prints one scenario line: subject, baseline and subject/baseline.
pub(crate) fn line(name: &str, unit: &str, subject: &mut [f64], baseline: &mut [f64]) -> f64 {
    let (smin, smax) = spread(subject);
    let (bmin, bmax) = spread(baseline);
    let s = median(subject);
    let b = median(baseline);
    let ratio = s / b;
    println!(
        "  {name:<34} keyloop {s:>12.0} {unit} [{smin:.0}..{smax:.0}]   baseline {b:>12.0} {unit} [{bmin:.0}..{bmax:.0}]   ratio {ratio:.2}x"
    );
    ratio
}

/// The machine's load averages (`/proc/loadavg`: 1, 5 and 15 minutes), printed beside the
/// figures because the machine is shared.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
