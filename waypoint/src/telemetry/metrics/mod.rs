//! Istio's standard metrics, reported as `reporter="waypoint"`, and their registry.
//!
//! A series is keyed by label values that come from configuration (Services, pods), from
//! the peer (baggage, identity; bounded in length) and from the response (code, flags).
//! Paths and other request data become labels only when a Telemetry metric override adds
//! them as dimensions ([`dimensions`]). The number of series is capped:
//! samples for series beyond the cap are counted in
//! `waypoint_metrics_series_overflow_total` instead, so memory stays bounded whatever
//! peers send.

pub mod dimensions;
pub mod histogram;
pub mod prometheus;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use dimensions::Dimensions;
use filters::model::telemetry::{MetricOverride, OverrideSet};
use histogram::{Histogram, BYTES, DURATION_MS};

use super::labels::{DestinationCache, DestinationLabels, PeerLabels, ServiceLabels, SourceLabels};

/// The series maps' hasher: every request hashes its key once (the label sets' own hashes
/// are computed when they are built, see [`super::labels::Shared`]). Keys are bounded label
/// values (and the number of series is capped), so HashDoS resistance is not needed.
type Fast = foldhash::fast::RandomState;

/// Default cap on the number of series per metric family.
pub const DEFAULT_SERIES_LIMIT: usize = 10_000;

/// The metric overrides a series was recorded under, when its Service port has its own
/// (a Telemetry targeting the Service); keys compare them by identity.
#[derive(Debug, Clone)]
pub struct OwnOverrides(pub OverrideSet);

impl PartialEq for OwnOverrides {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0 .0, &other.0 .0)
    }
}

impl Eq for OwnOverrides {}

impl std::hash::Hash for OwnOverrides {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (std::sync::Arc::as_ptr(&self.0 .0) as usize).hash(state)
    }
}

/// The labels of one HTTP series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpKey {
    /// The source end.
    pub source: SourceLabels,
    /// The destination Service and pod.
    pub destination: DestinationLabels,
    /// `http` or `grpc`.
    pub protocol: &'static str,
    /// HTTP status sent downstream.
    pub code: u16,
    /// gRPC status, for gRPC requests that got one.
    pub grpc_status: Option<u16>,
    /// Envoy response flags (`-` when none).
    pub flags: &'static str,
    /// Dimensions added by metric overrides.
    pub dimensions: Dimensions,
    /// The Service port's own overrides; `None` for the waypoint's.
    pub overrides: Option<OwnOverrides>,
}

/// The labels of one TCP series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpKey {
    /// The source end.
    pub source: SourceLabels,
    /// The destination Service and pod.
    pub destination: DestinationLabels,
    /// Envoy response flags (`-` when none).
    pub flags: &'static str,
    /// Dimensions added by metric overrides.
    pub dimensions: Dimensions,
    /// The Service port's own overrides; `None` for the waypoint's.
    pub overrides: Option<OwnOverrides>,
}

#[derive(Debug, Clone)]
struct HttpSeries {
    requests: u64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl HttpSeries {
    fn merge(&mut self, other: &HttpSeries) {
        self.requests += other.requests;
        self.duration.merge(&other.duration);
        self.request_bytes.merge(&other.request_bytes);
        self.response_bytes.merge(&other.response_bytes);
    }

    fn observe(&mut self, sample: &HttpSample) {
        self.requests += 1;
        self.duration.observe(sample.duration_ms);
        self.request_bytes.observe(sample.request_bytes as f64);
        self.response_bytes.observe(sample.response_bytes as f64);
    }
}

#[derive(Debug, Clone, Default)]
struct TcpSeries {
    opened: u64,
    closed: u64,
    sent: u64,
    received: u64,
}

impl TcpSeries {
    fn merge(&mut self, other: &TcpSeries) {
        self.opened += other.opened;
        self.closed += other.closed;
        self.sent += other.sent;
        self.received += other.received;
    }
}

/// One finished HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct HttpSample {
    /// From the first request byte to the last response byte.
    pub duration_ms: f64,
    /// Request headers and body.
    pub request_bytes: u64,
    /// Response headers and body.
    pub response_bytes: u64,
}

