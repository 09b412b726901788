//! HTTP client connections to endpoints, reused across requests and downstream tunnels.
//!
//! HTTP/1.1 connections are checked out for one request at a time. Plain requests go on
//! connections driven by the request's own task ([`super::h1`]), which come back to the
//! pool when their response body ends. Upgrades, and ports that preserve header case, use
//! hyper's client connection, listed again when the response arrives and picked once its
//! body has been read. HTTP/2 connections are shared: each request takes a stream
//! on the first connection to the endpoint with a stream free (DestinationRule
//! `maxConcurrentStreams`; without it, one connection carries every request), and when
//! every connection is at its limit another is opened. A connection being opened promises
//! its streams to the requests that find no free one, which wait for it (and fail with
//! it) rather than each opening their own; past its streams, another is opened beside
//! it. Both run over
//! [`super::UpstreamIo`] (an HBONE tunnel or TCP).
//!
//! A cluster's [`filters::model::ConnectionCap`] (circuit breaker `max_connections`) caps
//! its HTTP/2 connections across endpoints: at the cap, a request that finds no free
//! stream waits until a stream ends or a connection closes, counted among the cluster's
//! pending requests (`max_pending_requests`; past them, 503 `UO`). An endpoint without a
//! connection always gets one, as in Envoy.
//!
//! A port's [`ConnectionLimits`] (DestinationRule `connectionPool`) bound each connection:
//! idle time (checked when a connection is taken), requests served (the last one's
//! connection is not pooled again; with 1, keep-alive is off), age (no new requests
//! after it), and for HTTP/2 the streams at once and the PING keepalive (a connection
//! whose PING goes unanswered is closed, and leaves the pool).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use filters::balance::Picked;
use filters::body::Body;
use filters::model::{ConnectionLimits, ProxyHeader, RequestContext};
use filters::ProxyError;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;

mod body;
mod direct;

pub use body::UpstreamBody;
use direct::DirectIdle;
pub use direct::Return;

