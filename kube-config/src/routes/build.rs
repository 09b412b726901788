use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use filters::model::{route_key, NamespacedName, Service};
use filters::route::model::{Route, RouteKind, Rule};
use filters::route::{PortRoutes, RouteTable};

use super::compile::{grpc_rule, http_rule, tcp_rule, Ctx, RefProblem, Unsupported, GATEWAY_GROUP};
use super::objects::{self as o, ParentRef, ReferenceGrant};
use super::status::{ParentStatus, RouteStatus};

/// The route objects of one configuration file, with their error labels.
pub struct RouteInputs<'a> {
    /// HTTPRoutes.
    pub http: &'a [(String, o::HttpRoute)],
    /// GRPCRoutes.
    pub grpc: &'a [(String, o::GrpcRoute)],
    /// TCPRoutes.
    pub tcp: &'a [(String, o::TcpRoute)],
    /// ReferenceGrants.
    pub grants: &'a [(String, ReferenceGrant)],
}

/// Where one accepted route attaches.
struct Attachment {
    route: Arc<Route>,
    kind: RouteKind,
    key: String,
    /// `None` for producer routes (every client), `Some(ns)` for consumer routes.
    consumer: Option<String>,
    /// Attached through the waypoint Gateway rather than the Service.
    via_gateway: bool,
    /// The Service port is declared TCP (its tunnels are never HTTP).
    tcp_port: bool,
    status_index: (usize, usize),
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
/// and the status of every route: compile each route, attach it to the parents it names,
/// then build one table per Service port.
pub fn attach(
    inputs: &RouteInputs<'_>,
    services: &HashMap<NamespacedName, Arc<Service>>,
    gateway: &NamespacedName,
) -> (BTreeMap<String, PortRoutes>, Vec<RouteStatus>) {
    let mut statuses: Vec<RouteStatus> = Vec::new();
    let mut attachments: Vec<Attachment> = Vec::new();
    for compiled in compile_all(inputs, services) {
        let index = statuses.len();
        statuses.push(attach_route(
            compiled,
            services,
            gateway,
            index,
            &mut attachments,
        ));
    }
    let tables = tables(&attachments, &mut statuses);
    (tables, statuses)
}

/// Compiles every HTTPRoute, GRPCRoute and TCPRoute (a route that cannot be accepted keeps why).
fn compile_all(
    inputs: &RouteInputs<'_>,
    services: &HashMap<NamespacedName, Arc<Service>>,
) -> Vec<Compiled> {
    let mut ctx = Ctx {
        services,
        grants: inputs.grants,
        parents: Vec::new(),
    };
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
    for (_, r) in inputs.tcp {
        let ns = ns_of(&r.metadata);
        ctx.parents = service_parents(&r.spec.parent_refs, &ns);
        let rules = r
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| tcp_rule(&ctx, &ns, i, rule))
            .collect::<Result<Vec<_>, _>>()
            .map(split_refs);
        compiled.push(Compiled {
            kind: RouteKind::Tcp,
            meta: r.metadata.clone(),
            parents: r.spec.parent_refs.clone(),
            rules,
        });
    }
    compiled
}

/// A parentRef this waypoint serves: the Service ports it names, its label in statuses,
/// and whether it is the waypoint Gateway (every served Service) rather than a Service.
struct Parent {
    targets: Targets,
    label: String,
    via_gateway: bool,
}

/// Resolves one parentRef of a route in namespace `ns`: `Ok(None)` when the parent is not
/// this waypoint's (another waypoint's Service, another Gateway), `Err` with the rejected
/// status when it names something that does not exist.
fn resolve_parent(
    parent: &ParentRef,
    ns: &str,
    services: &HashMap<NamespacedName, Arc<Service>>,
    gateway: &NamespacedName,
) -> Result<Option<Parent>, ParentStatus> {
    let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
    let kind = parent.kind.as_deref().unwrap_or("Gateway");
    let pns = parent.namespace.as_deref().unwrap_or(ns);
    match (group, kind) {
        ("" | "core", "Service") => {
            let name = NamespacedName::new(pns, &parent.name);
            let label = match parent.port {
                Some(p) => format!("Service {name}:{p}"),
                None => format!("Service {name}"),
            };
            let svc = match services.get(&name) {
                Some(svc) if svc.served => svc,
                Some(_) => return Ok(None), // another waypoint's Service
                None => {
                    let why = format!("Service {name} not found");
                    return Err(rejected(&label, "NoMatchingParent", why));
                }
            };
            let ports: Vec<u16> = svc
                .ports
                .iter()
                .map(|sp| sp.port)
                .filter(|p| parent.port.is_none_or(|want| *p == want))
                .collect();
            if ports.is_empty() {
                let why = format!("{name} has no port {}", parent.port.unwrap_or(0));
                return Err(rejected(&label, "NoMatchingParent", why));
            }
            Ok(Some(Parent {
                targets: vec![(svc.clone(), ports)],
                label,
                via_gateway: false,
            }))
        }
        (GATEWAY_GROUP, "Gateway") if parent.name == gateway.name && pns == gateway.namespace => {
            let all = services
                .values()
                .filter(|s| s.served)
                .map(|s| (s.clone(), s.ports.iter().map(|p| p.port).collect()))
                .collect();
            Ok(Some(Parent {
                targets: all,
                label: format!("Gateway {gateway}"),
                via_gateway: true,
            }))
        }
        _ => Ok(None),
    }
}

