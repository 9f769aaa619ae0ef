//! P4: resident memory per sleeping key (a loop returned `RequeueAfter(1 h)`: the key is
//! stored by the backend with its wake-up and holds no task) next to the same number of
//! idle running loops (P3's method) and of tokio tasks sleeping in `tokio::time::sleep`,
//! each figure in a fresh child process ([`crate::rss`]), on both tokio runtimes.

use crate::rss::{Flavor, Setup, measure};

pub(crate) fn run(n: usize) {
    println!(
        "P4 resident memory per sleeping key vs idle running loop, {n} keys, memory backend (fresh process per figure)  loadavg {}",
        crate::report::loadavg()
    );
    for flavor in Flavor::BOTH {
        let sleeping = measure(Setup::KeyloopSleeping, n, flavor);
        let idle = measure(Setup::KeyloopIdle, n, flavor);
        let tokio_sleep = measure(Setup::TokioSleeping, n, flavor);
        let mib = |per_key: f64| per_key * n as f64 / (1024.0 * 1024.0);
        println!(
            "  P4 {:<15} keyloop sleeping {sleeping:>6.0} B/key ({:.0} MiB)   keyloop idle loop {idle:>6.0} B/key ({:.0} MiB)   ratio sleeping/idle {:.2}x   peer: tokio task in sleep(1 h) {tokio_sleep:>6.0} B/key, ratio sleeping/peer {:.2}x",
            flavor.name(),
            mib(sleeping),
            mib(idle),
            sleeping / idle,
            sleeping / tokio_sleep,
        );
    }
    println!("  P4 loadavg after: {}", crate::report::loadavg());
}
