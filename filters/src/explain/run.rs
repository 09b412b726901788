//! Running one request through the decision filters, recording each step.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use serde::{Deserialize, Serialize};
use tower::{Layer, ServiceExt};

use super::{Sink, Stage, Step};
use crate::authn::AuthnLayer;
use crate::authz::ext::{CheckFuture, CheckOutcome, CheckRequest, ExtAuthzClient, Provider};
use crate::authz::AuthzLayer;
use crate::body::{self, Body};
use crate::error::{ResponseDetails, ResponseFlag};
use crate::model::{Identity, Protocol, RequestContext, RequestLog, Snapshot, Target, TunnelInfo};
use crate::route::{RouteDecision, RouteLayer};
use crate::ProxyError;

/// A request to explain, as a client pod sends it through its ztunnel.
#[derive(Debug, Clone)]
pub struct Input {
    /// The client's SPIFFE identity (the HBONE peer).
    pub from: Identity,
    /// The client's IP (`source.ip`), if known.
    pub source_ip: Option<IpAddr>,
    /// The CONNECT authority: the Service VIP (or pod IP) and port.
    pub authority: SocketAddr,
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// The `Host` header.
    pub host: String,
    /// Other request headers.
    pub headers: HeaderMap,
}

/// A request to explain in the form the command line and the admin `POST /explain` take.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// The client's SPIFFE identity, `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub from: String,
    /// Method (default `GET`).
    #[serde(default)]
    pub method: Option<String>,
    /// `http://<host>[:port]/path?query`; the host is a Service name (`name`, `name.ns`,
    /// `name.ns.svc[.domain]`), a Service hostname or an IP.
    pub url: String,
    /// Request headers, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The CONNECT authority `ip:port`, instead of resolving the URL's host.
    #[serde(default)]
    pub authority: Option<String>,
    /// The client's IP.
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
}

/// Why a [`Query`] cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A field does not parse.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The URL's host names no Service this configuration knows.
    #[error("no Service named {0:?} (give --authority VIP:port)")]
    UnknownHost(String),
}

fn invalid(field: &'static str, reason: impl ToString) -> QueryError {
    QueryError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

impl Query {
    /// The request it describes, its URL's host resolved against `snapshot` as a pod's
    /// DNS would resolve a Service name (to its first cluster IP).
    pub fn input(&self, snapshot: &Snapshot) -> Result<Input, QueryError> {
        let from: Identity = self.from.parse().map_err(|e| invalid("from", e))?;
        let method = Method::from_bytes(self.method.as_deref().unwrap_or("GET").as_bytes())
            .map_err(|e| invalid("method", e))?;
        let uri: Uri = self.url.parse().map_err(|e| invalid("url", e))?;
        let host = uri
            .host()
            .ok_or_else(|| invalid("url", "an absolute URL (http://host/path) is needed"))?;
        if uri.scheme_str().is_some_and(|s| s != "http") {
            return Err(invalid(
                "url",
                "only http:// (the waypoint sees plaintext HTTP)",
            ));
        }
        let port = uri.port_u16().unwrap_or(80);
        let authority = match &self.authority {
            Some(a) => a.parse().map_err(|e| invalid("authority", e))?,
            None => match host.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, port),
                Err(_) => SocketAddr::new(
                    service_vip(snapshot, host, &from.namespace)
                        .ok_or_else(|| QueryError::UnknownHost(host.to_string()))?,
                    port,
                ),
            },
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| invalid("headers", e))?;
            let value = HeaderValue::from_str(v).map_err(|e| invalid("headers", e))?;
            headers.append(name, value);
        }
        Ok(Input {
            from,
            source_ip: self.source_ip,
            authority,
            method,
            path: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
            host: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
            headers,
        })
    }
}

/// The first cluster IP of the Service `host` names, seen from a pod in `client_ns`:
/// `name`, `name.ns`, `name.ns.svc`, or its full hostname.
fn service_vip(snapshot: &Snapshot, host: &str, client_ns: &str) -> Option<IpAddr> {
    let host = host.trim_end_matches('.');
    let mut parts = host.splitn(3, '.');
    let name = parts.next()?;
    let ns = parts.next().unwrap_or(client_ns);
    let rest = parts.next();
    snapshot
        .services()
        .values()
        .filter(|s| s.served)
        .find(|s| {
            s.hostname == host
                || (s.name.name == name
                    && s.name.namespace == ns
                    && rest.is_none_or(|r| r == "svc" || s.hostname.ends_with(r)))
        })
        .and_then(|s| {
            // A Service with only address ranges: the first address of its first range.
            s.vips
                .first()
                .copied()
                .or_else(|| s.ranges.first().map(|n| n.network()))
        })
}

/// What the request comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Forwarded to a backend, or answered by its route (redirect, direct response).
    Allowed,
    /// Refused by authentication (401) or authorization (403).
    Denied,
    /// No Service or route for it (404), no usable backend (500), no healthy endpoint
    /// (503), or malformed (400).
    NotRouted,
    /// A CUSTOM policy matched: the ext_authz provider decides at run time. The steps
    /// after it are what happens if it allows.
    ProviderDecides,
    /// The port is plain TCP: the waypoint copies bytes, HTTP requests are not decided.
    NotHttp,
}

