//! The xDS configuration source: istiod's Envoy resources into the waypoint's route
//! tables ([`filters::Snapshot`]).
//!
//! - [`ads`]: the xDS subscriber (Delta ADS and SDS against istiod and pilot-agent).
//! - [`translate`]: Envoy resources (listeners, clusters, endpoints, RBAC) into the model.
//! - [`envoy`]: Envoy's protobuf types and their JSON form.
//!
//! Accepted resources are converted into a complete `Snapshot` outside of any lock and
//! handed to a [`filters::Publisher`], which swaps it in atomically; a NACKed resource
//! never replaces the last good configuration. The other source, a local file of
//! Kubernetes objects, is the `kube-config` crate.

pub mod ads;
pub mod ca;
pub mod envoy;
pub mod translate;