/// The registry of Istio standard metrics.
pub struct Metrics {
    http: Mutex<HashMap<HttpKey, HttpSeries, Fast>>,
    tcp: Mutex<HashMap<TcpKey, TcpSeries, Fast>>,
    overflow: AtomicU64,
    limit: usize,
    /// Destination labels, cached.
    pub destinations: DestinationCache,
    /// The cluster id reported when a peer does not say.
    pub cluster: String,
}

impl Metrics {
    /// An empty registry holding at most `limit` series per family.
    pub fn new(cluster: &str, limit: usize) -> Self {
        Self {
            http: Mutex::default(),
            tcp: Mutex::default(),
            overflow: AtomicU64::new(0),
            limit,
            destinations: DestinationCache::default(),
            cluster: cluster.to_string(),
        }
    }

    /// Records one finished HTTP request.
    pub fn record_http(&self, key: HttpKey, sample: HttpSample) {
        let mut map = self.http.lock().unwrap_or_else(|e| e.into_inner());
        // One hash on the common path (the series exists), two only for a new series.
        if let Some(s) = map.get_mut(&key) {
            s.observe(&sample);
            return;
        }
        if map.len() >= self.limit {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
        map.entry(key)
            .or_insert_with(|| HttpSeries {
                requests: 0,
                duration: Histogram::new(DURATION_MS),
                request_bytes: Histogram::new(BYTES),
                response_bytes: Histogram::new(BYTES),
            })
            .observe(&sample);
    }

    /// Records a TCP connection opening.
    pub fn tcp_opened(&self, key: &TcpKey) {
        self.tcp_update(key, |s| s.opened += 1);
    }

    /// Records a TCP connection closing after `sent` bytes to the client and `received`
    /// from it.
    pub fn tcp_closed(&self, key: &TcpKey, sent: u64, received: u64) {
        self.tcp_update(key, |s| {
            s.closed += 1;
            s.sent += sent;
            s.received += received;
        });
    }

    fn tcp_update(&self, key: &TcpKey, f: impl FnOnce(&mut TcpSeries)) {
        let mut map = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get_mut(key) {
            f(s);
        } else if map.len() >= self.limit {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        } else {
            f(map.entry(key.clone()).or_default());
        }
    }

    /// Samples dropped because their series would exceed the cap.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    /// Number of HTTP and TCP series held.
    pub fn series(&self) -> usize {
        self.http.lock().map(|m| m.len()).unwrap_or(0)
            + self.tcp.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Appends the Istio metric families in Prometheus text format, with `overrides`
    /// applied: dropped families are left out, removed labels are left out and the series
    /// that then coincide are added together.
    pub fn render(&self, out: &mut String, overrides: &[MetricOverride]) {
        use prometheus::{family, histogram, sample};
        let http: Vec<(HttpKey, HttpSeries)> = {
            let map = self.http.lock().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
        };
        let tcp: Vec<(TcpKey, TcpSeries)> = {
            let map = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
        };
        let v = Views::new("istio_requests_total", overrides);
        if v.any_kept(&http, |k| &k.overrides) {
            family(out, "istio_requests_total", "counter", "Requests handled.");
            for (l, s) in v.group(&http, |k| &k.overrides, http_labels, HttpSeries::merge) {
                sample(out, "istio_requests_total", &l, s.requests);
            }
        }
        for (name, help, pick) in [
            (
                "istio_request_duration_milliseconds",
                "Request duration.",
                (|s: &HttpSeries| &s.duration) as fn(&HttpSeries) -> &Histogram,
            ),
            (
                "istio_request_bytes",
                "Request size (headers and body).",
                |s| &s.request_bytes,
            ),
            (
                "istio_response_bytes",
                "Response size (headers and body).",
                |s| &s.response_bytes,
            ),
        ] {
            let v = Views::new(name, overrides);
            if !v.any_kept(&http, |k| &k.overrides) {
                continue;
            }
            family(out, name, "histogram", help);
            for (l, s) in v.group(&http, |k| &k.overrides, http_labels, HttpSeries::merge) {
                histogram(out, name, &l, pick(&s));
            }
        }
        for (name, help, pick) in [
            (
                "istio_tcp_connections_opened_total",
                "TCP connections opened.",
                (|s: &TcpSeries| s.opened) as fn(&TcpSeries) -> u64,
            ),
            (
                "istio_tcp_connections_closed_total",
                "TCP connections closed.",
                |s| s.closed,
            ),
            (
                "istio_tcp_sent_bytes_total",
                "Bytes sent to clients over TCP.",
                |s| s.sent,
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes received from clients over TCP.",
                |s| s.received,
            ),
        ] {
            let v = Views::new(name, overrides);
            if !v.any_kept(&tcp, |k| &k.overrides) {
                continue;
            }
            family(out, name, "counter", help);
            for (l, s) in v.group(&tcp, |k| &k.overrides, tcp_labels, TcpSeries::merge) {
                sample(out, name, &l, pick(&s));
            }
        }
    }
}

/// One metric family's views: the waypoint's overrides and each Service port's own.
struct Views<'a> {
    family: &'a str,
    default: FamilyView<'a>,
    own: std::cell::RefCell<HashMap<usize, std::rc::Rc<FamilyView<'static>>>>,
}

impl<'a> Views<'a> {
    fn new(family: &'a str, overrides: &'a [MetricOverride]) -> Self {
        Self {
            family,
            default: FamilyView::new(family, overrides),
            own: Default::default(),
        }
    }

