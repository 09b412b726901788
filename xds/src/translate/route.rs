//! Route configurations (inline in each HTTP connection manager) into the route model.
//! Envoy evaluates routes in order; istiod has already ordered them by Gateway API
//! precedence, so the table keeps their order ([`filters::route::RouteTable::ordered`]).

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier, HeaderMatcher,
    QueryParameterMatcher, Route, RouteAction, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use filters::route::model::{
    DirectResponse, HeaderMatch, HeaderModifier, PathMatch, PathModifier, QueryMatch, Redirect,
    RegexRewrite, RetryPolicy, Rewrite, RouteMatch, StringMatch, Timeouts,
};
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

mod direct;
mod fields;
mod hash;
mod matching;

use direct::{direct_response, DIRECT_RESPONSE_BODY_LIMIT};
use hash::hash_policy;
use matching::route_match;

pub use super::Bad;

/// A route action's backends, timeouts and retries.
type Forwarding = (Vec<ClusterRef>, Timeouts, Option<RetryPolicy>);

/// One backend of a route: a cluster, its weight, and the header changes and host rewrite
/// of its `weighted_clusters` entry (VirtualService destination `headers`, istiod's
/// `processWeightedDestination` in route.go), applied after the route's own.
#[derive(Debug, Clone)]
pub struct ClusterRef {
    /// The cluster name.
    pub name: String,
    /// Relative weight.
    pub weight: u32,
    /// Header modifiers and host rewrite for requests sent to this backend.
    pub filters: Vec<filters::route::model::Filter>,
}

/// One Envoy route, interpreted; backends are still cluster names.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The route's name (istiod names them after their source).
    pub name: String,
    /// The request condition.
    pub matched: RouteMatch,
    /// Weighted backends.
    pub clusters: Vec<ClusterRef>,
    /// Request timeout (0 and unset mean none).
    pub timeouts: Timeouts,
    /// Retries.
    pub retry: Option<RetryPolicy>,
    /// Request header changes by level, in Envoy's order: the route's, then the virtual
    /// host's (a backend's own come before both), so the outer level wins a conflicting
    /// `set`, as with Envoy's default `most_specific_header_mutations_wins: false`. Levels
    /// without changes are left out.
    pub request_headers: Vec<HeaderModifier>,
    /// Response header changes by level, in the same order.
    pub response_headers: Vec<HeaderModifier>,
    /// Redirect, rewrite and mirror filters (mirror backends still cluster names).
    pub extra: Vec<Extra>,
    /// Inputs of the request's hash for consistent-hash balancing.
    pub hash_policy: Vec<filters::route::model::HashPolicy>,
    /// The SERVER span's name (`decorator.operation`; istiod's `GetRouteOperation`).
    pub operation: Option<String>,
}

/// Route behaviour beyond forwarding.
#[derive(Debug, Clone)]
pub enum Extra {
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Rewrite the path and/or Host before forwarding.
    Rewrite(Rewrite),
    /// Answer without forwarding.
    DirectResponse(DirectResponse),
    /// A route filter as it is (per-route CORS and fault).
    Filter(filters::route::model::Filter),
    /// Copy requests to a cluster.
    Mirror {
        /// The cluster.
        cluster: String,
        /// Share of requests, 0 to 1.
        fraction: f64,
    },
}

/// Converts every route of every virtual host, in order.
pub fn convert(rc: &RouteConfiguration, at: &str) -> Result<Vec<RouteSpec>, Bad> {
    let body_limit = rc
        .max_direct_response_body_size_bytes
        .map_or(DIRECT_RESPONSE_BODY_LIMIT, |v| v.value as usize);
    fields::route_configuration(rc, at)?;
    let mut out = Vec::new();
    for (vi, vh) in rc.virtual_hosts.iter().enumerate() {
        let vat = format!("{at}.virtual_hosts[{vi}]");
        fields::virtual_host(vh, &vat)?;
        let host = domains(vh, &vat)?;
        for (ri, r) in vh.routes.iter().enumerate() {
            let rat = format!("{vat}.routes[{ri}]");
            let mut spec = route(r, vh, &rat)?;
            for e in &spec.extra {
                if let Extra::DirectResponse(d) = e {
                    if d.body.len() > body_limit {
                        return Err((
                            format!("{rat}.direct_response.body"),
                            format!(
                                "{} bytes, above max_direct_response_body_size_bytes ({body_limit})",
                                d.body.len()
                            ),
                        ));
                    }
                }
            }
            if let Some(h) = &host {
                spec.matched.headers.push(h.clone());
            }
            out.push(spec);
        }
    }
    Ok(out)
}

