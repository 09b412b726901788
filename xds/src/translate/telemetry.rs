//! The snapshot's telemetry settings from the listeners: tracing, access logs (the
//! waypoint's, per Service port, and the built-in listeners'), metric overrides.

use super::*;

/// The Service ports whose chain's access logs differ from the waypoint's (istiod's
/// `AccessLogging(push, proxy, class, svc)` applies a Telemetry targeting the Service to its
/// chains only).
pub(super) fn service_access_logs(
    l: &ListenerInfo,
    by_host: &BTreeMap<String, Arc<Service>>,
    telemetry: &filters::model::telemetry::TelemetryConfig,
) -> Vec<filters::model::telemetry::ServiceAccessLogs> {
    let mut out = Vec::new();
    for (name, chain) in &l.chains {
        let Some((port, host)) = vip_chain(name) else {
            continue;
        };
        let Some(service) = by_host.get(host) else {
            continue;
        };
        let (logs, default) = match chain {
            Chain::Http { access_logs, .. } => (access_logs, &telemetry.access_logs),
            Chain::Tcp { access_logs, .. } => (access_logs, &telemetry.tcp_access_logs),
        };
        if logs != default {
            out.push(filters::model::telemetry::ServiceAccessLogs {
                namespace: service.name.namespace.clone(),
                name: service.name.name.clone(),
                port,
                logs: logs.clone(),
            });
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.name, a.port).cmp(&(&b.namespace, &b.name, b.port)));
    out.dedup_by(|a, b| (&a.namespace, &a.name, a.port) == (&b.namespace, &b.name, b.port));
    out
}

/// The Service ports whose chain's `istio.stats` overrides differ from the waypoint's
/// (istiod's `HTTPFilters`/`TCPFilters(proxy, class, svc)` apply a Telemetry targeting
/// the Service to its chains only).
pub(super) fn service_metric_overrides(
    l: &ListenerInfo,
    by_host: &BTreeMap<String, Arc<Service>>,
    telemetry: &filters::model::telemetry::TelemetryConfig,
) -> Vec<filters::model::telemetry::ServiceMetricOverrides> {
    let mut out: Vec<filters::model::telemetry::ServiceMetricOverrides> = Vec::new();
    for (name, chain) in &l.chains {
        let Some((port, host)) = vip_chain(name) else {
            continue;
        };
        let Some(service) = by_host.get(host) else {
            continue;
        };
        let (Chain::Http { metrics, .. } | Chain::Tcp { metrics, .. }) = chain;
        if *metrics != telemetry.metric_overrides {
            // Chains with equal overrides share one set (and so their series merge).
            let shared = out
                .iter()
                .find(|e| *e.overrides.0 == *metrics)
                .map(|e| e.overrides.clone())
                .unwrap_or_else(|| {
                    filters::model::telemetry::OverrideSet(Arc::new(metrics.clone()))
                });
            out.push(filters::model::telemetry::ServiceMetricOverrides {
                namespace: service.name.namespace.clone(),
                name: service.name.name.clone(),
                port,
                overrides: shared,
            });
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.name, a.port).cmp(&(&b.namespace, &b.name, b.port)));
    out.dedup_by(|a, b| (&a.namespace, &a.name, a.port) == (&b.namespace, &b.name, b.port));
    out
}

/// The access logs of the built-in listeners: `connect_terminate`'s connection manager,
/// `connect_originate`'s TCP proxy and `main_internal`'s listener log. The listener logs of
/// `connect_terminate` and `connect_originate` (istiod's `NR` filter) are accepted and
/// never written: each has one filter chain that every connection matches.
pub(super) fn listener_logs(res: &Resources) -> filters::model::telemetry::ListenerLogs {
    let logs = |name: &str, listener: bool| {
        res.listeners
            .get(name)
            .map(|l| {
                if listener {
                    l.access_logs.clone()
                } else {
                    l.connection_logs.clone()
                }
            })
            .unwrap_or_default()
    };
    filters::model::telemetry::ListenerLogs {
        connect_terminate: logs("connect_terminate", false),
        connect_originate: logs("connect_originate", false),
        no_chain: logs("main_internal", true),
    }
}

/// The tracing settings (one per waypoint: istiod gives every chain the same) and the
/// mesh id.
pub(super) fn config(
    main: Option<&ListenerInfo>,
    waypoint: &Waypoint,
) -> filters::model::telemetry::TelemetryConfig {
    // One tracing configuration per waypoint: istiod gives every chain the same.
    let tracing = main.and_then(|l| {
        l.chains.iter().find_map(|(_, c)| match c {
            Chain::Http { tracing, .. } => tracing.as_deref().cloned(),
            Chain::Tcp { .. } => None,
        })
    });
    let mesh_id = tracing
        .as_ref()
        .and_then(|t| {
            t.custom_tags.iter().find_map(|(k, v)| match v {
                filters::model::telemetry::CustomTag::Literal(v) if k == "istio.mesh_id" => {
                    Some(v.clone())
                }
                _ => None,
            })
        })
        .unwrap_or_else(|| waypoint.trust_domain.clone());
    // Likewise one set of access logs: istiod gives every HTTP chain the same connection
    // manager access_log (MeshConfig or Telemetry).
    let access_logs = main
        .and_then(|l| {
            l.chains.iter().find_map(|(_, c)| match c {
                Chain::Http { access_logs, .. } if !access_logs.is_empty() => {
                    Some(access_logs.clone())
                }
                _ => None,
            })
        })
        .unwrap_or_default();
    let tcp_access_logs = main
        .and_then(|l| {
            l.chains.iter().find_map(|(_, c)| match c {
                Chain::Tcp { access_logs, .. } if !access_logs.is_empty() => {
                    Some(access_logs.clone())
                }
                _ => None,
            })
        })
        .unwrap_or_default();
    // And one set of metric overrides (Telemetry `metrics`), the same on every chain.
    let metric_overrides = main
        .and_then(|l| {
            l.chains.iter().find_map(|(_, c)| match c {
                Chain::Http { metrics, .. } | Chain::Tcp { metrics, .. } => {
                    (!metrics.is_empty()).then(|| metrics.clone())
                }
            })
        })
        .unwrap_or_default();
    filters::model::telemetry::TelemetryConfig {
        tracing,
        access_logs,
        tcp_access_logs,
        service_access_logs: Vec::new(),
        mesh_id,
        metric_overrides,
        service_metric_overrides: Vec::new(),
        listener_logs: Default::default(),
    }
}
