//! Shared setup for the end-to-end tests: a dev CA, fake destination pods, a local
//! configuration file and a real `waypoint` process, all on loopback.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use filters::body::Body;
use filters::model::Identity;
use hbone::tls::{CertStore, DevCa};
use http::{Request, Response};
use http_body_util::BodyExt;
use testkit::client::HboneClient;
use testkit::echo::EchoIdentity;
use testkit::mesh::{MeshYaml, Port};
use testkit::process::{CertFiles, WaypointProcess};
use testkit::ztunnel::{App, FakeZtunnel, ZtunnelOptions};

pub const NS: &str = "default";
pub const VIP: &str = "127.96.0.10";

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_waypoint"))
}

/// One Service with `pods` fake pods, served by a waypoint.
pub struct Spec {
    pub ports: Vec<Port>,
    pub pods: usize,
    pub apps: HashMap<u16, App>,
    pub extra_args: Vec<&'static str>,
    pub extra_yaml: Vec<String>,
    /// Capture the waypoint's stdout in `<dir>/stdout.log`.
    pub capture_stdout: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            ports: vec![Port {
                name: "http",
                port: 80,
                target: 8080,
            }],
            pods: 1,
            apps: HashMap::new(),
            extra_args: vec![],
            extra_yaml: vec![],
            capture_stdout: false,
        }
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub ca: DevCa,
    pub waypoint_id: Identity,
    pub client_id: Identity,
    pub wp: WaypointProcess,
    pub pods: Vec<FakeZtunnel>,
    pub mesh: MeshYaml,
    pub config: PathBuf,
}

pub fn vip() -> IpAddr {
    VIP.parse().unwrap()
}

pub fn authority(port: u16) -> SocketAddr {
    SocketAddr::new(vip(), port)
}

impl Harness {
    pub async fn start(spec: Spec) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new("test").unwrap();
        let waypoint_id = Identity::new("cluster.local", NS, "waypoint");
        let client_id = Identity::new("cluster.local", NS, "sleep");
        ca.issue(&waypoint_id).unwrap().write(dir.path()).unwrap();
        let mut mesh =
            MeshYaml::new(NS, "waypoint").service(NS, "echo", vip(), "echo", &spec.ports);
        let mut pods = Vec::new();
        for i in 0..spec.pods {
            let name = format!("echo-{i}");
            let pod_certs = ca
                .issue(&Identity::new("cluster.local", NS, "echo"))
                .unwrap();
            let z = FakeZtunnel::start_fresh(|ip| ZtunnelOptions {
                ip,
                certs: pod_certs.certs().unwrap(),
                allowed_caller: Some(waypoint_id.clone()),
                who: EchoIdentity {
                    pod: name.clone(),
                    namespace: NS.into(),
                },
                apps: spec.apps.clone(),
            })
            .await
            .unwrap();
            mesh = mesh.pod(NS, &name, z.ip, "echo", "echo", true);
            pods.push(z);
        }
        for doc in &spec.extra_yaml {
            mesh = mesh.raw(doc);
        }
        let config = dir.path().join("mesh.yaml");
        std::fs::write(&config, mesh.render()).unwrap();
        let log = std::env::var("WAYPOINT_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let mut args = vec![
            "--watch-interval-ms",
            "100",
            "--drain-timeout",
            "10",
            "--log-level",
            &log,
        ];
        args.extend(spec.extra_args.iter());
        let stdout = dir.path().join("stdout.log");
        let mut wp = WaypointProcess::spawn_with_stdout(
            &bin(),
            &config,
            &CertFiles::in_dir(dir.path()),
            &args,
            spec.capture_stdout.then_some(stdout.as_path()),
        )
        .unwrap();
        wp.wait_ready(Duration::from_secs(30)).await.unwrap();
        Self {
            dir,
            ca,
            waypoint_id,
            client_id,
            wp,
            pods,
            mesh,
            config,
        }
    }

    /// A client connecting as `sleep` in the test namespace.
    pub fn client(&self) -> HboneClient {
        let certs = self.ca.issue(&self.client_id).unwrap().certs().unwrap();
        self.client_with(certs)
    }

    pub fn client_with(&self, certs: hbone::tls::Certs) -> HboneClient {
        HboneClient::new(
            self.wp.hbone,
            Arc::new(CertStore::fixed(certs)),
            self.waypoint_id.clone(),
        )
    }

    pub fn handshakes(&self) -> usize {
        self.pods
            .iter()
            .map(|p| p.counters.handshakes.load(Ordering::Relaxed))
            .sum()
    }

    pub fn connects(&self) -> usize {
        self.pods
            .iter()
            .map(|p| p.counters.connects.load(Ordering::Relaxed))
            .sum()
    }

    /// What the waypoint wrote to stdout (with `capture_stdout`).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// The Prometheus page of the metrics listener, parsed.
    pub async fn prometheus(&self) -> Vec<Sample> {
        let (status, body) = testkit::process::http_get(self.wp.metrics, "/stats/prometheus")
            .await
            .unwrap();
        assert_eq!(status, 200);
        parse_prometheus(&body)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the configuration file atomically (write + rename, as a ConfigMap update does).
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.path().join("mesh.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub async fn admin(&self, path: &str) -> (u16, String) {
        testkit::process::http_get(self.wp.admin, path)
            .await
            .unwrap()
    }

    pub async fn stat(&self, name: &str) -> u64 {
        let (_, body) = self.admin("/stats").await;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no stat {name} in {body}"))
    }
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("host", "echo.default.svc.cluster.local")
        .body(filters::body::empty())
        .unwrap()
}

