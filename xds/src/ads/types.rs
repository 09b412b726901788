//! xDS type URLs and the per-type handlers: decode a resource, validate it, and record it
//! in the accepted set (or say why not).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::translate::{cluster, endpoint, listener, InvalidResource, Resources};

/// Listeners.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Clusters.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Endpoints.
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Route configurations (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Secrets (SDS).
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The `kind` word used in messages for a type URL.
pub fn kind(type_url: &str) -> &'static str {
    match type_url {
        LISTENER => "listener",
        CLUSTER => "cluster",
        ENDPOINT => "endpoints",
        ROUTE => "route",
        SECRET => "secret",
        _ => "resource",
    }
}

fn decode<M: Message + Default>(
    any: &Any,
    kind: &'static str,
    name: &str,
) -> Result<M, InvalidResource> {
    M::decode(any.value.as_slice())
        .map_err(|e| InvalidResource::new(kind, name, "<message>", format!("cannot decode: {e}")))
}

/// Validates `any` (named `name`) of `type_url` and records it in `into`.
pub fn accept(
    type_url: &str,
    name: &str,
    any: &Any,
    into: &mut Resources,
) -> Result<(), InvalidResource> {
    let kind = kind(type_url);
    if !any.type_url.is_empty() && any.type_url != type_url {
        return Err(InvalidResource::new(
            kind,
            name,
            "<type>",
            format!("expected {type_url}, got {}", any.type_url),
        ));
    }
    match type_url {
        LISTENER => {
            let l: Listener = decode(any, kind, name)?;
            into.listeners
                .insert(name.to_string(), listener::convert(&l)?);
        }
        CLUSTER => {
            let c: Cluster = decode(any, kind, name)?;
            if cluster::is_auxiliary(&c.name) {
                tracing::debug!(cluster = %c.name, "cluster handled natively");
                let provider = crate::translate::provider_cluster::outbound(&c)?;
                into.outbound.remove(name);
                if let Some(info) = provider {
                    into.outbound.insert(name.to_string(), info);
                }
                return Ok(());
            }
            into.clusters
                .insert(name.to_string(), cluster::convert(&c)?);
        }
        ENDPOINT => {
            let e: ClusterLoadAssignment = decode(any, kind, name)?;
            into.endpoints
                .insert(name.to_string(), endpoint::convert(&e)?);
        }
        ROUTE => {
            let rc: envoy_types::pb::envoy::config::route::v3::RouteConfiguration =
                decode(any, kind, name)?;
            let specs = crate::translate::route::convert(&rc, "route_config")
                .map_err(|(field, reason)| InvalidResource::new(kind, name, field, reason))?;
            into.routes.insert(name.to_string(), specs);
        }
        SECRET => {
            let secret: Secret = decode(any, kind, name)?;
            into.secrets.insert(
                name.to_string(),
                crate::translate::secret::convert(&secret, name)?,
            );
        }
        other => {
            return Err(InvalidResource::new(
                kind,
                name,
                "<type>",
                format!("type {other} is not subscribed"),
            ))
        }
    }
    Ok(())
}

/// Removes resource `name` of `type_url`.
pub fn remove(type_url: &str, name: &str, from: &mut Resources) {
    match type_url {
        LISTENER => {
            from.listeners.remove(name);
        }
        CLUSTER => {
            from.clusters.remove(name);
            from.outbound.remove(name);
        }
        ENDPOINT => {
            from.endpoints.remove(name);
        }
        ROUTE => {
            from.routes.remove(name);
        }
        SECRET => {
            from.secrets.remove(name);
        }
        _ => {}
    }
}
