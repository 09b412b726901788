//! The route-configuration fields no other part of the route translator reads, refused by
//! name unless they hold a value without behaviour, so that nothing is accepted and then
//! ignored. Each check clears what the translator reads and names the first field left
//! set (by its proto name, from the message's JSON form).
//!
//! What istiod writes for a waypoint (`buildWaypointHTTPFilters`/`buildInboundRouteConfig`
//! in `pilot/pkg/networking/core/listener_waypoint.go`, `translateRoute`,
//! `applyHTTPRouteDestination`, `setTimeout` and `GetRouteOperation` in
//! `pilot/pkg/networking/core/route/route.go`, `ConvertPolicy` in `route/retry/retry.go`)
//! is read elsewhere, except: `validate_clusters: false` (a check Envoy makes on load;
//! false is no check), a route's `metadata` (istiod's `istio.config` naming the source
//! object, read by no filter here as by none in Envoy), and the retry policy's
//! `host_selection_retry_max_attempts` (with `previous_hosts`, the waypoint's balancer
//! already moves to the next endpoint on every attempt).

use super::Bad;
use envoy_types::pb::envoy::config::route::v3::{
    route_action::ClusterSpecifier, RetryPolicy, Route, RouteAction, RouteConfiguration,
    VirtualHost,
};

use crate::translate::residual::{first_set, refuse};

/// The route configuration's own fields.
pub(super) fn route_configuration(rc: &RouteConfiguration, at: &str) -> Result<(), Bad> {
    let mut rest = RouteConfiguration {
        name: String::new(),
        virtual_hosts: Vec::new(),
        max_direct_response_body_size_bytes: None,
        ..rc.clone()
    };
    if rest.validate_clusters.as_ref().is_some_and(|v| !v.value) {
        rest.validate_clusters = None;
    }
    refuse(
        at,
        first_set("envoy.config.route.v3.RouteConfiguration", &rest),
    )
}

/// A virtual host's own fields (name, domains, routes and header changes are read).
pub(super) fn virtual_host(vh: &VirtualHost, at: &str) -> Result<(), Bad> {
    let rest = VirtualHost {
        name: String::new(),
        domains: Vec::new(),
        routes: Vec::new(),
        request_headers_to_add: Vec::new(),
        request_headers_to_remove: Vec::new(),
        response_headers_to_add: Vec::new(),
        response_headers_to_remove: Vec::new(),
        ..vh.clone()
    };
    refuse(at, first_set("envoy.config.route.v3.VirtualHost", &rest))
}

/// A route's own fields; its match and action are checked where they are read.
pub(super) fn route(r: &Route, at: &str) -> Result<(), Bad> {
    let rest = Route {
        name: String::new(),
        r#match: None,
        metadata: None,
        decorator: None,
        typed_per_filter_config: Default::default(),
        request_headers_to_add: Vec::new(),
        request_headers_to_remove: Vec::new(),
        response_headers_to_add: Vec::new(),
        response_headers_to_remove: Vec::new(),
        action: None,
        ..r.clone()
    };
    refuse(at, first_set("envoy.config.route.v3.Route", &rest))?;
    if let Some(d) = &r.decorator {
        if d.propagate.is_some() {
            return Err((format!("{at}.decorator.propagate"), "not supported".into()));
        }
    }
    Ok(())
}

/// A route action's fields not read by `route_action` / `route_extras`, and those of its
/// weighted clusters, mirrors and retry policy.
#[allow(deprecated)] // max_grpc_timeout, which istiod writes, is read
pub(super) fn route_action(a: &RouteAction, at: &str) -> Result<(), Bad> {
    let rest = RouteAction {
        cluster_specifier: None,
        timeout: None,
        retry_policy: None,
        hash_policy: Vec::new(),
        host_rewrite_specifier: None,
        prefix_rewrite: String::new(),
        regex_rewrite: None,
        request_mirror_policies: Vec::new(),
        max_grpc_timeout: None,
        max_stream_duration: None,
        ..a.clone()
    };
    refuse(at, first_set("envoy.config.route.v3.RouteAction", &rest))?;
    if let Some(ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier {
        let wat = format!("{at}.weighted_clusters");
        for (i, c) in w.clusters.iter().enumerate() {
            use envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier;
            let mut rest =
                envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight {
                    name: String::new(),
                    weight: None,
                    request_headers_to_add: Vec::new(),
                    request_headers_to_remove: Vec::new(),
                    response_headers_to_add: Vec::new(),
                    response_headers_to_remove: Vec::new(),
                    ..c.clone()
                };
            if matches!(
                rest.host_rewrite_specifier,
                Some(HostRewriteSpecifier::HostRewriteLiteral(_))
            ) {
                rest.host_rewrite_specifier = None;
            }
            if let Some(f) = first_set("envoy.config.route.v3.WeightedCluster.ClusterWeight", &rest)
            {
                return Err((
                    format!("{wat}.clusters[{i}].{f}"),
                    "not supported (only name, weight, header changes and host_rewrite_literal)"
                        .into(),
                ));
            }
        }
        let rest = envoy_types::pb::envoy::config::route::v3::WeightedCluster {
            clusters: Vec::new(),
            ..w.clone()
        };
        refuse(
            &wat,
            first_set("envoy.config.route.v3.WeightedCluster", &rest),
        )?;
    }
    for (i, m) in a.request_mirror_policies.iter().enumerate() {
        let mut rest =
            envoy_types::pb::envoy::config::route::v3::route_action::RequestMirrorPolicy {
                cluster: String::new(),
                runtime_fraction: None,
                ..m.clone()
            };
        // Only a sampled trace decision to copy is implemented: the mirror is not traced.
        if rest.trace_sampled.as_ref().is_some_and(|v| !v.value) {
            rest.trace_sampled = None;
        }
        refuse(
            &format!("{at}.request_mirror_policies[{i}]"),
            first_set(
                "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
                &rest,
            ),
        )?;
    }
    if let Some(p) = &a.retry_policy {
        retry_policy(p, &format!("{at}.retry_policy"))?;
    }
    Ok(())
}

/// A retry policy's fields not read by `route_action`.
fn retry_policy(p: &RetryPolicy, at: &str) -> Result<(), Bad> {
    let mut rest = RetryPolicy {
        retry_on: String::new(),
        num_retries: None,
        per_try_timeout: None,
        retry_host_predicate: Vec::new(),
        retry_priority: None,
        host_selection_retry_max_attempts: 0,
        retriable_status_codes: Vec::new(),
        ..p.clone()
    };
    if let Some(b) = &mut rest.retry_back_off {
        b.base_interval = None;
        // Envoy's default cap is ten times the base, as the waypoint's backoff is.
        let base = super::super::duration(
            p.retry_back_off
                .as_ref()
                .and_then(|b| b.base_interval.as_ref()),
        )
        .unwrap_or(std::time::Duration::from_millis(25));
        if super::super::duration(b.max_interval.as_ref()) == Some(base * 10) {
            b.max_interval = None;
        }
        if *b == Default::default() {
            rest.retry_back_off = None;
        }
    }
    refuse(at, first_set("envoy.config.route.v3.RetryPolicy", &rest))
}
