//! Telemetry for one HTTP request: begun when the request headers arrive, finished when
//! the last response byte is written. Records the metric sample, the access log line and
//! the SERVER span from the same facts.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use filters::access_log::HttpRecord;
use filters::model::{RequestLog, Snapshot, Target, TunnelInfo};
use http::{HeaderMap, Request};
use opentelemetry::KeyValue;

use super::attributes::Facts;
use super::labels::SourceLabels;
use super::metrics::{dimensions, HttpKey, HttpSample, OwnOverrides};
use super::trace::ServerSpan;
use super::Telemetry;

/// How a request ended, as the HTTP handler saw it.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Status sent downstream.
    pub code: u16,
    /// Envoy response flags (`-` when none).
    pub flags: &'static str,
    /// `%RESPONSE_CODE_DETAILS%`.
    pub details: std::borrow::Cow<'static, str>,
    /// The response headers as sent (kept only when access logging is on; boxed, as the
    /// outcome travels with the response body).
    pub response_headers: Option<Box<HeaderMap>>,
    /// Size of the response headers.
    pub response_header_bytes: u64,
    /// Request body bytes received.
    pub body_received: u64,
    /// Response body bytes sent.
    pub body_sent: u64,
    /// gRPC status from the response headers or trailers.
    pub grpc_status: Option<u16>,
}

/// What access logs and metric dimensions read of a request.
struct Logged {
    headers: HeaderMap,
    method: String,
    path: String,
}

/// Telemetry state of one in-flight request.
pub struct RequestTelemetry {
    start: SystemTime,
    started: Instant,
    protocol: &'static str,
    grpc: bool,
    request_header_bytes: u64,
    /// The request as access logs and metric dimensions read it, when either is on.
    /// Boxed, as is the span: this state travels with the response body, moved at each
    /// step, and most requests have neither.
    logged: Option<Box<Logged>>,
    log: RequestLog,
    span: Option<Box<ServerSpan>>,
    snapshot: Arc<Snapshot>,
    tunnel: Arc<TunnelInfo>,
}

/// The `grpc-status` in `headers` (a gRPC response's trailers, or its headers when it
/// failed at once).
pub fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Approximate wire size of a header block (name, value and separators per field).
pub fn header_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum()
}

