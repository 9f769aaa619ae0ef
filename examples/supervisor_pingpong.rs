//! Two supervised services play ping-pong for a number of rounds, then stop.
//!
//! Every status change is printed by a listener; when both services have ended cleanly the
//! supervisor stops by itself (transient services are not restarted after a clean end).
//!
//! Run with `cargo run --example supervisor_pingpong`.

use std::sync::Arc;

use keyloop::supervisor::{
    BoxError, Service, ServiceContext, StatusChange, StopReason, Supervisor,
};
use tokio::sync::{Mutex, mpsc};

const ROUNDS: u32 = 5;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (to_pong, pong_inbox) = mpsc::channel::<u32>(1);
    let (to_ping, ping_inbox) = mpsc::channel::<u32>(1);
    // A service is a factory (a restart makes a fresh future), so each one shares its inbox
    // with its future runs instead of moving it into the first.
    let pong_inbox = Arc::new(Mutex::new(pong_inbox));
    let ping_inbox = Arc::new(Mutex::new(ping_inbox));

    let ping = Service::transient("ping", move |ctx: ServiceContext| {
        let to_pong = to_pong.clone();
        let inbox = ping_inbox.clone();
        async move {
            let mut inbox = inbox.lock().await;
            for round in 1..=ROUNDS {
                println!("ping {round}");
                to_pong.send(round).await?;
                tokio::select! {
                    reply = inbox.recv() => {
                        let reply = reply.ok_or("pong hung up")?;
                        if reply != round {
                            return Err(format!("pong answered {reply} to {round}").into());
                        }
                    }
                    _ = ctx.stopped() => return Ok(()),
                }
            }
            Ok::<(), BoxError>(())
        }
    });

    let pong = Service::transient("pong", move |ctx: ServiceContext| {
        let to_ping = to_ping.clone();
        let inbox = pong_inbox.clone();
        async move {
            let mut inbox = inbox.lock().await;
            loop {
                let round = tokio::select! {
                    round = inbox.recv() => round.ok_or("ping hung up")?,
                    _ = ctx.stopped() => return Ok(()),
                };
                println!("    pong {round}");
                to_ping.send(round).await?;
                if round == ROUNDS {
                    return Ok::<(), BoxError>(());
                }
            }
        }
    });

    let supervisor = Supervisor::builder()
        .listener(|change: &StatusChange| {
            println!("[status] {} is now {:?}", change.service, change.status);
        })
        .service(ping)
        .service(pong)
        .build()?;

    let report = supervisor.spawn().wait().await;
    println!("supervisor stopped: {:?}", report.reason);
    if report.reason != StopReason::AllDone {
        return Err(format!("unexpected stop: {:?}", report.reason).into());
    }
    Ok(())
}
