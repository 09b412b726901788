//! The Envoy bootstrap pilot-agent writes (`-c etc/istio/proxy/envoy-rev.json`), with the
//! `--config-yaml` override merged over it as Envoy merges it (protobuf merge semantics,
//! [`crate::envoy::merge`]): the node (sent to istiod and the SDS server as it is), the
//! admin address, the `xds-grpc` and `sds-grpc` clusters (Unix sockets to pilot-agent) and
//! the static HTTP listeners ([`super::static_listeners`]: readiness on 15021 through the
//! `agent` cluster, Prometheus on 15090). Only these parts are read; the rest configures
//! Envoy features the waypoint implements natively or does not need.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use filters::model::NamespacedName;
use serde_json::Value as Json;

use super::connect::XdsAddress;
use super::static_listeners::{self, StaticListener};

/// What the waypoint takes from a bootstrap.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// `node`, decoded as Envoy decodes it: every field and metadata value as written.
    pub node: Node,
    /// `node.metadata` as JSON (for reading labels and names).
    pub metadata: serde_json::Map<String, Json>,
    /// `admin.address`.
    pub admin: Option<SocketAddr>,
    /// The `xds-grpc` cluster's endpoint.
    pub xds: Option<XdsAddress>,
    /// The `sds-grpc` cluster's endpoint.
    pub sds: Option<XdsAddress>,
    /// The static HTTP listeners (Istio's `0.0.0.0_15090` and `0.0.0.0_15021`).
    pub listeners: Vec<StaticListener>,
}