    /// Runs `f` with the view of series recorded under `own`.
    fn with<T>(&self, own: &Option<OwnOverrides>, f: impl FnOnce(&FamilyView) -> T) -> T {
        match own {
            None => f(&self.default),
            Some(o) => {
                let key = std::sync::Arc::as_ptr(&o.0 .0) as usize;
                let view = self
                    .own
                    .borrow_mut()
                    .entry(key)
                    .or_insert_with(|| std::rc::Rc::new(FamilyView::owned(self.family, &o.0)))
                    .clone();
                f(&view)
            }
        }
    }

    /// Whether the family is reported: not dropped by the waypoint's overrides (it is then
    /// listed even without series), or some series' own overrides keep it.
    fn any_kept<K, S>(&self, series: &[(K, S)], own: impl Fn(&K) -> &Option<OwnOverrides>) -> bool {
        !self.default.dropped
            || series
                .iter()
                .any(|(k, _)| own(k).is_some() && self.with(own(k), |v| !v.dropped))
    }

    /// The series by their label text, under their overrides: dropped ones left out, those
    /// with equal labels merged.
    fn group<K, S: Clone>(
        &self,
        series: &[(K, S)],
        own: impl Fn(&K) -> &Option<OwnOverrides>,
        labels: impl Fn(&K, &FamilyView) -> String,
        merge: impl Fn(&mut S, &S),
    ) -> std::collections::BTreeMap<String, S> {
        let mut out: std::collections::BTreeMap<String, S> = Default::default();
        for (k, s) in series {
            let Some(text) = self.with(own(k), |v| (!v.dropped).then(|| labels(k, v))) else {
                continue;
            };
            match out.entry(text) {
                std::collections::btree_map::Entry::Occupied(mut e) => merge(e.get_mut(), s),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(s.clone());
                }
            }
        }
        out
    }
}

/// One metric family under the overrides: whether it is dropped, which labels it loses,
/// which dimensions it has (by label; a later override's expression replaces an earlier
/// one's).
struct FamilyView<'a> {
    dropped: bool,
    removed: Vec<std::borrow::Cow<'a, str>>,
    dimensions: Vec<(std::borrow::Cow<'a, str>, filters::cel::Expression)>,
}

