//! The bootstrap's static HTTP listeners, as pilot-agent writes them: `0.0.0.0_15021`
//! routes `/healthz/ready` to the `agent` cluster (pilot-agent's own status server on
//! 15020) and `0.0.0.0_15090` routes `/stats/prometheus` to `prometheus_stats` (the admin
//! port). What is read: the listener address; one filter chain with an HTTP connection
//! manager and an inline `route_config`; virtual hosts (`domains`); routes matching a
//! `prefix` or an exact `path` and sending to a `cluster`; each such cluster's one STATIC
//! socket address and `connect_timeout`. Anything else in these listeners, or in the
//! clusters their routes name, is refused, by field, rather than served differently from
//! Envoy (an HTTP/2 cluster, a listener filter, a header matcher, a rewrite, ...). The compressor HTTP filters of the
//! Prometheus listener are accepted and not applied (responses go uncompressed, which every
//! client accepts).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value as Json;

use super::bootstrap::{bad, socket, InvalidBootstrap};

/// One static listener.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticListener {
    /// `name` (`0.0.0.0_15021`).
    pub name: String,
    /// `address`.
    pub address: SocketAddr,
    /// The route configuration's virtual hosts, in order.
    pub virtual_hosts: Vec<VirtualHost>,
}

/// A virtual host of a static listener.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    /// `domains` (`*`, exact, `*.suffix`, `prefix.*`).
    pub domains: Vec<String>,
    /// Routes, in order: the first match wins.
    pub routes: Vec<StaticRoute>,
}

/// A route of a static listener.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticRoute {
    /// The path match.
    pub path: PathMatch,
    /// The upstream.
    pub cluster: StaticCluster,
    /// `route.timeout` (Envoy's default is 15 s).
    pub timeout: Duration,
}

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    /// `match.prefix`.
    Prefix(String),
    /// `match.path`.
    Exact(String),
}

/// A STATIC cluster with one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticCluster {
    /// `name`.
    pub name: String,
    /// The endpoint's socket address.
    pub address: SocketAddr,
    /// `connect_timeout` (Envoy's default is 5 s).
    pub connect_timeout: Duration,
}

impl PathMatch {
    /// Whether `path` (without the query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
        }
    }
}

impl VirtualHost {
    /// Whether `host` (the request's Host, port included or not) is one of `domains`, as
    /// Envoy matches them.
    pub fn serves(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let bare = match host.rsplit_once(':') {
            Some((h, p))
                if p.chars().all(|c| c.is_ascii_digit())
                    && (!h.contains(':') || h.ends_with(']')) =>
            {
                h
            }
            _ => host.as_str(),
        };
        self.domains.iter().any(|d| {
            let d = d.to_ascii_lowercase();
            [host.as_str(), bare].iter().any(|h| {
                d == "*"
                    || d == *h
                    || d.strip_prefix('*')
                        .is_some_and(|s| h.ends_with(s) && h.len() > s.len())
                    || d.strip_suffix('*')
                        .is_some_and(|p| h.starts_with(p) && h.len() > p.len())
            })
        })
    }
}

impl StaticListener {
    /// The route for `host` and `path`, if any.
    pub fn route(&self, host: &str, path: &str) -> Option<&StaticRoute> {
        self.virtual_hosts
            .iter()
            .find(|v| v.serves(host))?
            .routes
            .iter()
            .find(|r| r.path.matches(path))
    }
}

/// `obj[snake]`, or its camelCase spelling (a `--config-yaml` override may use either).
fn get<'a>(obj: &'a Json, snake: &str) -> &'a Json {
    match obj.get(snake) {
        Some(v) => v,
        None => {
            let mut camel = String::with_capacity(snake.len());
            let mut up = false;
            for c in snake.chars() {
                if c == '_' {
                    up = true;
                } else if up {
                    camel.push(c.to_ascii_uppercase());
                    up = false;
                } else {
                    camel.push(c);
                }
            }
            obj.get(&camel).unwrap_or(&Json::Null)
        }
    }
}

/// Envoy's JSON Duration (`"0.250s"`).
fn duration(v: &Json, field: &str, default: Duration) -> Result<Duration, InvalidBootstrap> {
    match v {
        Json::Null => Ok(default),
        Json::String(s) => s
            .strip_suffix('s')
            .and_then(|n| n.parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| bad(field, format!("{s:?} is not a duration"))),
        other => Err(bad(field, format!("{other} is not a duration"))),
    }
}