/// A bootstrap the waypoint cannot use.
#[derive(Debug, thiserror::Error)]
#[error("bootstrap {field}: {reason}")]
pub struct InvalidBootstrap {
    /// The field.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

pub(super) fn bad(field: &str, reason: impl Into<String>) -> InvalidBootstrap {
    InvalidBootstrap {
        field: field.into(),
        reason: reason.into(),
    }
}

/// `socket_address` of an Envoy `Address`, if that is what it is.
pub(super) fn socket(addr: &Json, field: &str) -> Result<Option<SocketAddr>, InvalidBootstrap> {
    let Some(sa) = addr
        .get("socket_address")
        .or_else(|| addr.get("socketAddress"))
    else {
        return Ok(None);
    };
    let ip = sa["address"]
        .as_str()
        .ok_or_else(|| bad(field, "socket_address.address missing"))?;
    let port = sa
        .get("port_value")
        .or_else(|| sa.get("portValue"))
        .and_then(Json::as_u64)
        .ok_or_else(|| bad(field, "socket_address.port_value missing"))?;
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| bad(field, format!("{ip:?} is not an IP")))?;
    let port = u16::try_from(port).map_err(|_| bad(field, format!("port {port} out of range")))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

fn cluster_address(clusters: &[Json], name: &str) -> Result<Option<XdsAddress>, InvalidBootstrap> {
    let Some(c) = clusters.iter().find(|c| c["name"] == name) else {
        return Ok(None);
    };
    let field = format!("static_resources.clusters[{name}]");
    let ep = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
    if let Some(path) = ep["pipe"]["path"].as_str() {
        return Ok(Some(XdsAddress::Unix(path.into())));
    }
    match socket(ep, &field)? {
        Some(sa) => Ok(Some(XdsAddress::Http(format!("http://{sa}")))),
        None => Err(bad(
            &field,
            "endpoint is neither a pipe nor a socket address",
        )),
    }
}

/// JSON or YAML text as JSON.
fn document(text: &str, field: &str) -> Result<Json, InvalidBootstrap> {
    match serde_json::from_str(text) {
        Ok(j) => Ok(j),
        Err(_) => serde_yaml::from_str(text)
            .map_err(|e| bad(field, format!("neither JSON nor YAML: {e}"))),
    }
}

/// Parses a bootstrap (JSON, or YAML).
pub fn parse(text: &str) -> Result<Bootstrap, InvalidBootstrap> {
    parse_with_override(text, None)
}

/// Parses a bootstrap (JSON, or YAML) with Envoy's `--config-yaml` merged over it.
pub fn parse_with_override(
    text: &str,
    config_yaml: Option<&str>,
) -> Result<Bootstrap, InvalidBootstrap> {
    let mut json = document(text, "<document>")?;
    if let Some(overlay) = config_yaml {
        let overlay = document(overlay, "--config-yaml")?;
        crate::envoy::merge::merge("envoy.config.bootstrap.v3.Bootstrap", &mut json, &overlay)
            .map_err(|e| bad("--config-yaml", e.to_string()))?;
    }
    let node_json = &json["node"];
    if !node_json["id"].is_string() {
        return Err(bad("node.id", "missing"));
    }
    let node: Node =
        crate::envoy::from_json_allowing_unknown("envoy.config.core.v3.Node", node_json)
            .map_err(|e| bad("node", e.to_string()))?;
    let metadata = node_json["metadata"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let admin = socket(&json["admin"]["address"], "admin.address")?;
    let clusters = json["static_resources"]["clusters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let xds = cluster_address(&clusters, "xds-grpc")?;
    let sds = cluster_address(&clusters, "sds-grpc")?;
    let listeners = static_listeners::parse(&json["static_resources"])?;
    Ok(Bootstrap {
        node,
        metadata,
        admin,
        xds,
        sds,
        listeners,
    })
}

impl Bootstrap {
    /// The waypoint's Gateway: the `gateway.networking.k8s.io/gateway-name` label (or
    /// `istio.io/gateway-name`) in `LABELS`, in `NAMESPACE`; else the pod name and
    /// namespace from the node id (`<type>~<ip>~<pod>.<namespace>~...`).
    pub fn gateway(&self) -> NamespacedName {
        let labels = self.metadata.get("LABELS").and_then(Json::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Json::as_str);
        let from_id = self
            .node
            .id
            .split('~')
            .nth(2)
            .and_then(|p| p.split_once('.'));
        let ns = self
            .metadata
            .get("NAMESPACE")
            .and_then(Json::as_str)
            .or(from_id.map(|(_, ns)| ns))
            .unwrap_or("default");
        let name = label("gateway.networking.k8s.io/gateway-name")
            .or(label("istio.io/gateway-name"))
            .or(from_id.map(|(pod, _)| pod))
            .unwrap_or("waypoint");
        NamespacedName::new(ns, name)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_istios_ambient_golden_bootstrap() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/istio/config-dumps/bootstrap-ambient-golden.json");
        let b = super::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(b.node.id, "sidecar~1.2.3.4~foo~bar");
        assert_eq!(b.admin.unwrap().to_string(), "127.0.0.1:15000");
        assert_eq!(b.xds.unwrap().to_string(), "unix:/tmp/XDS");
        assert_eq!(
            b.sds.unwrap().to_string(),
            "unix:./var/run/secrets/workload-spiffe-uds/test.sock"
        );
        assert_eq!(b.listeners.len(), 2);
        assert!(b.metadata.contains_key("PROXY_CONFIG"));
        // The node as written: cluster, locality (present, empty), nested metadata.
        assert_eq!(b.node.cluster, "istio-proxy");
        assert!(b.node.locality.is_some());
        let md = &b.node.metadata.as_ref().unwrap().fields;
        assert_eq!(md.len(), 10);
        let kind = |k: &str| md[k].kind.clone().unwrap();
        use envoy_types::pb::google::protobuf::value::Kind;
        assert_eq!(
            kind("ISTIO_VERSION"),
            Kind::StringValue("binary-1.0".into())
        );
        assert_eq!(kind("ENVOY_PROMETHEUS_PORT"), Kind::NumberValue(15090.0));
        assert!(matches!(kind("PILOT_SAN"), Kind::ListValue(l) if l.values.len() == 1));
        assert!(matches!(kind("PROXY_CONFIG"), Kind::StructValue(s) if s.fields.len() == 8));
    }

    #[test]
    fn merges_config_yaml_over_the_file() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/istio/config-dumps/bootstrap-ambient-golden.json");
        let text = std::fs::read_to_string(path).unwrap();
        let over = "node:\n  metadata:\n    EXTRA: yes\nadmin:\n  address:\n    socket_address: {port_value: 15999}\n";
        let b = super::parse_with_override(&text, Some(over)).unwrap();
        assert_eq!(b.admin.unwrap().port(), 15999);
        let md = &b.node.metadata.unwrap().fields;
        assert_eq!(md.len(), 11);
        assert!(super::parse_with_override(&text, Some("admin: [1]")).is_err());
        // A node field this build does not know is skipped (--allow-unknown-static-fields).
        let b = super::parse_with_override(&text, Some("node: {future_field: 1}")).unwrap();
        assert_eq!(b.node.id, "sidecar~1.2.3.4~foo~bar");
    }
}