/// A host condition for a virtual host's domains (`None` when `*` is among them).
fn domains(vh: &VirtualHost, at: &str) -> Result<Option<HeaderMatch>, Bad> {
    if vh.domains.iter().any(|d| d == "*") {
        return Ok(None);
    }
    let alts: Vec<String> = vh
        .domains
        .iter()
        .map(|d| match d.strip_prefix('*') {
            Some(rest) => format!(".+{}", regex::escape(rest)),
            None => regex::escape(d),
        })
        .collect();
    let re = Regex::new(&format!("(?i)^(?:{})(?::[0-9]+)?$", alts.join("|")))
        .map_err(|e| (format!("{at}.domains"), e.to_string()))?;
    Ok(Some(HeaderMatch {
        name: http::header::HOST,
        value: StringMatch::Regex(re),
    }))
}

// The deprecated matcher forms are still accepted: older istiod versions send them.
#[allow(deprecated)]
fn modifier(add: &[HeaderValueOption], remove: &[String], at: &str) -> Result<HeaderModifier, Bad> {
    use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
    let mut m = HeaderModifier::default();
    for (i, o) in add.iter().enumerate() {
        let Some(h) = &o.header else { continue };
        let name = HeaderName::from_bytes(h.key.as_bytes()).map_err(|_| {
            (
                format!("{at}[{i}].header.key"),
                format!("bad header name {:?}", h.key),
            )
        })?;
        let value = HeaderValue::from_str(&h.value).map_err(|_| {
            (
                format!("{at}[{i}].header.value"),
                "bad header value".to_string(),
            )
        })?;
        let append = match o.append.as_ref().map(|b| b.value) {
            Some(a) => a,
            None => o.append_action == HeaderAppendAction::AppendIfExistsOrAdd as i32,
        };
        if append {
            m.add.push((name, value));
        } else {
            m.set.push((name, value));
        }
    }
    for r in remove {
        let name = HeaderName::from_bytes(r.as_bytes())
            .map_err(|_| (at.to_string(), format!("bad header name {r:?}")))?;
        m.remove.push(name);
    }
    Ok(m)
}

fn route(r: &Route, vh: &VirtualHost, at: &str) -> Result<RouteSpec, Bad> {
    fields::route(r, at)?;
    let matched = route_match(r, at)?;
    let per_filter = super::per_filter::convert(
        &r.typed_per_filter_config,
        &format!("{at}.typed_per_filter_config"),
    )?;
    let request_headers = levels([
        modifier(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &format!("{at}.request_headers_to_add"),
        )?,
        modifier(
            &vh.request_headers_to_add,
            &vh.request_headers_to_remove,
            &format!("{at}.virtual_host.request_headers_to_add"),
        )?,
    ]);
    let response_headers = levels([
        modifier(
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
            &format!("{at}.response_headers_to_add"),
        )?,
        modifier(
            &vh.response_headers_to_add,
            &vh.response_headers_to_remove,
            &format!("{at}.virtual_host.response_headers_to_add"),
        )?,
    ]);
    let ((clusters, timeouts, retry), mut extra) = action(r, &matched.path, at)?;
    let hash_policy = match &r.action {
        Some(Action::Route(a)) => hash_policy(&a.hash_policy, &format!("{at}.route.hash_policy"))?,
        _ => Vec::new(),
    };
    extra.extend(per_filter.into_iter().map(Extra::Filter));
    Ok(RouteSpec {
        name: r.name.clone(),
        matched,
        clusters,
        timeouts,
        retry,
        request_headers,
        response_headers,
        extra,
        hash_policy,
        operation: r
            .decorator
            .as_ref()
            .map(|d| d.operation.clone())
            .filter(|o| !o.is_empty()),
    })
}

