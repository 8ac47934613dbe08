//! `fleetctl fd-forward SOCKET`: copies stdin to a unix socket and the
//! socket to stdout. Internal: `--tunnel` runs it on the bastion to reach
//! `/var/run/fleet.sock` over an SSH session's stdin and stdout.

use anyhow::Context;
use tokio::io::AsyncWriteExt;

use super::Exit;

/// Proxy stdin and stdout to a unix domain socket.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The unix socket.
    #[arg(value_name = "SOCKET")]
    pub socket: String,
}

/// Copies both ways until the socket side ends.
pub async fn run(args: &Args) -> anyhow::Result<Exit> {
    let sock = tokio::net::UnixStream::connect(&args.socket)
        .await
        .with_context(|| format!("unable to connect to {}", args.socket))?;
    let (mut from_sock, mut to_sock) = sock.into_split();
    let upstream = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let copied = tokio::io::copy(&mut stdin, &mut to_sock).await;
        // Half-close, so the server sees the end of the request stream.
        let _ = to_sock.shutdown().await;
        copied
    });
    let mut stdout = tokio::io::stdout();
    tokio::io::copy(&mut from_sock, &mut stdout)
        .await
        .context("copying from the socket")?;
    stdout.flush().await?;
    // The answer is complete; stdin may stay open forever, so don't wait.
    upstream.abort();
    Ok(Exit::Success)
}
