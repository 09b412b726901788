//! Routing: decides which backend a request is sent to.
//!
//! [`decide`] is pure: it reads the request and its [`RequestContext`] and returns a
//! [`RouteDecision`]. [`RouteLayer`] applies the decision by attaching it to the request
//! for the inner services (endpoint selection, the upstream client).

mod layer;

pub use layer::{RouteLayer, RouteService};

use std::sync::Arc;

use crate::model::{RequestContext, Service, Target, Workload};
use crate::ProxyError;

/// Where a request goes.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A port of a Service: an endpoint is picked among its ready endpoints.
    Service {
        /// The Service.
        service: Arc<Service>,
        /// The Service port.
        port: u16,
    },
    /// One pod, addressed directly.
    Workload {
        /// The pod.
        workload: Arc<Workload>,
        /// The port on the pod.
        port: u16,
    },
}

impl Backend {
    /// The backend a tunnel's own target stands for (no routes applied).
    pub fn of_target(target: &Target) -> Self {
        match target {
            Target::Service { service, port } => Backend::Service {
                service: service.clone(),
                port: *port,
            },
            Target::Workload { workload, port } => Backend::Workload {
                workload: workload.clone(),
                port: *port,
            },
        }
    }

    /// `namespace/name:port` for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Backend::Service { service, port } => format!("{}:{port}", service.name),
            Backend::Workload { workload, port } => format!("{}:{port}", workload.name),
        }
    }
}

/// The outcome of routing one request.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    /// The backend to forward to.
    pub backend: Backend,
}

/// Routes a request. With no routes attached, traffic goes to the addressed Service or pod
/// itself, as Istio's waypoint does for a Service without HTTPRoutes.
pub fn decide<B>(
    ctx: &RequestContext,
    _req: &http::Request<B>,
) -> Result<RouteDecision, ProxyError> {
    Ok(RouteDecision {
        backend: Backend::of_target(&ctx.tunnel.target),
    })
}
