//! Tracing: one SERVER span per request continuing the client's trace, one CLIENT span
//! per upstream attempt, exported over OTLP (gRPC or HTTP) by [`export`].
//!
//! The tracer follows the snapshot: when the tracing settings change, a new tracer
//! provider (and export task) replaces the old one; the old one finishes its queue.

pub mod export;
pub mod propagation;

use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use filters::model::telemetry::TracingConfig;
use filters::Snapshot;
use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use export::ExportStats;
pub use propagation::Format;

/// A tracer provider built for one set of tracing settings.
pub struct Active {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    config: TracingConfig,
}

impl Drop for Active {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// What the proxy stamps on every SERVER span about itself, as Envoy and istiod do.
#[derive(Debug, Clone, Default)]
pub struct ProxyFacts {
    /// `node_id`: the node id the proxy presents to istiod (Envoy's tag).
    pub node_id: String,
    /// `istio.cluster_id`: the proxy's cluster (one of istiod's literal custom tags).
    pub cluster_id: String,
}

/// The tracing state of the proxy.
pub struct Tracing {
    // (snapshot version, settings, tracer) of the last lookup.
    active: Mutex<Option<(u64, Option<Arc<Active>>)>>,
    /// Export counters (across tracer rebuilds).
    pub stats: Arc<ExportStats>,
    /// The proxy whose snapshot and pools the exporter uses.
    proxy: Weak<crate::state::Proxy>,
    facts: ProxyFacts,
}

/// The trace a request belongs to, attached as a request extension so that the
/// forwarder can start CLIENT spans under the SERVER span.
#[derive(Clone)]
pub struct RequestTrace {
    active: Arc<Active>,
    cx: Context,
    format: Format,
}

/// The SERVER span of one request.
pub struct ServerSpan {
    span: opentelemetry_sdk::trace::Span,
    /// Handed to the filter chain.
    pub trace: RequestTrace,
}

impl Tracing {
    /// Tracing for the proxy `proxy` (its pools reach the collector), stamping `facts`.
    pub fn new(proxy: Weak<crate::state::Proxy>, facts: ProxyFacts) -> Self {
        Self {
            active: Mutex::new(None),
            stats: Arc::default(),
            proxy,
            facts,
        }
    }

    /// The tracer for the snapshot's settings, building it when they changed.
    fn active(&self, snapshot: &Snapshot) -> Option<Arc<Active>> {
        let mut slot = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((version, active)) = &*slot {
            if *version == snapshot.version() {
                return active.clone();
            }
        }
        let wanted = snapshot.telemetry().tracing.as_ref();
        let current = slot.as_ref().and_then(|(_, a)| a.clone());
        let next = match (wanted, current) {
            (None, _) => None,
            (Some(w), Some(cur)) if &cur.config == w => Some(cur),
            (Some(w), _) => match build(w, snapshot, self.proxy.clone(), self.stats.clone()) {
                Ok(a) => {
                    tracing::info!(provider = %w.provider, endpoint = %w.endpoint(), sampling = w.sampling_percentage, "tracing configured");
                    Some(Arc::new(a))
                }
                Err(e) => {
                    tracing::warn!(provider = %w.provider, error = %e, "tracing disabled: exporter not built");
                    None
                }
            },
        };
        *slot = Some((snapshot.version(), next.clone()));
        next
    }

    /// Starts the SERVER span for a request, continuing the incoming context. `None`
    /// when tracing is off.
    pub fn start_server(
        &self,
        snapshot: &Snapshot,
        headers: &http::HeaderMap,
        connect_traceparent: Option<&str>,
        name: impl FnOnce() -> String,
        start: SystemTime,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Option<ServerSpan> {
        let active = self.active(snapshot)?;
        let (name, attributes) = (name(), attributes());
        let (parent, format) = match propagation::extract(headers, connect_traceparent) {
            Some((cx, f)) => (Context::new().with_remote_span_context(cx), f),
            None => (Context::new(), Format::W3c),
        };
        let mut attributes = attributes;
        attributes.push(KeyValue::new("node_id", self.facts.node_id.clone()));
        attributes.push(KeyValue::new(
            "istio.cluster_id",
            self.facts.cluster_id.clone(),
        ));
        // Custom tags (istiod's literal ones among them) replace attributes of the same name.
        for (k, tag) in &active.config.custom_tags {
            if let Some(v) = custom_tag(tag, headers) {
                let kv = KeyValue::new(k.clone(), v);
                match attributes.iter_mut().find(|a| a.key.as_str() == k) {
                    Some(a) => *a = kv,
                    None => attributes.push(kv),
                }
            }
        }
        let max = active.config.max_tag_length;
        let attributes = attributes
            .into_iter()
            .map(|kv| truncate(kv, max))
            .collect::<Vec<_>>();
        let span = active
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&active.tracer, &parent);
        let cx = parent.with_remote_span_context(span.span_context().clone());
        Some(ServerSpan {
            span,
            trace: RequestTrace { active, cx, format },
        })
    }
}

impl ServerSpan {
    /// Renames the span (to the matched route's `decorator.operation`).
    pub fn rename(&mut self, name: String) {
        use opentelemetry::trace::Span as _;
        self.span.update_name(name);
    }

