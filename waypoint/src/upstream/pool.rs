//! HTTP client connections to endpoints, reused across requests and downstream tunnels.
//!
//! HTTP/1.1 connections are checked out for one request at a time and listed again when
//! their response arrives, to be picked once its body has been read (without a task per
//! request to wait for that); an HTTP/2 connection is shared by every request
//! to the endpoint. Both run over [`super::UpstreamIo`] (an HBONE tunnel or TCP).
//!
//! A port's [`ConnectionLimits`] (DestinationRule `connectionPool`) bound each connection:
//! idle time (checked when a connection is taken), requests served (the last one's
//! connection is not pooled again; with 1, keep-alive is off) and age (no new requests
//! after it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use filters::balance::Picked;
use filters::body::Body;
use filters::model::{ConnectionLimits, ProxyHeader, RequestContext};
use filters::ProxyError;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::Upstream;

/// How long an idle HTTP/1.1 connection stays in the pool.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle HTTP/1.1 connections kept per endpoint.
pub const MAX_IDLE_PER_ENDPOINT: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    address: SocketAddr,
    hbone: bool,
    /// TLS originated inside (DestinationRule `tls`), and the SNI it was opened with.
    tls: Option<(std::sync::Arc<filters::model::UpstreamTls>, Option<String>)>,
    /// The port's connection limits.
    limits: Option<ConnectionLimits>,
    /// The PROXY protocol header the connection was opened with: a connection carries one
    /// client's addresses, so it serves that client only.
    proxy: Option<ProxyHeader>,
}

impl Key {
    fn sni(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|(_, sni)| sni.as_deref())
    }

    fn idle_timeout(&self) -> Duration {
        self.limits
            .and_then(|l| l.idle_timeout)
            .unwrap_or(IDLE_TIMEOUT)
    }

    /// Whether a connection opened at `opened` that has served `served` requests may take
    /// another.
    fn usable(&self, opened: Instant, served: u32) -> bool {
        let Some(l) = self.limits else { return true };
        l.max_requests.is_none_or(|m| served < m)
            && l.max_duration.is_none_or(|d| opened.elapsed() < d)
    }
}

/// A pooled HTTP/1.1 connection.
struct H1 {
    sender: http1::SendRequest<Body>,
    /// When it was last listed idle (or last seen busy).
    since: Instant,
    opened: Instant,
    served: u32,
}

/// The shared HTTP/2 connection to an endpoint.
struct H2 {
    sender: http2::SendRequest<Body>,
    opened: Instant,
    last_used: Instant,
    served: u32,
}

type IdleMap = HashMap<Key, Vec<H1>>;

/// The HTTP connection pool.
#[derive(Default)]
pub struct HttpPool {
    idle: Mutex<IdleMap>,
    h2: Mutex<HashMap<Key, H2>>,
    connects: AtomicU64,
}

