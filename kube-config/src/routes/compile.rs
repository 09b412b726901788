//! Compiles Gateway API rules, matches, filters and backendRefs into the route model.

use std::collections::HashMap;
use std::sync::Arc;

use filters::model::{NamespacedName, Service};
use filters::route::model::{
    BackendTarget, Cors, Filter, HeaderMatch, HeaderModifier, Mirror, OriginMatch, PathMatch,
    PathModifier, QueryMatch, Redirect, RetryPolicy, Rewrite, RouteMatch, Rule, StringMatch,
    Timeouts, WeightedBackend,
};
use filters::route::Backend;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use super::objects::{self as o, BackendRef, ReferenceGrant, RouteFilter};

/// The Gateway API's group.
pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Why a route cannot be accepted at all.
pub(crate) struct Unsupported(pub String);

/// What compiling one route's rules needs to know.
pub(crate) struct Ctx<'a> {
    pub services: &'a HashMap<NamespacedName, Arc<Service>>,
    pub grants: &'a [(String, ReferenceGrant)],
    /// The Service parentRefs of the route being compiled, as (namespace, name).
    pub parents: Vec<(String, String)>,
}

/// A backendRef that did not resolve: the ResolvedRefs reason and a message.
#[derive(Debug, Clone)]
pub(crate) struct RefProblem {
    pub reason: String,
    pub message: String,
}

/// A compiled rule and the backendRef problems it carries.
pub(crate) type RuleOut = (Rule, Vec<RefProblem>);

type Backends = (Vec<WeightedBackend>, Vec<RefProblem>);

fn string_match(kind: Option<&str>, value: &str, what: &str) -> Result<StringMatch, Unsupported> {
    match kind.unwrap_or("Exact") {
        "Exact" => Ok(StringMatch::Exact(value.to_string())),
        "RegularExpression" => Regex::new(&format!("^(?:{value})$"))
            .map(StringMatch::Regex)
            .map_err(|e| Unsupported(format!("{what}: invalid regular expression {value:?}: {e}"))),
        other => Err(Unsupported(format!(
            "{what}: unsupported match type {other}"
        ))),
    }
}

fn header_name(name: &str, what: &str) -> Result<HeaderName, Unsupported> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Unsupported(format!("{what}: invalid header name {name:?}")))
}

fn header_value(value: &str, what: &str) -> Result<HeaderValue, Unsupported> {
    HeaderValue::from_str(value)
        .map_err(|_| Unsupported(format!("{what}: invalid header value {value:?}")))
}

fn http_match(m: &o::HttpMatch, field: &str) -> Result<RouteMatch, Unsupported> {
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" | "PathPrefix" if !value.starts_with('/') => {
                    return Err(Unsupported(format!(
                        "{field}.path.value must start with '/', got {value:?}"
                    )))
                }
                "Exact" => PathMatch::Exact(value),
                "PathPrefix" => PathMatch::Prefix(value),
                "RegularExpression" => {
                    PathMatch::Regex(Regex::new(&format!("^(?:{value})$")).map_err(|e| {
                        Unsupported(format!("{field}.path: invalid regular expression: {e}"))
                    })?)
                }
                other => {
                    return Err(Unsupported(format!(
                        "{field}.path.type: unsupported {other}"
                    )))
                }
            }
        }
    };
    let headers = header_matches(&m.headers, field)?;
    let query = m
        .query_params
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let what = format!("{field}.queryParams[{i}]");
            Ok(QueryMatch {
                name: q.name.clone(),
                value: string_match(q.kind.as_deref(), &q.value, &what)?,
            })
        })
        .collect::<Result<_, _>>()?;
    let method = m
        .method
        .as_deref()
        .map(|s| {
            Method::from_bytes(s.as_bytes())
                .map_err(|_| Unsupported(format!("{field}.method: invalid {s:?}")))
        })
        .transpose()?;
    Ok(RouteMatch {
        path,
        headers,
        query,
        method,
    })
}

