//! `run --istiod`: the waypoint without pilot-agent, as ztunnel runs. Certificates come
//! from istiod's CA (`xds::ca`), configuration over Delta ADS to istiod over TLS
//! (`xds::ads::tls`), both authenticated with the pod's projected service-account token;
//! the node is the one pilot-agent would have sent (`xds::ads::node`), from the
//! environment istiod's waypoint template sets.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use filters::model::{Identity, NamespacedName};
use hbone::tls::CertStore;
use xds::ads::node::PodFacts;
use xds::ads::tls::IstiodTls;
use xds::ca::CaClient;

use crate::server::Task;

/// The Istio version announced in the node metadata unless `--istio-version` says
/// otherwise: the release whose istiod output this proxy is tested against.
pub const ISTIO_VERSION: &str = "1.30.0";

/// Where the projected token (audience `istio-ca`) is mounted in istiod's templates.
const TOKEN_FILE: &str = "/var/run/secrets/tokens/istio-token";
/// Where the `istio-ca-root-cert` ConfigMap is mounted.
const ROOT_CERT: &str = "/var/run/secrets/istio/root-cert.pem";
/// The downward API labels file.
const LABELS_FILE: &str = "/etc/istio/pod/labels";
/// Kubernetes' cluster DNS suffix for Services.
const DNS_SUFFIX: &str = "svc.cluster.local";
/// The Gateway name label Istio puts on a waypoint's pods.
const GATEWAY_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The flags of the mode without pilot-agent.
#[derive(Debug, Args)]
pub struct IstiodArgs {
    /// istiod's address (`istiod.istio-system.svc:15012`, or `https://...`): xDS and
    /// certificates straight from istiod over TLS, without pilot-agent. Reads the pod's
    /// facts from POD_NAME, POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT, TRUST_DOMAIN,
    /// ISTIO_META_CLUSTER_ID and ISTIO_META_* as istiod's waypoint template sets them.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["config", "xds_address", "sds_address", "cert_chain", "key"])]
    pub istiod: Option<String>,
    /// istiod's CA, when not the xDS address (with --istiod); else `CA_ADDR`, the variable
    /// istiod's waypoint template sets for pilot-agent.
    #[arg(long, env = "CA_ADDRESS", value_name = "HOST:PORT")]
    pub ca_address: Option<String>,
    /// The DNS name istiod's certificate must carry (default: the address's host).
    #[arg(long, value_name = "DNS")]
    pub istiod_san: Option<String>,
    /// The projected service-account token sent as `authorization: Bearer` (read again on
    /// every request).
    #[arg(long, default_value = TOKEN_FILE)]
    pub token_file: PathBuf,
    /// Lifetime requested for the workload certificate (renewed at half of it).
    #[arg(long, default_value = "24h", value_parser = super::run::parse_interval)]
    pub cert_ttl: Duration,
    /// The Istio version announced to istiod (`ISTIO_VERSION` node metadata).
    #[arg(long, default_value = ISTIO_VERSION)]
    pub istio_version: String,
    /// The pod's name (node id and `NAME`).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The pod's namespace (the identity's and the node's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// The pod's IP (node id and `INSTANCE_IPS`).
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: Option<String>,
    /// The pod's service account (the SPIFFE identity requested from the CA).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// The downward API labels file (`LABELS` metadata; the Gateway name label).
    #[arg(long, default_value = LABELS_FILE)]
    pub pod_labels_file: PathBuf,
}

/// Everything `--istiod` resolved to.
#[derive(Debug, Clone)]
pub struct Istiod {
    /// The xDS server.
    pub xds: Arc<IstiodTls>,
    /// The CA.
    pub ca: Arc<IstiodTls>,
    /// The workload identity requested.
    pub identity: Identity,
    /// The pod's facts, for the node.
    pub facts: PodFacts,
    /// The waypoint's Gateway.
    pub gateway: NamespacedName,
    /// Requested certificate lifetime.
    pub cert_ttl: Duration,
}

fn required(value: &Option<String>, what: &str, env: &str, flag: &str) -> anyhow::Result<String> {
    value
        .clone()
        .filter(|v| !v.is_empty())
        .with_context(|| format!("--istiod needs the pod's {what}: set {env} or {flag}"))
}

/// `host:port` from `host:port` or `https://host:port`, and the host.
fn host_port(address: &str) -> anyhow::Result<(String, String)> {
    let bare = address
        .strip_prefix("https://")
        .unwrap_or(address)
        .trim_end_matches('/');
    let (host, _) = bare
        .rsplit_once(':')
        .with_context(|| format!("{address:?}: expected host:port"))?;
    Ok((bare.to_string(), host.trim_matches(['[', ']']).to_string()))
}