impl Verdict {
    /// The `waypoint explain` exit status: 0 allowed, 1 denied, 2 not routed, 3 the
    /// ext_authz provider decides, 4 not HTTP.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Allowed => 0,
            Verdict::Denied => 1,
            Verdict::NotRouted => 2,
            Verdict::ProviderDecides => 3,
            Verdict::NotHttp => 4,
        }
    }
}

/// The final answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// What the request comes to.
    pub verdict: Verdict,
    /// The status the waypoint answers with; `None` when the request is forwarded (the
    /// backend answers).
    pub status: Option<u16>,
    /// Envoy's response code details (`via_upstream` when forwarded).
    pub details: String,
    /// The response flag (`-`, `NR`, ...).
    pub flag: String,
    /// The matched route (`namespace/name`), as the access log's `%ROUTE_NAME%`.
    pub route: Option<String>,
    /// The backend drawn (`namespace/name:port`), when forwarded.
    pub backend: Option<String>,
}

/// A request and everything the waypoint decided about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explanation {
    /// The configuration version explained against, and its source.
    pub config: String,
    /// The request: `METHOD host path from <identity> via <authority>`.
    pub request: String,
    /// The steps, in the order the waypoint takes them.
    pub steps: Vec<Step>,
    /// The answer.
    pub answer: Answer,
}

/// An ext_authz client that asks nobody: an explanation has no side effects. It notes
/// that it was asked and lets the request go on, so the steps after it are explained.
#[derive(Debug, Default)]
struct ProviderDecides(AtomicBool);

impl ExtAuthzClient for ProviderDecides {
    fn check<'a>(
        &'a self,
        _provider: &'a Provider,
        _ctx: &'a RequestContext,
        _request: CheckRequest,
    ) -> CheckFuture<'a> {
        self.0.store(true, Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(CheckOutcome::Allow(
            Default::default(),
        ))))
    }
}

/// Marks the response of the recording upstream: the request would be forwarded.
#[derive(Debug, Clone)]
struct Forwarded(String);

/// Explains `input` against `snapshot`: resolves the CONNECT authority as the HBONE
/// listener does, then runs the request through the proxy's authentication,
/// authorization and routing filters, with an upstream that records the routing decision
/// (backend, retries, timeouts) instead of forwarding.
pub async fn explain(snapshot: Arc<Snapshot>, input: Input) -> Explanation {
    let sink = Sink::default();
    let config = format!("version {} from {}", snapshot.version(), snapshot.source());
    let request = format!(
        "{} http://{}{} from {} via CONNECT {}",
        input.method, input.host, input.path, input.from, input.authority
    );
    let answer = run(&snapshot, input, &sink).await;
    Explanation {
        config,
        request,
        steps: sink.steps(),
        answer,
    }
}

