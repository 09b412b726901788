//! HTTP client connections to endpoints, reused across requests and downstream tunnels.
//!
//! HTTP/1.1 connections are checked out for one request at a time and listed again when
//! their response arrives, to be picked once its body has been read (without a task per
//! request to wait for that); an HTTP/2 connection is shared by every request
//! to the endpoint. Both run over [`super::UpstreamIo`] (an HBONE tunnel or TCP).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use filters::balance::Picked;
use filters::body::Body;
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
}

impl Key {
    fn sni(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|(_, sni)| sni.as_deref())
    }
}

type IdleMap = HashMap<Key, Vec<(http1::SendRequest<Body>, Instant)>>;

/// The HTTP connection pool.
#[derive(Default)]
pub struct HttpPool {
    idle: Mutex<IdleMap>,
    h2: Mutex<HashMap<Key, http2::SendRequest<Body>>>,
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
        while let Some(mut sender) = self.checkout(&key) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(key, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(reset(e.into_error())),
                },
            }
        }
        let mut sender = Box::pin(self.new_h1(upstream, picked, &key)).await?;
        let resp = sender.send_request(req).await.map_err(reset)?;
        self.checkin(key, sender);
        Ok(resp)
    }

    /// An idle connection that can take a request now. Connections still reading their
    /// previous response stay listed; closed and expired ones are dropped.
    fn checkout(&self, key: &Key) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(key)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let (sender, since) = &mut list[i];
            if sender.is_closed() || since.elapsed() >= IDLE_TIMEOUT {
                list.swap_remove(i);
            } else if sender.is_ready() {
                return Some(list.swap_remove(i).0);
            } else {
                // Busy, so not idle: its idle time starts after this.
                *since = Instant::now();
            }
        }
        None
    }

    /// Lists the connection as soon as its response has arrived: it becomes ready (and
    /// eligible for [`Self::checkout`]) once that response's body has been read.
    fn checkin(&self, key: Key, sender: http1::SendRequest<Body>) {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push((sender, Instant::now()));
        }
    }

    /// The open HTTP/2 connection to `key`, if there is one.
    fn h2_pooled(&self, key: &Key) -> Option<http2::SendRequest<Body>> {
        let pool = self.h2.lock().expect("pool lock");
        pool.get(key).filter(|s| !s.is_closed()).cloned()
    }

    async fn h2_connect(
        &self,
        upstream: &Upstream,
        picked: &Picked,
        key: &Key,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        let io = upstream.connect(picked, key.sni()).await?;
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
        self.h2
            .lock()
            .expect("pool lock")
            .insert(key.clone(), sender.clone());
        Ok(sender)
    }

    async fn new_h1(
        &self,
        upstream: &Upstream,
        picked: &Picked,
        key: &Key,
    ) -> Result<http1::SendRequest<Body>, ProxyError> {
        let io = upstream.connect(picked, key.sni()).await?;
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
