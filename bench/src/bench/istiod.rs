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
        destination_rule: bool,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            dump.is_file(),
            "Istio's config dump {} is not there (--xds-dump)",
            dump.display()
        );
        let pod = fake_pod(ca, waypoint, "httpbin-1").await;
        let (listeners, mut clusters, endpoints, _) = resources_with(dump, pod.ip, None, false);
        if destination_rule {
            with_destination_rule(&mut clusters)?;
        }
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

/// The measured port's cluster as istiod writes it for a DestinationRule with
/// `loadBalancer: {simple: LEAST_REQUEST}`, `outlierDetection: {consecutive5xxErrors: 5,
/// interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 100}` and
/// `connectionPool: {http: {http2MaxRequests: 1000, maxRetries: 3}}`
/// (cluster_traffic_policy.go: applyConnectionPool, applyOutlierDetection).
fn with_destination_rule(clusters: &mut testkit::istio_dump::Named) -> anyhow::Result<()> {
    use envoy_types::pb::envoy::config::cluster::v3::{
        circuit_breakers::Thresholds, cluster::CommonLbConfig, CircuitBreakers, Cluster,
        OutlierDetection,
    };
    use envoy_types::pb::envoy::r#type::v3::Percent;
    use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
    use prost::Message;
    let name = format!("inbound-vip|{PORT}|http|{HOST}");
    let (_, any) = clusters
        .iter_mut()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| anyhow::anyhow!("the dump has no cluster {name}"))?;
    let mut c = Cluster::decode(any.value.as_slice())?;
    let u = |v: u32| Some(UInt32Value { value: v });
    let secs = |s: i64| {
        Some(Duration {
            seconds: s,
            nanos: 0,
        })
    };
    c.lb_policy = 1; // LEAST_REQUEST
    c.outlier_detection = Some(OutlierDetection {
        enforcing_success_rate: u(0),
        consecutive_5xx: u(5),
        enforcing_consecutive_5xx: u(100),
        interval: secs(10),
        base_ejection_time: secs(30),
        max_ejection_percent: u(100),
        ..Default::default()
    });
    c.common_lb_config = Some(CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 0.0 }),
        ..Default::default()
    });
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: u(u32::MAX),
            max_pending_requests: u(u32::MAX),
            max_requests: u(1000),
            max_retries: u(3),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    });
    *any = testkit::istio_dump::any(xds::ads::types::CLUSTER, &c);
    Ok(())
}

impl Drop for Istiod {
    fn drop(&mut self) {
        self.serving.abort();
    }
}
