use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use filters::model::{route_key, NamespacedName, Service};
use filters::route::model::{Route, RouteKind, Rule};
use filters::route::{PortRoutes, RouteTable};

use super::compile::{grpc_rule, http_rule, RefProblem};
use super::objects::{self as o, ParentRef, ReferenceGrant};
use super::status::{ParentStatus, RouteStatus};

pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The route objects of one configuration file, with their error labels.
pub struct RouteInputs<'a> {
    /// HTTPRoutes.
    pub http: &'a [(String, o::HttpRoute)],
    /// GRPCRoutes.
    pub grpc: &'a [(String, o::GrpcRoute)],
    /// ReferenceGrants.
    pub grants: &'a [(String, ReferenceGrant)],
}

/// Why a route cannot be accepted at all.
pub(crate) struct Unsupported(pub String);

/// Where one accepted route attaches.
struct Attachment {
    route: Arc<Route>,
    kind: RouteKind,
    key: String,
    /// `None` for producer routes (every client), `Some(ns)` for consumer routes.
    consumer: Option<String>,
    /// Attached through the waypoint Gateway rather than the Service.
    via_gateway: bool,
    status_index: (usize, usize),
}

pub(crate) struct Ctx<'a> {
    pub services: &'a HashMap<NamespacedName, Arc<Service>>,
    pub grants: &'a [(String, ReferenceGrant)],
    /// The Service parentRefs of the route being compiled, as (namespace, name).
    pub parents: Vec<(String, String)>,
}

/// One route, compiled (or rejected), before attachment.
struct Compiled {
    kind: RouteKind,
    meta: o::RouteMeta,
    parents: Vec<ParentRef>,
    rules: Result<(Vec<Rule>, Vec<RefProblem>), Unsupported>,
}

/// The Service ports a parentRef attaches to.
type Targets = Vec<(Arc<Service>, Vec<u16>)>;

