//! Readiness (`/healthz/ready` on 15021), the admin API (`/ready`, `/config_dump`,
//! `/stats`, `/stats/prometheus`, `/explain`, `/drain_listeners`, `/quitquitquit` on
//! 127.0.0.1:15000),
//! the metrics listener (`/stats/prometheus` on 15020) and, under pilot-agent, the
//! bootstrap's static listeners instead of the first and the last, served by Pingora HTTP
//! services.

mod envoy;
mod explain;
pub mod history;
pub mod logging;
mod prometheus;
mod static_listener;

pub use prometheus::Metrics;
pub use static_listener::StaticRoutes;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use tokio::sync::Notify;

use crate::state::Proxy;

/// The readiness endpoint.
pub struct Readiness {
    proxy: Arc<Proxy>,
}

impl Readiness {
    /// Readiness over the shared state.
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self { proxy }
    }
}

fn text(status: StatusCode, body: impl Into<Vec<u8>>, content_type: &str) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("valid response")
}

#[async_trait]
impl ServeHttp for Readiness {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz/ready" if self.proxy.draining() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n", "text/plain")
            }
            "/healthz/ready" if self.proxy.ready() => text(StatusCode::OK, "ready\n", "text/plain"),
            "/healthz/ready" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: configuration not loaded, or the HBONE listener not accepting yet\n",
                "text/plain",
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
        }
    }
}

/// The admin API.
pub struct Admin {
    proxy: Arc<Proxy>,
    quit: Arc<Notify>,
}

impl Admin {
    /// Admin over the shared state; `/quitquitquit` notifies `quit`.
    pub fn new(proxy: Arc<Proxy>, quit: Arc<Notify>) -> Self {
        Self { proxy, quit }
    }

    fn stats(&self) -> Vec<envoy::Stat> {
        let s = &self.proxy.stats;
        let u = &self.proxy.upstream;
        let snapshot = self.proxy.config.current();
        let load = |c: &std::sync::atomic::AtomicUsize| c.load(Ordering::Relaxed) as u64;
        let mut out: Vec<envoy::Stat> = [
            ("config.version", snapshot.version()),
            ("config.rejected", self.proxy.config.rejected()),
            ("downstream.hbone_connections", load(&s.hbone_connections)),
            ("downstream.tunnels", load(&s.tunnels)),
            ("downstream.requests_in_flight", load(&s.requests_in_flight)),
            (
                "downstream.requests_total",
                s.requests_total.load(Ordering::Relaxed),
            ),
            ("upstream.hbone_handshakes", u.hbone.handshakes()),
            (
                "upstream.hbone_connections",
                u.hbone.open_connections() as u64,
            ),
            ("upstream.http_connects", u.http.connects()),
            (
                "authz.allowed",
                filters::authz::DECISIONS.allowed.load(Ordering::Relaxed),
            ),
            (
                "authz.denied",
                filters::authz::DECISIONS.denied.load(Ordering::Relaxed),
            ),
        ]
        .into_iter()
        .map(|(k, v)| envoy::Stat::gauge(k, v))
        .collect();
        out.extend(envoy::stats(&self.proxy));
        out.extend(snapshot.authz().all().into_iter().map(|p| {
            envoy::Stat::gauge(
                format!("authz.policy.{}.matched", p.name),
                p.matched.load(Ordering::Relaxed),
            )
        }));
        out
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let query = session
            .req_header()
            .uri
            .query()
            .unwrap_or_default()
            .to_string();
        match session.req_header().uri.path() {
            "/ready" if self.proxy.draining() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n", "text/plain")
            }
            "/ready" if self.proxy.ready() => text(StatusCode::OK, "LIVE\n", "text/plain"),
            "/ready" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "PRE_INITIALIZING\n",
                "text/plain",
            ),
            // Over xDS, Envoy's admin v3 dump of what was received (istioctl reads it);
            // `?format=waypoint` (and the local configuration) dumps the snapshot.
            "/config_dump"
                if self.proxy.xds.get().is_some() && !query.contains("format=waypoint") =>
            {
                let certs = self.proxy.certs.current();
                let secrets = xds::ads::dump::secrets_dump(&certs.chain_pem, &certs.roots_pem);
                let dump =
                    xds::ads::dump::config_dump(self.proxy.xds.get().expect("checked"), secrets);
                text(
                    StatusCode::OK,
                    serde_json::to_vec_pretty(&dump).unwrap_or_default(),
                    "application/json",
                )
            }
            "/config_history" => {
                match serde_json::to_vec_pretty(&self.proxy.config.history().entries()) {
                    Ok(json) => text(StatusCode::OK, json, "application/json"),
                    Err(e) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        e.to_string(),
                        "text/plain",
                    ),
                }
            }
            "/config_dump" => match serde_json::to_vec_pretty(&*self.proxy.config.current()) {
                Ok(json) => text(StatusCode::OK, json, "application/json"),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e.to_string(),
                    "text/plain",
                ),
            },
            "/stats" => match envoy::filter_stats(&self.stats(), &query) {
                Ok(body) => text(StatusCode::OK, body, "text/plain"),
                Err(e) => text(StatusCode::BAD_REQUEST, e, "text/plain"),
            },
            "/server_info" => text(
                StatusCode::OK,
                envoy::server_info(&self.proxy),
                "application/json",
            ),
            "/stats/prometheus" => prometheus::response(&self.proxy, &query),
            "/explain" if method == Method::POST => explain::handle(&self.proxy, session).await,
            "/explain" => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST with a JSON query\n",
                "text/plain",
            ),
            "/drain_listeners" if method == Method::POST => {
                tracing::info!("draining listeners (admin API)");
                self.proxy.drain.send_replace(true);
                text(StatusCode::OK, "OK\n", "text/plain")
            }
            "/drain_listeners" => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n", "text/plain"),
            "/logging" => logging::handle(method == Method::POST, &query),
            "/quitquitquit" if method == Method::POST => {
                tracing::info!("shutdown requested over the admin API");
                // Answer first, then start the shutdown.
                let quit = self.quit.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    quit.notify_one();
                });
                text(StatusCode::OK, "OK\n", "text/plain")
            }
            "/quitquitquit" => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n", "text/plain"),
            _ => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
        }
    }
}
