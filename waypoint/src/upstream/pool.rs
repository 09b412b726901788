//! HTTP client connections to endpoints, reused across requests and downstream tunnels.
//!
//! HTTP/1.1 connections are checked out for one request at a time and listed again when
//! their response arrives, to be picked once its body has been read (without a task per
//! request to wait for that). HTTP/2 connections are shared: each request takes a stream
//! on the first connection to the endpoint with a stream free (DestinationRule
//! `maxConcurrentStreams`; without it, one connection carries every request), and when
//! every connection is at its limit another is opened. Requests that find no free stream
//! while one is being opened wait for it rather than each opening their own. Both run over
//! [`super::UpstreamIo`] (an HBONE tunnel or TCP).
//!
//! A port's [`ConnectionLimits`] (DestinationRule `connectionPool`) bound each connection:
//! idle time (checked when a connection is taken), requests served (the last one's
//! connection is not pooled again; with 1, keep-alive is off), age (no new requests
//! after it), and for HTTP/2 the streams at once and the PING keepalive (a connection
//! whose PING goes unanswered is closed, and leaves the pool).

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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

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

/// A stream taken on an HTTP/2 connection: the connection counts one stream in flight
/// for as long as a clone lives.
type StreamSlot = std::sync::Arc<()>;

/// A response body from an endpoint; over HTTP/2 it holds its stream's slot until it ends
/// or is dropped.
pub type UpstreamBody = filters::body::Guarded<Incoming, Option<StreamSlot>>;

/// A shared HTTP/2 connection to an endpoint.
struct H2 {
    sender: http2::SendRequest<Body>,
    opened: Instant,
    last_used: Instant,
    served: u32,
    /// One clone per stream in flight.
    streams: StreamSlot,
}

impl H2 {
    fn in_flight(&self) -> usize {
        std::sync::Arc::strong_count(&self.streams) - 1
    }
}

/// Why the last connection attempt to a key failed, and when.
type LastFailure = Option<(Instant, String)>;

/// The HTTP/2 connections to one key.
#[derive(Default)]
struct H2Set {
    conns: Vec<H2>,
    /// Held while a connection is being opened: requests that find no free stream wait
    /// for it, and those that waited fail with it when it fails.
    opening: std::sync::Arc<tokio::sync::Mutex<LastFailure>>,
}

type IdleMap = HashMap<Key, Vec<H1>>;

/// The HTTP connection pool.
#[derive(Default)]
pub struct HttpPool {
    idle: Mutex<IdleMap>,
    h2: Mutex<HashMap<Key, H2Set>>,
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
    ) -> Result<Response<UpstreamBody>, ProxyError> {
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
            let (mut sender, slot) = match self.h2_pooled(&key) {
                Ok(taken) => taken,
                // Connecting is rare and its future large: boxed, it is not part of every
                // request's future (which is moved and allocated per request).
                Err(opening) => Box::pin(self.h2_open(upstream, picked, &key, opening)).await?,
            };
            let resp = sender.send_request(req).await.map_err(reset)?;
            return Ok(resp.map(|b| UpstreamBody::new(b, Some(slot))));
        }
        let no_slot = |resp: Response<Incoming>| resp.map(|b| UpstreamBody::new(b, None));
        let mut req = req;
        // A pooled connection the server closed meanwhile hands the request back unsent;
        // then it goes on a fresh connection.
        while let Some(mut conn) = self.checkout(&key) {
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    conn.served += 1;
                    self.checkin(key, conn);
                    return Ok(no_slot(resp));
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
        Ok(no_slot(resp))
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

    /// A stream on an open HTTP/2 connection to `key` with one free (used-up, expired,
    /// idle-timed-out and closed connections are dropped from the pool: their streams
    /// finish, then they close); else the lock to hold while opening another.
    fn h2_pooled(
        &self,
        key: &Key,
    ) -> Result<
        (http2::SendRequest<Body>, StreamSlot),
        std::sync::Arc<tokio::sync::Mutex<LastFailure>>,
    > {
        let idle_timeout = key.idle_timeout();
        let max_streams = key
            .limits
            .and_then(|l| l.max_concurrent_streams)
            .map_or(usize::MAX, |n| n as usize);
        let mut pool = self.h2.lock().expect("pool lock");
        let set = pool.entry(key.clone()).or_default();
        set.conns.retain(|c| {
            !c.sender.is_closed()
                && (c.last_used.elapsed() < idle_timeout || c.in_flight() > 0)
                && key.usable(c.opened, c.served)
        });
        match set.conns.iter_mut().find(|c| c.in_flight() < max_streams) {
            Some(c) => {
                c.served += 1;
                c.last_used = Instant::now();
                Ok((c.sender.clone(), c.streams.clone()))
            }
            None => Err(set.opening.clone()),
        }
    }

    /// Opens an HTTP/2 connection to `key` and takes a stream on it, holding `opening` so
    /// that one connection is opened at a time per key: a request that waited for it
    /// takes a stream on what was opened meanwhile, or fails with the attempt it waited
    /// for.
    async fn h2_open(
        &self,
        upstream: &Upstream,
        picked: &Picked,
        key: &Key,
        opening: std::sync::Arc<tokio::sync::Mutex<LastFailure>>,
    ) -> Result<(http2::SendRequest<Body>, StreamSlot), ProxyError> {
        let asked = Instant::now();
        let mut last_failure = opening.lock().await;
        if let Some((at, reason)) = last_failure.as_ref().filter(|(at, _)| *at >= asked) {
            tracing::debug!(endpoint = %picked.address, failed_ago = ?at.elapsed(), "the HTTP/2 connection waited for failed");
            return Err(ProxyError::UpstreamConnect {
                endpoint: picked.address.to_string(),
                reason: reason.clone(),
            });
        }
        if let Ok(taken) = self.h2_pooled(key) {
            return Ok(taken);
        }
        match self.h2_connect(upstream, picked, key).await {
            Ok(sender) => {
                let now = Instant::now();
                let conn = H2 {
                    sender: sender.clone(),
                    opened: now,
                    last_used: now,
                    served: 1,
                    streams: StreamSlot::default(),
                };
                let slot = conn.streams.clone();
                let mut pool = self.h2.lock().expect("pool lock");
                pool.entry(key.clone()).or_default().conns.push(conn);
                Ok((sender, slot))
            }
            Err(e) => {
                let reason = match &e {
                    ProxyError::UpstreamConnect { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                *last_failure = Some((Instant::now(), reason));
                drop(last_failure);
                drop(opening);
                // Forget a key nothing is connected or connecting to.
                let mut pool = self.h2.lock().expect("pool lock");
                if pool.get(key).is_some_and(|s| {
                    s.conns.is_empty() && std::sync::Arc::strong_count(&s.opening) == 1
                }) {
                    pool.remove(key);
                }
                Err(e)
            }
        }
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
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .initial_stream_window_size(hbone::settings::STREAM_WINDOW)
            .initial_connection_window_size(hbone::settings::CONNECTION_WINDOW);
        if let Some(k) = key.limits.and_then(|l| l.h2_keepalive) {
            // Envoy PINGs at the interval whether or not streams are open.
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(k.interval)
                .keep_alive_timeout(k.timeout)
                .keep_alive_while_idle(true);
        }
        let (sender, conn) =
            builder
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
            .preserve_header_case(key.limits.is_some_and(|l| l.preserve_header_case))
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