use super::connection_cap::{Caps, ClusterCount, OpenSlot};
use super::{h1, Upstream};

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

    /// Most streams a new HTTP/2 connection can be promised: its stream limit, or its
    /// request limit when lower.
    fn streams_per_connection(&self) -> usize {
        let limit = |v: Option<u32>| v.map_or(usize::MAX, |n| n as usize);
        self.limits.map_or(usize::MAX, |l| {
            limit(l.max_concurrent_streams).min(limit(l.max_requests))
        })
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
/// for as long as it lives; when it ends, the requests waiting on the cluster's
/// connection cap are woken.
pub struct StreamSlot {
    /// A clone of the connection's [`H2::streams`].
    count: Option<Arc<()>>,
    cap: Option<Arc<ClusterCount>>,
}

impl StreamSlot {
    fn new(streams: &Arc<()>, cap: Option<&Arc<ClusterCount>>) -> Self {
        Self {
            count: Some(streams.clone()),
            cap: cap.cloned(),
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        // The stream is free before anyone looks.
        self.count.take();
        if let Some(cap) = &self.cap {
            cap.wake();
        }
    }
}

/// A shared HTTP/2 connection to an endpoint.
struct H2 {
    sender: http2::SendRequest<Body>,
    opened: Instant,
    last_used: Instant,
    served: u32,
    /// One clone per stream in flight (held by its [`StreamSlot`]).
    streams: Arc<()>,
}

impl H2 {
    fn in_flight(&self) -> usize {
        Arc::strong_count(&self.streams) - 1
    }
}

/// What an HTTP/2 connection attempt gives the requests that wait for it: the connection
/// and one stream slot for each of them, or why it failed.
type Opened = Result<(http2::SendRequest<Body>, Arc<Mutex<Vec<StreamSlot>>>), OpenFailed>;

/// Why a connection that requests were waiting for did not open: they fail the same way.
#[derive(Debug, Clone)]
enum OpenFailed {
    /// The connect timeout passed.
    TimedOut(std::time::Duration),
    /// Anything else.
    Failed(String),
}

/// An HTTP/2 connection being opened.
struct Opening {
    id: u64,
    /// Its streams not yet promised to a waiting request.
    spare: usize,
    done: watch::Receiver<Option<Opened>>,
}

/// The HTTP/2 connections to one key, and those being opened.
#[derive(Default)]
struct H2Set {
    conns: Vec<H2>,
    opening: Vec<Opening>,
}

/// How a request gets an HTTP/2 stream.
enum Take {
    /// On an open connection.
    Ready(http2::SendRequest<Body>, StreamSlot),
    /// On a connection being opened, once it is.
    Wait(watch::Receiver<Option<Opened>>),
    /// On a connection it opens (`id`), telling those who wait through the sender; the
    /// connection counted against the cluster's cap, if it has one.
    Open(u64, watch::Sender<Option<Opened>>, Option<OpenSlot>),
    /// Not yet: every connection is busy and the cluster's cap allows no other.
    Full,
}

/// A request's cluster cap on HTTP/2 connections, and its counts.
type Cap<'a> = Option<(&'a filters::model::ConnectionCap, &'a Arc<ClusterCount>)>;

/// Pool maps are looked up on every request: hashed with foldhash (randomly seeded; the
/// keys come from configuration, not from clients), not SipHash.
type Map<V> = HashMap<Key, V, foldhash::fast::RandomState>;
type IdleMap = Map<Vec<H1>>;

/// The HTTP connection pool.
#[derive(Default)]
pub struct HttpPool {
    idle: Mutex<IdleMap>,
    direct: DirectIdle,
    h2: Mutex<Map<H2Set>>,
    connects: AtomicU64,
    /// Numbers HTTP/2 connection attempts.
    attempts: AtomicU64,
    /// The HTTP/2 connections of each capped cluster, and the requests waiting past it.
    caps: Caps,
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
            let counts = picked
                .connection_cap
                .as_deref()
                .map(|c| (c, self.caps.get(&c.cluster)));
            let cap = counts.as_ref().map(|(c, n)| (*c, n));
            let (mut sender, slot) = match self.h2_take(&key, cap) {
                Take::Ready(sender, slot) => (sender, slot),
                // Connecting is rare and its future large: boxed, it is not part of every
                // request's future (which is moved and allocated per request).
                other => Box::pin(self.h2_wait_or_open(upstream, picked, &key, other, cap)).await?,
            };
            let resp = sender.send_request(req).await.map_err(reset)?;
            return Ok(resp.map(|b| UpstreamBody::hyper(b, Some(slot))));
        }
        if !key.limits.is_some_and(|l| l.preserve_header_case)
            && !req.headers().contains_key(http::header::UPGRADE)
            && req.method() != http::Method::CONNECT
        {
            return self.send_direct(upstream, picked, key, req).await;
        }
        let no_slot = |resp: Response<Incoming>| resp.map(|b| UpstreamBody::hyper(b, None));
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

    /// A stream for a request to `key`: on the first open connection with one free
    /// (used-up, expired, idle-timed-out and closed connections are dropped from the pool:
    /// their streams finish, then they close), else promised by a connection being opened,
    /// else on a connection the caller is to open, if the cluster's cap leaves room for it
    /// (an endpoint with no connection always gets one, as in Envoy), else nothing yet.
    fn h2_take(&self, key: &Key, cap: Cap<'_>) -> Take {
        let idle_timeout = key.idle_timeout();
        let max_streams = key
            .limits
            .and_then(|l| l.max_concurrent_streams)
            .map_or(usize::MAX, |n| n as usize);
        let mut pool = self.h2.lock().expect("pool lock");
        let take = |set: &mut H2Set| {
            set.conns.retain(|c| {
                !c.sender.is_closed()
                    && (c.last_used.elapsed() < idle_timeout || c.in_flight() > 0)
                    && key.usable(c.opened, c.served)
            });
            if let Some(c) = set.conns.iter_mut().find(|c| c.in_flight() < max_streams) {
                c.served += 1;
                c.last_used = Instant::now();
                let slot = StreamSlot::new(&c.streams, cap.map(|(_, n)| n));
                return Take::Ready(c.sender.clone(), slot);
            }
            if let Some(o) = set.opening.iter_mut().find(|o| o.spare > 0) {
                o.spare -= 1;
                return Take::Wait(o.done.clone());
            }
            let counted = match cap {
                None => None,
                Some((cap, counts)) => {
                    let none = set.conns.is_empty() && set.opening.is_empty();
                    match counts.open(cap.max_connections, none) {
                        Some(slot) => Some(slot),
                        None => return Take::Full,
                    }
                }
            };
            let id = self.attempts.fetch_add(1, Ordering::Relaxed);
            let (tx, done) = watch::channel(None);
            set.opening.push(Opening {
                id,
                spare: key.streams_per_connection() - 1,
                done,
            });
            Take::Open(id, tx, counted)
        };
        // The key is cloned only the first time it is seen.
        if let Some(set) = pool.get_mut(key) {
            return take(set);
        }
        take(pool.entry(key.clone()).or_default())
    }

    /// Waits for the connection being opened that promised a stream, or opens one: its
    /// other streams go to the requests that wait for it, and if it fails, they fail. At
    /// the cluster's cap (`Full`), waits (counted among the cluster's pending requests,
    /// refused with 503 `UO` past their limit) until a stream ends or a connection closes,
    /// and looks again.
    async fn h2_wait_or_open(
        &self,
        upstream: &Upstream,
        picked: &Picked,
        key: &Key,
        mut take: Take,
        cap: Cap<'_>,
    ) -> Result<(http2::SendRequest<Body>, StreamSlot), ProxyError> {
        let mut pending = None;
        while let (Take::Full, Some((limits, counts))) = (&take, cap) {
            let freed = counts.freed().notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            take = self.h2_take(key, cap);
            if !matches!(take, Take::Full) {
                break;
            }
            if pending.is_none() {
                pending = Some(counts.wait(limits.max_pending).ok_or_else(|| {
                    tracing::debug!(cluster = %limits.cluster, "HTTP/2 connections at their cap and pending requests at theirs");
                    ProxyError::Overflow(limits.cluster.clone())
                })?);
            }
            freed.await;
        }
        drop(pending);
        let failed = |reason: String| ProxyError::UpstreamConnect {
            endpoint: picked.address.to_string(),
            reason,
        };
        let (id, tx, counted) = match take {
            Take::Ready(sender, slot) => return Ok((sender, slot)),
            Take::Full => {
                return Err(ProxyError::Internal(
                    "an uncapped cluster has no connection limit to wait for".into(),
                ))
            }
            Take::Open(id, tx, counted) => (id, tx, counted),
            Take::Wait(mut done) => {
                let opened = match done.wait_for(Option::is_some).await {
                    Ok(v) => v.clone(),
                    // The request opening it went away before it was open.
                    Err(_) => None,
                };
                return match opened {
                    Some(Ok((sender, slots))) => {
                        let slot = slots.lock().expect("slots lock").pop();
                        Ok((sender, slot.expect("a slot per promise")))
                    }
                    Some(Err(OpenFailed::Failed(reason))) => Err(failed(reason)),
                    Some(Err(OpenFailed::TimedOut(after))) => {
                        Err(ProxyError::UpstreamConnectTimeout {
                            endpoint: picked.address.to_string(),
                            after,
                        })
                    }
                    None => Err(failed("the connection attempt was abandoned".into())),
                };
            }
        };
        // Until the attempt ends (or if this request goes away first), it is listed as
        // being opened; then it is taken off.
        let attempt = Attempt {
            pool: self,
            key,
            id,
        };
        let result = self.h2_connect(upstream, picked, key, counted).await;
        let promised = attempt.finish();
        match result {
            Ok(sender) => {
                let now = Instant::now();
                let conn = H2 {
                    sender: sender.clone(),
                    opened: now,
                    last_used: now,
                    served: 1 + promised as u32,
                    streams: Arc::default(),
                };
                let counts = cap.map(|(_, n)| n);
                let slot = StreamSlot::new(&conn.streams, counts);
                let slots: Vec<StreamSlot> = (0..promised)
                    .map(|_| StreamSlot::new(&conn.streams, counts))
                    .collect();
                self.h2
                    .lock()
                    .expect("pool lock")
                    .entry(key.clone())
                    .or_default()
                    .conns
                    .push(conn);
                let _ = tx.send(Some(Ok((sender.clone(), Arc::new(Mutex::new(slots))))));
                Ok((sender, slot))
            }
            Err(e) => {
                let failed = match &e {
                    ProxyError::UpstreamConnect { reason, .. } => {
                        OpenFailed::Failed(reason.clone())
                    }
                    ProxyError::UpstreamConnectTimeout { after, .. } => {
                        OpenFailed::TimedOut(*after)
                    }
                    other => OpenFailed::Failed(other.to_string()),
                };
                let _ = tx.send(Some(Err(failed)));
                Err(e)
            }
        }
    }

    /// Opens an HTTP/2 connection; `counted` (its place under the cluster's cap) lives as
    /// long as the connection.
    async fn h2_connect(
        &self,
        upstream: &Upstream,
        picked: &Picked,
        key: &Key,
        counted: Option<OpenSlot>,
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
            drop(counted);
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

/// An HTTP/2 connection attempt listed in its key's [`H2Set::opening`]; taken off when it
/// ends or is abandoned (a key left with nothing is forgotten).
struct Attempt<'a> {
    pool: &'a HttpPool,
    key: &'a Key,
    id: u64,
}

impl Attempt<'_> {
    /// Takes the attempt off the list: how many streams it promised to waiting requests.
    fn finish(self) -> usize {
        let promised = self.remove();
        std::mem::forget(self);
        promised
    }

    fn remove(&self) -> usize {
        let mut pool = self.pool.h2.lock().expect("pool lock");
        let Some(set) = pool.get_mut(self.key) else {
            return 0;
        };
        let mut promised = 0;
        if let Some(i) = set.opening.iter().position(|o| o.id == self.id) {
            let o = set.opening.swap_remove(i);
            promised = self.key.streams_per_connection() - 1 - o.spare;
        }
        if set.conns.is_empty() && set.opening.is_empty() {
            pool.remove(self.key);
        }
        promised
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.remove();
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
