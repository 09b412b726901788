//! A cluster's `upstream_connection_options`: TCP keepalive on the connections to its
//! endpoints (DestinationRule `connectionPool.tcp.tcpKeepalive`, MeshConfig
//! `tcpKeepalive`; istiod's `applyTCPKeepalive` / `setKeepAliveSettings` in `cluster.go`).
//! The waypoint sets it on the sockets it opens to endpoints outside the mesh; a mesh
//! endpoint's tunnel rides the HBONE connection to its ztunnel, which keeps its own
//! keepalive (in Envoy the cluster's connection goes to an internal listener, no socket).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use filters::model::TcpKeepalive;

use super::error::InvalidResource;

/// The TCP keepalive the cluster asks for, if any; the other options are refused by field.
pub fn tcp_keepalive(c: &Cluster) -> Result<Option<TcpKeepalive>, InvalidResource> {
    let Some(o) = &c.upstream_connection_options else {
        return Ok(None);
    };
    let bad = |field: &str| {
        super::cluster::invalid(
            c,
            &format!("upstream_connection_options.{field}"),
            "not supported".into(),
        )
    };
    if o.set_local_interface_name_on_upstream_connections {
        return Err(bad("set_local_interface_name_on_upstream_connections"));
    }
    if o.happy_eyeballs_config.is_some() {
        return Err(bad("happy_eyeballs_config"));
    }
    let Some(k) = &o.tcp_keepalive else {
        return Ok(None);
    };
    let secs = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>| {
        v.as_ref()
            .map(|v| v.value)
            .filter(|s| *s > 0)
            .map(|s| std::time::Duration::from_secs(s.into()))
    };
    Ok(Some(TcpKeepalive {
        time: secs(&k.keepalive_time),
        interval: secs(&k.keepalive_interval),
        probes: k
            .keepalive_probes
            .as_ref()
            .map(|v| v.value)
            .filter(|p| *p > 0),
    }))
}
