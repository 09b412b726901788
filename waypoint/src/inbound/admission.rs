//! Admission to the HBONE listener, before any TLS work: a cap on downstream connections
//! (established plus handshaking) that sheds new ones at once instead of running out of
//! file descriptors, a cap on handshakes in progress that bounds the memory a flood of
//! half-open connections can take, and a TLS handshake timeout shorter than Pingora's
//! fixed 60 s.
//!
//! Both run in Pingora's pre-TLS callback. A handshake is timed by a watchdog task that
//! remembers the socket (descriptor and peer address); when the handshake completes,
//! [`Admission::established`] (called first thing by the connection handler) stops it.
//! At the deadline the watchdog shuts the socket down for reading and writing, which ends
//! the handshake with an error, but only if the descriptor still names the same peer: a
//! descriptor closed after a failed handshake and reused by another connection is left
//! alone. (Pingora closes failed handshakes itself; such a watchdog only counts until its
//! deadline, which makes the cap conservative.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, UniqueID};
use tokio::sync::oneshot;

use crate::state::Proxy;

/// Limits on the HBONE listener.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// Most downstream connections (handshaking or established); more are closed at once.
    pub max_connections: usize,
    /// Most connections in a TLS handshake at once; more are closed at once. Each holds
    /// its read buffer and TLS state, so this bounds what a flood of half-open connections
    /// costs in memory.
    pub max_handshakes: usize,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
}

type Key = (RawFd, SocketAddr);

/// The pre-TLS admission check of the HBONE listener.
pub struct Admission {
    proxy: Arc<Proxy>,
    limits: AdmissionLimits,
    handshaking: Arc<AtomicUsize>,
    pending: Arc<Mutex<HashMap<Key, oneshot::Sender<()>>>>,
}

impl Admission {
    /// The check for `proxy`'s listener.
    pub fn new(proxy: Arc<Proxy>, limits: AdmissionLimits) -> Self {
        Self {
            proxy,
            limits,
            handshaking: Arc::new(AtomicUsize::new(0)),
            pending: Arc::default(),
        }
    }

    /// Connections in a TLS handshake now (as counted by their watchdogs).
    pub fn handshaking(&self) -> usize {
        self.handshaking.load(Ordering::Relaxed)
    }

    /// Tells the watchdog of this connection that its handshake completed.
    pub fn established(&self, fd: RawFd, peer: Option<SocketAddr>) {
        let Some(peer) = peer else { return };
        let done = self
            .pending
            .lock()
            .expect("admission lock")
            .remove(&(fd, peer));
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// How often a handshaking connection's socket is checked for having gone away.
const GONE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs `f` on the socket behind descriptor `fd`, borrowed for that call only.
fn with_socket<R>(fd: RawFd, f: impl FnOnce(socket2::SockRef<'_>) -> R) -> R {
    use std::os::fd::BorrowedFd;
    // SAFETY: the descriptor is only used for one getpeername or shutdown call right away;
    // if it was closed meanwhile, that call fails (EBADF) and nothing else happens.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    f(socket2::SockRef::from(&borrowed))
}

/// The peer address of descriptor `fd` right now, if it is an IP socket.
fn peer_of(fd: RawFd) -> Option<SocketAddr> {
    with_socket(fd, |s| s.peer_addr().ok()?.as_socket())
}

#[async_trait]
impl PreTlsProcess for Admission {
    async fn process(&self, stream: &mut L4Stream) -> pingora_core::Result<()> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let handshaking = self.handshaking.load(Ordering::Relaxed);
        let open = handshaking + self.proxy.stats.hbone_connections.load(Ordering::Relaxed);
        let why = if open >= self.limits.max_connections {
            Some("too many downstream connections")
        } else if handshaking >= self.limits.max_handshakes {
            Some("too many TLS handshakes in progress")
        } else {
            None
        };
        if let Some(why) = why {
            self.proxy
                .stats
                .connections_shed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(open, handshaking, peer_addr = ?peer, why, "HBONE connection shed");
            return pingora_core::Error::e_explain(pingora_core::ErrorType::AcceptError, why);
        }
        let Some(peer) = peer else { return Ok(()) };
        let fd = stream.id();
        let (done, finished) = oneshot::channel();
        self.pending
            .lock()
            .expect("admission lock")
            .insert((fd, peer), done);
        self.handshaking.fetch_add(1, Ordering::Relaxed);
        let (handshaking, pending) = (self.handshaking.clone(), self.pending.clone());
        let timeout = self.limits.handshake_timeout;
        tokio::spawn(async move {
            // Done when the handshake completes, when the socket is gone (the client closed
            // it before or during the handshake, which then failed: it must not hold a slot
            // until the timeout, or connecting and closing at once would fill the cap), or
            // at the timeout.
            let gone = async {
                loop {
                    tokio::time::sleep(GONE_POLL).await;
                    if peer_of(fd) != Some(peer) {
                        return;
                    }
                }
            };
            let timed_out = tokio::select! {
                _ = finished => false,
                () = gone => false,
                () = tokio::time::sleep(timeout) => true,
            };
            handshaking.fetch_sub(1, Ordering::Relaxed);
            if !timed_out {
                pending.lock().expect("admission lock").remove(&(fd, peer));
                return;
            }
            let stale = pending.lock().expect("admission lock").remove(&(fd, peer));
            if stale.is_some() && peer_of(fd) == Some(peer) {
                tracing::info!(peer_addr = %peer, ?timeout, "TLS handshake timed out; closing");
                // The descriptor was just checked to be this connection's; shutdown neither
                // closes nor frees it.
                with_socket(fd, |s| {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Ok(())
    }
}
