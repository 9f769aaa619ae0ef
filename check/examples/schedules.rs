//! Runs seeded fault schedules against keyloop engines and prints what the history checker
//! found, with the machine's load beside the figures.
//!
//! ```text
//! cargo run -p keyloop-check --example schedules -- --schedules 40 --seed 0 --backend memory
//! ```

#[path = "../tests/common/schedule.rs"]
mod schedule;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use keyloop_check::ViolationKind;
use schedule::{Backend, Options, run_schedules, save_history};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Memory,
    Sled,
}

/// Seeded fault schedules with the history checker.
#[derive(Debug, Parser)]
struct Args {
    /// How many schedules to run.
    #[arg(long, default_value_t = 20)]
    schedules: u64,
    /// The first seed (schedule i runs seed + i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Memory)]
    backend: BackendArg,
    /// Operations per schedule.
    #[arg(long, default_value_t = 40)]
    ops: usize,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unavailable".to_string())
}

fn main() {
    let args = Args::parse();
    let backend = match args.backend {
        BackendArg::Memory => Backend::Memory,
        BackendArg::Sled => Backend::Sled,
    };
    let options = Options {
        backend,
        ops: args.ops,
        ..Options::default()
    };
    let load_before = loadavg();
    let started = Instant::now();
    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut violations: BTreeMap<ViolationKind, usize> =
        ViolationKind::ALL.iter().map(|&k| (k, 0)).collect();
    let mut convergence: Vec<Duration> = Vec::new();
    let (mut runs, mut ops, mut keys, mut unconverged) = (0, 0, 0, 0);
    let mut failing = Vec::new();
    run_schedules(args.seed, args.schedules, &options, |outcome| {
        runs += 1;
        ops += outcome.ops;
        keys += outcome.keys;
        for (fault, n) in &outcome.faults {
            *faults.entry(fault).or_default() += n;
        }
        for (kind, n) in outcome.report.by_kind() {
            *violations.entry(kind).or_default() += n;
        }
        match outcome.convergence {
            Some(d) => convergence.push(d),
            None => unconverged += 1,
        }
        if !outcome.report.is_ok() {
            let path = save_history(&outcome, backend.name());
            println!(
                "seed {} has violations (history in {}):\n{}",
                outcome.seed,
                path.display(),
                outcome.report
            );
            failing.push(outcome.seed);
        }
        true
    });
    convergence.sort();
    let median = convergence.get(convergence.len() / 2).copied();
    let max = convergence.last().copied();
    println!("backend:        {}", backend.name());
    println!("runtime:        tokio multi-thread, 4 workers, real time");
    println!(
        "schedules:      {runs} (seeds {}..{}) in {:.1?}",
        args.seed,
        args.seed + args.schedules,
        started.elapsed()
    );
    println!("operations:     {ops}");
    println!("keys:           {keys} ({} per schedule)", options.keys);
    println!("faults by kind:");
    for (fault, n) in &faults {
        println!("  {fault:<26} {n}");
    }
    println!("violations by kind:");
    for (kind, n) in &violations {
        println!("  {:<26} {n}", kind.name());
    }
    println!(
        "convergence after faults stop: median {median:.1?}, max {max:.1?}, not converged {unconverged}"
    );
    println!("failing seeds:  {failing:?}");
    println!("loadavg before: {load_before}");
    println!("loadavg after:  {}", loadavg());
}