pub async fn body_bytes(resp: Response<hyper::body::Incoming>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

pub async fn json(resp: Response<hyper::body::Incoming>) -> serde_json::Value {
    serde_json::from_slice(&body_bytes(resp).await).unwrap()
}

/// One Prometheus sample: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map(String::as_str).unwrap_or("")
    }
}

/// Parses the Prometheus text format strictly enough to catch malformed output: every
/// non-comment line must be `name{k="v",...} value` or `name value`.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match head.split_once('{') {
            None => (head.to_string(), HashMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line}"));
                let mut labels = HashMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "bad label in {line}");
                    let mut val = String::new();
                    loop {
                        match chars.next() {
                            Some('\\') => match chars.next() {
                                Some('n') => val.push('\n'),
                                Some(c) => val.push(c),
                                None => panic!("bad escape in {line}"),
                            },
                            Some('"') => break,
                            Some(c) => val.push(c),
                            None => panic!("unterminated label in {line}"),
                        }
                    }
                    labels.insert(key, val);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line}"
        );
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The sum of `name` over samples whose labels include all of `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        .sum()
}

/// The `istio` ConfigMap in `istio-system` holding MeshConfig `mesh`.
pub fn mesh_config(mesh: &str) -> String {
    let indented: String = mesh.lines().map(|l| format!("    {l}\n")).collect();
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  mesh: |\n{indented}")
}

/// A mesh-wide `Telemetry` resource with `spec`.
pub fn telemetry(spec: &str) -> String {
    format!("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: mesh-default\n  namespace: istio-system\nspec:\n{spec}")
}

/// Polls `f` every 100 ms until it yields, for at most 10 s.
pub async fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /` with `Host: host` through a tunnel to `to`: the status and, on 200, the server
/// that answered (the echo app's `pod`), within 10 s.
pub async fn answer_of(h: &Harness, to: SocketAddr, host: &str) -> (u16, Option<String>) {
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(to).await.unwrap();
    let req = Request::get("/")
        .header("host", host)
        .body(filters::body::empty())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), http.send_request(req))
        .await
        .expect("answered in time")
        .unwrap();
    let status = resp.status().as_u16();
    let pod = if status == 200 {
        Some(json(resp).await["pod"].as_str().unwrap().to_string())
    } else {
        None
    };
    (status, pod)
}

/// A DestinationRule `echo` in the test namespace with this `trafficPolicy` (indented).
pub fn destination_rule(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: echo\n  namespace: {NS}\nspec:\n  host: echo\n  trafficPolicy:\n{traffic_policy}"
    )
}

/// `waypoint check` on the harness's configuration plus `extra`: its exit code and stdout.
pub async fn check_with(extra: &str) -> (Option<i32>, String) {
    let h = Harness::start(Spec::default()).await;
    let config = std::fs::read_to_string(&h.config).unwrap();
    let path = h.dir().join("with-extra.yaml");
    std::fs::write(&path, format!("{config}\n---\n{extra}")).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
