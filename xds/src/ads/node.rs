//! The node a waypoint running without pilot-agent presents to istiod: the id, cluster and
//! metadata pilot-agent would have put in Envoy's bootstrap, from the pod's environment
//! (the facts istiod reads are its `NodeMetadata` JSON keys).

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use filters::model::NamespacedName;

use super::Node;

/// What the pod knows about itself (downward API environment and files).
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    /// `POD_NAME`.
    pub name: String,
    /// `POD_NAMESPACE`.
    pub namespace: String,
    /// `INSTANCE_IP` (the pod IP).
    pub ip: String,
    /// `SERVICE_ACCOUNT`.
    pub service_account: String,
    /// `ISTIO_META_CLUSTER_ID` / `CLUSTER_ID`.
    pub cluster_id: String,
    /// The Istio version announced (istiod gates some output on it).
    pub istio_version: String,
    /// The pod's labels (`/etc/istio/pod/labels`).
    pub labels: BTreeMap<String, String>,
    /// The DNS domain, `<ns>.svc.cluster.local`'s suffix (`svc.cluster.local`).
    pub dns_suffix: String,
    /// `PROXY_CONFIG` as JSON, or a minimal one naming the discovery address.
    pub proxy_config: serde_json::Value,
    /// Further metadata: `ISTIO_META_<KEY>` variables as `<KEY>` (pilot-agent's rule).
    pub extra: BTreeMap<String, String>,
}

/// A JSON value as a protobuf `Value`.
pub fn json_to_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn string(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.to_string())),
    }
}

impl PodFacts {
    /// The node: id `waypoint~<ip>~<pod>.<ns>~<ns>.<dns suffix>`, cluster `<gateway>.<ns>`,
    /// and the metadata keys istiod reads (`NAMESPACE`, `NAME`, `CLUSTER_ID`,
    /// `ISTIO_VERSION`, `SERVICE_ACCOUNT`, `LABELS`, `INSTANCE_IPS`, `ENABLE_HBONE`,
    /// `PROXY_CONFIG`, `WORKLOAD_NAME`, plus every `ISTIO_META_*`).
    pub fn node(&self, gateway: &NamespacedName) -> Node {
        let mut fields: BTreeMap<String, Value> = self
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), string(v)))
            .collect();
        fields
            .entry("WORKLOAD_NAME".into())
            .or_insert_with(|| string(&gateway.name));
        let own = [
            ("NAMESPACE", string(&self.namespace)),
            ("NAME", string(&self.name)),
            ("CLUSTER_ID", string(&self.cluster_id)),
            ("ISTIO_VERSION", string(&self.istio_version)),
            ("SERVICE_ACCOUNT", string(&self.service_account)),
            ("INSTANCE_IPS", string(&self.ip)),
            ("ENABLE_HBONE", string("true")),
            (
                "LABELS",
                Value {
                    kind: Some(Kind::StructValue(Struct {
                        fields: self
                            .labels
                            .iter()
                            .map(|(k, v)| (k.clone(), string(v)))
                            .collect(),
                    })),
                },
            ),
            ("PROXY_CONFIG", json_to_value(&self.proxy_config)),
        ];
        for (k, v) in own {
            fields.insert(k.to_string(), v);
        }
        Node {
            id: format!(
                "waypoint~{}~{}.{}~{}.{}",
                self.ip, self.name, self.namespace, self.namespace, self.dns_suffix
            ),
            cluster: format!("{}.{}", gateway.name, gateway.namespace),
            metadata: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            ..Default::default()
        }
    }
}

/// Parses the downward API labels file (`key="value"` per line, values quoted as Go does).
pub fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = serde_json::from_str::<String>(v).unwrap_or_else(|_| v.to_string());
            Some((k.trim().to_string(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_has_pilot_agents_id_cluster_and_metadata() {
        let facts = PodFacts {
            name: "waypoint-7d9f".into(),
            namespace: "default".into(),
            ip: "10.0.0.7".into(),
            service_account: "waypoint".into(),
            cluster_id: "Kubernetes".into(),
            istio_version: "1.30.0".into(),
            labels: parse_labels(
                "app=\"waypoint\"\ngateway.networking.k8s.io/gateway-name=\"waypoint\"\n",
            ),
            dns_suffix: "svc.cluster.local".into(),
            proxy_config: serde_json::json!({"discoveryAddress": "istiod.istio-system.svc:15012"}),
            extra: [("NETWORK".to_string(), "net1".to_string())].into(),
        };
        let node = facts.node(&NamespacedName::new("default", "waypoint"));
        assert_eq!(
            node.id,
            "waypoint~10.0.0.7~waypoint-7d9f.default~default.svc.cluster.local"
        );
        assert_eq!(node.cluster, "waypoint.default");
        let meta = node.metadata.unwrap().fields;
        let s = |k: &str| match meta[k].kind.as_ref() {
            Some(Kind::StringValue(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(s("NAME"), "waypoint-7d9f");
        assert_eq!(s("INSTANCE_IPS"), "10.0.0.7");
        assert_eq!(s("NETWORK"), "net1");
        assert_eq!(s("WORKLOAD_NAME"), "waypoint");
        match meta["LABELS"].kind.as_ref() {
            Some(Kind::StructValue(l)) => assert_eq!(
                l.fields["gateway.networking.k8s.io/gateway-name"],
                string("waypoint")
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            meta["PROXY_CONFIG"].kind,
            Some(Kind::StructValue(_))
        ));
    }
}
