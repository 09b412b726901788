//! The pool's request-driven HTTP/1.1 connections ([`super::super::h1`]): checked out for
//! one request, back in the pool when its response body ends.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use filters::balance::Picked;
use filters::body::Body;
use filters::ProxyError;
use http::{Request, Response};

use super::{h1, HttpPool, Key, Map, UpstreamBody, MAX_IDLE_PER_ENDPOINT};
use crate::upstream::Upstream;

/// Idle HTTP/1.1 connections of the request-driven kind, shared with the response bodies
/// that bring them back.
pub(super) type DirectIdle = Arc<Mutex<Map<Vec<Box<h1::Connection>>>>>;

/// Where a request-driven HTTP/1.1 connection goes back when its response has ended.
pub struct Return {
    idle: DirectIdle,
    key: Key,
}

impl h1::Home for Return {
    fn checkin(self, mut conn: Box<h1::Connection>) {
        if !self.key.usable(conn.opened, conn.served) {
            return;
        }
        conn.since = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(self.key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(conn);
        }
    }
}

impl HttpPool {
    /// Sends a plain HTTP/1.1 request on a request-driven connection: an idle one (one the
    /// endpoint closed meanwhile hands the request back, and it goes on the next), else a
    /// new one.
    pub(super) async fn send_direct(
        &self,
        upstream: &Upstream,
        picked: &Picked,
        key: Key,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let failed = |e: h1::H1Error| ProxyError::UpstreamReset {
            endpoint: picked.address.to_string(),
            reason: e.to_string(),
        };
        let direct = |resp: Response<h1::ResponseBody<Return>>| {
            resp.map(|body| UpstreamBody::Direct { body })
        };
        while let Some(conn) = self.checkout_direct(&key) {
            let home = Return {
                idle: self.direct.clone(),
                key: key.clone(),
            };
            match h1::send(conn, req, home).await {
                Ok(resp) => return Ok(direct(resp)),
                Err(h1::SendError::Unsent(back, e)) => {
                    tracing::debug!(endpoint = %picked.address, error = %e, "pooled HTTP/1.1 connection closed; the request goes on another");
                    req = *back;
                }
                Err(h1::SendError::Failed(e)) => return Err(failed(e)),
            }
        }
        let io = Box::pin(upstream.connect(picked, key.sni(), key.proxy.as_ref())).await?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        let home = Return {
            idle: self.direct.clone(),
            key,
        };
        match h1::send(h1::Connection::new(io), req, home).await {
            Ok(resp) => Ok(direct(resp)),
            Err(h1::SendError::Unsent(_, e) | h1::SendError::Failed(e)) => Err(failed(e)),
        }
    }

    /// An idle request-driven connection that can take a request now; closed, expired and
    /// used-up ones are dropped.
    fn checkout_direct(&self, key: &Key) -> Option<Box<h1::Connection>> {
        let idle_timeout = key.idle_timeout();
        let mut idle = self.direct.lock().expect("pool lock");
        let list = idle.get_mut(key)?;
        while let Some(mut c) = list.pop() {
            if c.since.elapsed() < idle_timeout && key.usable(c.opened, c.served) && c.is_open() {
                return Some(c);
            }
        }
        None
    }
}