impl<'a> FamilyView<'a> {
    fn new(family: &str, overrides: &'a [MetricOverride]) -> Self {
        let applying = overrides.iter().filter(|o| o.applies_to(family));
        let mut view = Self {
            dropped: false,
            removed: Vec::new(),
            dimensions: Vec::new(),
        };
        for o in applying {
            view.dropped |= o.drop;
            view.removed.extend(
                o.tags_to_remove
                    .iter()
                    .map(|t| std::borrow::Cow::Borrowed(t.as_str())),
            );
            for (name, expr) in &o.dimensions {
                match view.dimensions.iter_mut().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = expr.clone(),
                    None => view
                        .dimensions
                        .push((std::borrow::Cow::Borrowed(name.as_str()), expr.clone())),
                }
            }
        }
        view
    }

    /// The view of a Service port's own overrides (owning its strings).
    fn owned(family: &str, overrides: &OverrideSet) -> FamilyView<'static> {
        let v = FamilyView::new(family, &overrides.0);
        FamilyView {
            dropped: v.dropped,
            removed: v
                .removed
                .into_iter()
                .map(|r| std::borrow::Cow::Owned(r.into_owned()))
                .collect(),
            dimensions: v
                .dimensions
                .into_iter()
                .map(|(n, e)| (std::borrow::Cow::Owned(n.into_owned()), e))
                .collect(),
        }
    }

    /// `pairs` with the family's dimensions applied (a standard label's value replaced,
    /// others added; empty when the override's `match` was false) and removed labels
    /// left out, as label text.
    fn render_labels<'b>(
        &'b self,
        mut pairs: Vec<(&'b str, &'b str)>,
        dims: &'b Dimensions,
    ) -> String {
        for (name, expr) in &self.dimensions {
            let name: &str = name;
            let value = dimensions::lookup(dims, name, expr).flatten();
            match pairs.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => {
                    if let Some(v) = value {
                        slot.1 = v;
                    }
                }
                None => pairs.push((name, value.unwrap_or(""))),
            }
        }
        pairs.retain(|(name, _)| !self.removed.iter().any(|r| r == name));
        let mut out = String::with_capacity(900);
        prometheus::labels(&mut out, &pairs);
        out
    }
}

fn peer_pairs<'a>(
    source: &'a PeerLabels,
    dest: &'a (ServiceLabels, PeerLabels),
) -> [(&'static str, &'a str); 20] {
    let (svc, d) = dest;
    [
        ("reporter", "waypoint"),
        ("source_workload", &source.workload),
        ("source_canonical_service", &source.canonical_service),
        ("source_canonical_revision", &source.canonical_revision),
        ("source_workload_namespace", &source.namespace),
        ("source_principal", &source.principal),
        ("source_app", &source.app),
        ("source_version", &source.version),
        ("source_cluster", &source.cluster),
        ("destination_workload", &d.workload),
        ("destination_workload_namespace", &d.namespace),
        ("destination_principal", &d.principal),
        ("destination_app", &d.app),
        ("destination_version", &d.version),
        ("destination_service", &svc.host),
        ("destination_canonical_service", &d.canonical_service),
        ("destination_canonical_revision", &d.canonical_revision),
        ("destination_service_name", &svc.name),
        ("destination_service_namespace", &svc.namespace),
        ("destination_cluster", &d.cluster),
    ]
}

fn http_labels(k: &HttpKey, view: &FamilyView) -> String {
    let code = k.code.to_string();
    let grpc = k.grpc_status.map(|g| g.to_string()).unwrap_or_default();
    let mut pairs: Vec<(&str, &str)> = peer_pairs(&k.source, &k.destination).to_vec();
    pairs.extend([
        ("request_protocol", k.protocol),
        ("response_code", code.as_str()),
        ("grpc_response_status", grpc.as_str()),
        ("response_flags", k.flags),
        ("connection_security_policy", "mutual_tls"),
    ]);
    view.render_labels(pairs, &k.dimensions)
}

