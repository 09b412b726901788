use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use filters::model::{
    Endpoint, Identity, NamespacedName, Protocol, Service, ServicePort, Snapshot, SnapshotParts,
    TargetPort, Workload,
};
use filters::SourceOptions;

use super::destination_rule::TlsLevel;
use super::objects::{self, IntOrString, ObjectMeta};
use super::{LocalConfigError, Objects};

/// Label that points a Service, Pod or Namespace at a waypoint.
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Label naming the namespace of the waypoint in [`USE_WAYPOINT`] (default: the object's).
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// Gateway label choosing which traffic the waypoint handles: service, workload, all, none.
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// Pod annotation set by the CNI for pods in the ambient mesh (reachable over HBONE).
pub const REDIRECTION: &str = "ambient.istio.io/redirection";
/// The waypoint GatewayClass.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";

fn invalid(object: &str, field: impl Into<String>, message: impl Into<String>) -> LocalConfigError {
    LocalConfigError::Invalid {
        object: object.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// Whether `meta` (or, when it has no label, its namespace) uses the waypoint `gw`.
fn uses_waypoint(
    meta: &ObjectMeta,
    ns_labels: Option<&BTreeMap<String, String>>,
    gw: &NamespacedName,
) -> bool {
    let own_ns = namespace_of(meta);
    let check = |labels: &BTreeMap<String, String>| {
        labels.get(USE_WAYPOINT).map(|name| {
            let ns = labels
                .get(USE_WAYPOINT_NAMESPACE)
                .map(String::as_str)
                .unwrap_or(own_ns);
            name == &gw.name && ns == gw.namespace
        })
    };
    check(&meta.labels)
        .or_else(|| ns_labels.and_then(check))
        .unwrap_or(false)
}

/// Builds the snapshot the objects describe; routes that cannot be accepted are logged.
pub fn translate(
    objects: &Objects,
    options: &SourceOptions,
    version: u64,
    source: String,
) -> Result<Snapshot, LocalConfigError> {
    let (snapshot, statuses) = translate_with_status(objects, options, version, source)?;
    for st in &statuses {
        for p in &st.parents {
            if !p.accepted || !p.resolved_refs {
                tracing::warn!(route = %st.route, parent = %p.parent, accepted = p.accepted, reason = %p.accepted_reason, refs = %p.refs_reason, message = %p.message, "route not fully usable");
            }
        }
    }
    Ok(snapshot)
}

/// Builds the snapshot and the status of every HTTPRoute, GRPCRoute and TCPRoute.
pub fn translate_with_status(
    objects: &Objects,
    options: &SourceOptions,
    version: u64,
    source: String,
) -> Result<(Snapshot, Vec<super::routes::RouteStatus>), LocalConfigError> {
    let (gw_label, gateway) = pick_gateway(objects, options)?;
    let gw_name = NamespacedName::new(namespace_of(&gateway.metadata), &gateway.metadata.name);
    let waypoint_for = gateway
        .metadata
        .labels
        .get(WAYPOINT_FOR)
        .map(String::as_str)
        .unwrap_or("service");
    let (for_services, for_workloads) = match waypoint_for {
        "service" => (true, false),
        "workload" => (false, true),
        "all" => (true, true),
        "none" => (false, false),
        other => {
            return Err(invalid(
                &gw_label,
                format!("metadata.labels[{WAYPOINT_FOR}]"),
                format!("must be service, workload, all or none, got {other:?}"),
            ))
        }
    };

    let ns_labels: HashMap<&str, &BTreeMap<String, String>> = objects
        .namespaces
        .iter()
        .map(|(_, n)| (n.metadata.name.as_str(), &n.metadata.labels))
        .collect();

    let mut workloads = Vec::new();
    for (label, pod) in &objects.pods {
        if let Some(w) = workload(label, pod, options, &ns_labels, &gw_name, for_workloads)? {
            workloads.push(Arc::new(w));
        }
    }

    let backend_tls = super::backend_tls::bind(
        &objects.backend_tls_policies,
        &super::backend_tls::Targets {
            services: &objects.services,
            entries: &objects.service_entries,
            config_maps: &objects.config_maps,
            domain_suffix: &options.domain_suffix,
        },
    )?;
    let mesh = super::mesh::mesh_config(&objects.config_maps, &options.root_namespace)?;
    let preserve_case = mesh.preserve_http1_header_case();
    let mut services = Vec::new();
    for (label, svc) in &objects.services {
        let ns = namespace_of(&svc.metadata);
        let served =
            for_services && uses_waypoint(&svc.metadata, ns_labels.get(ns).copied(), &gw_name);
        let mut built = service(label, svc, served, options, &workloads)?;
        apply_destination_rule(
            &mut built,
            &objects.destination_rules,
            &backend_tls,
            &objects.secrets,
            options,
        )?;
        preserve_header_case(&mut built, preserve_case);
        services.push(Arc::new(built));
    }
    for (label, entry) in &objects.service_entries {
        let ns = entry.metadata.namespace.as_deref().unwrap_or("default");
        let served =
            for_services && uses_waypoint(&entry.metadata, ns_labels.get(ns).copied(), &gw_name);
        for mut built in entry.services(label, served, &options.trust_domain, &workloads)? {
            apply_destination_rule(
                &mut built,
                &objects.destination_rules,
                &backend_tls,
                &objects.secrets,
                options,
            )?;
            preserve_header_case(&mut built, preserve_case);
            services.push(Arc::new(built));
        }
    }

    let by_name: HashMap<NamespacedName, Arc<Service>> = services
        .iter()
        .map(|s| (s.name.clone(), s.clone()))
        .collect();
    let inputs = super::routes::RouteInputs {
        http: &objects.http_routes,
        grpc: &objects.grpc_routes,
        tcp: &objects.tcp_routes,
        grants: &objects.grants,
    };
    let (routes, statuses) = super::routes::attach(&inputs, &by_name, &gw_name);
    let telemetry = super::telemetry::build(
        &objects.telemetries,
        &mesh,
        &gw_name,
        &options.root_namespace,
    )?;
    let entries = super::service_entry::service_keys(&objects.service_entries);
    let mut policies = super::authz::bind(
        &objects.policies,
        &gw_name,
        &options.root_namespace,
        &entries,
    )?;
    policies.providers = super::ext_authz::providers(&mesh);
    super::authz::report_custom(&policies);
    let authn = super::authn::bind(
        &objects.authentications,
        &gw_name,
        &options.root_namespace,
        &options.jwks,
        &entries,
    )?;
    let snapshot = Snapshot::new(SnapshotParts {
        version,
        source,
        waypoint: options.waypoint(gw_name.clone()),
        services,
        workloads,
        routes,
        authz: filters::authz::PolicySet::policies(policies, options.normalization),
        authn,
        telemetry,
        // Envoy's defaults, as istiod configures the waypoint without ProxyConfig headers,
        // but for header case (ProxyConfig `proxyHeaders.preserveHttp1HeaderCase`), HTTP/1.0
        // and the timeouts (`proxyMetadata`, `connectionSettings`).
        request_headers: filters::model::RequestHeaders {
            preserve_header_case: preserve_case,
            accept_http_10: mesh.connection_manager.accept_http_10,
            idle_timeout: mesh.connection_manager.idle_timeout,
            stream_idle_timeout: mesh.connection_manager.stream_idle_timeout,
            max_connection_duration: mesh.connection_manager.max_connection_duration,
            max_stream_duration: mesh.connection_manager.max_stream_duration,
            underscore_headers: mesh.connection_manager.underscore_headers,
            ..Default::default()
        },
    })?;
    Ok((snapshot, statuses))
}

fn pick_gateway<'a>(
    objects: &'a Objects,
    options: &SourceOptions,
) -> Result<(String, &'a objects::Gateway), LocalConfigError> {
    let mut candidates = objects
        .gateways
        .iter()
        .filter(|(_, g)| g.spec.gateway_class_name == WAYPOINT_CLASS);
    if let Some(want) = &options.gateway {
        return candidates
            .find(|(_, g)| {
                g.metadata.name == want.name && namespace_of(&g.metadata) == want.namespace
            })
            .map(|(l, g)| (l.clone(), g))
            .ok_or_else(|| LocalConfigError::NoWaypoint(format!(" named {want}")));
    }
    let all: Vec<_> = candidates.by_ref().collect();
    match all.as_slice() {
        [] => Err(LocalConfigError::NoWaypoint(String::new())),
        [(l, g)] => Ok((l.clone(), g)),
        many => Err(LocalConfigError::AmbiguousWaypoint(
            many.iter()
                .map(|(_, g)| format!("{}/{}", namespace_of(&g.metadata), g.metadata.name))
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

fn workload(
    label: &str,
    pod: &objects::Pod,
    options: &SourceOptions,
    ns_labels: &HashMap<&str, &BTreeMap<String, String>>,
    gw: &NamespacedName,
    for_workloads: bool,
) -> Result<Option<Workload>, LocalConfigError> {
    if matches!(pod.status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    let listed = pod
        .status
        .pod_ips
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("status.podIPs[{i}].ip"), &p.ip));
    let single = pod
        .status
        .pod_ip
        .iter()
        .map(|ip| ("status.podIP".to_string(), ip));
    for (field, raw) in single.chain(listed) {
        let ip: IpAddr = raw
            .parse()
            .map_err(|_| invalid(label, field, format!("not an IP address: {raw:?}")))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if ips.is_empty() {
        tracing::debug!(object = label, "pod has no IP yet; skipped");
        return Ok(None);
    }
    ips.sort_by_key(|ip| ip.is_ipv6());
    let ns = namespace_of(&pod.metadata);
    let sa = pod
        .spec
        .service_account_name
        .as_deref()
        .unwrap_or("default");
    let mut named_ports = BTreeMap::new();
    for c in &pod.spec.containers {
        for p in &c.ports {
            if let Some(name) = &p.name {
                named_ports.insert(name.clone(), p.container_port);
            }
        }
    }
    Ok(Some(Workload {
        name: NamespacedName::new(ns, &pod.metadata.name),
        ips,
        identity: Identity::new(&options.trust_domain, ns, sa),
        labels: pod.metadata.labels.clone(),
        hbone: pod
            .metadata
            .annotations
            .get(REDIRECTION)
            .map(String::as_str)
            == Some("enabled"),
        served: for_workloads && uses_waypoint(&pod.metadata, ns_labels.get(ns).copied(), gw),
        named_ports,
    }))
}

fn service(
    label: &str,
    svc: &objects::Service,
    served: bool,
    options: &SourceOptions,
    workloads: &[Arc<Workload>],
) -> Result<Service, LocalConfigError> {
    let ns = namespace_of(&svc.metadata);
    let selected: Vec<&Arc<Workload>> = match &svc.spec.selector {
        Some(sel) if !sel.is_empty() => workloads
            .iter()
            .filter(|w| w.name.namespace == ns)
            .filter(|w| sel.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            .collect(),
        _ => Vec::new(),
    };
    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, p) in svc.spec.ports.iter().enumerate() {
        if let Some(port) = service_port(label, i, p, &ports, &selected)? {
            ports.push(port);
        }
    }
    if svc.spec.cluster_ip.as_deref() == Some("None") {
        ports = headless(ns, &svc.metadata.name, ports, options);
    }
    Ok(Service {
        name: NamespacedName::new(ns, &svc.metadata.name),
        hostname: format!("{}.{ns}.svc.{}", svc.metadata.name, options.domain_suffix),
        vips: cluster_ips(label, svc)?,
        ranges: Vec::new(),
        ports,
        served,
    })
}

/// The ports of a headless Service (`clusterIP: None`) as istiod's ORIGINAL_DST cluster
/// makes them: no endpoints to pick from, the upstream being the tunnel's original
/// destination (for the pod-addressed traffic clients of a headless Service send, the pod
/// itself, over HBONE when it is in the mesh).
fn headless(
    ns: &str,
    name: &str,
    ports: Vec<ServicePort>,
    options: &SourceOptions,
) -> Vec<ServicePort> {
    let workload = Arc::new(Workload {
        name: NamespacedName::new(ns, name),
        ips: Vec::new(),
        identity: Identity::new(&options.trust_domain, ns, "default"),
        labels: BTreeMap::new(),
        hbone: false,
        served: false,
        named_ports: BTreeMap::new(),
    });
    ports
        .into_iter()
        .map(|p| {
            let original = filters::model::OriginalDst {
                port_override: None,
                workload: workload.clone(),
            };
            ServicePort::new(p.name, p.port, p.target_port, p.protocol, Vec::new())
                .with_original_dst(Some(Arc::new(original)))
        })
        .collect()
}

/// Applies the DestinationRule for `svc`'s host (one in the Service's own namespace first,
/// as Istio prefers) to its ports' balancing, and the BackendTLSPolicies' TLS where the
/// rule leaves `tls` unset (istiod's merge, [`super::backend_tls`]).
fn apply_destination_rule(
    svc: &mut Service,
    rules: &[(String, super::destination_rule::DestinationRule)],
    backend_tls: &super::backend_tls::BackendTls,
    secrets: &[(String, super::secret::Secret)],
    options: &SourceOptions,
) -> Result<(), LocalConfigError> {
    let matching = |own_ns: bool| {
        rules.iter().find(|(_, r)| {
            r.is_for(&svc.hostname, &options.domain_suffix)
                && (r.metadata.namespace.as_deref().unwrap_or("default") == svc.name.namespace)
                    == own_ns
        })
    };
    let rule = matching(true).or_else(|| matching(false));
    let host_tls = backend_tls.get(&svc.hostname);
    if rule.is_none() && host_tls.is_none() {
        return Ok(());
    }
    let ports = std::mem::take(&mut svc.ports);
    for p in ports {
        let h2 = matches!(p.protocol, Protocol::Http2 | Protocol::Grpc);
        let Some((label, rule)) = rule else {
            let tls = host_tls.and_then(|b| b.choose(p.port, h2, TlsLevel::Unset, None));
            svc.ports.push(match tls {
                Some(tls) => p.with_tls(Some(tls)),
                None => p,
            });
            continue;
        };
        let policy = rule.port_policy(p.port, h2, label, secrets)?;
        let per_request = p.unlisted().is_some() && p.dns().is_none();
        if per_request && (policy.outlier.is_some() || !policy.hash.is_empty()) {
            // The addresses are not a list of endpoints to eject from or hash over (a DNS
            // name's resolved addresses are: [`filters::dns`]).
            return Err(invalid(
                label,
                "spec.trafficPolicy",
                format!(
                    "outlierDetection and consistentHash are not implemented for {} (its upstream is named per request, not a list of endpoints)",
                    svc.hostname
                ),
            ));
        }
        let tls = match host_tls {
            Some(b) => b.choose(p.port, h2, rule.tls_level(p.port), policy.tls),
            None => policy.tls,
        };
        // istiod gives an unknown-protocol port's TCP cluster the client's protocol with
        // HTTP/2 options (`setUseDownstreamProtocol`), a TCP port's none: Envoy tunnels in
        // HTTP/2, resp. HTTP/1.1.
        let tunnel_h2 = p.protocol == Protocol::Unknown;
        // Counted per Service port, as istiod's cluster for it would be.
        let cap = policy
            .connection_cap
            .map(|(max, pending)| filters::model::ConnectionCap {
                cluster: format!("{}:{}", svc.hostname, p.port),
                max_connections: max,
                max_pending: pending,
            });
        svc.ports.push(
            p.with_balancing(policy.balancing)
                .with_slow_start(policy.slow_start)
                .with_hash_policy(policy.hash)
                .with_max_requests(policy.max_requests)
                .with_connection_cap(cap)
                .with_outlier(policy.outlier)
                .with_tls(tls)
                .with_proxy_protocol(policy.proxy_protocol)
                .with_retry_limit(policy.retry_limit)
                .with_connection_limits(policy.connection_limits)
                .with_tcp_limits(policy.tcp_limits)
                .with_tcp_tunnel(policy.tcp_tunnel.map(|t| t.over_http2(tunnel_h2))),
        );
    }
    Ok(())
}

/// With ProxyConfig `proxyHeaders.preserveHttp1HeaderCase`, the Service's HTTP and
/// unknown-protocol ports write HTTP/1.1 header names upstream in their original case, as
/// istiod's `setUpstreamProtocol` gives those ports' clusters the `preserve_case` formatter.
fn preserve_header_case(svc: &mut Service, on: bool) {
    if !on {
        return;
    }
    for p in &mut svc.ports {
        if matches!(p.protocol, Protocol::Http | Protocol::Unknown) {
            p.connection_limits
                .get_or_insert_with(Default::default)
                .preserve_header_case = true;
        }
    }
}

/// The Service's cluster IPs (`spec.clusterIP` and `spec.clusterIPs`, once each; headless
/// Services have none).
fn cluster_ips(label: &str, svc: &objects::Service) -> Result<Vec<IpAddr>, LocalConfigError> {
    let mut vips = Vec::new();
    let single = svc
        .spec
        .cluster_ip
        .iter()
        .map(|ip| ("spec.clusterIP".to_string(), ip));
    let listed = svc
        .spec
        .cluster_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip));
    for (field, raw) in single.chain(listed) {
        if raw.is_empty() || raw == "None" {
            continue;
        }
        let ip: IpAddr = raw
            .parse()
            .map_err(|_| invalid(label, field, format!("not an IP address: {raw:?}")))?;
        if !vips.contains(&ip) {
            vips.push(ip);
        }
    }
    Ok(vips)
}

/// Port `i` of a Service with its endpoints among the `selected` pods; `None` for UDP and
/// SCTP ports (the waypoint carries TCP only). `earlier` are the ports already read.
fn service_port(
    label: &str,
    i: usize,
    p: &objects::ServicePort,
    earlier: &[ServicePort],
    selected: &[&Arc<Workload>],
) -> Result<Option<ServicePort>, LocalConfigError> {
    let field = |f: &str| format!("spec.ports[{i}].{f}");
    if p.port == 0 {
        return Err(invalid(label, field("port"), "must be between 1 and 65535"));
    }
    if earlier.iter().any(|q| q.port == p.port) {
        return Err(invalid(
            label,
            field("port"),
            format!("duplicate port {}", p.port),
        ));
    }
    if matches!(p.protocol.as_deref(), Some("UDP" | "SCTP")) {
        tracing::info!(
            object = label,
            port = p.port,
            "skipping non-TCP service port"
        );
        return Ok(None);
    }
    let target = match &p.target_port {
        None => TargetPort::Number(p.port),
        Some(IntOrString::Int(0)) => {
            return Err(invalid(
                label,
                field("targetPort"),
                "must be between 1 and 65535",
            ))
        }
        Some(IntOrString::Int(n)) => TargetPort::Number(*n),
        Some(IntOrString::String(s)) => match s.parse::<u16>() {
            Ok(n) if n > 0 => TargetPort::Number(n),
            _ if !s.is_empty() => TargetPort::Named(s.clone()),
            _ => return Err(invalid(label, field("targetPort"), "must not be empty")),
        },
    };
    let endpoints = selected
        .iter()
        .filter_map(|w| {
            let port = match &target {
                TargetPort::Number(n) => *n,
                TargetPort::Named(name) => *w.named_ports.get(name)?,
            };
            Some(Endpoint {
                workload: (*w).clone(),
                port,
            })
        })
        .collect();
    Ok(Some(ServicePort::new(
        p.name.clone(),
        p.port,
        target,
        Protocol::resolve(p.app_protocol.as_deref(), p.name.as_deref()),
        endpoints,
    )))
}

#[cfg(test)]
mod tests;
