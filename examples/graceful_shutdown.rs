//! A small TCP echo server whose connections are sessions. Shutdown tells the accept loop and
//! every connection to stop; a request that is in flight is finished and answered within the
//! grace period, idle connections are closed.
//!
//! The example plays its own clients and asks for shutdown itself; in a real program SIGINT or
//! SIGTERM would (try Ctrl-C while it runs: [`Lifecycle::shutdown_on_signals`] is installed).
//!
//! Run with `cargo run --example graceful_shutdown`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use keyloop::supervisor::{BoxError, CancellationToken, Lifecycle, LifecycleError, TaskKind};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How long the server "works" on each request.
const WORK: Duration = Duration::from_millis(200);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_target(false)
        .init();

    let lifecycle = Lifecycle::new();
    lifecycle.shutdown_on_signals()?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("echo server listening on {addr}");
    let sessions = lifecycle.clone();
    lifecycle.service("accept", move |stop| accept_loop(listener, sessions, stop))?;

    // Three clients: each sends one request, then stays connected.
    let mut idle = Vec::new();
    for i in 1..=3 {
        let (mut lines, mut writer) = connect(addr).await?;
        let reply = request(&mut lines, &mut writer, &format!("hello from client {i}")).await?;
        println!("client {i} got: {reply}");
        idle.push(tokio::spawn(async move {
            // The server closes idle connections at shutdown.
            let end = lines.next_line().await?;
            drop(writer);
            Ok::<_, io::Error>(end.is_none())
        }));
    }

    // A fourth client sends a request and, while it is being worked on, shutdown is requested.
    let (mut lines, mut writer) = connect(addr).await?;
    writer.write_all(b"last words\n").await?;
    expect_line(&mut lines, "working").await?;
    println!("client 4: request in flight, requesting shutdown");
    lifecycle.request_shutdown();

    let main_task = lifecycle.shutdown_when_requested(Duration::from_secs(2));
    let in_flight = async {
        let reply = lines.next_line().await?;
        Ok::<_, io::Error>(reply)
    };
    let (report, reply) = tokio::join!(main_task, in_flight);
    let report = report?;
    let reply = reply?;
    println!("client 4 got, during shutdown: {reply:?}");

    for task in idle {
        if !task.await?? {
            return Err("an idle client was not disconnected".into());
        }
    }
    println!(
        "shutdown took {:?}: stopped services {:?}, sessions {:?}; abandoned {:?}",
        report.elapsed,
        report.stopped_names(TaskKind::Service),
        report.stopped_names(TaskKind::Session),
        report.abandoned,
    );
    if reply.as_deref() != Some("echo: last words") || !report.is_clean() {
        return Err(format!("unexpected shutdown: reply {reply:?}, report {report:?}").into());
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    lifecycle: Lifecycle,
    stop: CancellationToken,
) -> io::Result<()> {
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        match lifecycle.spawn_session(format!("conn {peer}"), move |stop| echo(socket, stop)) {
            Ok(()) => {}
            // Shutdown began between accept and registration: the connection is dropped.
            Err(LifecycleError::ShuttingDown) => return Ok(()),
            Err(e) => return Err(io::Error::other(e)),
        }
    }
}

/// Answers each line with `working`, then, after some work, `echo: <line>`. Stops between
/// requests once told to; a request already read is always answered.
async fn echo(socket: TcpStream, stop: CancellationToken) -> io::Result<()> {
    let (reader, mut writer) = socket.into_split();
    let mut lines = BufReader::new(reader).lines();
    loop {
        let line = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            line = lines.next_line() => line?,
        };
        let Some(line) = line else { return Ok(()) };
        writer.write_all(b"working\n").await?;
        tokio::time::sleep(WORK).await;
        writer
            .write_all(format!("echo: {line}\n").as_bytes())
            .await?;
    }
}

type Lines = tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>;

async fn connect(addr: SocketAddr) -> io::Result<(Lines, tokio::net::tcp::OwnedWriteHalf)> {
    let (reader, writer) = TcpStream::connect(addr).await?.into_split();
    Ok((BufReader::new(reader).lines(), writer))
}

async fn request(
    lines: &mut Lines,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    text: &str,
) -> io::Result<String> {
    writer.write_all(format!("{text}\n").as_bytes()).await?;
    expect_line(lines, "working").await?;
    lines
        .next_line()
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))
}

async fn expect_line(lines: &mut Lines, expected: &str) -> io::Result<()> {
    match lines.next_line().await? {
        Some(line) if line == expected => Ok(()),
        other => Err(io::Error::other(format!(
            "expected {expected:?}, got {other:?}"
        ))),
    }
}
