//! The world pilot-agent builds around the proxy it starts: the binary installed as
//! `<tmp>/usr/local/bin/envoy`, Istio's golden ambient bootstrap moved onto loopback (the
//! xDS and SDS sockets served in-process, the `agent` cluster pointed at a test HTTP server
//! standing in for pilot-agent's 15020), Envoy's command line as pilot-agent writes it,
//! and pilot-agent's parsers of the admin `/stats` answers.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use filters::model::Identity;
use hbone::tls::DevCa;
use serde_json::{json, Value as Json};
use testkit::istio_dump::{fake_pod, resources};
use testkit::process::http_get;
use testkit::ztunnel::FakeZtunnel;
use testkit::{free_ports, AdsServer, SdsServer};
use xds::ads::types::{CLUSTER, ENDPOINT, LISTENER};

/// The child process, killed with SIGKILL when dropped (as pilot-agent kills it).
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// pilot-agent's status server as the `agent` cluster: answers `/healthz/ready` with the
/// status the test sets.
pub struct Agent {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The status `/healthz/ready` answers.
    pub status: Arc<AtomicU16>,
    /// Requests received.
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Agent {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (status.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (s, h) = (s.clone(), h.clone());
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    h.fetch_add(1, Ordering::Relaxed);
                    let code = s.load(Ordering::Relaxed);
                    let body = format!("agent {code} {}", req.uri().path());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(code)
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
                );
            }
        });
        Self {
            addr,
            status,
            hits,
            task,
        }
    }
}

