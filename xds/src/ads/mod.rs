//! The xDS subscriber: Delta ADS towards istiod (normally through pilot-agent's Unix
//! socket), producing the same snapshots the local configuration does.

pub mod bootstrap;
pub mod client;
pub mod connect;
pub mod dump;
pub mod node;
pub mod sds;
pub mod static_listeners;
pub mod tls;
pub mod types;

pub use client::{AdsClient, AdsError, AdsStats};
pub use connect::XdsAddress;
pub use envoy_types::pb::envoy::config::core::v3::Node;

use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use filters::model::NamespacedName;

/// The node a waypoint started without a bootstrap (`run --xds-address`) presents to
/// istiod: id, cluster and the metadata istiod reads to recognise a waypoint (`NAMESPACE`,
/// `CLUSTER_ID`, `ISTIO_VERSION`, the Gateway name). Under pilot-agent the bootstrap's node
/// is sent instead, unchanged ([`bootstrap::Bootstrap::node`]).
pub fn node(id: &str, cluster_id: &str, gateway: &NamespacedName) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let fields = [
        ("NAMESPACE", s(&gateway.namespace)),
        ("CLUSTER_ID", s(cluster_id)),
        ("NAME", s(&gateway.name)),
        ("ENABLE_HBONE", s("true")),
        ("ISTIO_VERSION", s(env!("CARGO_PKG_VERSION"))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Node {
        id: id.to_string(),
        cluster: format!("{}.{}", gateway.name, gateway.namespace),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}