fn tcp_labels(k: &TcpKey, view: &FamilyView) -> String {
    let mut pairs: Vec<(&str, &str)> = peer_pairs(&k.source, &k.destination).to_vec();
    pairs.extend([
        ("request_protocol", "tcp"),
        ("response_flags", k.flags),
        ("connection_security_policy", "mutual_tls"),
    ]);
    view.render_labels(pairs, &k.dimensions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: u16, ns: &str) -> HttpKey {
        let src = PeerLabels {
            namespace: ns.into(),
            ..Default::default()
        };
        HttpKey {
            source: SourceLabels::new(src),
            destination: DestinationLabels::new(Default::default()),
            protocol: "http",
            code,
            grpc_status: None,
            flags: "-",
            dimensions: None,
            overrides: None,
        }
    }

    const S: HttpSample = HttpSample {
        duration_ms: 3.0,
        request_bytes: 100,
        response_bytes: 2000,
    };

    #[test]
    fn counts_per_series_and_caps_series() {
        let m = Metrics::new("Kubernetes", 2);
        m.record_http(key(200, "a"), S);
        m.record_http(key(200, "a"), S);
        m.record_http(key(503, "a"), S);
        m.record_http(key(200, "b"), S);
        assert_eq!(m.series(), 2);
        assert_eq!(m.overflow(), 1);
        let mut out = String::new();
        m.render(&mut out, &[]);
        assert!(out.contains("response_code=\"200\""), "{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("istio_requests_total{") && l.contains("\"200\""))
            .unwrap();
        assert!(line.ends_with(" 2"), "{line}");
        assert!(out.contains("istio_request_duration_milliseconds_bucket{"));
        assert!(out.contains("le=\"+Inf\"} 2"));
    }

    /// Facts with only a response code.
    struct Code(i64);
    impl filters::cel::Activation for Code {
        fn attribute(&self, a: filters::cel::Attribute) -> Option<filters::cel::Value<'_>> {
            (a == filters::cel::Attribute::ResponseCode).then_some(filters::cel::Value::Int(self.0))
        }
        fn entry(&self, _: filters::cel::MapAttribute, _: &str) -> Option<&str> {
            None
        }
    }

    #[test]
    fn dimensions_follow_their_override_and_match() {
        use filters::cel::Expression;
        let overrides = vec![
            MetricOverride {
                metric: Some("requests_total".into()),
                dimensions: vec![
                    (
                        "class".into(),
                        Expression::value("response.code >= 500 ? 'error' : 'ok'").unwrap(),
                    ),
                    (
                        "response_flags".into(),
                        Expression::value("string(response.code)").unwrap(),
                    ),
                    ("missing".into(), Expression::value("request.path").unwrap()),
                ],
                ..Default::default()
            },
            MetricOverride {
                metric: Some("requests_total".into()),
                dimensions: vec![("only_5xx".into(), Expression::value("'yes'").unwrap())],
                when: Some(Expression::predicate("response.code >= 500").unwrap()),
                ..Default::default()
            },
        ];
        let m = Metrics::new("Kubernetes", 100);
        for code in [200, 503] {
            let mut k = key(code as u16, "a");
            k.dimensions = dimensions::evaluate(&overrides, &Code(code));
            m.record_http(k, S);
        }
        let mut out = String::new();
        m.render(&mut out, &overrides);
        let line = |code: &str| {
            out.lines()
                .find(|l| {
                    l.starts_with("istio_requests_total{")
                        && l.contains(&format!("response_code=\"{code}\""))
                })
                .unwrap()
                .to_string()
        };
        let ok = line("200");
        assert!(ok.contains("class=\"ok\""), "{ok}");
        // A standard label rewritten; a value that cannot be computed is `unknown`.
        assert!(ok.contains("response_flags=\"200\""), "{ok}");
        assert!(ok.contains("missing=\"unknown\""), "{ok}");
        // The gated dimension is empty where its match is false.
        assert!(ok.contains("only_5xx=\"\""), "{ok}");
        let err = line("503");
        assert!(
            err.contains("class=\"error\"") && err.contains("only_5xx=\"yes\""),
            "{err}"
        );
        // Other families do not get them.
        assert!(out
            .lines()
            .filter(|l| l.starts_with("istio_request_bytes_count{"))
            .all(|l| !l.contains("class=") && l.contains("response_flags=\"-\"")));
    }
}
