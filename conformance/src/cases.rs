//! The case files (`conformance/cases/<profile>/<test>.yaml`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// One conformance test.
#[derive(Debug, Clone, Deserialize)]
pub struct TestFile {
    /// The upstream ShortName.
    pub name: String,
    /// What it checks.
    #[serde(default)]
    pub description: String,
    /// The manifest, relative to the Gateway API testdata directory (none for tests that
    /// bring all their objects in `objects`).
    #[serde(default)]
    pub manifest: Option<String>,
    /// Extra objects (YAML documents) applied with the manifest.
    #[serde(default)]
    pub objects: Option<String>,
    /// Upstream feature names.
    #[serde(default)]
    pub features: Vec<String>,
    /// `http` or `grpc`.
    pub kind: String,
    /// Request/expectation pairs.
    #[serde(default)]
    pub cases: Vec<Case>,
    /// Traffic-split expectations, for weighted tests.
    #[serde(default)]
    pub weights: Option<Weights>,
    /// Upstream subtleties.
    #[serde(default)]
    pub notes: Option<String>,
    /// Mirror checks: copies of a case's requests must reach the mirror backends.
    #[serde(default)]
    pub mirrors: Vec<MirrorCheck>,
    /// Per-response check that a request header the route sets names the answering pod.
    #[serde(default, rename = "headerMatchesBackend")]
    pub header_matches_backend: Option<HeaderMatchesBackend>,
}

/// `headerMatchesBackend`: `requests` requests; each time, `header` must have reached the
/// backend once, with a value that prefixes the answering pod's name.
#[derive(Debug, Clone, Deserialize)]
pub struct HeaderMatchesBackend {
    /// Host to call.
    pub host: String,
    /// Path.
    #[serde(default)]
    pub path: Option<String>,
    /// The header.
    pub header: String,
    /// How many requests.
    pub requests: usize,
}

/// A request and what must come of it.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    /// The request.
    pub request: Request,
    /// The expectation.
    #[serde(default)]
    pub expect: Expect,
    /// Why this case is not run (listed in the report).
    #[serde(default)]
    pub skip: Option<String>,
}

/// The pod a request is sent from.
#[derive(Debug, Clone, Deserialize)]
pub struct Client {
    /// Its Deployment (`app` label value such as `echo-v1`).
    pub app: String,
    /// Its namespace.
    pub namespace: String,
}

/// A request as the upstream test sends it.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Request {
    /// `service[.namespace][:port]`, or `{podIP:<deployment>}:port`.
    pub host: String,
    /// HTTP method (http tests) or gRPC method name (grpc tests).
    #[serde(default)]
    pub method: Option<String>,
    /// Path and query (http).
    #[serde(default)]
    pub path: Option<String>,
    /// Request headers (gRPC metadata for grpc tests).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The sending pod; default the `echo-v1` pod in `gateway-conformance-mesh`.
    #[serde(default)]
    pub client: Option<Client>,
    /// gRPC service.
    #[serde(default)]
    pub service: Option<String>,
}

/// What the backend must have seen.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExpectedRequest {
    /// Host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path and query.
    #[serde(default)]
    pub path: Option<String>,
    /// Headers, compared case-insensitively, multiple values joined by `,`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers that must be absent.
    #[serde(default)]
    pub absent_headers: Vec<String>,
}

/// What the client must get back.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExpectedResponse {
    /// Response headers (first value compared).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response headers that must be absent.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// Response headers that must equal one of several values.
    #[serde(default)]
    pub valid_header_values: BTreeMap<String, Vec<String>>,
    /// Compare header values with all spaces removed.
    #[serde(default)]
    pub ignore_whitespace: bool,
}

/// The expected `Location` of a redirect.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ExpectedRedirect {
    /// Scheme (default `http`).
    #[serde(default)]
    pub scheme: Option<String>,
    /// Host (unchecked when absent).
    #[serde(default)]
    pub host: Option<String>,
    /// Port (absent means the scheme's default or none).
    #[serde(default)]
    pub port: Option<String>,
    /// Path (absent means the request path).
    #[serde(default)]
    pub path: Option<String>,
}

/// The expectation.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Expect {
    /// Status (gRPC: 200 means OK).
    #[serde(default)]
    pub status: Option<u16>,
    /// Prefix of the answering pod's name.
    #[serde(default)]
    pub backend: Option<String>,
    /// Namespace of the answering pod.
    #[serde(default)]
    pub namespace: Option<String>,
    /// What the backend saw.
    #[serde(default)]
    pub request: Option<ExpectedRequest>,
    /// Response checks.
    #[serde(default)]
    pub response: Option<ExpectedResponse>,
    /// Redirect checks.
    #[serde(default)]
    pub redirect: Option<ExpectedRedirect>,
    /// Any of these statuses passes (instead of `status`).
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// The response must not be the echo's description (answered by the proxy itself).
    #[serde(default, rename = "noEcho")]
    pub no_echo: bool,
    /// gRPC status name (`Unimplemented`, ...) instead of an HTTP status.
    #[serde(default, rename = "grpcCode")]
    pub grpc_code: Option<String>,
}

/// Traffic-split expectations.
#[derive(Debug, Clone, Deserialize)]
pub struct Weights {
    /// Host to call.
    pub host: String,
    /// Path (http).
    #[serde(default)]
    pub path: Option<String>,
    /// Expected share per backend.
    pub backends: BTreeMap<String, f64>,
    /// Allowed absolute deviation.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Requests to send.
    #[serde(default = "default_requests")]
    pub requests: usize,
}

fn default_tolerance() -> f64 {
    0.05
}

fn default_requests() -> usize {
    500
}

/// Loads every case file in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<TestFile>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)?;
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        })
        .collect()
}

/// Copies of `requests` requests of case `case` must reach each of `backends`: all of them,
/// or `fraction` of them within `tolerance` (relative to the expected count).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorCheck {
    /// 1-based case whose request is repeated.
    pub case: usize,
    /// The mirror backends (Deployment names).
    pub backends: Vec<String>,
    /// Requests to send.
    pub requests: usize,
    /// Expected mirrored share (percent/fraction mirrors).
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Allowed relative deviation from the expected count.
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// Samples before giving up (split checks).
    #[serde(default)]
    pub attempts: Option<usize>,
}
