//! One dedicated listening connection per node.
//!
//! Pooled connections never see notifications, so each node gets its own connection that
//! `LISTEN`s on the node's channel (triggers for keys it owns, lost ownership) and on the
//! deployment's shared channel (keys became claimable). Notifications are hints: after a
//! reconnect the listener `LISTEN`s first and only then emits `Resync`, so anything that
//! happened while it was away is found by the engine's rescan.

use std::time::Duration;

use keyloop_core::{CoordinatorEvent, EventSink, Key, NodeId, TriggerSeq};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, Notification};

use crate::tls::Connector;

/// Prefix of trigger payloads on a node channel: `T<seq>:<key>`.
pub(crate) const TRIGGER_PREFIX: char = 'T';
/// Payload on a node channel meaning "you lost every key".
pub(crate) const LOST_ALL: &str = "L";

/// The channel on which `node` hears about its keys.
pub(crate) fn node_channel(node: &NodeId) -> String {
    // NodeId displays as 32 lowercase hex digits: a valid, case-stable identifier.
    format!("kl_{node}")
}

/// A running listener; dropping it stops the task and closes its connection.
pub(crate) struct Listener {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

struct Channels {
    node: String,
    shared: String,
}

/// Connects and `LISTEN`s (so errors reach `join`), then keeps the connection alive in a
/// task, reconnecting with backoff.
pub(crate) async fn start(
    connector: Connector,
    pg: Config,
    node: NodeId,
    shared_channel: String,
    sink: EventSink,
) -> Result<Listener, tokio_postgres::Error> {
    let mut pg = pg;
    pg.application_name(format!("keyloop-listener-{node}"));
    let channels = Channels {
        node: node_channel(&node),
        shared: shared_channel,
    };
    let first = connect(&connector, &pg, &channels).await?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(run(connector, pg, channels, sink, first, stop_rx));
    Ok(Listener {
        stop: Some(stop_tx),
        task,
    })
}

type Connected = (Client, mpsc::UnboundedReceiver<Notification>);

async fn connect(
    connector: &Connector,
    pg: &Config,
    channels: &Channels,
) -> Result<Connected, tokio_postgres::Error> {
    let (client, rx) = connector.connect_listening(pg).await?;
    client
        .batch_execute(&format!(
            "LISTEN \"{}\"; LISTEN \"{}\"",
            channels.node, channels.shared
        ))
        .await?;
    Ok((client, rx))
}

async fn run(
    connector: Connector,
    pg: Config,
    channels: Channels,
    sink: EventSink,
    first: Connected,
    mut stop: oneshot::Receiver<()>,
) {
    let (mut client, mut rx) = first;
    loop {
        loop {
            tokio::select! {
                _ = &mut stop => return,
                n = rx.recv() => match n {
                    Some(n) => deliver(&channels, &sink, &n),
                    None => break,
                },
            }
        }
        drop(client);
        tracing::warn!(channel = %channels.node, "keyloop listener connection lost; reconnecting");
        let mut delay = Duration::from_millis(50);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                r = connect(&connector, &pg, &channels) => match r {
                    Ok(c) => {
                        (client, rx) = c;
                        break;
                    }
                    Err(e) => tracing::debug!(error = %crate::error::describe(&e), "keyloop listener reconnect failed"),
                },
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        tracing::info!(channel = %channels.node, "keyloop listener reconnected; resyncing");
        // LISTEN has committed: whatever was missed is now found by rereading the tables.
        sink.send(CoordinatorEvent::Resync);
        sink.send(CoordinatorEvent::KeysAvailable);
    }
}

fn deliver(channels: &Channels, sink: &EventSink, n: &Notification) {
    if n.channel() == channels.shared {
        sink.send(CoordinatorEvent::KeysAvailable);
        return;
    }
    if n.channel() != channels.node {
        return;
    }
    match parse(n.payload()) {
        Some(event) => sink.send(event),
        None => {
            // Unknown payload (a newer writer?): fall back to rereading everything.
            tracing::warn!(payload = n.payload(), "unexpected keyloop notification");
            sink.send(CoordinatorEvent::Resync);
        }
    }
}

fn parse(payload: &str) -> Option<CoordinatorEvent> {
    if payload == LOST_ALL {
        return Some(CoordinatorEvent::OwnershipLost { key: None });
    }
    let rest = payload.strip_prefix(TRIGGER_PREFIX)?;
    let (seq, key) = rest.split_once(':')?;
    let seq = seq.parse().ok()?;
    let key = Key::new(key).ok()?;
    Some(CoordinatorEvent::Triggered {
        key,
        seq: TriggerSeq(seq),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse("T42:vm/1:x"),
            Some(CoordinatorEvent::Triggered {
                key: Key::new("vm/1:x").unwrap(),
                seq: TriggerSeq(42)
            })
        );
        assert_eq!(
            parse("L"),
            Some(CoordinatorEvent::OwnershipLost { key: None })
        );
        assert_eq!(parse("T:x"), None);
        assert_eq!(parse("T1:"), None);
        assert_eq!(parse("X"), None);
    }

    #[test]
    fn node_channel_fits_an_identifier() {
        let c = node_channel(&NodeId::random());
        assert!(c.len() <= 63);
        assert!(
            c.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
    }
}