fn grpc_match(m: &o::GrpcMatch, field: &str) -> Result<RouteMatch, Unsupported> {
    let path = match &m.method {
        None => PathMatch::Prefix("/".into()),
        Some(mm) => {
            let svc = mm.service.as_deref().filter(|s| !s.is_empty());
            let method = mm.method.as_deref().filter(|s| !s.is_empty());
            match (mm.kind.as_deref().unwrap_or("Exact"), svc, method) {
                (_, None, None) => {
                    return Err(Unsupported(format!(
                        "{field}.method: one of service or method is required"
                    )))
                }
                ("Exact", Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
                ("Exact", Some(s), None) => PathMatch::Prefix(format!("/{s}")),
                ("Exact", None, Some(m)) => PathMatch::Regex(
                    Regex::new(&format!("^/[^/]+/{}$", regex::escape(m))).expect("escaped"),
                ),
                ("RegularExpression", s, m) => {
                    let re = format!(
                        "^/(?:{})/(?:{})$",
                        s.unwrap_or("[^/]+"),
                        m.unwrap_or("[^/]+")
                    );
                    PathMatch::Regex(Regex::new(&re).map_err(|e| {
                        Unsupported(format!("{field}.method: invalid regular expression: {e}"))
                    })?)
                }
                (other, _, _) => {
                    return Err(Unsupported(format!(
                        "{field}.method.type: unsupported {other}"
                    )))
                }
            }
        }
    };
    let headers = header_matches(&m.headers, field)?;
    Ok(RouteMatch {
        path,
        headers,
        query: Vec::new(),
        method: None,
    })
}

fn header_matches(
    list: &[o::ValueMatchSpec],
    field: &str,
) -> Result<Vec<HeaderMatch>, Unsupported> {
    list.iter()
        .enumerate()
        .map(|(i, h)| {
            let what = format!("{field}.headers[{i}]");
            Ok(HeaderMatch {
                name: header_name(&h.name, &what)?,
                value: string_match(h.kind.as_deref(), &h.value, &what)?,
            })
        })
        .collect()
}

fn header_modifier(m: &o::HeaderModifierSpec, what: &str) -> Result<HeaderModifier, Unsupported> {
    let pairs = |list: &[o::HeaderPair]| {
        list.iter()
            .map(|p| Ok((header_name(&p.name, what)?, header_value(&p.value, what)?)))
            .collect::<Result<Vec<_>, Unsupported>>()
    };
    Ok(HeaderModifier {
        set: pairs(&m.set)?,
        add: pairs(&m.add)?,
        remove: m
            .remove
            .iter()
            .map(|n| header_name(n, what))
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(
    p: &o::PathModifierSpec,
    what: &str,
    prefix_ok: bool,
) -> Result<PathModifier, Unsupported> {
    match (
        p.kind.as_str(),
        &p.replace_full_path,
        &p.replace_prefix_match,
    ) {
        ("ReplaceFullPath", Some(v), _) => Ok(PathModifier::ReplaceFullPath(v.clone())),
        ("ReplacePrefixMatch", _, Some(v)) if prefix_ok => {
            Ok(PathModifier::ReplacePrefixMatch(v.clone()))
        }
        ("ReplacePrefixMatch", _, Some(_)) => Err(Unsupported(format!(
            "{what}: ReplacePrefixMatch needs PathPrefix matches"
        ))),
        (kind, _, _) => Err(Unsupported(format!(
            "{what}: path type {kind} without its value"
        ))),
    }
}

/// Converts filters; `prefix_ok` tells whether every match of the rule is a PathPrefix.
fn filters(
    ctx: &Ctx<'_>,
    ns: &str,
    kind: &str,
    list: &[RouteFilter],
    field: &str,
    prefix_ok: bool,
) -> Result<Vec<Filter>, Unsupported> {
    let mut out = Vec::new();
    let (mut redirect, mut rewrite) = (false, false);
    for (i, f) in list.iter().enumerate() {
        let what = format!("{field}.filters[{i}]");
        let missing = || Unsupported(format!("{what}: type {} without its configuration", f.kind));
        out.push(match f.kind.as_str() {
            "RequestHeaderModifier" => Filter::RequestHeaders(header_modifier(
                f.request_header_modifier.as_ref().ok_or_else(missing)?,
                &what,
            )?),
            "ResponseHeaderModifier" => Filter::ResponseHeaders(header_modifier(
                f.response_header_modifier.as_ref().ok_or_else(missing)?,
                &what,
            )?),
            "RequestRedirect" if kind == "HTTPRoute" => {
                redirect = true;
                let r = f.request_redirect.as_ref().ok_or_else(missing)?;
                redirect_filter(r, &what, prefix_ok)?
            }
            "URLRewrite" if kind == "HTTPRoute" => {
                rewrite = true;
                let r = f.url_rewrite.as_ref().ok_or_else(missing)?;
                rewrite_filter(r, &what, prefix_ok)?
            }
            "RequestMirror" => {
                let m = f.request_mirror.as_ref().ok_or_else(missing)?;
                mirror_filter(ctx, ns, kind, m, &what)?
            }
            "CORS" if kind == "HTTPRoute" => cors_filter(f.cors.as_ref().ok_or_else(missing)?),
            other => {
                return Err(Unsupported(format!(
                    "{what}.type: unsupported filter {other} on {kind}"
                )))
            }
        });
    }
    if redirect && rewrite {
        return Err(Unsupported(format!(
            "{field}.filters: RequestRedirect and URLRewrite cannot be combined"
        )));
    }
    Ok(out)
}

/// A `RequestRedirect` filter; rejects unsupported status codes and schemes.
fn redirect_filter(
    r: &o::RedirectSpec,
    what: &str,
    prefix_ok: bool,
) -> Result<Filter, Unsupported> {
    let status = r.status_code.unwrap_or(302);
    if ![301, 302, 303, 307, 308].contains(&status) {
        return Err(Unsupported(format!(
            "{what}.requestRedirect.statusCode: unsupported {status}"
        )));
    }
    if let Some(s) = &r.scheme {
        if s != "http" && s != "https" {
            return Err(Unsupported(format!(
                "{what}.requestRedirect.scheme: unsupported {s}"
            )));
        }
    }
    Ok(Filter::Redirect(Redirect {
        scheme: r.scheme.clone(),
        hostname: r.hostname.clone(),
        port: r.port,
        path: r
            .path
            .as_ref()
            .map(|p| path_modifier(p, what, prefix_ok))
            .transpose()?,
        status,
    }))
}

/// A `URLRewrite` filter.
fn rewrite_filter(r: &o::RewriteSpec, what: &str, prefix_ok: bool) -> Result<Filter, Unsupported> {
    Ok(Filter::Rewrite(Rewrite {
        hostname: r.hostname.clone(),
        path: r
            .path
            .as_ref()
            .map(|p| path_modifier(p, what, prefix_ok))
            .transpose()?,
    }))
}

/// A `RequestMirror` filter: its resolved backend and the fraction of requests copied.
fn mirror_filter(
    ctx: &Ctx<'_>,
    ns: &str,
    kind: &str,
    m: &o::MirrorSpec,
    what: &str,
) -> Result<Filter, Unsupported> {
    let backend = match resolve_backend(ctx, ns, kind, &m.backend_ref) {
        Ok(b) => b,
        Err((_, msg)) => return Err(Unsupported(format!("{what}.requestMirror: {msg}"))),
    };
    let fraction = match (&m.percent, &m.fraction) {
        (Some(p), _) => f64::from(*p) / 100.0,
        (None, Some(fr)) => {
            f64::from(fr.numerator) / f64::from(fr.denominator.unwrap_or(100).max(1))
        }
        (None, None) => 1.0,
    };
    Ok(Filter::Mirror(Arc::new(Mirror { backend, fraction })))
}

/// A `CORS` filter.
fn cors_filter(c: &o::CorsSpec) -> Filter {
    Filter::Cors(Cors {
        allow_origins: c
            .allow_origins
            .iter()
            .cloned()
            .map(OriginMatch::Pattern)
            .collect(),
        forward_not_matching_preflights: false,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        allow_credentials: c.allow_credentials.unwrap_or(false),
        max_age: c.max_age,
    })
}

fn granted(ctx: &Ctx<'_>, from_ns: &str, from_kind: &str, to_ns: &str, to_name: &str) -> bool {
    ctx.grants.iter().any(|(_, g)| {
        g.metadata.namespace.as_deref().unwrap_or("default") == to_ns
            && g.spec
                .from
                .iter()
                .any(|f| f.group == GATEWAY_GROUP && f.kind == from_kind && f.namespace == from_ns)
            && g.spec.to.iter().any(|t| {
                t.group.is_empty()
                    && t.kind == "Service"
                    && t.name.as_deref().is_none_or(|n| n == to_name)
            })
    })
}

/// Resolves a backendRef, or returns `(reason, message)` for its ResolvedRefs condition.
fn resolve_backend(
    ctx: &Ctx<'_>,
    ns: &str,
    kind: &str,
    r: &BackendRef,
) -> Result<Backend, (String, String)> {
    let group = r.group.as_deref().unwrap_or("");
    let bkind = r.kind.as_deref().unwrap_or("Service");
    if !(group.is_empty() || group == "core") || bkind != "Service" {
        return Err((
            "InvalidKind".into(),
            format!("backendRef {group}/{bkind} {} is not a Service", r.name),
        ));
    }
    let bns = r.namespace.clone().unwrap_or_else(|| ns.to_string());
    // A consumer route may send to the Service it is attached to without a grant (GAMMA).
    let own_parent = ctx
        .parents
        .iter()
        .any(|(pns, pname)| pns == &bns && pname == &r.name);
    if bns != ns && !own_parent && !granted(ctx, ns, kind, &bns, &r.name) {
        return Err((
            "RefNotPermitted".into(),
            format!(
                "no ReferenceGrant in {bns} allows {kind}s from {ns} to Service {}",
                r.name
            ),
        ));
    }
    let name = NamespacedName::new(&bns, &r.name);
    let Some(svc) = ctx.services.get(&name) else {
        return Err((
            "BackendNotFound".into(),
            format!("Service {name} not found"),
        ));
    };
    let Some(port) = r.port else {
        return Err((
            "UnsupportedValue".into(),
            format!("backendRef Service {name} needs a port"),
        ));
    };
    if svc.port(port).is_none() {
        return Err((
            "BackendNotFound".into(),
            format!("Service {name} has no port {port}"),
        ));
    }
    Ok(Backend::Service {
        service: svc.clone(),
        port,
    })
}

fn backends(
    ctx: &Ctx<'_>,
    ns: &str,
    kind: &str,
    refs: &[BackendRef],
    field: &str,
    prefix_ok: bool,
) -> Result<Backends, Unsupported> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let what = format!("{field}.backendRefs[{i}]");
        let parsed: Vec<RouteFilter> = r
            .filters
            .iter()
            .map(|v| {
                serde_yaml::from_value(v.clone())
                    .map_err(|e| Unsupported(format!("{what}.filters: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let target = match resolve_backend(ctx, ns, kind, r) {
            Ok(b) => BackendTarget::Backend(b),
            Err((reason, message)) => {
                problems.push(RefProblem {
                    reason,
                    message: message.clone(),
                });
                BackendTarget::Invalid(message)
            }
        };
        out.push(WeightedBackend {
            target,
            weight: r.weight.unwrap_or(1),
            filters: filters(ctx, ns, kind, &parsed, &what, prefix_ok)?,
        });
    }
    Ok((out, problems))
}

pub(crate) fn http_rule(
    ctx: &Ctx<'_>,
    ns: &str,
    kind: &str,
    i: usize,
    r: &o::HttpRule,
) -> Result<RuleOut, Unsupported> {
    let field = format!("spec.rules[{i}]");
    let matches = r
        .matches
        .iter()
        .enumerate()
        .map(|(j, m)| http_match(m, &format!("{field}.matches[{j}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let prefix_ok = matches
        .iter()
        .all(|m| matches!(m.path, PathMatch::Prefix(_)));
    let filters = filters(ctx, ns, kind, &r.filters, &field, prefix_ok)?;
    let (backends, problems) = backends(ctx, ns, kind, &r.backend_refs, &field, prefix_ok)?;
    let dur = |v: &Option<String>, what: &str| {
        v.as_deref()
            .map(|s| {
                filters::duration::parse_gateway_api(s)
                    .map_err(|e| Unsupported(format!("{field}.{what}: {e}")))
            })
            .transpose()
    };
    let timeouts = match &r.timeouts {
        None => Timeouts::default(),
        Some(t) => {
            let t = Timeouts {
                request: dur(&t.request, "timeouts.request")?,
                backend_request: dur(&t.backend_request, "timeouts.backendRequest")?,
                grpc_timeout_max: None,
            };
            // A zero duration disables the timeout.
            let t = Timeouts {
                request: t.request.filter(|d| !d.is_zero()),
                backend_request: t.backend_request.filter(|d| !d.is_zero()),
                grpc_timeout_max: None,
            };
            if let (Some(req), Some(be)) = (t.request, t.backend_request) {
                if be > req {
                    return Err(Unsupported(format!(
                        "{field}.timeouts: backendRequest must not exceed request"
                    )));
                }
            }
            t
        }
    };
    // As istiod writes every route's `max_grpc_timeout` (the route's timeout, `0s` for
    // none; `setTimeout` in pilot/pkg/networking/core/route/route.go): a gRPC request's
    // `grpc-timeout` header sets its timeout, capped at the route's.
    let timeouts = Timeouts {
        grpc_timeout_max: Some(timeouts.request.unwrap_or_default()),
        ..timeouts
    };
    let retry = r
        .retry
        .as_ref()
        .map(|rt| {
            Ok::<_, Unsupported>(RetryPolicy {
                attempts: rt.attempts.unwrap_or(1),
                codes: rt.codes.clone(),
                backoff: dur(&rt.backoff, "retry.backoff")?
                    .unwrap_or(std::time::Duration::from_millis(25)),
            })
        })
        .transpose()?;
    Ok((
        Rule {
            name: r.name.clone(),
            matches,
            filters,
            backends,
            timeouts,
            retry,
            hash_policy: Vec::new(),
        },
        problems,
    ))
}

pub(crate) fn grpc_rule(
    ctx: &Ctx<'_>,
    ns: &str,
    i: usize,
    r: &o::GrpcRule,
) -> Result<RuleOut, Unsupported> {
    let field = format!("spec.rules[{i}]");
    let matches = r
        .matches
        .iter()
        .enumerate()
        .map(|(j, m)| grpc_match(m, &format!("{field}.matches[{j}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let filters = filters(ctx, ns, "GRPCRoute", &r.filters, &field, false)?;
    let (backends, problems) = backends(ctx, ns, "GRPCRoute", &r.backend_refs, &field, false)?;
    Ok((
        Rule {
            name: r.name.clone(),
            matches,
            filters,
            backends,
            // istiod's routes for a GRPCRoute honour `grpc-timeout` (`max_grpc_timeout: 0s`).
            timeouts: Timeouts {
                grpc_timeout_max: Some(std::time::Duration::ZERO),
                ..Timeouts::default()
            },
            retry: None,
            hash_policy: Vec::new(),
        },
        problems,
    ))
}

/// A TCPRoute rule: no matches or filters; each new tunnel draws one of its backendRefs by
/// weight.
pub(crate) fn tcp_rule(
    ctx: &Ctx<'_>,
    ns: &str,
    i: usize,
    r: &o::TcpRule,
) -> Result<RuleOut, Unsupported> {
    let field = format!("spec.rules[{i}]");
    let refs: Vec<BackendRef> = r.backend_refs.iter().map(BackendRef::from).collect();
    let (backends, problems) = backends(ctx, ns, "TCPRoute", &refs, &field, false)?;
    Ok((
        Rule {
            name: r.name.clone(),
            matches: Vec::new(),
            filters: Vec::new(),
            backends,
            timeouts: Timeouts::default(),
            retry: None,
            hash_policy: Vec::new(),
        },
        problems,
    ))
}
