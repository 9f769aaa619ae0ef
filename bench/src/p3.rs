//! P3: resident memory per idle running loop, at 100k and 1M loops, each figure in a fresh
//! child process ([`crate::rss`]).

use crate::rss::{Flavor, Setup, measure};

pub(crate) fn run(sizes: &[usize]) {
    println!("P3 resident memory per idle running loop (fresh process per figure)");
    for &n in sizes {
        let subject = measure(Setup::KeyloopIdle, n, Flavor::MultiThread);
        let baseline = measure(Setup::BaselineIdle, n, Flavor::MultiThread);
        let total_mib = subject * n as f64 / (1024.0 * 1024.0);
        let ratio = subject / baseline;
        let big = n >= 1_000_000;
        let met = ratio <= 2.0 && (!big || total_mib < 2048.0);
        println!(
            "  P3 {n:>9} loops   keyloop {subject:>7.0} B/loop ({total_mib:.0} MiB)   baseline {baseline:>7.0} B/loop   ratio {ratio:.2}x (ceiling 2x{}: {})",
            if big { ", and under 2 GiB" } else { "" },
            if met { "met" } else { "NOT met" }
        );
    }
}