/// Refuses keys of `obj` outside `known`.
fn only(obj: &Json, known: &[&str], field: &str) -> Result<(), InvalidBootstrap> {
    let Some(o) = obj.as_object() else {
        return Ok(());
    };
    for k in o.keys() {
        let snake: String = k
            .chars()
            .flat_map(|c| {
                let lower = c.to_ascii_lowercase();
                (c.is_ascii_uppercase().then_some('_').into_iter()).chain([lower])
            })
            .collect();
        if !known.contains(&snake.as_str()) {
            return Err(bad(
                &format!("{field}.{k}"),
                "not supported on a static listener",
            ));
        }
    }
    Ok(())
}

/// The static listeners of a bootstrap (`static_resources`), with the clusters their
/// routes name.
pub fn parse(static_resources: &Json) -> Result<Vec<StaticListener>, InvalidBootstrap> {
    let clusters = get(static_resources, "clusters")
        .as_array()
        .cloned()
        .unwrap_or_default();
    get(static_resources, "listeners")
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, l)| listener(l, &format!("static_resources.listeners[{i}]"), &clusters))
        .collect()
}

fn listener(l: &Json, field: &str, clusters: &[Json]) -> Result<StaticListener, InvalidBootstrap> {
    only(
        l,
        &[
            "name",
            "address",
            "filter_chains",
            "ignore_global_conn_limit",
            "bypass_overload_manager",
        ],
        field,
    )?;
    let address = socket(get(l, "address"), &format!("{field}.address"))?
        .ok_or_else(|| bad(&format!("{field}.address"), "not a socket address"))?;
    let name = get(l, "name").as_str().unwrap_or_default().to_string();
    let chains = get(l, "filter_chains")
        .as_array()
        .cloned()
        .unwrap_or_default();
    let [chain] = chains.as_slice() else {
        return Err(bad(
            &format!("{field}.filter_chains"),
            "exactly one filter chain is supported",
        ));
    };
    only(chain, &["filters"], &format!("{field}.filter_chains[0]"))?;
    let filters = get(chain, "filters")
        .as_array()
        .cloned()
        .unwrap_or_default();
    let [hcm] = filters.as_slice() else {
        return Err(bad(
            &format!("{field}.filter_chains[0].filters"),
            "one HTTP connection manager is supported",
        ));
    };
    let field = format!("{field}.filter_chains[0].filters[0].typed_config");
    let config = get(hcm, "typed_config");
    if !config["@type"]
        .as_str()
        .is_some_and(|t| t.ends_with(".HttpConnectionManager"))
    {
        return Err(bad(&field, "only the HTTP connection manager is supported"));
    }
    only(
        config,
        &[
            "@type",
            "codec_type",
            "stat_prefix",
            "route_config",
            "http_filters",
        ],
        &field,
    )?;
    for (i, f) in get(config, "http_filters")
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let t = get(f, "typed_config")["@type"].as_str().unwrap_or_default();
        if !(t.ends_with(".Router") || t.ends_with(".compressor.v3.Compressor")) {
            return Err(bad(
                &format!("{field}.http_filters[{i}]"),
                format!("{t:?} is not supported (router and compressors are)"),
            ));
        }
    }
    let rc = get(config, "route_config");
    if rc.is_null() {
        return Err(bad(
            &format!("{field}.route_config"),
            "an inline route_config is required",
        ));
    }
    only(
        rc,
        &["name", "virtual_hosts"],
        &format!("{field}.route_config"),
    )?;
    let virtual_hosts = get(rc, "virtual_hosts")
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, v)| {
            virtual_host(
                v,
                &format!("{field}.route_config.virtual_hosts[{i}]"),
                clusters,
            )
        })
        .collect::<Result<_, _>>()?;
    Ok(StaticListener {
        name,
        address,
        virtual_hosts,
    })
}

fn virtual_host(v: &Json, field: &str, clusters: &[Json]) -> Result<VirtualHost, InvalidBootstrap> {
    only(v, &["name", "domains", "routes"], field)?;
    let domains = get(v, "domains")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    let routes = get(v, "routes")
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| route(r, &format!("{field}.routes[{i}]"), clusters))
        .collect::<Result<_, _>>()?;
    Ok(VirtualHost { domains, routes })
}

fn route(r: &Json, field: &str, clusters: &[Json]) -> Result<StaticRoute, InvalidBootstrap> {
    only(r, &["name", "match", "route"], field)?;
    let m = get(r, "match");
    only(m, &["prefix", "path"], &format!("{field}.match"))?;
    let path = match (get(m, "prefix").as_str(), get(m, "path").as_str()) {
        (Some(p), None) => PathMatch::Prefix(p.to_string()),
        (None, Some(p)) => PathMatch::Exact(p.to_string()),
        _ => {
            return Err(bad(
                &format!("{field}.match"),
                "one of prefix or path is required",
            ))
        }
    };
    let action = get(r, "route");
    only(action, &["cluster", "timeout"], &format!("{field}.route"))?;
    let name = get(action, "cluster")
        .as_str()
        .ok_or_else(|| bad(&format!("{field}.route.cluster"), "required"))?;
    Ok(StaticRoute {
        path,
        cluster: cluster(clusters, name)?,
        timeout: duration(
            get(action, "timeout"),
            &format!("{field}.route.timeout"),
            Duration::from_secs(15),
        )?,
    })
}

