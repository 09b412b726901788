//! TCP traffic shifting: each new TCP tunnel to a Service port with a TCP route draws one
//! of the route's backends by weight (Envoy's TCP proxy `weighted_clusters`: weighted
//! random per connection), then an endpoint of that backend as usual.

use super::model::{BackendTarget, RouteKind};
use super::{select, Backend};
use crate::model::{Snapshot, Target};
use crate::ProxyError;

/// The backend a new TCP tunnel to `target` from a client in namespace `client_ns` goes
/// to: a weighted draw among the backends of the TCP route attached to the Service port
/// (the consumer route of the client's namespace, else the producer route; the first rule
/// in table order), else the target itself. An unusable draw (a backend naming an unknown
/// cluster or Service, or no backend with weight) is [`ProxyError::InvalidBackend`]: the
/// tunnel is closed, as Envoy closes a connection whose cluster is not found (`NC`).
pub fn backend(
    snapshot: &Snapshot,
    target: &Target,
    client_ns: &str,
) -> Result<Backend, ProxyError> {
    let own = || Ok(Backend::of_target(target));
    let Target::Service { service, port } = target else {
        return own();
    };
    let Some(routes) = snapshot.routes(&service.name, *port) else {
        return own();
    };
    if routes.kind != Some(RouteKind::Tcp) {
        return own();
    }
    let Some((route, rule)) = routes.for_client(client_ns).and_then(|t| t.first_rule()) else {
        return own();
    };
    let drawn = select::weighted(&rule.backends, &mut rand::thread_rng());
    match drawn.map(|i| &rule.backends[i].target) {
        Some(BackendTarget::Backend(b)) => Ok(b.clone()),
        Some(BackendTarget::Invalid(why)) => Err(ProxyError::InvalidBackend(format!(
            "TCP route {}: {why}",
            route.name
        ))),
        None => Err(ProxyError::InvalidBackend(format!(
            "TCP route {}: no backend with weight",
            route.name
        ))),
    }
}
