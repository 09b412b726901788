//! Shared setup for the end-to-end tests: a dev CA, fake destination pods, a local
//! configuration file and a real `waypoint` process, all on loopback.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use filters::body::Body;
use filters::model::Identity;
use http::{Request, Response};
use http_body_util::BodyExt;
use waypoint::testing::client::HboneClient;
use waypoint::testing::echo::EchoIdentity;
use waypoint::testing::mesh::{MeshYaml, Port};
use waypoint::testing::process::{CertFiles, WaypointProcess};
use waypoint::testing::ztunnel::{App, FakeZtunnel, ZtunnelOptions};
use waypoint::tls::{CertStore, DevCa};

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
        let mut wp =
            WaypointProcess::spawn(&bin(), &config, &CertFiles::in_dir(dir.path()), &args).unwrap();
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

    pub fn client_with(&self, certs: waypoint::tls::Certs) -> HboneClient {
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
        waypoint::testing::process::http_get(self.wp.admin, path)
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