/// The levels that change something, in the given order.
fn levels(all: [HeaderModifier; 2]) -> Vec<HeaderModifier> {
    all.into_iter()
        .filter(|m| !(m.set.is_empty() && m.add.is_empty() && m.remove.is_empty()))
        .collect()
}

/// The route's forwarding and extras from its action (route or redirect).
fn action(r: &Route, path: &PathMatch, at: &str) -> Result<(Forwarding, Vec<Extra>), Bad> {
    match &r.action {
        Some(Action::Route(a)) => {
            let forwarding = route_action(a, &format!("{at}.route"))?;
            let extra = route_extras(a, path, &format!("{at}.route"))?;
            Ok((forwarding, extra))
        }
        Some(Action::Redirect(rd)) => {
            let redirect = redirect(rd, path, &format!("{at}.redirect"))?;
            Ok((
                (Vec::new(), Timeouts::default(), None),
                vec![Extra::Redirect(redirect)],
            ))
        }
        Some(Action::DirectResponse(d)) => {
            let direct = direct_response(d, &format!("{at}.direct_response"))?;
            Ok((
                (Vec::new(), Timeouts::default(), None),
                vec![Extra::DirectResponse(direct)],
            ))
        }
        other => Err((
            format!("{at}.action"),
            format!(
                "only route, redirect and direct_response actions are supported, got {}",
                action_kind(other)
            ),
        )),
    }
}

/// A prefix replacement needs a segment-prefix match to replace (Envoy's `prefix_rewrite`
/// on `path_separated_prefix`, as istiod generates for `ReplacePrefixMatch`).
fn prefix_rewrite(path: &PathMatch, with: &str, at: &str) -> Result<PathModifier, Bad> {
    match path {
        PathMatch::Prefix(_) => Ok(PathModifier::ReplacePrefixMatch(with.to_string())),
        _ => Err((
            at.to_string(),
            "prefix_rewrite is supported with path_separated_prefix matches only".into(),
        )),
    }
}

fn redirect(
    rd: &envoy_types::pb::envoy::config::route::v3::RedirectAction,
    path: &PathMatch,
    at: &str,
) -> Result<Redirect, Bad> {
    use envoy_types::pb::envoy::config::route::v3::redirect_action::{
        PathRewriteSpecifier, SchemeRewriteSpecifier,
    };
    let scheme = match &rd.scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_string()),
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.clone()),
        _ => None,
    };
    let path = match &rd.path_rewrite_specifier {
        None => None,
        Some(PathRewriteSpecifier::PathRedirect(p)) => {
            Some(PathModifier::ReplaceFullPath(p.clone()))
        }
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => {
            Some(prefix_rewrite(path, p, &format!("{at}.prefix_rewrite"))?)
        }
        Some(other) => {
            return Err((
                format!("{at}.path_rewrite_specifier"),
                format!("unsupported {other:?}"),
            ))
        }
    };
    if rd.strip_query {
        return Err((
            format!("{at}.strip_query"),
            "strip_query is not supported".into(),
        ));
    }
    let status = match rd.response_code {
        0 => 301,
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        other => {
            return Err((
                format!("{at}.response_code"),
                format!("unknown code {other}"),
            ))
        }
    };
    Ok(Redirect {
        scheme,
        hostname: (!rd.host_redirect.is_empty()).then(|| rd.host_redirect.clone()),
        port: u16::try_from(rd.port_redirect).ok().filter(|p| *p != 0),
        path,
        status,
    })
}

