//! Where a waypoint TCP port's `tcp_proxy` sends its tunnels. istiod
//! (`buildWaypointNetworkFilters` in listener_waypoint.go) writes the port's own
//! `inbound-vip|<port>|tcp|<host>` cluster, or, from the VirtualService TLS/TCP routes of the
//! Service (`getWaypointTCPRoutes`; Gateway API TCPRoute/TLSRoute become such routes),
//! one destination's cluster (`getWaypointDestinationCluster`: another Service's, or a
//! subset's) or `weighted_clusters` over several (zero-weight routes left out).

use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    weighted_cluster::ClusterWeight, ClusterSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;

use super::Bad;

/// One cluster a TCP chain sends tunnels to, with its relative weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpCluster {
    /// The cluster's name.
    pub name: String,
    /// Relative weight (1 for a single `cluster`).
    pub weight: u32,
}

/// The clusters of the TCP proxy's `cluster` or `weighted_clusters`; refuses a weighted
/// cluster's fields other than `name` and `weight` by name, an empty list, an empty name
/// and a zero weight (Envoy's own validation: at least one cluster, weight at least 1).
/// A name CDS does not know is accepted here: tunnels drawing it are closed (`NC`).
pub(super) fn clusters(tcp: &TcpProxy, at: &str) -> Result<Vec<TcpCluster>, Bad> {
    match &tcp.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => Ok(vec![TcpCluster {
            name: c.clone(),
            weight: 1,
        }]),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let at = format!("{at}.typed_config.weighted_clusters.clusters");
            if w.clusters.is_empty() {
                return Err((at, "at least one cluster is required".into()));
            }
            w.clusters
                .iter()
                .enumerate()
                .map(|(i, c)| cluster_weight(c, &format!("{at}[{i}]")))
                .collect()
        }
        _ => Err((
            format!("{at}.typed_config.cluster"),
            "a cluster or weighted_clusters is required".into(),
        )),
    }
}

fn cluster_weight(c: &ClusterWeight, at: &str) -> Result<TcpCluster, Bad> {
    let rest = ClusterWeight {
        name: String::new(),
        weight: 0,
        ..c.clone()
    };
    super::residual::refuse(
        at,
        super::residual::first_set(
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight",
            &rest,
        ),
    )?;
    if c.name.is_empty() {
        return Err((format!("{at}.name"), "a cluster name is required".into()));
    }
    if c.weight == 0 {
        return Err((format!("{at}.weight"), "weight must be at least 1".into()));
    }
    Ok(TcpCluster {
        name: c.name.clone(),
        weight: c.weight,
    })
}