async fn run(snapshot: &Arc<Snapshot>, input: Input, sink: &Sink) -> Answer {
    let answer = |verdict, status: Option<u16>, details: &str, flag: &str| Answer {
        verdict,
        status,
        details: details.into(),
        flag: flag.into(),
        route: None,
        backend: None,
    };
    // The HBONE listener's lookup (inbound/connection.rs): no target, CONNECT 404.
    let Some(target) = snapshot.resolve(input.authority) else {
        sink.push(
            Step::new(Stage::Authority, input.authority.to_string(), "no match").detail(
                "no Service VIP:port or served workload at this address: the CONNECT gets 404",
            ),
        );
        return answer(Verdict::NotRouted, Some(404), "connect_refused", "-");
    };
    let protocol = target.protocol();
    sink.push(
        Step::new(Stage::Authority, input.authority.to_string(), "selected").detail(format!(
            "{} (port protocol {}){}",
            target.describe(),
            format!("{protocol:?}").to_ascii_lowercase(),
            match &target {
                Target::Service { service, .. } => format!(", hostname {}", service.hostname),
                Target::Workload { .. } => String::new(),
            }
        )),
    );
    if protocol == Protocol::Tcp {
        sink.push(
            Step::new(Stage::Authority, "protocol", "tcp")
                .detail("the port is TCP: the waypoint copies bytes; HTTP routes do not apply"),
        );
        return answer(Verdict::NotHttp, None, "-", "-");
    }
    let tunnel = Arc::new(TunnelInfo {
        peer: input.from,
        peer_addr: None,
        source_ip: input.source_ip,
        source_port: None,
        authority: input.authority,
        target,
        baggage: None,
        traceparent: None,
        principal_cache: Default::default(),
        log_slot: Default::default(),
    });
    let mut req = Request::new(body::empty());
    *req.method_mut() = input.method;
    *req.uri_mut() = match input.path.parse() {
        Ok(u) => u,
        Err(_) => return answer(Verdict::NotRouted, Some(400), "bad_request", "DPE"),
    };
    *req.headers_mut() = input.headers;
    if let Ok(h) = HeaderValue::from_str(&input.host) {
        req.headers_mut().insert(http::header::HOST, h);
    }
    // As the HTTP handler does before the filters (proxy/http.rs).
    snapshot.request_headers().apply(req.headers_mut());
    let log = RequestLog::default();
    req.extensions_mut().insert(RequestContext {
        snapshot: snapshot.clone(),
        tunnel,
        log: Some(log.clone()),
        decision: None,
    });
    req.extensions_mut().insert(sink.clone());
    let provider = Arc::new(ProviderDecides::default());
    let upstream = RecordingUpstream(sink.clone());
    // The proxy's chain (proxy/http.rs), with the recording upstream in place of the
    // retry layer and the forwarder.
    let chain = AuthnLayer
        .layer(AuthzLayer::with_ext_authz(provider.clone()).layer(RouteLayer.layer(upstream)));
    let result = chain.oneshot(req).await;
    let route = log.get().route.map(|r| r.name.to_string());
    let asked = provider.0.load(Ordering::Relaxed);
    let mut out = match result {
        Ok(resp) => {
            let flag = resp.extensions().get::<ResponseFlag>().map_or("-", |f| f.0);
            match resp.extensions().get::<Forwarded>() {
                Some(Forwarded(backend)) => Answer {
                    backend: Some(backend.clone()),
                    ..answer(Verdict::Allowed, None, "via_upstream", flag)
                },
                None => {
                    // As the HTTP handler reports it (proxy/http.rs).
                    let details = resp
                        .extensions()
                        .get::<ResponseDetails>()
                        .map_or("via_upstream", |d| d.0);
                    answer(
                        Verdict::Allowed,
                        Some(resp.status().as_u16()),
                        details,
                        flag,
                    )
                }
            }
        }
        Err(e) => {
            let verdict = match e {
                ProxyError::Unauthenticated(_) | ProxyError::Denied(_) => Verdict::Denied,
                _ => Verdict::NotRouted,
            };
            answer(
                verdict,
                Some(e.status().as_u16()),
                &e.details(),
                e.response_flag(),
            )
        }
    };
    if asked && out.verdict == Verdict::Allowed {
        out.verdict = Verdict::ProviderDecides;
    }
    out.route = route;
    out
}

/// The innermost service of an explanation: records what the retry layer and the
/// forwarder would be given, and answers in their place.
#[derive(Debug, Clone)]
struct RecordingUpstream(Sink);

impl tower::Service<Request<Body>> for RecordingUpstream {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = std::future::Ready<Result<Response<Body>, ProxyError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ProxyError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(d) = RouteDecision::of(&req) else {
            return std::future::ready(Err(ProxyError::Internal(
                "routed request without a decision".into(),
            )));
        };
        let backend = d.backend.describe();
        // The forwarder's own choice (balance::pick): the endpoint, or 503 when none is
        // healthy or the port's circuit breaker is open. The pick is dropped at once.
        match crate::balance::pick(&d.backend, d.hash) {
            Ok(picked) => self.0.push(
                Step::new(Stage::Backend, backend.clone(), "forward").detail(format!(
                    "endpoint {} at {} over {}{} ({})",
                    picked.workload.name,
                    picked.address,
                    if picked.workload.hbone {
                        "HBONE"
                    } else {
                        "plain TCP"
                    },
                    if picked.tls.is_some() { ", TLS" } else { "" },
                    match &d.backend {
                        crate::route::Backend::Service { service, port } =>
                            service.port(*port).map_or(String::new(), |p| {
                                format!(
                                    "{} endpoints, {}",
                                    p.endpoints.len(),
                                    if d.hash.is_some() {
                                        "consistent hash"
                                    } else {
                                        "the port's load balancing"
                                    }
                                )
                            }),
                        crate::route::Backend::Workload { .. } => "the addressed pod".into(),
                    }
                )),
            ),
            Err(e) => {
                self.0.push(
                    Step::new(Stage::Backend, backend, "no endpoint")
                        .detail(format!("{e}: {}", e.status())),
                );
                return std::future::ready(Err(e));
            }
        }
        let retry = match d.retry.as_ref().filter(|r| r.attempts > 0) {
            Some(r) => format!(
                "up to {} retries on {} and connection failures, {:?} backoff",
                r.attempts,
                if r.codes.is_empty() {
                    "no status".to_string()
                } else {
                    format!("{:?}", r.codes)
                },
                r.backoff
            ),
            None => "no retries".into(),
        };
        let timeouts = format!(
            "request timeout {}, per-attempt timeout {}",
            d.timeouts
                .request
                .map_or("none".to_string(), |t| format!("{t:?}")),
            d.timeouts
                .backend_request
                .map_or("none".to_string(), |t| format!("{t:?}"))
        );
        self.0.push(
            Step::new(Stage::Policy, "retries and timeouts", "applied")
                .detail(format!("{retry}; {timeouts}")),
        );
        let mut resp = Response::new(body::empty());
        resp.extensions_mut().insert(Forwarded(backend));
        std::future::ready(Ok(resp))
    }
}
