//! The HBONE listener's connection handler: a Pingora [`ServerApp`] that receives
//! TLS-terminated connections, checks the peer, runs HTTP/2 and accepts CONNECT tunnels.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use filters::model::{Identity, TunnelInfo};
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tracing::Instrument;

use crate::proxy;
use crate::state::{Gauge, Proxy};
use crate::telemetry::listener_log;
use crate::woken::OnWake;
use filters::connect::forwarded_for;
use hbone::tls::SpiffeClientVerifier;
use hbone::{settings, H2Stream};

/// The HBONE inbound application.
pub struct HboneInbound {
    proxy: Arc<Proxy>,
    /// The listener's client verifier, which already knows each accepted peer's identity.
    verifier: Arc<SpiffeClientVerifier>,
    /// The listener's admission check (connection cap, handshake timeout).
    admission: Arc<super::admission::Admission>,
}

impl HboneInbound {
    /// An inbound handler over the shared proxy state, for a listener whose client
    /// certificates `verifier` checks.
    pub fn new(
        proxy: Arc<Proxy>,
        verifier: Arc<SpiffeClientVerifier>,
        admission: Arc<super::admission::Admission>,
    ) -> Self {
        Self {
            proxy,
            verifier,
            admission,
        }
    }
}

/// Why a downstream connection was refused before HTTP/2.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("not a TLS connection")]
    NoTls,
    #[error("TLS version {0} is not allowed, HBONE requires TLSv1.3")]
    Version(String),
    #[error("no client certificate")]
    NoCertificate,
    #[error("client certificate: {0}")]
    Identity(#[from] hbone::tls::TlsError),
}

fn peer_of(stream: &Stream, verifier: &SpiffeClientVerifier) -> Result<Identity, PeerError> {
    let tls = stream.get_ssl().ok_or(PeerError::NoTls)?;
    match tls.version() {
        Some("TLSv1.3" | "TLSv1_3") => {}
        other => return Err(PeerError::Version(other.unwrap_or("unknown").to_string())),
    }
    let der = tls.peer_certificate_der().ok_or(PeerError::NoCertificate)?;
    Ok(verifier.peer_identity(der)?)
}

#[async_trait]
impl ServerApp for HboneInbound {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let digest = stream.get_socket_digest();
        let peer_addr = digest
            .as_ref()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let local_addr = digest.and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        self.admission.established(stream.id(), peer_addr);
        let peer = match peer_of(&stream, &self.verifier) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(peer_addr = ?peer_addr, error = %e, "HBONE connection refused");
                return None;
            }
        };
        let span = tracing::info_span!("hbone", peer = %peer, peer_addr = ?peer_addr);
        self.serve(stream, peer, (peer_addr, local_addr), shutdown.clone())
            .instrument(span)
            .await;
        None
    }
}