impl HttpPool {
    /// Upstream HTTP connections opened since start.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Sends `req` to `picked` over HTTP/2 (`h2`) or HTTP/1.1, reusing a pooled connection.
    pub async fn send(
        &self,
        upstream: &Upstream,
        picked: &Picked,
        h2: bool,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let tls = picked.tls.as_ref().map(|t| {
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()));
            (t.clone(), t.sni_for(host))
        });
        let key = Key {
            address: picked.address,
            hbone: picked.workload.hbone,
            tls,
            limits: picked.connection_limits,
            proxy: picked
                .proxy_protocol
                .map(|version| proxy_header(version, &req)),
        };
        let reset = |e: hyper::Error| ProxyError::UpstreamReset {
            endpoint: picked.address.to_string(),
            reason: e.to_string(),
        };
        if h2 {
            let mut sender = match self.h2_pooled(&key) {
                Some(s) => s,
                // Connecting is rare and its future large: boxed, it is not part of every
                // request's future (which is moved and allocated per request).
                None => Box::pin(self.h2_connect(upstream, picked, &key)).await?,
            };
            return sender.send_request(req).await.map_err(reset);
        }
        let mut req = req;
        // A pooled connection the server closed meanwhile hands the request back unsent;
        // then it goes on a fresh connection.
        while let Some(mut conn) = self.checkout(&key) {
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    conn.served += 1;
                    self.checkin(key, conn);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(reset(e.into_error())),
                },
            }
        }
        let sender = Box::pin(self.new_h1(upstream, picked, &key)).await?;
        let now = Instant::now();
        let mut conn = H1 {
            sender,
            since: now,
            opened: now,
            served: 1,
        };
        let resp = conn.sender.send_request(req).await.map_err(reset)?;
        self.checkin(key, conn);
        Ok(resp)
    }

    /// An idle connection that can take a request now. Connections still reading their
    /// previous response stay listed; closed, expired and used-up ones are dropped.
    fn checkout(&self, key: &Key) -> Option<H1> {
        let idle_timeout = key.idle_timeout();
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(key)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let c = &mut list[i];
            if c.sender.is_closed()
                || c.since.elapsed() >= idle_timeout
                || !key.usable(c.opened, c.served)
            {
                list.swap_remove(i);
            } else if c.sender.is_ready() {
                return Some(list.swap_remove(i));
            } else {
                // Busy, so not idle: its idle time starts after this.
                c.since = Instant::now();
            }
        }
        None
    }

    /// Lists the connection as soon as its response has arrived: it becomes ready (and
    /// eligible for [`Self::checkout`]) once that response's body has been read. A
    /// connection that has served its last request is not listed: once its response ends,
    /// it closes.
    fn checkin(&self, key: Key, mut conn: H1) {
        if !key.usable(conn.opened, conn.served) {
            return;
        }
        conn.since = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(conn);
        }
    }

    /// The open HTTP/2 connection to `key`, if there is one that may take a request (a
    /// used-up, expired or idle-timed-out one is dropped from the pool: its streams finish,
    /// then it closes).
    fn h2_pooled(&self, key: &Key) -> Option<http2::SendRequest<Body>> {
        let mut pool = self.h2.lock().expect("pool lock");
        let c = pool.get_mut(key)?;
        let fresh = !c.sender.is_closed()
            && c.last_used.elapsed() < key.idle_timeout()
            && key.usable(c.opened, c.served);
        if !fresh {
            pool.remove(key);
            return None;
        }
        c.served += 1;
        c.last_used = Instant::now();
        Some(c.sender.clone())
    }

    async fn h2_connect(
        &self,
        upstream: &Upstream,
        picked: &Picked,
        key: &Key,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        let io = upstream
            .connect(picked, key.sni(), key.proxy.as_ref())
            .await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(hbone::settings::STREAM_WINDOW)
            .initial_connection_window_size(hbone::settings::CONNECTION_WINDOW)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::UpstreamConnect {
                endpoint: picked.address.to_string(),
                reason: format!("HTTP/2 handshake: {e}"),
            })?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        let addr = picked.address;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        let now = Instant::now();
        self.h2.lock().expect("pool lock").insert(
            key.clone(),
            H2 {
                sender: sender.clone(),
                opened: now,
                last_used: now,
                served: 1,
            },
        );
        Ok(sender)
    }

    async fn new_h1(
        &self,
        upstream: &Upstream,
        picked: &Picked,
        key: &Key,
    ) -> Result<http1::SendRequest<Body>, ProxyError> {
        let io = upstream
            .connect(picked, key.sni(), key.proxy.as_ref())
            .await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::UpstreamConnect {
                endpoint: picked.address.to_string(),
                reason: format!("HTTP/1.1 handshake: {e}"),
            })?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        let addr = picked.address;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }
}

/// The PROXY protocol header for a connection carrying `req`: the tunnel's original source
/// and the address it connected to (the CONNECT authority). A request without a tunnel (the
/// waypoint's own clients) has no source to tell.
fn proxy_header(version: filters::model::ProxyProtocolVersion, req: &Request<Body>) -> ProxyHeader {
    match req.extensions().get::<RequestContext>() {
        Some(ctx) => ProxyHeader::new(version, ctx.tunnel.source_addr(), ctx.tunnel.authority),
        None => ProxyHeader {
            version,
            addresses: None,
        },
    }
}
