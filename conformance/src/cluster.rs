//! A loopback "cluster" built from upstream manifests, with a real waypoint in front.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use filters::model::Identity;
use hbone::tls::{CertStore, DevCa};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};
use testkit::client::HboneClient;
use testkit::echo::EchoIdentity;
use testkit::free_loopback_ip;
use testkit::process::{CertFiles, WaypointProcess};
use testkit::ztunnel::{FakeZtunnel, ZtunnelOptions};

/// The namespace the waypoint lives in.
pub const WAYPOINT_NS: &str = "gateway-conformance-mesh";
/// The waypoint Gateway's name.
pub const WAYPOINT: &str = "waypoint";
/// The Gateway profile's namespace.
pub const GATEWAY_NS: &str = "gateway-conformance-infra";
/// The Service Gateway-profile routes are attached to.
pub const FRONTEND: &str = "frontend";

/// A fake pod.
pub struct Pod {
    /// Pod name (`<deployment>-<hash>-<n>`).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The Deployment it belongs to.
    pub deployment: String,
    /// Its loopback IP.
    pub ip: IpAddr,
    /// Its identity.
    pub identity: Identity,
    _ztunnel: FakeZtunnel,
}

/// A Service with its VIP.
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Assigned cluster IP.
    pub vip: IpAddr,
}

/// Pods, Services and a waypoint process.
pub struct Cluster {
    _dir: tempfile::TempDir,
    ca: DevCa,
    waypoint_id: Identity,
    /// The pods.
    pub pods: Vec<Pod>,
    /// The Services.
    pub services: Vec<Service>,
    /// The waypoint.
    pub waypoint: WaypointProcess,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

fn docs(text: &str) -> anyhow::Result<Vec<Value>> {
    serde_yaml::Deserializer::from_str(text)
        .map(Value::deserialize)
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .collect::<Result<_, _>>()
        .context("manifest YAML")
}

fn kind(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or("")
}

fn meta(v: &Value) -> anyhow::Result<Meta> {
    Ok(serde_yaml::from_value(
        v.get("metadata").cloned().unwrap_or(Value::Null),
    )?)
}

fn set(map: &mut Value, path: &[&str], value: Value) {
    let mut cur = map;
    for (i, key) in path.iter().enumerate() {
        let m = cur.as_mapping_mut().expect("mapping");
        if i == path.len() - 1 {
            m.insert(Value::from(*key), value);
            return;
        }
        if !m.contains_key(*key) {
            m.insert(Value::from(*key), Value::Mapping(Mapping::new()));
        }
        cur = m.get_mut(*key).expect("just inserted");
    }
}

/// Parses `base` + `test` manifests, re-attaching routes to `frontend` for the Gateway profile.
fn manifests(base: &str, test: &str, profile: crate::Profile) -> anyhow::Result<Vec<Value>> {
    let mut test_docs = docs(test)?;
    let mut all = docs(base)?;
    if profile == crate::Profile::Gateway {
        // The Service the Gateway-profile routes are re-attached to.
        all.push(serde_yaml::from_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {FRONTEND}\n  namespace: {GATEWAY_NS}\nspec:\n  ports:\n  - {{name: http, port: 80, appProtocol: http}}\n  - {{name: grpc, port: 7070, appProtocol: kubernetes.io/h2c}}\n"
        ))?);
        reattach_to_frontend(&mut test_docs)?;
    }
    all.append(&mut test_docs);
    Ok(all)
}

/// Points every HTTPRoute/GRPCRoute in `docs` at the `frontend` Service instead of a Gateway.
fn reattach_to_frontend(docs: &mut [Value]) -> anyhow::Result<()> {
    for d in docs
        .iter_mut()
        .filter(|d| matches!(kind(d), "HTTPRoute" | "GRPCRoute"))
    {
        set(
            d,
            &["spec", "parentRefs"],
            serde_yaml::from_str(&format!(
                "[{{group: \"\", kind: Service, name: {FRONTEND}, namespace: {GATEWAY_NS}}}]"
            ))?,
        );
        // Hostnames select Gateway listeners; a Service parent ignores them.
        if let Some(spec) = d.get_mut("spec").and_then(Value::as_mapping_mut) {
            spec.remove("hostnames");
        }
    }
    Ok(())
}