fn route_extras(a: &RouteAction, path: &PathMatch, at: &str) -> Result<Vec<Extra>, Bad> {
    use envoy_types::pb::envoy::config::route::v3::route_action::HostRewriteSpecifier;
    let mut extra = Vec::new();
    let hostname = match &a.host_rewrite_specifier {
        None => None,
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h.clone()),
        Some(_) => {
            return Err((
                format!("{at}.host_rewrite_specifier"),
                "only host_rewrite_literal is supported".into(),
            ))
        }
    };
    let new_path = if a.prefix_rewrite.is_empty() {
        None
    } else {
        Some(prefix_rewrite(
            path,
            &a.prefix_rewrite,
            &format!("{at}.prefix_rewrite"),
        )?)
    };
    let new_path = match (&a.regex_rewrite, new_path) {
        (None, p) => p,
        (Some(r), None) => Some(regex_rewrite(r, &format!("{at}.regex_rewrite"))?),
        (Some(_), Some(_)) => {
            return Err((
                format!("{at}.regex_rewrite"),
                "only one of prefix_rewrite and regex_rewrite may be set".into(),
            ))
        }
    };
    if hostname.is_some() || new_path.is_some() {
        extra.push(Extra::Rewrite(Rewrite {
            hostname,
            path: new_path,
        }));
    }
    for (i, m) in a.request_mirror_policies.iter().enumerate() {
        if m.cluster.is_empty() {
            return Err((
                format!("{at}.request_mirror_policies[{i}]"),
                "a cluster is required".into(),
            ));
        }
        let fraction = match m
            .runtime_fraction
            .as_ref()
            .and_then(|r| r.default_value.as_ref())
        {
            None => 1.0,
            Some(f) => super::per_filter::fraction(f),
        };
        extra.push(Extra::Mirror {
            cluster: m.cluster.clone(),
            fraction,
        });
    }
    Ok(extra)
}

/// Envoy's `regex_rewrite` (istiod's `ReplaceFullPath`: `/.*` → the path; `ReplacePrefixMatch:
/// /`: `^<prefix>(/?)(.*)` → `/\2`).
fn regex_rewrite(
    r: &envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute,
    at: &str,
) -> Result<PathModifier, Bad> {
    let pattern = r.pattern.as_ref().map(|p| p.regex.as_str()).unwrap_or("");
    if pattern.is_empty() {
        return Err((format!("{at}.pattern"), "a regex is required".into()));
    }
    RegexRewrite::new(pattern, &r.substitution)
        .map(PathModifier::Regex)
        .map_err(|e| (format!("{at}.pattern.regex"), e.to_string()))
}

/// One `weighted_clusters` entry: its name, weight, header changes and host rewrite.
fn cluster_weight(
    c: &envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight,
    at: &str,
) -> Result<ClusterRef, Bad> {
    use envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier;
    use filters::route::model::Filter;
    let mut filters = Vec::new();
    let request = modifier(
        &c.request_headers_to_add,
        &c.request_headers_to_remove,
        &format!("{at}.request_headers_to_add"),
    )?;
    if !(request.set.is_empty() && request.add.is_empty() && request.remove.is_empty()) {
        filters.push(Filter::RequestHeaders(request));
    }
    let response = modifier(
        &c.response_headers_to_add,
        &c.response_headers_to_remove,
        &format!("{at}.response_headers_to_add"),
    )?;
    if !(response.set.is_empty() && response.add.is_empty() && response.remove.is_empty()) {
        filters.push(Filter::ResponseHeaders(response));
    }
    if let Some(HostRewriteSpecifier::HostRewriteLiteral(h)) = &c.host_rewrite_specifier {
        filters.push(Filter::Rewrite(Rewrite {
            hostname: Some(h.clone()),
            path: None,
        }));
    }
    Ok(ClusterRef {
        name: c.name.clone(),
        weight: c.weight.as_ref().map(|w| w.value).unwrap_or(0),
        filters,
    })
}

