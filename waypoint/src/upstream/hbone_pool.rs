//! Pooled HBONE connections to destination ztunnels.
//!
//! One mTLS HTTP/2 connection per (destination address, expected identity) carries many
//! CONNECT streams; another is opened when every connection is at the peer's stream limit.
//! Connections idle for [`IDLE_TIMEOUT`] are closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use filters::model::Identity;
use filters::ProxyError;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use hbone::tls::{client_config, CertStore};
use hbone::{settings, H2Stream, HBONE_PORT};

/// How long an HBONE connection without streams stays open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest an HBONE connect (TCP + TLS + HTTP/2) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Key = (IpAddr, Identity);

struct Conn {
    send: SendRequest<Bytes>,
    shared: Arc<ConnShared>,
}

struct ConnShared {
    active: AtomicUsize,
    closed: AtomicBool,
    /// Milliseconds since the pool's epoch when the last stream ended.
    idle_since: AtomicU64,
}

/// Decrements a connection's active-stream count when the tunnel ends.
struct StreamGuard {
    shared: Arc<ConnShared>,
    epoch: Instant,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.shared
            .idle_since
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The HBONE connection pool.
pub struct HbonePool {
    certs: Arc<CertStore>,
    conns: Mutex<HashMap<Key, Vec<Conn>, foldhash::fast::RandomState>>,
    connecting: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>, foldhash::fast::RandomState>>,
    epoch: Instant,
    port: u16,
    handshakes: AtomicU64,
}

impl HbonePool {
    /// An empty pool connecting to port 15008.
    pub fn new(certs: Arc<CertStore>) -> Self {
        Self {
            certs,
            conns: Mutex::default(),
            connecting: Mutex::default(),
            epoch: Instant::now(),
            port: HBONE_PORT,
            handshakes: AtomicU64::new(0),
        }
    }

    /// The port of the destination ztunnels' HBONE listener.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// TLS handshakes performed since start.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Open pooled connections.
    pub fn open_connections(&self) -> usize {
        let conns = self.conns.lock().expect("pool lock");
        conns
            .values()
            .flatten()
            .filter(|c| !c.shared.closed.load(Ordering::Relaxed))
            .count()
    }

    /// Opens a CONNECT tunnel to `target` (`podIP:port`) through the pod's ztunnel,
    /// verifying that it presents `identity`.
    pub async fn connect(
        &self,
        target: SocketAddr,
        identity: &Identity,
    ) -> Result<H2Stream, ProxyError> {
        let fail = |reason: String| ProxyError::UpstreamConnect {
            endpoint: target.to_string(),
            reason,
        };
        let key = (target.ip(), identity.clone());
        let (mut send, shared) = match self.checkout(&key) {
            Some(c) => c,
            None => {
                // One connect per destination at a time: concurrent callers wait for it and
                // share the new connection instead of each opening their own.
                let lock = self.connecting(&key);
                let _connecting = lock.lock().await;
                match self.checkout(&key) {
                    Some(c) => c,
                    None => {
                        let conn =
                            tokio::time::timeout(CONNECT_TIMEOUT, self.open(target.ip(), identity))
                                .await
                                .map_err(|_| fail("HBONE connect timed out".into()))??;
                        let out = (conn.send.clone(), conn.shared.clone());
                        conn.shared.active.fetch_add(1, Ordering::AcqRel);
                        self.conns
                            .lock()
                            .expect("pool lock")
                            .entry(key)
                            .or_default()
                            .push(conn);
                        out
                    }
                }
            }
        };
        let guard = StreamGuard {
            shared,
            epoch: self.epoch,
        };
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .body(())
            .expect("valid CONNECT");
        send = send
            .ready()
            .await
            .map_err(|e| fail(format!("HBONE connection unusable: {e}")))?;
        let (resp, send_stream) = send
            .send_request(req, false)
            .map_err(|e| fail(format!("CONNECT failed: {e}")))?;
        let resp = resp
            .await
            .map_err(|e| fail(format!("CONNECT failed: {e}")))?;
        if resp.status() != StatusCode::OK {
            return Err(fail(format!("CONNECT answered {}", resp.status())));
        }
        Ok(H2Stream::new(send_stream, resp.into_body()).with_guard(guard))
    }

    fn connecting(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        self.connecting
            .lock()
            .expect("pool lock")
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Takes a stream slot on an open connection with room for one more stream.
    fn checkout(&self, key: &Key) -> Option<(SendRequest<Bytes>, Arc<ConnShared>)> {
        let mut conns = self.conns.lock().expect("pool lock");
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.shared.closed.load(Ordering::Relaxed));
        let conn = list.iter().find(|c| {
            let limit = c.send.current_max_send_streams().max(1);
            c.shared.active.load(Ordering::Acquire) < limit
        })?;
        conn.shared.active.fetch_add(1, Ordering::AcqRel);
        Some((conn.send.clone(), conn.shared.clone()))
    }

    async fn open(&self, ip: IpAddr, identity: &Identity) -> Result<Conn, ProxyError> {
        let addr = SocketAddr::new(ip, self.port);
        let fail = |reason: String| ProxyError::UpstreamConnect {
            endpoint: addr.to_string(),
            reason,
        };
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let connector = TlsConnector::from(client_config(self.certs.clone(), identity.clone()));
        let tcp = tokio::io::BufReader::with_capacity(settings::TLS_READ_BUFFER, tcp);
        let tls = connector
            .connect(ServerName::IpAddress(ip.into()), tcp)
            .await
            .map_err(|e| fail(format!("TLS: {e}")))?;
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        let (send, mut conn) = settings::client_builder()
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| fail(format!("HTTP/2: {e}")))?;
        let shared = Arc::new(ConnShared {
            active: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            idle_since: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
        });
        let keepalive = conn.ping_pong().map(settings::keepalive);
        let driver_shared = shared.clone();
        let epoch = self.epoch;
        tokio::spawn(async move {
            // Polled when they fire, not on every wake of the connection's task.
            let keepalive = crate::woken::OnWake::new(async move {
                match keepalive {
                    Some(k) => k.await,
                    None => std::future::pending().await,
                }
            });
            let idle = crate::woken::OnWake::new(async {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let since = driver_shared.idle_since.load(Ordering::Relaxed);
                    let now = epoch.elapsed().as_millis() as u64;
                    if driver_shared.active.load(Ordering::Acquire) == 0
                        && now.saturating_sub(since) > IDLE_TIMEOUT.as_millis() as u64
                    {
                        return;
                    }
                }
            });
            tokio::select! {
                r = &mut conn => if let Err(e) = r { tracing::debug!(%addr, error = %e, "HBONE upstream connection ended") },
                why = keepalive => tracing::info!(%addr, reason = why, "closing HBONE upstream connection"),
                _ = idle => tracing::debug!(%addr, "closing idle HBONE upstream connection"),
            }
            driver_shared.closed.store(true, Ordering::Relaxed);
        });
        Ok(Conn { send, shared })
    }
}