    /// Ends the span with its final attributes; 5xx marks it as an error.
    pub fn end(mut self, status: u16, attributes: Vec<KeyValue>) {
        for kv in attributes {
            self.span.set_attribute(kv);
        }
        self.span
            .set_attribute(KeyValue::new("http.response.status_code", status as i64));
        if status >= 500 {
            self.span
                .set_status(opentelemetry::trace::Status::error(format!(
                    "HTTP {status}"
                )));
        }
        self.span.end();
    }
}

/// A CLIENT span for one upstream attempt.
pub struct ClientSpan(opentelemetry_sdk::trace::Span);

impl RequestTrace {
    /// Starts a CLIENT span and writes its context onto the upstream request.
    pub fn start_client(
        &self,
        name: String,
        headers: &mut http::HeaderMap,
        attributes: Vec<KeyValue>,
    ) -> ClientSpan {
        let span = self
            .active
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&self.active.tracer, &self.cx);
        propagation::inject(headers, span.span_context(), self.format);
        ClientSpan(span)
    }
}

impl ClientSpan {
    /// Ends the attempt: the upstream's status, or the error that ended it.
    pub fn end(mut self, outcome: Result<u16, String>) {
        match outcome {
            Ok(status) => {
                self.0
                    .set_attribute(KeyValue::new("http.response.status_code", status as i64));
                if status >= 500 {
                    self.0
                        .set_status(opentelemetry::trace::Status::error(format!(
                            "HTTP {status}"
                        )));
                }
            }
            Err(e) => {
                self.0.set_attribute(KeyValue::new("error.type", e.clone()));
                self.0.set_status(opentelemetry::trace::Status::error(e));
            }
        }
        self.0.end();
    }
}

fn build(
    config: &TracingConfig,
    snapshot: &Snapshot,
    proxy: Weak<crate::state::Proxy>,
    stats: Arc<ExportStats>,
) -> Result<Active, String> {
    let gw = &snapshot.waypoint().gateway;
    // Envoy's OpenTelemetry tracer: `service.name` is the tracer's `service_name`, which
    // istiod fills with the proxy's service cluster, `<gateway>.<namespace>`.
    let service_name = config
        .service_name
        .clone()
        .unwrap_or_else(|| format!("{}.{}", gw.name, gw.namespace));
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(service_name)
        .with_attributes([
            KeyValue::new("k8s.namespace.name", gw.namespace.clone()),
            KeyValue::new("istio.mesh_id", snapshot.telemetry().mesh_id.clone()),
        ])
        .build();
    let processor = export::start(config, &resource, proxy, stats)?;
    let ratio = (config.sampling_percentage / 100.0).clamp(0.0, 1.0);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("waypoint");
    Ok(Active {
        provider,
        tracer,
        config: config.clone(),
    })
}

fn custom_tag(
    tag: &filters::model::telemetry::CustomTag,
    headers: &http::HeaderMap,
) -> Option<String> {
    use filters::model::telemetry::CustomTag;
    match tag {
        CustomTag::Literal(v) => Some(v.clone()),
        CustomTag::Environment { name, default } => {
            std::env::var(name).ok().or_else(|| default.clone())
        }
        CustomTag::Header { name, default } => headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| default.clone()),
    }
}

fn truncate(kv: KeyValue, max: usize) -> KeyValue {
    match &kv.value {
        opentelemetry::Value::String(s) if max > 0 && s.as_str().len() > max => {
            let s = s.as_str();
            let mut end = max;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            KeyValue::new(kv.key.clone(), s[..end].to_string())
        }
        _ => kv,
    }
}
