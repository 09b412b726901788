//! The floor under CPU per request at a fixed rate: a byte relay on the proxy's core
//! between the load generator and the destination (scenario `relay`).
//!
//! The client speaks HBONE to the destination as in `direct`, through the relay, which
//! copies bytes both ways on one thread (tokio, `copy_bidirectional`, `TCP_NODELAY`): no
//! TLS, no HTTP/2, no HTTP. What it costs per request is what the kernel and an async
//! runtime cost any proxy with this process structure (two reads, two writes, and the
//! wakeups between them, on a core that sleeps between requests), before any protocol
//! work. It runs as its own process (`waypoint-bench relay`, hidden) so its CPU is read
//! from `/proc` like the waypoint's and nginx's.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};

use clap::Args;
use tokio::net::{TcpListener, TcpStream};

/// `waypoint-bench relay`: relays every accepted connection to `--to`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Address to listen on; the bound address is printed on the first line of stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where each accepted connection is relayed.
    #[arg(long)]
    to: SocketAddr,
}

/// Serves until killed, on one thread.
pub fn serve(a: RelayArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(a.listen).await?;
        let mut out = std::io::stdout();
        writeln!(out, "{}", listener.local_addr()?)?;
        out.flush()?;
        loop {
            let (mut down, _) = listener.accept().await?;
            let to = a.to;
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    })
}

/// A running relay process; killed when dropped.
pub struct Relay {
    child: Child,
    /// Its listener.
    pub addr: SocketAddr,
}

impl Relay {
    /// Starts `exe relay --to to`, pinned to `core` with `taskset` when given.
    pub fn start(exe: &Path, core: Option<usize>, to: SocketAddr) -> anyhow::Result<Self> {
        let mut child = super::pinned(exe, core)
            .args(["--log-level", "error", "relay", "--to"])
            .arg(to.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        match line.trim().parse() {
            Ok(addr) => Ok(Self { child, addr }),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait()?;
                anyhow::bail!("the relay did not report its address ({status}): {line:?}")
            }
        }
    }

    /// CPU time, seconds.
    pub fn cpu_seconds(&self) -> f64 {
        super::cpu::cpu_seconds(self.child.id())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