/// Labels a Namespace so its traffic goes through the waypoint.
fn label_for_waypoint(doc: &mut Value) {
    set(
        doc,
        &["metadata", "labels", "istio.io/use-waypoint"],
        WAYPOINT.into(),
    );
    set(
        doc,
        &["metadata", "labels", "istio.io/use-waypoint-namespace"],
        WAYPOINT_NS.into(),
    );
}

/// Gives a Service the next free loopback VIP and records it in `services`.
fn assign_vip(doc: &mut Value, services: &mut Vec<Service>) -> anyhow::Result<()> {
    let m = meta(doc)?;
    let n = services.len() as u8;
    let vip = IpAddr::V4(Ipv4Addr::new(127, 96, n / 250, 1 + n % 250));
    set(doc, &["spec", "clusterIP"], vip.to_string().into());
    services.push(Service {
        name: m.name,
        namespace: m.namespace.unwrap_or_else(|| "default".into()),
        vip,
    });
    Ok(())
}

/// Starts a fake pod (with its ztunnel) per replica of a Deployment, emitting a Pod manifest each.
async fn start_replicas(
    doc: &Value,
    ca: &DevCa,
    out: &mut Vec<Value>,
    pods: &mut Vec<Pod>,
) -> anyhow::Result<()> {
    let m = meta(doc)?;
    let ns = m.namespace.unwrap_or_else(|| "default".into());
    let replicas = doc
        .get("spec")
        .and_then(|s| s.get("replicas"))
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let template = doc
        .get("spec")
        .and_then(|s| s.get("template"))
        .cloned()
        .unwrap_or(Value::Null);
    let labels = template
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .cloned()
        .unwrap_or(Value::Null);
    let sa = template
        .get("spec")
        .and_then(|s| s.get("serviceAccountName"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    for i in 0..replicas {
        let name = format!("{}-7d4f8b9c6-{i:05}", m.name);
        let ip = free_loopback_ip(15008);
        let identity = Identity::new("cluster.local", &ns, &sa);
        let ztunnel = FakeZtunnel::start(ZtunnelOptions {
            ip,
            certs: ca.issue(&identity)?.certs()?,
            allowed_caller: None,
            who: EchoIdentity {
                pod: name.clone(),
                namespace: ns.clone(),
            },
            apps: HashMap::new(),
        })
        .await?;
        let mut pod: Value = serde_yaml::from_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations:\n    ambient.istio.io/redirection: enabled\nspec:\n  serviceAccountName: {sa}\nstatus:\n  phase: Running\n  podIP: {ip}\n"
        ))?;
        set(&mut pod, &["metadata", "labels"], labels.clone());
        out.push(pod);
        pods.push(Pod {
            name,
            namespace: ns.clone(),
            deployment: m.name.clone(),
            ip,
            identity,
            _ztunnel: ztunnel,
        });
    }
    Ok(())
}

/// Writes `manifests` into `dir` and starts the waypoint binary on them, waiting until ready.
async fn spawn_waypoint(
    bin: &Path,
    dir: &Path,
    manifests: &[Value],
) -> anyhow::Result<WaypointProcess> {
    let text = manifests
        .iter()
        .map(serde_yaml::to_string)
        .collect::<Result<Vec<_>, _>>()?
        .join("---\n");
    let config = dir.join("mesh.yaml");
    std::fs::write(&config, text)?;
    let log = std::env::var("WAYPOINT_TEST_LOG").unwrap_or_else(|_| "error".into());
    let mut waypoint = WaypointProcess::spawn(
        bin,
        &config,
        &CertFiles::in_dir(dir),
        &[
            "--gateway",
            &format!("{WAYPOINT_NS}/{WAYPOINT}"),
            "--log-level",
            &log,
        ],
    )?;
    waypoint
        .wait_ready(Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!(e))?;
    Ok(waypoint)
}