fn ns_of(meta: &o::RouteMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

/// Builds the route tables of every served Service port from the routes attached to it,
/// and the status of every route.
pub fn attach(
    inputs: &RouteInputs<'_>,
    services: &HashMap<NamespacedName, Arc<Service>>,
    gateway: &NamespacedName,
) -> (BTreeMap<String, PortRoutes>, Vec<RouteStatus>) {
    let mut ctx = Ctx {
        services,
        grants: inputs.grants,
        parents: Vec::new(),
    };
    let mut statuses: Vec<RouteStatus> = Vec::new();
    let mut attachments: Vec<Attachment> = Vec::new();

    let mut compiled: Vec<Compiled> = Vec::new();
    for (_, r) in inputs.http {
        let ns = ns_of(&r.metadata);
        ctx.parents = service_parents(&r.spec.parent_refs, &ns);
        let rules = r
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| http_rule(&ctx, &ns, "HTTPRoute", i, rule))
            .collect::<Result<Vec<_>, _>>()
            .map(split_refs);
        compiled.push(Compiled {
            kind: RouteKind::Http,
            meta: r.metadata.clone(),
            parents: r.spec.parent_refs.clone(),
            rules,
        });
    }
    for (_, r) in inputs.grpc {
        let ns = ns_of(&r.metadata);
        ctx.parents = service_parents(&r.spec.parent_refs, &ns);
        let rules = r
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| grpc_rule(&ctx, &ns, i, rule))
            .collect::<Result<Vec<_>, _>>()
            .map(split_refs);
        compiled.push(Compiled {
            kind: RouteKind::Grpc,
            meta: r.metadata.clone(),
            parents: r.spec.parent_refs.clone(),
            rules,
        });
    }

    for Compiled {
        kind,
        meta,
        parents,
        rules,
    } in compiled
    {
        let ns = ns_of(&meta);
        let kind_name = if kind == RouteKind::Http {
            "HTTPRoute"
        } else {
            "GRPCRoute"
        };
        let mut status = RouteStatus {
            route: format!("{kind_name} {ns}/{}", meta.name),
            parents: Vec::new(),
        };
        let si = statuses.len();
        let (route, refs, unsupported) = match rules {
            Ok((rules, refs)) => {
                let route = Arc::new(Route {
                    name: NamespacedName::new(&ns, &meta.name),
                    kind,
                    created: meta.creation_timestamp.clone(),
                    rules,
                });
                (Some(route), refs, None)
            }
            Err(Unsupported(why)) => (None, Vec::new(), Some(why)),
        };
        for parent in &parents {
            let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
            let pkind = parent.kind.as_deref().unwrap_or("Gateway");
            let pns = parent.namespace.clone().unwrap_or_else(|| ns.clone());
            let (targets, parent_name, via_gateway): (Targets, String, bool) = match (group, pkind)
            {
                ("" | "core", "Service") => {
                    let name = NamespacedName::new(&pns, &parent.name);
                    let label_name = match parent.port {
                        Some(p) => format!("Service {name}:{p}"),
                        None => format!("Service {name}"),
                    };
                    match services.get(&name) {
                        Some(svc) if svc.served => {
                            let ports: Vec<u16> = match parent.port {
                                Some(p) => svc
                                    .ports
                                    .iter()
                                    .filter(|sp| sp.port == p)
                                    .map(|sp| sp.port)
                                    .collect(),
                                None => svc.ports.iter().map(|sp| sp.port).collect(),
                            };
                            if ports.is_empty() {
                                status.parents.push(rejected(
                                    &label_name,
                                    "NoMatchingParent",
                                    format!("{name} has no port {}", parent.port.unwrap_or(0)),
                                ));
                                continue;
                            }
                            (vec![(svc.clone(), ports)], label_name, false)
                        }
                        Some(_) => continue, // another waypoint's Service
                        None => {
                            status.parents.push(rejected(
                                &label_name,
                                "NoMatchingParent",
                                format!("Service {name} not found"),
                            ));
                            continue;
                        }
                    }
                }
                (GATEWAY_GROUP, "Gateway")
                    if parent.name == gateway.name && pns == gateway.namespace =>
                {
                    let all = services
                        .values()
                        .filter(|s| s.served)
                        .map(|s| (s.clone(), s.ports.iter().map(|p| p.port).collect()))
                        .collect();
                    (all, format!("Gateway {gateway}"), true)
                }
                _ => continue,
            };
            let route = match (&route, &unsupported) {
                (Some(route), _) => route.clone(),
                (None, why) => {
                    let why = why.clone().unwrap_or_default();
                    status
                        .parents
                        .push(rejected(&parent_name, "UnsupportedValue", why));
                    continue;
                }
            };
            let (resolved, refs_reason, message) = match refs.first() {
                None => (true, "ResolvedRefs".to_string(), String::new()),
                Some(p) => (false, p.reason.clone(), p.message.clone()),
            };
            let pi = status.parents.len();
            status.parents.push(ParentStatus {
                parent: parent_name,
                accepted: true,
                accepted_reason: "Accepted".into(),
                resolved_refs: resolved,
                refs_reason,
                message,
            });
            for (svc, ports) in targets {
                let consumer = (svc.name.namespace != ns).then(|| ns.clone());
                for port in ports {
                    attachments.push(Attachment {
                        route: route.clone(),
                        kind,
                        key: route_key(&svc.name, port),
                        consumer: if via_gateway { None } else { consumer.clone() },
                        via_gateway,
                        status_index: (si, pi),
                    });
                }
            }
        }
        statuses.push(status);
    }

    let mut by_port: BTreeMap<String, Vec<&Attachment>> = BTreeMap::new();
    for a in &attachments {
        by_port.entry(a.key.clone()).or_default().push(a);
    }
    let mut tables = BTreeMap::new();
    for (key, list) in by_port {
        // Routes attached to the Service win over routes attached to the waypoint Gateway;
        // GRPCRoutes win over HTTPRoutes.
        let direct: Vec<&&Attachment> = list.iter().filter(|a| !a.via_gateway).collect();
        let pool: Vec<&&Attachment> = if direct.is_empty() {
            list.iter().collect()
        } else {
            direct
        };
        let kind = if pool.iter().any(|a| a.kind == RouteKind::Grpc) {
            RouteKind::Grpc
        } else {
            RouteKind::Http
        };
        let mut producer = Vec::new();
        let mut consumers: BTreeMap<String, Vec<Arc<Route>>> = BTreeMap::new();
        for a in &pool {
            if a.kind != kind {
                let (si, pi) = a.status_index;
                let p = &mut statuses[si].parents[pi];
                p.accepted = false;
                p.accepted_reason = "Conflicted".into();
                p.message = format!("a GRPCRoute on {key} takes precedence over HTTPRoutes");
                continue;
            }
            match &a.consumer {
                None => producer.push(a.route.clone()),
                Some(ns) => consumers
                    .entry(ns.clone())
                    .or_default()
                    .push(a.route.clone()),
            }
        }
        tables.insert(
            key,
            PortRoutes {
                producer: RouteTable::new(&producer),
                consumers: consumers
                    .into_iter()
                    .map(|(ns, r)| (ns, RouteTable::new(&r)))
                    .collect(),
                kind: Some(kind),
            },
        );
    }
    (tables, statuses)
}

fn service_parents(refs: &[ParentRef], ns: &str) -> Vec<(String, String)> {
    refs.iter()
        .filter(|p| {
            matches!(p.group.as_deref(), Some("" | "core")) && p.kind.as_deref() == Some("Service")
        })
        .map(|p| {
            (
                p.namespace.clone().unwrap_or_else(|| ns.to_string()),
                p.name.clone(),
            )
        })
        .collect()
}

fn rejected(parent: &str, reason: &str, message: String) -> ParentStatus {
    ParentStatus {
        parent: parent.to_string(),
        accepted: false,
        accepted_reason: reason.into(),
        resolved_refs: true,
        refs_reason: "ResolvedRefs".into(),
        message,
    }
}

/// Splits compiled rules from the backendRef problems they carry.
fn split_refs(rules: Vec<(Rule, Vec<RefProblem>)>) -> (Vec<Rule>, Vec<RefProblem>) {
    let mut refs = Vec::new();
    let rules = rules
        .into_iter()
        .map(|(r, mut problems)| {
            refs.append(&mut problems);
            r
        })
        .collect();
    (rules, refs)
}
