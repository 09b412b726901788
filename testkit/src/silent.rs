//! A listener that accepts TCP connections and never sends a byte: a stand-in for an
//! endpoint whose handshake (TLS, HBONE, PROXY-then-TLS) never completes, for connect
//! timeouts. (For a TCP connect that never completes, see [`crate::full_backlog`].)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;

/// Accepts connections on its address and holds them open, silent, until dropped.
pub struct SilentListener {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentListener {
    /// Binds `addr` and starts accepting.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                // Bounded: a test makes a handful of attempts.
                if held.len() < 64 {
                    held.push(conn);
                }
            }
        });
        Ok(Self {
            addr,
            accepted,
            task,
        })
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for SilentListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