impl HboneInbound {
    async fn serve(
        self: &Arc<Self>,
        stream: Stream,
        peer: Identity,
        addrs: (Option<SocketAddr>, Option<SocketAddr>),
        shutdown: ShutdownWatch,
    ) {
        let _conn = Gauge::inc(&self.proxy.stats.hbone_connections);
        let registered = self.proxy.connections.register();
        self.proxy
            .stats
            .hbone_accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut conn = match settings::server_builder()
            .handshake::<_, Bytes>(stream)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 handshake failed");
                return;
            }
        };
        // The signals beside the connection's I/O are polled only when they fire
        // (`OnWake`), not on every wake of the connection's task.
        let keepalive = conn.ping_pong().map(settings::keepalive);
        let keepalive = OnWake::new(async move {
            match keepalive {
                Some(k) => k.await,
                None => std::future::pending().await,
            }
        });
        tokio::pin!(keepalive);
        let mut drain = self.proxy.drain.subscribe();
        let mut draining = *shutdown.borrow() || *drain.borrow_and_update();
        if draining {
            conn.graceful_shutdown();
        }
        let max_age = self.proxy.options.max_connection_age;
        let leave = OnWake::new(why_leave(
            shutdown.clone(),
            drain,
            max_age,
            &registered.leave,
        ));
        tokio::pin!(leave);
        loop {
            tokio::select! {
                accepted = conn.accept() => match accepted {
                    Some(Ok((req, respond))) => {
                        let this = self.clone();
                        let peer = peer.clone();
                        let shutdown = shutdown.clone();
                        let open = OnConnection::open(&registered.tunnels);
                        tokio::spawn(async move {
                            this.tunnel(req, respond, peer, addrs, shutdown).await;
                            drop(open);
                        }.in_current_span());
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "HBONE connection error");
                        break;
                    }
                    None => {
                        // No more streams will be accepted (GOAWAY); keep driving the
                        // connection until the streams in flight finish.
                        if let Err(e) = std::future::poll_fn(|cx| conn.poll_closed(cx)).await {
                            tracing::debug!(error = %e, "HBONE connection error while closing");
                        }
                        break;
                    }
                },
                why = &mut leave, if !draining => {
                    draining = true;
                    match why {
                        Leave::Shutdown => tracing::debug!("draining: GOAWAY sent"),
                        Leave::Drained => tracing::debug!("listeners drained: GOAWAY sent"),
                        Leave::Aged => {
                            self.proxy
                                .stats
                                .connections_aged_out
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::info!(max_age = ?max_age, "HBONE connection reached its maximum age: GOAWAY sent");
                        }
                        Leave::Rebalance => tracing::info!("HBONE connection asked to leave to rebalance load: GOAWAY sent"),
                    }
                    conn.graceful_shutdown();
                }
                why = &mut keepalive => {
                    tracing::info!(reason = why, "closing HBONE connection");
                    break;
                }
            }
        }
    }

    async fn tunnel(
        self: Arc<Self>,
        req: Request<h2::RecvStream>,
        mut respond: SendResponse<Bytes>,
        peer: Identity,
        (peer_addr, local_addr): (Option<SocketAddr>, Option<SocketAddr>),
        shutdown: ShutdownWatch,
    ) {
        let (start, started) = (std::time::SystemTime::now(), std::time::Instant::now());
        let authority = req.uri().authority().map(|a| a.as_str().to_string());
        // Answers a refused request and logs it to connect_terminate's access logs.
        let refuse = |respond: &mut SendResponse<Bytes>, status: StatusCode, details: &str| {
            tracing::warn!(authority = ?authority, status = status.as_u16(), reason = details, "CONNECT refused");
            let resp = Response::builder()
                .status(status)
                .body(())
                .expect("valid response");
            let _ = respond.send_response(resp, true);
            listener_log::connect_refused(
                &self.proxy,
                listener_log::Refused {
                    request: &req,
                    status,
                    details,
                    peer: peer_addr,
                    local: local_addr,
                    start,
                    duration: started.elapsed(),
                },
            );
        };
        if req.method() != Method::CONNECT {
            return refuse(
                &mut respond,
                StatusCode::METHOD_NOT_ALLOWED,
                "only_connect_accepted",
            );
        }
        if req.extensions().get::<h2::ext::Protocol>().is_some() {
            return refuse(
                &mut respond,
                StatusCode::BAD_REQUEST,
                "extended_connect_refused",
            );
        }
        let Some(addr) = authority
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            return refuse(
                &mut respond,
                StatusCode::BAD_REQUEST,
                "authority_not_ip_port",
            );
        };
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        // The original source as ztunnel forwards it, else the HBONE peer.
        let (source_ip, source_port) = match header("forwarded").as_deref().and_then(forwarded_for)
        {
            Some((ip, port)) => (Some(ip), port),
            None => (peer_addr.map(|a| a.ip()), peer_addr.map(|a| a.port())),
        };
        let snapshot = self.proxy.config.current();
        let Some(target) = snapshot.resolve(addr) else {
            tracing::warn!(authority = %addr, status = 404, reason = "no Service VIP or served workload at this address", "CONNECT refused");
            let resp = Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(())
                .expect("valid response");
            let _ = respond.send_response(resp, true);
            // Envoy's main_internal finds no filter chain for it: its listener log (NR).
            let source = source_ip.map(|ip| SocketAddr::new(ip, source_port.unwrap_or(0)));
            listener_log::no_chain(&self.proxy, addr, source);
            return;
        };
        let info = Arc::new(TunnelInfo {
            peer,
            peer_addr,
            source_ip,
            source_port,
            authority: addr,
            target,
            baggage: header("baggage"),
            traceparent: header("traceparent"),
            principal_cache: Default::default(),
            log_slot: Default::default(),
        });
        let send = match respond.send_response(Response::new(()), false) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT response failed");
                return;
            }
        };
        let _tunnel = Gauge::inc(&self.proxy.stats.tunnels);
        let stream = H2Stream::new(send, req.into_body());
        let span =
            tracing::info_span!("tunnel", authority = %addr, target = %info.target.describe());
        proxy::serve_tunnel(self.proxy.clone(), info, stream, shutdown)
            .instrument(span)
            .await;
    }
}

/// A tunnel counted on its HBONE connection while it is open (rebalancing reads it).
struct OnConnection(Arc<std::sync::atomic::AtomicUsize>);

impl OnConnection {
    fn open(tunnels: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        tunnels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(tunnels.clone())
    }
}

impl Drop for OnConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why an HBONE connection stops taking tunnels (GOAWAY).
enum Leave {
    /// The process is shutting down.
    Shutdown,
    /// The listeners were drained (`/drain_listeners`).
    Drained,
    /// It reached its maximum age.
    Aged,
    /// The rebalancer asked it to leave.
    Rebalance,
}

/// Resolves with the first reason for the connection to leave: shutdown, a listener drain,
/// its maximum age (with up to 10% jitter, so that connections opened together do not all
/// leave together), or the rebalancer's request.
async fn why_leave(
    mut shutdown: ShutdownWatch,
    mut drain: tokio::sync::watch::Receiver<bool>,
    max_age: Option<std::time::Duration>,
    rebalance: &tokio::sync::Notify,
) -> Leave {
    let shut = async {
        loop {
            if shutdown.changed().await.is_err() || *shutdown.borrow() {
                return;
            }
        }
    };
    let drained = async {
        loop {
            if drain.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if *drain.borrow() {
                return;
            }
        }
    };
    let aged = async move {
        match max_age {
            Some(age) => {
                let jitter = age.mul_f64(rand::random::<f64>() * 0.1);
                tokio::time::sleep(age + jitter).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shut => Leave::Shutdown,
        () = drained => Leave::Drained,
        () = aged => Leave::Aged,
        () = rebalance.notified() => Leave::Rebalance,
    }
}
