//! The Envoy bootstrap pilot-agent writes (`-c etc/istio/proxy/envoy-rev.json`): the node
//! (id, cluster, metadata), the admin address, the `xds-grpc` and `sds-grpc` clusters (Unix
//! sockets to pilot-agent) and the static listeners for Prometheus (15090) and readiness
//! (15021). Only these parts are read; the rest configures Envoy features the waypoint
//! implements natively or does not need.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use filters::model::NamespacedName;
use serde_json::Value as Json;

use super::connect::XdsAddress;

/// What the waypoint takes from a bootstrap.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// `node`.
    pub node: Node,
    /// `node.metadata` as JSON (for reading labels and names).
    pub metadata: serde_json::Map<String, Json>,
    /// `admin.address`.
    pub admin: Option<SocketAddr>,
    /// The `xds-grpc` cluster's endpoint.
    pub xds: Option<XdsAddress>,
    /// The `sds-grpc` cluster's endpoint.
    pub sds: Option<XdsAddress>,
    /// The static Prometheus listener (Istio's `0.0.0.0:15090`).
    pub prometheus: Option<SocketAddr>,
    /// The static readiness listener (Istio's `0.0.0.0:15021`).
    pub readiness: Option<SocketAddr>,
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

fn bad(field: &str, reason: impl Into<String>) -> InvalidBootstrap {
    InvalidBootstrap {
        field: field.into(),
        reason: reason.into(),
    }
}

/// JSON into `google.protobuf.Value`.
pub fn to_value(v: &Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        Json::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn socket(addr: &Json, field: &str) -> Result<Option<SocketAddr>, InvalidBootstrap> {
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

/// Parses a bootstrap (JSON, or YAML).
pub fn parse(text: &str) -> Result<Bootstrap, InvalidBootstrap> {
    let json: Json = match serde_json::from_str(text) {
        Ok(j) => j,
        Err(_) => serde_yaml::from_str(text)
            .map_err(|e| bad("<document>", format!("neither JSON nor YAML: {e}")))?,
    };
    let node = &json["node"];
    let id = node["id"]
        .as_str()
        .ok_or_else(|| bad("node.id", "missing"))?
        .to_string();
    let metadata = node["metadata"].as_object().cloned().unwrap_or_default();
    let node = Node {
        id,
        cluster: node["cluster"].as_str().unwrap_or_default().to_string(),
        metadata: Some(Struct {
            fields: metadata
                .iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect(),
        }),
        ..Default::default()
    };
    let admin = socket(&json["admin"]["address"], "admin.address")?;
    let clusters = json["static_resources"]["clusters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let xds = cluster_address(&clusters, "xds-grpc")?;
    let sds = cluster_address(&clusters, "sds-grpc")?;
    let mut prometheus = None;
    let mut readiness = None;
    for (i, l) in json["static_resources"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let addr = socket(
            &l["address"],
            &format!("static_resources.listeners[{i}].address"),
        )?;
        match addr.map(|a| a.port()) {
            Some(15090) => prometheus = addr,
            Some(15021) => readiness = addr,
            _ if l["name"].as_str().is_some_and(|n| n.ends_with("_15090")) => prometheus = addr,
            _ if l["name"].as_str().is_some_and(|n| n.ends_with("_15021")) => readiness = addr,
            _ => {}
        }
    }
    Ok(Bootstrap {
        node,
        metadata,
        admin,
        xds,
        sds,
        prometheus,
        readiness,
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
        assert_eq!(b.prometheus.unwrap().port(), 15090);
        assert_eq!(b.readiness.unwrap().port(), 15021);
        assert!(b.metadata.contains_key("PROXY_CONFIG"));
    }
}