/// A waypoint started as pilot-agent starts Envoy, and the servers around it.
pub struct Rig {
    /// Holds the bootstrap, the sockets and `usr/local/bin/envoy`.
    pub dir: tempfile::TempDir,
    /// The mesh CA.
    pub ca: DevCa,
    /// The waypoint's identity (the golden node `sidecar~1.2.3.4~foo~bar`: foo.bar).
    pub waypoint_id: Identity,
    /// istiod's role.
    pub ads: AdsServer,
    /// pilot-agent's SDS server.
    pub sds: SdsServer,
    /// pilot-agent's status server.
    pub agent: Agent,
    /// The httpbin pod.
    pub pod: FakeZtunnel,
    /// The bootstrap as written to disk.
    pub bootstrap: Json,
    /// The `--config-yaml` override passed.
    pub config_yaml: Json,
    /// Admin, the 15090 and 15021 listeners, the override's listener, HBONE.
    pub admin: SocketAddr,
    pub prom: SocketAddr,
    pub ready: SocketAddr,
    pub extra: SocketAddr,
    pub hbone: SocketAddr,
    /// The process.
    pub child: Child,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn golden() -> Json {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/istio/config-dumps/bootstrap-ambient-golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn loopback(port: u16) -> Json {
    json!({"socket_address": {"protocol": "TCP", "address": "127.0.0.1", "port_value": port}})
}

/// The golden bootstrap with its sockets and ports moved into the test's reach.
fn bootstrap(dir: &std::path::Path, admin: u16, prom: u16, ready: u16, agent: u16) -> Json {
    let mut json = golden();
    json["admin"]["address"] = loopback(admin);
    for l in json["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
    {
        let port = l["address"]["socket_address"]["port_value"]
            .as_u64()
            .unwrap();
        l["address"] = loopback(if port == 15090 { prom } else { ready });
    }
    for c in json["static_resources"]["clusters"].as_array_mut().unwrap() {
        let name = c["name"].as_str().unwrap().to_string();
        let ep =
            &mut c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
        match name.as_str() {
            "xds-grpc" => ep["pipe"]["path"] = dir.join("XDS").display().to_string().into(),
            "sds-grpc" => ep["pipe"]["path"] = dir.join("sds.sock").display().to_string().into(),
            "agent" => *ep = loopback(agent),
            "prometheus_stats" => *ep = loopback(admin),
            other => panic!("unexpected cluster {other}"),
        }
    }
    json
}

/// The override: a metadata key on the node and one more listener, whose only route is the
/// exact path `/healthz/ready` to the agent.
fn config_yaml(extra: u16) -> Json {
    json!({
        "node": {"metadata": {"WAYPOINT_TEST_OVERRIDE": {"applied": true, "by": ["--config-yaml"]}}},
        "static_resources": {"listeners": [{
            "name": "extra",
            "address": loopback(extra),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "extra",
                    "route_config": {"virtual_hosts": [{"name": "x", "domains": ["*"], "routes": [
                        {"match": {"path": "/healthz/ready"}, "route": {"cluster": "agent"}}
                    ]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]}]
        }]}
    })
}

impl Rig {
    /// Starts everything; returns once the process is spawned (not yet ready).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new("test").unwrap();
        let waypoint_id = Identity::new("cluster.local", "bar", "waypoint");
        let first = ca.issue(&waypoint_id).unwrap();
        let sds = SdsServer::new(
            first.chain_pem.as_bytes(),
            first.key_pem.as_bytes(),
            first.root_pem.as_bytes(),
        );
        let mut tasks = vec![sds.serve_unix(&dir.path().join("sds.sock")).unwrap()];
        let pod = fake_pod(&ca, &waypoint_id, "httpbin-1").await;
        let (ls, cs, es) = resources(pod.ip);
        let ads = AdsServer::default();
        ads.set(LISTENER, ls);
        ads.set(CLUSTER, cs);
        ads.set(ENDPOINT, es);
        tasks.push(ads.serve_unix(&dir.path().join("XDS")).unwrap());
        let agent = Agent::start().await;

        let [admin, prom, ready, extra, hbone] = free_ports::<5>();
        let bootstrap = bootstrap(dir.path(), admin, prom, ready, agent.addr.port());
        let path = dir.path().join("envoy-rev.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&bootstrap).unwrap()).unwrap();
        let config_yaml = config_yaml(extra);

        // Installed where pilot-agent finds Envoy.
        let bin = dir.path().join("usr/local/bin/envoy");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_waypoint"), &bin).unwrap();
        let log = std::env::var("WAYPOINT_TEST_LOG").unwrap_or_else(|_| "warning".into());
        // pilot-agent's `args()`: the flags it always passes, then the optional ones.
        let child = Command::new(&bin)
            .args(["-c", &path.display().to_string()])
            .args(["--drain-time-s", "5", "--drain-strategy", "immediate"])
            .args(["--local-address-ip-version", "v4"])
            .args(["--file-flush-interval-msec", "1000"])
            .args(["--disable-hot-restart", "--allow-unknown-static-fields"])
            .args(["--file-flush-min-size-kb", "64"])
            .args(["-l", &log, "--component-log-level", "misc:error"])
            .args(["--skip-deprecated-logs", "--enable-core-dump"])
            .args(["--config-yaml", &config_yaml.to_string()])
            .args(["--concurrency", "2"])
            .env("WAYPOINT_HBONE_ADDR", format!("127.0.0.1:{hbone}"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let at = |p| SocketAddr::from(([127, 0, 0, 1], p));
        Self {
            dir,
            ca,
            waypoint_id,
            ads,
            sds,
            agent,
            pod,
            bootstrap,
            config_yaml,
            admin: at(admin),
            prom: at(prom),
            ready: at(ready),
            extra: at(extra),
            hbone: at(hbone),
            child: Child(child),
            _tasks: tasks,
        }
    }

    /// Waits (at most 30 s) until pilot-agent's two readiness checks pass, as it runs them.
    pub async fn wait_ready(&self) -> (UpdateStats, ServerState) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = (updates(self.admin).await, server_state(self.admin).await);
            if let (Ok(u), Ok(s)) = &r {
                if u.cds_success > 0 && u.lds_success > 0 && s.state == 0 && s.workers_started {
                    return (*u, *s);
                }
            }
            assert!(Instant::now() < deadline, "not ready: {r:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// JSON into `google.protobuf.Value`, written here independently of the product's decoder.
pub fn value(v: &Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(value).collect(),
        }),
        Json::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// The `Node` a bootstrap's `node` says, decoded field by field (the fields pilot-agent
/// writes; any other makes this panic, so a new one is noticed).
pub fn node_of(node: &Json) -> Node {
    let obj = node.as_object().unwrap();
    for k in obj.keys() {
        assert!(
            ["id", "cluster", "locality", "metadata"].contains(&k.as_str()),
            "node field {k} not decoded by the test"
        );
    }
    let s = |v: &Json| v.as_str().unwrap_or_default().to_string();
    Node {
        id: s(&node["id"]),
        cluster: s(&node["cluster"]),
        locality: node.get("locality").map(|l| Locality {
            region: s(&l["region"]),
            zone: s(&l["zone"]),
            sub_zone: s(&l["sub_zone"]),
        }),
        metadata: node.get("metadata").map(|m| match value(m).kind {
            Some(Kind::StructValue(st)) => st,
            other => panic!("metadata is {other:?}"),
        }),
        ..Default::default()
    }
}

/// pilot-agent's parse of `/stats` lines: the first line starting with `name` must be
/// `name: <uint>`; a stat not listed is 0.
pub fn parse_stats(body: &str, names: &[&str]) -> Result<Vec<u64>, String> {
    let mut found: Vec<Option<u64>> = vec![None; names.len()];
    for line in body.split_inclusive('\n') {
        for (i, name) in names.iter().enumerate() {
            if found[i].is_none() && line.starts_with(name) {
                let parts: Vec<&str> = line.split(':').collect();
                if parts.len() != 2 {
                    return Err(format!("envoy stat {name} missing separator. line:{line}"));
                }
                let v = parts[1]
                    .trim()
                    .parse::<u64>()
                    .map_err(|e| format!("failed parsing Envoy stat {name} ({e}) line: {line}"))?;
                found[i] = Some(v);
            }
        }
    }
    Ok(found.into_iter().map(Option::unwrap_or_default).collect())
}

/// pilot-agent's first readiness check.
#[derive(Debug, Clone, Copy)]
pub struct UpdateStats {
    pub cds_success: u64,
    pub cds_rejected: u64,
    pub lds_success: u64,
    pub lds_rejected: u64,
}

/// The query pilot-agent sends, unencoded, as its Go client puts it on the wire.
pub const UPDATES_QUERY: &str = r"/stats?usedonly&filter=^(cluster_manager\.cds|listener_manager\.lds)\.(update_success|update_rejected)$";
pub const STATE_QUERY: &str =
    r"/stats?usedonly&filter=^(server\.state|listener_manager\.workers_started)";

pub async fn updates(admin: SocketAddr) -> Result<UpdateStats, String> {
    let (code, body) = http_get(admin, UPDATES_QUERY)
        .await
        .map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("{code}: {body}"));
    }
    let v = parse_stats(
        &body,
        &[
            "cluster_manager.cds.update_success",
            "cluster_manager.cds.update_rejected",
            "listener_manager.lds.update_success",
            "listener_manager.lds.update_rejected",
        ],
    )?;
    Ok(UpdateStats {
        cds_success: v[0],
        cds_rejected: v[1],
        lds_success: v[2],
        lds_rejected: v[3],
    })
}

/// pilot-agent's second readiness check.
#[derive(Debug, Clone, Copy)]
pub struct ServerState {
    pub state: u64,
    pub workers_started: bool,
}

pub async fn server_state(admin: SocketAddr) -> Result<ServerState, String> {
    let (code, body) = http_get(admin, STATE_QUERY)
        .await
        .map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("{code}: {body}"));
    }
    for name in ["server.state", "listener_manager.workers_started"] {
        if !body.contains(name) {
            return Err(format!("{name} is not yet updated: {body}"));
        }
    }
    let v = parse_stats(&body, &["server.state", "listener_manager.workers_started"])?;
    Ok(ServerState {
        state: v[0],
        workers_started: v[1] == 1,
    })
}

/// pilot-agent's count for `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`: the sum of
/// `listener.<addr>.downstream_cx_active`, skipping per-worker lines, internal listeners and
/// the 15021/15090/admin listeners (here: their test ports).
pub async fn active_connections(rig: &Rig) -> Result<u64, String> {
    let (code, body) = http_get(rig.admin, "/stats?usedonly&filter=downstream_cx_active$")
        .await
        .map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("{code}: {body}"));
    }
    let skip = [
        "worker_".to_string(),
        "listener.envoy_internal_".into(),
        format!("_{}.", rig.ready.port()),
        format!("_{}.", rig.prom.port()),
        "listener.admin.".into(),
    ];
    let mut sum = 0;
    for line in body.lines() {
        if !line.starts_with("listener.") || skip.iter().any(|s| line.contains(s.as_str())) {
            continue;
        }
        let (_, v) = line.split_once(": ").ok_or(format!("bad line {line}"))?;
        sum += v.parse::<u64>().map_err(|e| format!("{line}: {e}"))?;
    }
    Ok(sum)
}

/// Polls `f` every 50 ms until it returns `Some`, at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
