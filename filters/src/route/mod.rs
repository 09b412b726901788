//! Routing: Gateway API HTTPRoute and GRPCRoute semantics.
//!
//! - [`model`]: compiled routes, rules, matches, filters, backends;
//! - [`table`]: precedence and matching ([`RouteTable::find`]), pure;
//! - [`select`]: weighted backend choice, pure but for the random draw;
//! - [`apply`]: the filters' request/response transformations, pure;
//! - [`RouteLayer`]: the tower layer that applies a [`decide`] outcome.

pub mod apply;
mod layer;
pub mod model;
pub mod select;
pub mod table;

pub use layer::{RouteLayer, RouteService};
pub use table::{PortRoutes, RouteTable};

use std::sync::Arc;

use model::{BackendTarget, Filter, PathMatch, RetryPolicy, Route, Rule, Timeouts};

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

/// The rule a request matched, and the backend drawn from it.
#[derive(Debug, Clone)]
pub struct SelectedRule {
    /// The route.
    pub route: Arc<Route>,
    /// Index of the rule in the route.
    pub rule_index: usize,
    /// The index of the match that matched in the rule (`None`: the rule has none).
    pub match_index: Option<usize>,
    /// Index of the drawn backend, if the rule has any with weight.
    pub backend_index: Option<usize>,
}

impl SelectedRule {
    /// The matched rule.
    pub fn rule(&self) -> &Rule {
        &self.route.rules[self.rule_index]
    }

    /// The path condition that matched (for `ReplacePrefixMatch` and redirects).
    pub fn path(&self) -> &PathMatch {
        self.match_index
            .map_or(&*table::DEFAULT_PATH, |i| &self.rule().matches[i].path)
    }

    /// Rule-level filters, then the drawn backend's filters.
    pub fn filters(&self) -> impl Iterator<Item = &Filter> {
        let rule = self.rule();
        let backend = self
            .backend_index
            .map(|i| &rule.backends[i].filters[..])
            .unwrap_or(&[]);
        rule.filters.iter().chain(backend.iter())
    }
}

/// The outcome of routing one request, attached to it for the inner services.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    /// The backend to forward to.
    pub backend: Backend,
    /// The matched rule, when routes apply.
    pub rule: Option<SelectedRule>,
    /// Timeouts of the rule.
    pub timeouts: Timeouts,
    /// Retry policy of the rule.
    pub retry: Option<RetryPolicy>,
}

/// What routing decided before any filter runs.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The matched rule, if the port has routes.
    pub rule: Option<SelectedRule>,
    /// The backend, or why there is none (500).
    pub backend: Result<Backend, String>,
}

/// Routes a request: the highest-precedence matching rule of the routes attached to the
/// addressed Service port (consumer routes for the client's namespace, else producer
/// routes), then a weighted draw among its backends. With no routes attached, traffic goes
/// to the addressed Service or pod itself.
pub fn decide<B>(ctx: &RequestContext, req: &http::Request<B>) -> Result<Selection, ProxyError> {
    let default = || Selection {
        rule: None,
        backend: Ok(Backend::of_target(&ctx.tunnel.target)),
    };
    let Target::Service { service, port } = &ctx.tunnel.target else {
        return Ok(default());
    };
    let Some(routes) = ctx.snapshot.routes(&service.name, *port) else {
        return Ok(default());
    };
    let Some(table) = routes.for_client(&ctx.tunnel.peer.namespace) else {
        return Ok(default());
    };
    let matched = table
        .find(req)
        .ok_or_else(|| ProxyError::NoRoute(format!("{} {}", req.method(), req.uri().path())))?;
    let backend_index = select::weighted(&matched.rule.backends, &mut rand::thread_rng());
    let backend = match backend_index.map(|i| &matched.rule.backends[i].target) {
        Some(BackendTarget::Backend(b)) => Ok(b.clone()),
        Some(BackendTarget::Invalid(why)) => Err(why.clone()),
        None if matched.rule.backends.is_empty() => Err("rule has no backendRefs".into()),
        None => Err("every backendRef has weight 0".into()),
    };
    Ok(Selection {
        rule: Some(SelectedRule {
            route: matched.route.clone(),
            rule_index: matched.rule_index,
            match_index: matched.match_index,
            backend_index,
        }),
        backend,
    })
}
