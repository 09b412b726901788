//! Routing: Gateway API HTTPRoute and GRPCRoute semantics.
//!
//! - [`model`]: compiled routes, rules, matches, filters, backends;
//! - [`table`]: precedence and matching ([`RouteTable::find`]), pure;
//! - [`select`]: weighted backend choice, pure but for the random draw;
//! - [`apply`]: the filters' request/response transformations, pure;
//! - [`tcp`]: the backend a TCP tunnel draws from a TCP route;
//! - [`RouteLayer`]: the tower layer that applies a [`decide`] outcome.

pub mod apply;
mod future;
mod layer;
pub mod model;
pub mod select;
pub mod table;
pub mod tcp;

pub use future::RouteFuture;
pub use layer::{RouteLayer, RouteService};
pub use table::{PortRoutes, RouteTable};

use std::sync::Arc;

use model::{BackendTarget, Filter, PathMatch, RetryPolicy, Route, Rule, Timeouts};

use crate::explain::{Stage, Step, Trace};
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

    /// The filters to apply, in order: the drawn backend's header changes, the rule's
    /// filters, then the backend's other filters (its host rewrite). Header changes go as
    /// Envoy applies a weighted cluster's before its route's (istiod puts a backend's
    /// `headers` on its `weighted_clusters` entry), so on a conflicting `set` the rule's
    /// wins.
    pub fn filters(&self) -> impl Iterator<Item = &Filter> {
        let rule = self.rule();
        let backend = self
            .backend_index
            .map(|i| &rule.backends[i].filters[..])
            .unwrap_or(&[]);
        let headers =
            |f: &&Filter| matches!(f, Filter::RequestHeaders(_) | Filter::ResponseHeaders(_));
        backend
            .iter()
            .filter(headers)
            .chain(rule.filters.iter())
            .chain(backend.iter().filter(move |f| !headers(f)))
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
    /// The request's hash for consistent-hash balancing (the route's `hash_policy`).
    pub hash: Option<u64>,
}

impl RouteDecision {
    /// The decision attached to `req` (it rides in the request's [`RequestContext`]: one
    /// extension, one allocation, for both).
    pub fn of<B>(req: &http::Request<B>) -> Option<&RouteDecision> {
        req.extensions()
            .get::<crate::model::RequestContext>()?
            .decision
            .as_ref()
    }

    /// Takes the decision out of `req`.
    pub fn take<B>(req: &mut http::Request<B>) -> Option<RouteDecision> {
        req.extensions_mut()
            .get_mut::<crate::model::RequestContext>()?
            .decision
            .take()
    }
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
    decide_traced(ctx, req, Trace::OFF)
}

