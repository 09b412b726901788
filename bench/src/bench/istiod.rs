//! The `istiod` scenario: the waypoint configured over Delta ADS, as istiod configures it,
//! with the resources of Istio's httpbin waypoint config dump moved onto loopback
//! ([`testkit::istio_dump`]): the RBAC filters istiod generates for a DENY and an
//! ALLOW AuthorizationPolicy on the measured port, its route and cluster, its telemetry
//! filters. The `waypoint` scenario measures the same proxy on the local-file path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use filters::model::Identity;
use hbone::tls::DevCa;
use testkit::istio_dump::{fake_pod, resources_with, VIP};
use testkit::ztunnel::FakeZtunnel;
use testkit::AdsServer;
use xds::ads::types::{CLUSTER, ENDPOINT, LISTENER};

/// The Service port whose chain carries the RBAC filters.
const PORT: u16 = 8000;

/// The Host the requests carry: the dump's Service.
pub const HOST: &str = "httpbin.default.svc.cluster.local";

/// The ADS server and the destination pod of the scenario.
pub struct Istiod {
    _pod: FakeZtunnel,
    _server: AdsServer,
    serving: tokio::task::JoinHandle<()>,
    socket: PathBuf,
}

impl Istiod {
    /// Starts the httpbin pod (identity `default/httpbin`, accepting `waypoint`) and an
    /// ADS server on a Unix socket in `dir` serving the dump at `dump` for it.
    pub async fn start(
        ca: &DevCa,
        waypoint: &Identity,
        dump: &Path,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            dump.is_file(),
            "Istio's config dump {} is not there (--xds-dump)",
            dump.display()
        );
        let pod = fake_pod(ca, waypoint, "httpbin-1").await;
        let (listeners, clusters, endpoints, _) = resources_with(dump, pod.ip, None, false);
        let server = AdsServer::default();
        server.set(LISTENER, listeners);
        server.set(CLUSTER, clusters);
        server.set(ENDPOINT, endpoints);
        let socket = dir.join("xds.sock");
        let serving = server.serve_unix(&socket)?;
        Ok(Self {
            _pod: pod,
            _server: server,
            serving,
            socket,
        })
    }

    /// The waypoint's configuration-source arguments.
    pub fn source_args(&self) -> Vec<String> {
        vec![
            "--xds-address".into(),
            format!("unix:{}", self.socket.display()),
            "--gateway".into(),
            "default/waypoint".into(),
        ]
    }

    /// The CONNECT authority: httpbin's VIP and the port with the policies.
    pub fn authority() -> SocketAddr {
        SocketAddr::new(VIP.parse().expect("the dump's VIP"), PORT)
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        self.serving.abort();
    }
}