impl IstiodArgs {
    /// Resolves the mode's settings, or `None` without `--istiod`.
    pub fn resolve(
        &self,
        root_cert: Option<&Path>,
        trust_domain: &str,
        cluster_id: &str,
        gateway: Option<&str>,
    ) -> anyhow::Result<Option<Istiod>> {
        let Some(istiod) = &self.istiod else {
            return Ok(None);
        };
        let namespace = required(
            &self.pod_namespace,
            "namespace",
            "POD_NAMESPACE",
            "--pod-namespace",
        )?;
        let service_account = required(
            &self.service_account,
            "service account",
            "SERVICE_ACCOUNT",
            "--service-account",
        )?;
        let ip = required(&self.instance_ip, "IP", "INSTANCE_IP", "--instance-ip")?;
        let name = required(
            &self
                .pod_name
                .clone()
                .or_else(|| std::env::var("HOSTNAME").ok()),
            "name",
            "POD_NAME",
            "--pod-name",
        )?;
        let labels = match std::fs::read_to_string(&self.pod_labels_file) {
            Ok(text) => xds::ads::node::parse_labels(&text),
            Err(_) => Default::default(),
        };
        let gateway = match gateway {
            Some(g) => match g.split_once('/') {
                Some((ns, name)) => NamespacedName::new(ns, name),
                None => NamespacedName::new(&namespace, g),
            },
            None => {
                let name = std::env::var("GATEWAY")
                    .ok()
                    .or_else(|| labels.get(GATEWAY_LABEL).cloned())
                    .with_context(|| {
                        format!(
                            "--istiod needs the waypoint's Gateway: --gateway, GATEWAY, or the {GATEWAY_LABEL} label in {}",
                            self.pod_labels_file.display()
                        )
                    })?;
                NamespacedName::new(&namespace, &name)
            }
        };
        let root_cert = root_cert.map_or_else(|| PathBuf::from(ROOT_CERT), Path::to_path_buf);
        let target = |address: &str| -> anyhow::Result<Arc<IstiodTls>> {
            let (address, host) = host_port(address)?;
            Ok(Arc::new(IstiodTls {
                address,
                server_name: self.istiod_san.clone().unwrap_or(host),
                root_cert: root_cert.clone(),
                token_file: self.token_file.clone(),
                cluster_id: cluster_id.to_string(),
            }))
        };
        let xds = target(istiod)?;
        let ca_address = self
            .ca_address
            .clone()
            .or_else(|| std::env::var("CA_ADDR").ok())
            .filter(|a| !a.is_empty());
        let ca = match &ca_address {
            Some(a) => target(a)?,
            None => xds.clone(),
        };
        let proxy_config = std::env::var("PROXY_CONFIG")
            .ok()
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({ "discoveryAddress": xds.address }));
        let extra = std::env::vars()
            .filter_map(|(k, v)| Some((k.strip_prefix("ISTIO_META_")?.to_string(), v)))
            .collect();
        let facts = PodFacts {
            name,
            namespace: namespace.clone(),
            ip,
            service_account: service_account.clone(),
            cluster_id: cluster_id.to_string(),
            istio_version: self.istio_version.clone(),
            labels,
            dns_suffix: DNS_SUFFIX.to_string(),
            proxy_config,
            extra,
        };
        Ok(Some(Istiod {
            xds,
            ca,
            identity: Identity::new(trust_domain, &namespace, &service_account),
            facts,
            gateway,
            cert_ttl: self.cert_ttl,
        }))
    }
}

/// The cluster id: `--cluster-id`/`CLUSTER_ID`, else `ISTIO_META_CLUSTER_ID` (what
/// istiod's template sets) when the former is left at its default.
pub fn cluster_id(flag: &str) -> String {
    match std::env::var("ISTIO_META_CLUSTER_ID") {
        Ok(meta) if flag == "Kubernetes" && !meta.is_empty() => meta,
        _ => flag.to_string(),
    }
}

impl Istiod {
    /// The first certificate from the CA (retried until issued, before anything listens),
    /// the store holding it, and the task renewing it.
    pub fn certificates(&self) -> anyhow::Result<(Arc<CertStore>, Task)> {
        let client = CaClient {
            target: self.ca.clone(),
            identity: self.identity.to_string(),
            validity: self.cert_ttl,
        };
        tracing::info!(ca = %self.ca.address, identity = %self.identity, token = %self.ca.token_file.display(), "requesting a certificate from istiod's CA");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let first = rt.block_on(client.first());
        let (store, sink) = super::run::rotating_store(&first.material)
            .context("the certificate from istiod's CA")?;
        Ok((store, Box::pin(client.run(sink, first))))
    }
}