/// [`decide`], recording into `trace` the table used, the matches skipped and the one
/// chosen, and the backend set with its weights.
pub fn decide_traced<B>(
    ctx: &RequestContext,
    req: &http::Request<B>,
    trace: Trace<'_>,
) -> Result<Selection, ProxyError> {
    let default = |why: &str| {
        trace.step(|| {
            Step::new(Stage::Route, ctx.tunnel.target.describe(), "no routes").detail(format!(
                "{why}: the request goes to the addressed {} itself",
                if ctx.tunnel.target.service_name().is_some() {
                    "Service"
                } else {
                    "pod"
                }
            ))
        });
        Selection {
            rule: None,
            backend: Ok(Backend::of_target(&ctx.tunnel.target)),
        }
    };
    let Target::Service { service, port } = &ctx.tunnel.target else {
        return Ok(default("addressed to a pod"));
    };
    let Some(routes) = ctx.snapshot.routes(&service.name, *port) else {
        return Ok(default("no route is attached to this Service port"));
    };
    if routes.kind == Some(model::RouteKind::Tcp) {
        return Ok(default("only a TCP route is attached to this Service port"));
    }
    let Some(table) = routes.for_client(&ctx.tunnel.peer.namespace) else {
        return Ok(default("no route applies to a client in this namespace"));
    };
    trace.step(|| {
        let consumer = routes.consumers.contains_key(&ctx.tunnel.peer.namespace);
        Step::new(Stage::Route, ctx.tunnel.target.describe(), "routes apply").detail(if consumer {
            format!(
                "consumer routes of the client's namespace {} (instead of the Service's own)",
                ctx.tunnel.peer.namespace
            )
        } else {
            "the Service's own (producer) routes, by precedence".into()
        })
    });
    let matched = table.find_traced(req, trace).ok_or_else(|| {
        trace.step(|| {
            Step::new(Stage::Route, "route", "none matched").detail(format!(
                "{} {}: 404",
                req.method(),
                req.uri().path()
            ))
        });
        ProxyError::NoRoute(format!("{} {}", req.method(), req.uri().path()))
    })?;
    let backend_index = select::weighted(&matched.rule.backends, &mut rand::thread_rng());
    let backend = match backend_index.map(|i| &matched.rule.backends[i].target) {
        Some(BackendTarget::Backend(b)) => Ok(b.clone()),
        Some(BackendTarget::Invalid(why)) => Err(why.clone()),
        None if matched.rule.backends.is_empty() => Err("rule has no backendRefs".into()),
        None => Err("every backendRef has weight 0".into()),
    };
    trace.step(|| {
        let total: u64 = matched
            .rule
            .backends
            .iter()
            .map(|b| u64::from(b.weight))
            .sum();
        let set: Vec<String> = matched
            .rule
            .backends
            .iter()
            .map(|b| {
                let name = match &b.target {
                    BackendTarget::Backend(b) => b.describe(),
                    BackendTarget::Invalid(why) => format!("invalid ({why})"),
                };
                let share = if total == 0 {
                    0.0
                } else {
                    f64::from(b.weight) * 100.0 / total as f64
                };
                format!("{name} weight {} ({share:.0}%)", b.weight)
            })
            .collect();
        let outcome = match &backend {
            Ok(b) => format!("drew {}", b.describe()),
            Err(why) => format!("unusable: {why}"),
        };
        Step::new(Stage::Backend, "backendRefs", outcome).detail(if set.is_empty() {
            "none".to_string()
        } else {
            set.join(", ")
        })
    });
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

/// The request's hash under `policies` (Envoy's route `hash_policy`): each input present is
/// hashed and folded in (the hash so far rotated left by one, then xor-ed); a present
/// terminal input ends it. `None` when no input is present (the endpoint is then chosen
/// round-robin). The second value is a `Set-Cookie` for the response when a cookie input
/// with a TTL was missing and has been generated.
pub fn request_hash<B>(
    policies: &[model::HashPolicy],
    req: &http::Request<B>,
    source_ip: Option<std::net::IpAddr>,
) -> (Option<u64>, Option<http::HeaderValue>) {
    use crate::balance::ring::hash_of;
    use model::HashSource;
    let mut hash: Option<u64> = None;
    let mut set_cookie = None;
    for p in policies {
        let value = match &p.source {
            HashSource::Header(name) => req.headers().get(name).map(|v| hash_of(v.as_bytes())),
            HashSource::Cookie {
                name,
                ttl,
                path,
                attributes,
            } => match cookie(req.headers(), name) {
                Some(v) => Some(hash_of(v)),
                None => match (ttl, source_ip) {
                    (Some(ttl), Some(ip)) => {
                        use std::fmt::Write;
                        let value = format!("{:016x}", hash_of(ip.to_string()));
                        let mut c = format!("{name}=\"{value}\"; Max-Age={}", ttl.as_secs());
                        if let Some(path) = path {
                            let _ = write!(c, "; Path={path}");
                        }
                        // Envoy's order: the attributes after the path, before HttpOnly.
                        for (n, v) in attributes {
                            let _ = match v.is_empty() {
                                true => write!(c, "; {n}"),
                                false => write!(c, "; {n}={v}"),
                            };
                        }
                        c.push_str("; HttpOnly");
                        set_cookie = http::HeaderValue::from_str(&c).ok();
                        Some(hash_of(value.as_str()))
                    }
                    _ => None,
                },
            },
            HashSource::SourceIp => source_ip.map(|ip| hash_of(ip.to_string())),
            HashSource::QueryParameter(name) => req.uri().query().and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| hash_of(v))
            }),
        };
        if let Some(v) = value {
            hash = Some(hash.map_or(v, |h| h.rotate_left(1) ^ v));
            if p.terminal {
                break;
            }
        }
    }
    (hash, set_cookie)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod hash_tests {
    use std::time::Duration;

    use super::model::{HashPolicy, HashSource};
    use super::request_hash;

    fn cookie_policy(attributes: &[(&str, &str)]) -> Vec<HashPolicy> {
        vec![HashPolicy {
            source: HashSource::Cookie {
                name: "sticky".into(),
                ttl: Some(Duration::from_secs(60)),
                path: Some("/api".into()),
                attributes: attributes
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            },
            terminal: false,
        }]
    }

    #[test]
    fn a_generated_cookie_carries_its_path_and_attributes() {
        let ip = Some("127.0.1.9".parse().unwrap());
        let req = http::Request::get("/").body(()).unwrap();
        let policy = cookie_policy(&[("SameSite", "Strict"), ("Secure", "")]);
        let (hash, set) = request_hash(&policy, &req, ip);
        let set = set.unwrap();
        let set = set.to_str().unwrap();
        let value = set.split(';').next().unwrap();
        assert!(value.starts_with("sticky=\""), "{set}");
        assert_eq!(
            &set[value.len()..],
            "; Max-Age=60; Path=/api; SameSite=Strict; Secure; HttpOnly"
        );
        // The cookie sent back hashes the same, and nothing more is set.
        let again = http::Request::get("/")
            .header("cookie", value)
            .body(())
            .unwrap();
        assert_eq!(request_hash(&policy, &again, ip), (hash, None));
        let (_, plain) = request_hash(&cookie_policy(&[]), &req, ip);
        assert!(plain
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("; Max-Age=60; Path=/api; HttpOnly"));
    }
}