fn cluster(clusters: &[Json], name: &str) -> Result<StaticCluster, InvalidBootstrap> {
    let field = format!("static_resources.clusters[{name}]");
    let c = clusters
        .iter()
        .find(|c| get(c, "name") == name)
        .ok_or_else(|| bad(&field, "no such cluster"))?;
    only(
        c,
        &[
            "name",
            "alt_stat_name",
            "type",
            "connect_timeout",
            "lb_policy",
            "load_assignment",
        ],
        &field,
    )?;
    if get(c, "type").as_str().is_some_and(|t| t != "STATIC") {
        return Err(bad(
            &format!("{field}.type"),
            "only STATIC clusters are supported",
        ));
    }
    let endpoints: Vec<&Json> = get(get(c, "load_assignment"), "endpoints")
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| get(e, "lb_endpoints").as_array().into_iter().flatten())
        .collect();
    let [endpoint] = endpoints.as_slice() else {
        return Err(bad(
            &format!("{field}.load_assignment"),
            "exactly one endpoint is supported",
        ));
    };
    let address = socket(get(get(endpoint, "endpoint"), "address"), &field)?
        .ok_or_else(|| bad(&field, "the endpoint is not a socket address"))?;
    Ok(StaticCluster {
        name: name.to_string(),
        address,
        connect_timeout: duration(
            get(c, "connect_timeout"),
            &format!("{field}.connect_timeout"),
            Duration::from_secs(5),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_golden_bootstraps_listeners() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/istio/config-dumps/bootstrap-ambient-golden.json");
        let json: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ls = parse(&json["static_resources"]).unwrap();
        let names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["0.0.0.0_15090", "0.0.0.0_15021"]);
        let ready = &ls[1];
        let r = ready.route("waypoint:15021", "/healthz/ready").unwrap();
        assert_eq!(r.cluster.name, "agent");
        assert_eq!(r.cluster.address, "127.0.0.1:15020".parse().unwrap());
        assert_eq!(r.cluster.connect_timeout, Duration::from_millis(250));
        assert_eq!(r.timeout, Duration::from_secs(15));
        assert!(ready.route("x", "/stats/prometheus").is_none());
        let prom = ls[0].route("10.0.0.1", "/stats/prometheus?x").unwrap();
        assert_eq!(prom.cluster.address, "127.0.0.1:15000".parse().unwrap());
    }

    #[test]
    fn refuses_what_it_would_serve_differently() {
        let base = |route: Json| {
            serde_json::json!({"listeners": [{"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "route_config": {"virtual_hosts": [{"domains": ["*"], "routes": [route]}]}}}]}]}],
                "clusters": [{"name": "c", "load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 2}}}}]}]}},
                    {"name": "h2", "typed_extension_protocol_options": {}, "load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 2}}}}]}]}}]})
        };
        let ok = parse(&base(
            serde_json::json!({"match": {"path": "/x"}, "route": {"cluster": "c"}}),
        ))
        .unwrap();
        assert!(ok[0].route("h", "/x").is_some() && ok[0].route("h", "/xy").is_none());
        for bad in [
            serde_json::json!({"match": {"safe_regex": {"regex": "/x"}}, "route": {"cluster": "c"}}),
            serde_json::json!({"match": {"prefix": "/"}, "route": {"cluster": "c", "prefix_rewrite": "/y"}}),
            serde_json::json!({"match": {"prefix": "/"}, "direct_response": {"status": 200}}),
            serde_json::json!({"match": {"prefix": "/"}, "route": {"cluster": "missing"}}),
            serde_json::json!({"match": {"prefix": "/"}, "route": {"cluster": "h2"}}),
        ] {
            let err = parse(&base(bad.clone())).unwrap_err();
            assert!(
                err.field.contains("routes[0]") || err.field.contains("clusters"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn matches_domains_as_envoy() {
        let v = |d: &str| VirtualHost {
            domains: vec![d.into()],
            routes: vec![],
        };
        assert!(v("*").serves("anything:1"));
        assert!(v("a.example").serves("A.example:8080"));
        assert!(v("*.example").serves("a.example") && !v("*.example").serves(".example"));
        assert!(v("a.*").serves("a.b") && !v("a.*").serves("b.a"));
    }
}