/// Attaches one compiled route to each parent it names, recording an [`Attachment`] per
/// Service port; returns the route's status (`index` is its place among the statuses).
fn attach_route(
    compiled: Compiled,
    services: &HashMap<NamespacedName, Arc<Service>>,
    gateway: &NamespacedName,
    index: usize,
    attachments: &mut Vec<Attachment>,
) -> RouteStatus {
    let Compiled {
        kind,
        meta,
        parents,
        rules,
    } = compiled;
    let ns = ns_of(&meta);
    let kind_name = kind_name(kind);
    let mut status = RouteStatus {
        route: format!("{kind_name} {ns}/{}", meta.name),
        parents: Vec::new(),
    };
    let (route, refs) = match rules {
        Ok((rules, refs)) => {
            let route = Arc::new(Route {
                name: NamespacedName::new(&ns, &meta.name),
                kind,
                created: meta.creation_timestamp.clone(),
                rules,
                operation: None,
            });
            (Ok(route), refs)
        }
        Err(Unsupported(why)) => (Err(why), Vec::new()),
    };
    for parent in &parents {
        let parent = match resolve_parent(parent, &ns, services, gateway) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(rejection) => {
                status.parents.push(rejection);
                continue;
            }
        };
        let route = match &route {
            Ok(route) => route,
            Err(why) => {
                let rejection = rejected(&parent.label, "UnsupportedValue", why.clone());
                status.parents.push(rejection);
                continue;
            }
        };
        let (resolved, refs_reason, message) = match refs.first() {
            None => (true, "ResolvedRefs".to_string(), String::new()),
            Some(p) => (false, p.reason.clone(), p.message.clone()),
        };
        let pi = status.parents.len();
        status.parents.push(ParentStatus {
            parent: parent.label,
            accepted: true,
            accepted_reason: "Accepted".into(),
            resolved_refs: resolved,
            refs_reason,
            message,
        });
        for (svc, ports) in parent.targets {
            // Consumer routes: a Service route from another namespace applies to clients
            // in that namespace only; routes on the Gateway apply to everyone.
            let consumer = (!parent.via_gateway && svc.name.namespace != ns).then(|| ns.clone());
            for port in ports {
                let tcp_port = svc
                    .port(port)
                    .is_some_and(|p| p.protocol == filters::model::Protocol::Tcp);
                attachments.push(Attachment {
                    route: route.clone(),
                    kind,
                    key: route_key(&svc.name, port),
                    consumer: consumer.clone(),
                    via_gateway: parent.via_gateway,
                    tcp_port,
                    status_index: (index, pi),
                });
            }
        }
    }
    status
}

/// The route's kind as Gateway API names it.
fn kind_name(kind: RouteKind) -> &'static str {
    match kind {
        RouteKind::Http => "HTTPRoute",
        RouteKind::Grpc => "GRPCRoute",
        RouteKind::Tcp => "TCPRoute",
    }
}

/// The kind of routes a Service port's table holds: TCPRoutes on a port declared TCP (or
/// when only TCPRoutes are attached), else GRPCRoutes over HTTPRoutes.
fn table_kind(pool: &[&Attachment]) -> RouteKind {
    let has = |k| pool.iter().any(|a| a.kind == k);
    let tcp_port = pool.iter().any(|a| a.tcp_port);
    if has(RouteKind::Tcp) && (tcp_port || !(has(RouteKind::Http) || has(RouteKind::Grpc))) {
        RouteKind::Tcp
    } else if has(RouteKind::Grpc) {
        RouteKind::Grpc
    } else {
        RouteKind::Http
    }
}

/// One route table per Service port. Routes attached to the Service win over routes
/// attached to the waypoint Gateway; on a port declared TCP TCPRoutes win, elsewhere
/// GRPCRoutes win over HTTPRoutes, which win over TCPRoutes (a route's parent says
/// `Conflicted` when the route lost on every port it attaches to).
fn tables(
    attachments: &[Attachment],
    statuses: &mut [RouteStatus],
) -> BTreeMap<String, PortRoutes> {
    let mut by_port: BTreeMap<&str, Vec<&Attachment>> = BTreeMap::new();
    for a in attachments {
        by_port.entry(&a.key).or_default().push(a);
    }
    let mut tables = BTreeMap::new();
    // A parent is `Conflicted` only when its route lost on every port it attaches to there
    // (a parentRef without a port covers HTTP and TCP ports alike).
    let mut lost: BTreeMap<(usize, usize), String> = BTreeMap::new();
    let mut used: std::collections::BTreeSet<(usize, usize)> = Default::default();
    for (key, list) in by_port {
        let direct: Vec<&Attachment> = list.iter().copied().filter(|a| !a.via_gateway).collect();
        let pool = if direct.is_empty() { list } else { direct };
        let kind = table_kind(&pool);
        let mut producer = Vec::new();
        let mut consumers: BTreeMap<String, Vec<Arc<Route>>> = BTreeMap::new();
        for a in &pool {
            if a.kind != kind {
                lost.entry(a.status_index).or_insert_with(|| {
                    format!(
                        "a {} on {key} takes precedence over {}s",
                        kind_name(kind),
                        kind_name(a.kind)
                    )
                });
                continue;
            }
            used.insert(a.status_index);
            match &a.consumer {
                None => producer.push(a.route.clone()),
                Some(ns) => consumers
                    .entry(ns.clone())
                    .or_default()
                    .push(a.route.clone()),
            }
        }
        tables.insert(
            key.to_string(),
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
    for ((si, pi), message) in lost {
        if used.contains(&(si, pi)) {
            continue;
        }
        let p = &mut statuses[si].parents[pi];
        p.accepted = false;
        p.accepted_reason = "Conflicted".into();
        p.message = message;
    }
    tables
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