impl Cluster {
    /// Builds the cluster for `base` + `test` manifests and starts `bin` on it.
    pub async fn start(
        bin: &Path,
        base: &str,
        test: &str,
        profile: crate::Profile,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = DevCa::new("conformance")?;
        let waypoint_id = Identity::new("cluster.local", WAYPOINT_NS, WAYPOINT);
        ca.issue(&waypoint_id)?.write(dir.path())?;

        let mut out: Vec<Value> = Vec::new();
        let mut pods = Vec::new();
        let mut services = Vec::new();
        let all = manifests(base, test, profile)?;
        out.push(serde_yaml::from_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {WAYPOINT}\n  namespace: {WAYPOINT_NS}\nspec:\n  gatewayClassName: istio-waypoint\n"
        ))?);
        for mut doc in all {
            match kind(&doc) {
                "Namespace" => {
                    label_for_waypoint(&mut doc);
                    out.push(doc);
                }
                "Service" => {
                    assign_vip(&mut doc, &mut services)?;
                    out.push(doc);
                }
                "Deployment" => start_replicas(&doc, &ca, &mut out, &mut pods).await?,
                "HTTPRoute"
                | "GRPCRoute"
                | "ReferenceGrant"
                | "AuthorizationPolicy"
                | "RequestAuthentication"
                | "ConfigMap" => out.push(doc),
                _ => {}
            }
        }
        let waypoint = spawn_waypoint(bin, dir.path(), &out).await?;
        Ok(Self {
            _dir: dir,
            ca,
            waypoint_id,
            pods,
            services,
            waypoint,
        })
    }

    /// HTTP requests answered so far by the pods of `deployment`.
    pub fn requests_served(&self, deployment: &str) -> usize {
        self.pods
            .iter()
            .filter(|p| p.deployment == deployment)
            .map(|p| {
                p._ztunnel
                    .counters
                    .requests
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    }

    /// The `frontend` Service's VIP (Gateway profile).
    pub fn frontend(&self) -> Option<IpAddr> {
        self.services
            .iter()
            .find(|s| s.name == FRONTEND && s.namespace == GATEWAY_NS)
            .map(|s| s.vip)
    }

    /// The pod that sends requests for `app` in `namespace`.
    pub fn pod(&self, app: &str, namespace: &str) -> anyhow::Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.deployment == app && p.namespace == namespace)
            .ok_or_else(|| anyhow!("no pod of {namespace}/{app}"))
    }

    /// An HBONE client with `pod`'s identity, connecting to `addr` (the waypoint, or a pod's
    /// ztunnel) that must present `server`.
    pub fn client(
        &self,
        pod: &Pod,
        addr: SocketAddr,
        server: Identity,
    ) -> anyhow::Result<HboneClient> {
        let certs = self.ca.issue(&pod.identity)?.certs()?;
        Ok(HboneClient::new(
            addr,
            Arc::new(CertStore::fixed(certs)),
            server,
        ))
    }

    /// The configuration file the waypoint runs on (`mesh.yaml`).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("mesh.yaml")
    }

    /// The waypoint's identity.
    pub fn waypoint_identity(&self) -> Identity {
        self.waypoint_id.clone()
    }

    /// Resolves `host[:port]` as a pod in `client_ns` would: a Service name
    /// (`name`, `name.ns`, `name.ns.svc[.cluster.local]`) to its VIP, or `{podIP:<deployment>}`.
    pub fn resolve(
        &self,
        host: &str,
        client_ns: &str,
        default_port: u16,
    ) -> anyhow::Result<(SocketAddr, bool)> {
        let (name, port) = match host.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
            Some((h, Ok(p))) => (h, p),
            _ => (host, default_port),
        };
        if let Some(app) = name
            .strip_prefix("{podIP:")
            .and_then(|s| s.strip_suffix('}'))
        {
            let pod = self
                .pod(app, client_ns)
                .or_else(|_| self.pod(app, WAYPOINT_NS))?;
            return Ok((SocketAddr::new(pod.ip, port), true));
        }
        let mut parts = name.split('.');
        let svc = parts.next().unwrap_or_default();
        let ns = parts.next().unwrap_or(client_ns);
        match self
            .services
            .iter()
            .find(|s| s.name == svc && s.namespace == ns)
        {
            Some(s) => Ok((SocketAddr::new(s.vip, port), false)),
            None => bail!("cannot resolve {host} from {client_ns}"),
        }
    }
}