/// Whether and up to what a gRPC request's `grpc-timeout` header sets its timeout: the
/// action's `max_stream_duration.grpc_timeout_header_max` (istiod before 1.22), else its
/// `max_grpc_timeout` (istiod's `setTimeout`: the route's timeout, `0s` for none); a zero
/// duration means no cap. A `max_stream_duration` of its own is refused.
fn grpc_timeout_max(a: &RouteAction, at: &str) -> Result<Option<Duration>, Bad> {
    #[allow(deprecated)] // istiod writes the deprecated field
    let legacy = a.max_grpc_timeout.as_ref();
    let exact = |d: &envoy_types::pb::google::protobuf::Duration| {
        super::duration(Some(d)).unwrap_or_default()
    };
    let Some(m) = &a.max_stream_duration else {
        return Ok(legacy.map(exact));
    };
    let at = format!("{at}.max_stream_duration");
    if super::duration(m.max_stream_duration.as_ref()).is_some() {
        return Err((
            format!("{at}.max_stream_duration"),
            "a limit on the stream's duration is not supported".into(),
        ));
    }
    if m.grpc_timeout_header_offset.is_some() {
        return Err((
            format!("{at}.grpc_timeout_header_offset"),
            "not supported".into(),
        ));
    }
    Ok(m.grpc_timeout_header_max
        .as_ref()
        .map(exact)
        .or(legacy.map(exact)))
}

fn action_kind(a: &Option<Action>) -> &'static str {
    match a {
        Some(Action::Redirect(_)) => "redirect",
        Some(Action::DirectResponse(_)) => "direct_response",
        Some(Action::FilterAction(_)) => "filter_action",
        Some(Action::NonForwardingAction(_)) => "non_forwarding_action",
        Some(Action::Route(_)) => "route",
        None => "none",
    }
}

fn route_action(a: &RouteAction, at: &str) -> Result<Forwarding, Bad> {
    fields::route_action(a, at)?;
    let clusters = match &a.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => vec![ClusterRef {
            name: c.clone(),
            weight: 1,
            filters: Vec::new(),
        }],
        Some(ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| cluster_weight(c, &format!("{at}.weighted_clusters.clusters[{i}]")))
            .collect::<Result<_, _>>()?,
        other => {
            return Err((
                format!("{at}.cluster_specifier"),
                format!("unsupported {other:?}"),
            ))
        }
    };
    let timeouts = Timeouts {
        request: super::duration(a.timeout.as_ref()),
        // istiod's `retries.perTryTimeout` (an HTTPRoute's `timeouts.backendRequest`).
        backend_request: a
            .retry_policy
            .as_ref()
            .and_then(|p| super::duration(p.per_try_timeout.as_ref())),
        grpc_timeout_max: grpc_timeout_max(a, at)?,
    };
    let retry = match &a.retry_policy {
        None => None,
        Some(p) => {
            let attempts = p.num_retries.as_ref().map(|n| n.value).unwrap_or(1);
            let mut codes: Vec<u16> = p
                .retriable_status_codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect();
            for on in p.retry_on.split(',').map(str::trim) {
                match on {
                    "5xx" | "gateway-error" => codes.extend([500, 502, 503, 504]),
                    "retriable-status-codes"
                    | "connect-failure"
                    | "reset"
                    | "refused-stream"
                    | "retriable-4xx"
                    | "" => {}
                    "unavailable" | "cancelled" | "deadline-exceeded" | "internal"
                    | "resource-exhausted" => {}
                    other => {
                        return Err((
                            format!("{at}.retry_policy.retry_on"),
                            format!("unsupported condition {other:?}"),
                        ))
                    }
                }
            }
            codes.sort_unstable();
            codes.dedup();
            // istiod's default policy asks for another host on each retry: the balancer's
            // round robin moves to the next endpoint for every attempt.
            for (i, pred) in p.retry_host_predicate.iter().enumerate() {
                if pred.name != "envoy.retry_host_predicates.previous_hosts" {
                    return Err((
                        format!("{at}.retry_policy.retry_host_predicate[{i}]"),
                        format!("unsupported retry host predicate {:?}", pred.name),
                    ));
                }
            }
            if p.retry_priority.is_some() {
                return Err((
                    format!("{at}.retry_policy.retry_priority"),
                    "retry priorities are not supported".into(),
                ));
            }
            let backoff = p
                .retry_back_off
                .as_ref()
                .and_then(|b| super::duration(b.base_interval.as_ref()))
                .unwrap_or(Duration::from_millis(25));
            (attempts > 0).then_some(RetryPolicy {
                attempts,
                codes,
                backoff,
            })
        }
    };
    Ok((clusters, timeouts, retry))
}