impl RequestTelemetry {
    /// Starts telemetry for `req`: attaches the request log and trace to it.
    pub fn begin<B>(
        telemetry: &Telemetry,
        snapshot: Arc<Snapshot>,
        tunnel: Arc<TunnelInfo>,
        req: &mut Request<B>,
    ) -> Self {
        let start = SystemTime::now();
        let method = req.method().as_str();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let protocol = match req.version() {
            http::Version::HTTP_2 => "HTTP/2",
            // Served with the connection manager's `accept_http_10`, or answered 426.
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let grpc = filters::error::is_grpc(req.headers());
        let request_header_bytes =
            header_bytes(req.headers()) + (method.len() + path.len() + 12) as u64;
        // Kept (with the method and path) only for access logs and metric dimensions.
        let config = snapshot.telemetry();
        let logged = (!config.access_logs_for(&tunnel.target, false).is_empty()
            || config.has_dimensions())
        .then(|| {
            Box::new(Logged {
                headers: req.headers().clone(),
                method: method.to_string(),
                path: path.to_string(),
            })
        });
        let span = telemetry
            .tracing
            .start_server(
                &snapshot,
                req.headers(),
                tunnel.traceparent.as_deref(),
                // Built only when a span is started: most requests are not traced.
                || span_name(&tunnel),
                start,
                || server_attributes(req, &tunnel, &snapshot, path),
            )
            .map(Box::new);
        // The log of the tunnel's previous request when it is done with it (HTTP/1.1).
        let log = tunnel.log_slot.take();
        if let Some(ctx) = req
            .extensions_mut()
            .get_mut::<filters::model::RequestContext>()
        {
            ctx.log = Some(log.clone());
        }
        if let Some(s) = &span {
            req.extensions_mut().insert(s.trace.clone());
        }
        Self {
            start,
            started: Instant::now(),
            protocol,
            grpc,
            request_header_bytes,
            logged,
            log,
            span,
            snapshot,
            tunnel,
        }
    }

    /// Whether the request is gRPC (`content-type: application/grpc*`).
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// Whether access logging (or a metric dimension) wants the response headers kept.
    pub fn wants_response_headers(&self) -> bool {
        self.logged.is_some()
    }

    /// Records the metric sample, the access log entries and ends the SERVER span.
    pub fn finish(self, telemetry: &Telemetry, source: &SourceLabels, outcome: Outcome) {
        let duration = self.started.elapsed();
        let upstream = self.log.get();
        let target_service = match &self.tunnel.target {
            Target::Service { service, port } => Some((service.clone(), *port)),
            Target::Workload { .. } => None,
        };
        let service = upstream.service.clone().or(target_service);
        let destination = telemetry.metrics.destinations.get(
            service.as_ref().map(|(s, _)| s),
            upstream.workload.as_ref(),
            &telemetry.metrics.cluster,
        );
        let config = self.snapshot.telemetry();
        let request_bytes = self.request_header_bytes + outcome.body_received;
        let response_bytes = outcome.response_header_bytes + outcome.body_sent;
        let grpc_status = if self.grpc { outcome.grpc_status } else { None };
        let wanted = self.span.is_some() || self.logged.is_some();
        let cluster = wanted
            .then(|| {
                service
                    .as_ref()
                    .map(|(s, port)| format!("inbound-vip|{port}|http|{}", s.hostname))
                    .or_else(|| match &self.tunnel.target {
                        Target::Workload { workload, port } => workload
                            .primary_ip()
                            .map(|ip| format!("inbound-pod|{port}||{ip}")),
                        Target::Service { .. } => None,
                    })
            })
            .flatten();
        let route = upstream
            .route
            .as_ref()
            .filter(|_| wanted)
            .map(|r| r.name.to_string());
        // The record access logs and metric dimensions read (kept only when they are on).
        let record = self.logged.map(|logged| HttpRecord {
            start: self.start,
            method: logged.method,
            path: logged.path,
            protocol: self.protocol,
            request_headers: logged.headers,
            response_headers: outcome.response_headers.map(|h| *h).unwrap_or_default(),
            code: outcome.code,
            flags: outcome.flags,
            details: outcome.details.into_owned(),
            grpc_status,
            bytes_received: outcome.body_received,
            bytes_sent: outcome.body_sent,
            request_total: request_bytes,
            response_total: response_bytes,
            duration,
            upstream_service_time: upstream.service_time,
            upstream_host: upstream.address.map(|a| a.to_string()),
            upstream_cluster: cluster.clone(),
            downstream_local_address: self.tunnel.authority.to_string(),
            downstream_remote_address: self
                .tunnel
                .source_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            route_name: route.clone(),
            upstream_failure: None,
        });
        // Looked up only when something reads it (access logs, dimensions).
        let source_pod = record
            .as_ref()
            .and(self.tunnel.source_ip)
            .and_then(|ip| self.snapshot.workload(ip));
        let facts = Facts {
            record: record.as_ref(),
            tunnel: &self.tunnel,
            source,
            destination: &destination,
            source_pod: source_pod.map(|w| &**w),
            destination_pod: upstream.workload.as_deref(),
            upstream: upstream.address,
        };
        let (overrides, own) = config.metric_overrides_for(&self.tunnel.target);
        let dimensions = if config.has_dimensions() {
            dimensions::evaluate(overrides, &facts)
        } else {
            None
        };
        telemetry.metrics.record_http(
            HttpKey {
                source: source.clone(),
                destination: destination.clone(),
                protocol: if self.grpc { "grpc" } else { "http" },
                code: outcome.code,
                grpc_status,
                flags: outcome.flags,
                dimensions,
                overrides: own.cloned().map(OwnOverrides),
            },
            HttpSample {
                duration_ms: duration.as_secs_f64() * 1000.0,
                request_bytes,
                response_bytes,
            },
        );
        if let Some(mut span) = self.span {
            // Envoy names the span after the matched route's decorator.
            if let Some(op) = upstream.route.as_ref().and_then(|r| r.operation.clone()) {
                span.rename(op);
            }
            let (svc, dst) = &*destination;
            let mut attrs = vec![
                KeyValue::new("istio.destination_workload", dst.workload.clone()),
                KeyValue::new("istio.destination_namespace", dst.namespace.clone()),
                KeyValue::new("istio.destination_service", svc.host.clone()),
                KeyValue::new("istio.source_workload", source.workload.clone()),
                KeyValue::new("istio.source_namespace", source.namespace.clone()),
                KeyValue::new("response_flags", outcome.flags),
                KeyValue::new("http.request.body.size", outcome.body_received as i64),
                KeyValue::new("http.response.body.size", outcome.body_sent as i64),
            ];
            if let Some(r) = &route {
                attrs.push(KeyValue::new("http.route", r.clone()));
            }
            if let Some(c) = &cluster {
                attrs.push(KeyValue::new("upstream_cluster", c.clone()));
            }
            if let Some(a) = upstream.address {
                attrs.push(KeyValue::new("upstream_address", a.to_string()));
            }
            if let Some(g) = grpc_status {
                attrs.push(KeyValue::new("rpc.grpc.status_code", g as i64));
            }
            span.end(outcome.code, attrs);
        }
        if let Some(record) = &record {
            let logs = config.access_logs_for(&self.tunnel.target, false);
            telemetry
                .access_log
                .log(&self.snapshot, logs, record, &facts);
        }
        // Everything above read its copy: the log goes back for the tunnel's next request.
        self.tunnel.log_slot.put(self.log);
    }
}

/// Istio names a waypoint's server spans after the destination: `host:port/*`.
fn span_name(tunnel: &TunnelInfo) -> String {
    match &tunnel.target {
        Target::Service { service, port } => format!("{}:{port}/*", service.hostname),
        Target::Workload { .. } => format!("{}/*", tunnel.authority),
    }
}

fn server_attributes<B>(
    req: &Request<B>,
    tunnel: &TunnelInfo,
    snapshot: &Snapshot,
    path: &str,
) -> Vec<KeyValue> {
    let header = |n: http::header::HeaderName| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (url_path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let gw = &snapshot.waypoint().gateway;
    let mut attrs = vec![
        KeyValue::new("http.request.method", req.method().as_str().to_string()),
        KeyValue::new("url.path", url_path.to_string()),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new(
            "network.protocol.version",
            match req.version() {
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_10 => "1.0",
                _ => "1.1",
            },
        ),
        KeyValue::new("server.port", tunnel.authority.port() as i64),
        KeyValue::new("istio.canonical_service", gw.name.clone()),
        KeyValue::new("istio.canonical_revision", "latest"),
        KeyValue::new("istio.namespace", gw.namespace.clone()),
        KeyValue::new("istio.mesh_id", snapshot.telemetry().mesh_id.clone()),
        KeyValue::new("istio.source_principal", tunnel.peer.to_string()),
    ];
    if let Some(q) = query {
        attrs.push(KeyValue::new("url.query", q.to_string()));
    }
    if let Some(h) = header(http::header::HOST) {
        let host = h.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or(h);
        attrs.push(KeyValue::new("server.address", host));
    }
    if let Some(ip) = tunnel.source_ip {
        attrs.push(KeyValue::new("client.address", ip.to_string()));
    }
    if let Some(ua) = header(http::header::USER_AGENT) {
        attrs.push(KeyValue::new("user_agent.original", ua));
    }
    if let Some(id) = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        attrs.push(KeyValue::new("guid:x-request-id", id.to_string()));
    }
    attrs
}
