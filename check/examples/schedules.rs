//! Runs seeded fault schedules against keyloop engines and prints what the history checker
//! found, with the machine's load beside the figures.
//!
//! ```text
//! cargo run -p keyloop-check --example schedules -- --schedules 40 --seed 0 --backend memory
//! # a soak: 32 schedules at a time (they mostly wait on timers) for 30 minutes
//! cargo run --release -p keyloop-check --example schedules -- --parallel 32 --minutes 30
//! ```
//!
//! With `--breakage <name>` (`TwoOwners`, `Engine(ResyncTrustsListing)`, … or a part of
//! one) the schedules run against a broken coordinator or engine, to survey how many
//! schedules catch it; `--history` writes every schedule's history, caught or not.

#[path = "../tests/common/schedule.rs"]
mod schedule;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use keyloop_check::ViolationKind;
use keyloop_conformance::Breakage;
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
    /// Schedules run at once, each on its own runtime and cluster (1 to 256).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    parallel: u64,
    /// Keep starting schedules until this many minutes have passed (a soak); `--schedules`
    /// is then ignored.
    #[arg(long)]
    minutes: Option<u64>,
    /// Run against a known breakage (its name as printed, or a unique part of it).
    #[arg(long)]
    breakage: Option<String>,
    /// Write every schedule's history to the temporary directory, not only failing ones.
    #[arg(long)]
    history: bool,
}

fn find_breakage(name: &str) -> Breakage {
    let mut all: Vec<Breakage> = Breakage::ALL.to_vec();
    all.extend(schedule::defect_breakages());
    let names: Vec<String> = all.iter().map(|b| format!("{b:?}")).collect();
    if let Some(i) = names.iter().position(|n| n == name) {
        return all[i];
    }
    let matching: Vec<usize> = (0..all.len())
        .filter(|&i| names[i].contains(name))
        .collect();
    match matching[..] {
        [i] => all[i],
        _ => panic!("--breakage {name:?} names none or several of {names:?}"),
    }
}

/// At most this many seeds a worker thread takes at a time with `--parallel`.
const CHUNK: u64 = 16;

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
    let breakage = args.breakage.as_deref().map(find_breakage);
    let options = Options {
        backend,
        ops: args.ops,
        breakage,
        // A broken engine may never converge: do not wait for it long.
        settle_timeout: Duration::from_secs(if breakage.is_some() { 3 } else { 5 }),
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
    let deadline = args.minutes.map(|m| started + Duration::from_secs(m * 60));
    let end = match deadline {
        Some(_) => u64::MAX,
        None => args.seed + args.schedules,
    };
    let mut aggregate = |outcome: schedule::Outcome| {
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
        if args.history || breakage.is_some() {
            println!(
                "seed {}: {}, faults {:?}, convergence {:?}, {} violations",
                outcome.seed,
                outcome.draw,
                outcome.faults,
                outcome.convergence,
                outcome.report.violations.len()
            );
        }
        if args.history && outcome.report.is_ok() {
            let path = save_history(&outcome, backend.name());
            println!(
                "seed {}: no violation (history in {})",
                outcome.seed,
                path.display()
            );
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
    };
    let chunk = match deadline {
        Some(_) => CHUNK,
        None => (args.schedules / args.parallel).clamp(1, CHUNK),
    };
    let next_seed = AtomicU64::new(args.seed);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..args.parallel {
            let tx = tx.clone();
            let (next_seed, options) = (&next_seed, &options);
            scope.spawn(move || {
                // Seeds in chunks, one runtime per chunk: a runtime shut down after every
                // schedule makes backends' background tasks die noisily in great numbers.
                let before_deadline = || deadline.is_none_or(|d| Instant::now() < d);
                while before_deadline() {
                    let first = next_seed.fetch_add(chunk, Ordering::Relaxed);
                    if first >= end {
                        return;
                    }
                    run_schedules(first, chunk.min(end - first), options, |outcome| {
                        let _ = tx.send(outcome);
                        before_deadline()
                    });
                }
            });
        }
        drop(tx);
        // Outcomes in the order they finish; failing seeds are sorted below.
        rx.iter().for_each(&mut aggregate);
    });
    convergence.sort();
    failing.sort();
    let median = convergence.get(convergence.len() / 2).copied();
    let max = convergence.last().copied();
    println!("backend:        {}", backend.name());
    if let Some(breakage) = breakage {
        println!("breakage:       {breakage:?}");
    }
    println!(
        "runtime:        tokio multi-thread, 6 workers, real time, one runtime per {chunk} schedules"
    );
    println!(
        "schedules:      {runs} (seeds from {}, {} at a time) in {:.1?}",
        args.seed,
        args.parallel,
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
