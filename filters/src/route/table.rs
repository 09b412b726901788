//! Matching and precedence: every rule match of every route on a parent, sorted once at
//! configuration time; [`RouteTable::find`] returns the first that matches a request.
//!
//! Precedence (Gateway API): exact path, then longest prefix (regular expressions last),
//! then a method match, then most header matches, then most query matches, then the
//! oldest route, then `namespace/name`, then rule order.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use http::Request;
use serde::Serialize;

use super::model::{PathMatch, Route, RouteKind, RouteMatch, Rule};
use crate::explain::Trace;

#[derive(Debug, Clone)]
struct Entry {
    route: Arc<Route>,
    rule: usize,
    /// Index into the rule's matches; `None` for a rule without matches (`PathPrefix /`).
    matched: Option<usize>,
}

/// The result of [`RouteTable::find`].
#[derive(Debug, Clone)]
pub struct Matched<'a> {
    /// The route.
    pub route: &'a Arc<Route>,
    /// The rule's index in the route.
    pub rule_index: usize,
    /// The rule.
    pub rule: &'a Rule,
    /// The index of the match that matched in the rule; `None` for a rule without matches
    /// (the path condition is then [`DEFAULT_PATH`]).
    pub match_index: Option<usize>,
}

/// The path condition of a rule without matches (every request).
pub(crate) static DEFAULT_PATH: std::sync::LazyLock<PathMatch> =
    std::sync::LazyLock::new(|| PathMatch::Prefix("/".into()));

/// A sorted set of rule matches for one parent (and one client namespace).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    entries: Vec<Entry>,
}

impl Serialize for RouteTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.entries.iter().map(|e| {
            let rule = &e.route.rules[e.rule];
            format!(
                "{} rule {} match {}",
                e.route.name,
                rule.name.clone().unwrap_or_else(|| e.rule.to_string()),
                e.matched
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "default".into())
            )
        }))
    }
}

fn path_rank(p: &PathMatch) -> (u8, usize) {
    match p {
        PathMatch::Exact(v) => (2, v.len()),
        PathMatch::Prefix(v) => (1, v.len()),
        PathMatch::Regex(r) => (0, r.as_str().len()),
    }
}

impl RouteTable {
    /// Sorts every match of every rule of `routes` by precedence.
    pub fn new(routes: &[Arc<Route>]) -> Self {
        let mut entries = Self::ordered(routes).entries;
        let default = RouteMatch::default();
        entries.sort_by_key(|e| {
            let m = e
                .matched
                .map(|i| &e.route.rules[e.rule].matches[i])
                .unwrap_or(&default);
            let (rank, len) = path_rank(&m.path);
            (
                Reverse(rank),
                Reverse(len),
                Reverse(m.method.is_some()),
                Reverse(m.headers.len()),
                Reverse(m.query.len()),
                // Routes without a timestamp sort after those with one.
                e.route.created.is_none(),
                e.route.created.clone(),
                e.route.name.clone(),
                e.rule,
                e.matched,
            )
        });
        Self { entries }
    }

    /// Keeps every match of every rule of `routes` in declaration order: the first that
    /// matches wins (Envoy's route table semantics, for configurations received over xDS,
    /// which istiod has already ordered).
    pub fn ordered(routes: &[Arc<Route>]) -> Self {
        let mut entries = Vec::new();
        for route in routes {
            for (ri, rule) in route.rules.iter().enumerate() {
                if rule.matches.is_empty() {
                    entries.push(Entry {
                        route: route.clone(),
                        rule: ri,
                        matched: None,
                    });
                }
                for mi in 0..rule.matches.len() {
                    entries.push(Entry {
                        route: route.clone(),
                        rule: ri,
                        matched: Some(mi),
                    });
                }
            }
        }
        Self { entries }
    }

    /// Whether the table has no rules.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first rule in the table's order (a TCP tunnel has nothing to match: the oldest
    /// route's first rule applies), with its route.
    pub fn first_rule(&self) -> Option<(&Arc<Route>, &Rule)> {
        self.entries
            .first()
            .map(|e| (&e.route, &e.route.rules[e.rule]))
    }

    /// The highest-precedence rule matching `req`.
    pub fn find<B>(&self, req: &Request<B>) -> Option<Matched<'_>> {
        self.find_traced(req, Trace::OFF)
    }

    /// [`RouteTable::find`], recording into `trace` each higher-precedence match that did
    /// not match (and why), then the one that did.
    pub fn find_traced<B>(&self, req: &Request<B>, trace: Trace<'_>) -> Option<Matched<'_>> {
        let path = req.uri().path();
        // Parsed on first use: most routes do not match on query parameters.
        let query = std::cell::OnceCell::new();
        self.entries.iter().find_map(|e| {
            let rule = &e.route.rules[e.rule];
            if let Some(i) = e.matched {
                if let Some(why) = miss(&rule.matches[i], req, path, &query) {
                    trace.step(|| {
                        crate::explain::describe::route_miss(&e.route, e.rule, i, why, req)
                    });
                    return None;
                }
            }
            trace.step(|| crate::explain::describe::route_match(&e.route, e.rule, e.matched));
            Some(Matched {
                route: &e.route,
                rule_index: e.rule,
                rule,
                match_index: e.matched,
            })
        })
    }
}

/// The condition of a route match that a request did not meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMiss {
    /// The path condition.
    Path,
    /// The method.
    Method,
    /// `headers[index]`.
    Header(usize),
    /// `queryParams[index]`.
    Query(usize),
}

/// Routes attached to one Service port, split by who they apply to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PortRoutes {
    /// Routes in the Service's namespace: every client.
    pub producer: RouteTable,
    /// Routes in other namespaces: only clients from that namespace, instead of the
    /// producer routes.
    pub consumers: BTreeMap<String, RouteTable>,
    /// The kind of the routes (GRPCRoutes, HTTPRoutes or a TCP route).
    pub kind: Option<RouteKind>,
}

impl PortRoutes {
    /// The table for a client in namespace `ns`: its namespace's consumer routes, else the
    /// producer routes; `None` when no route applies to it (the Service is used as is).
    pub fn for_client(&self, ns: &str) -> Option<&RouteTable> {
        self.consumers
            .get(ns)
            .or((!self.producer.is_empty()).then_some(&self.producer))
    }
}

/// Whether `path` is under `prefix`, comparing whole segments (a trailing `/` in the
/// prefix is ignored).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let p = if prefix.len() > 1 {
        prefix.trim_end_matches('/')
    } else {
        prefix
    };
    if p == "/" || p.is_empty() {
        return true;
    }
    match path.strip_prefix(p) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The first condition of `m` that `req` does not meet (`None`: it matches).
fn miss<B>(
    m: &RouteMatch,
    req: &Request<B>,
    path: &str,
    query: &std::cell::OnceCell<Vec<(String, String)>>,
) -> Option<RouteMiss> {
    let path_ok = match &m.path {
        PathMatch::Exact(v) => path == v,
        PathMatch::Prefix(v) => prefix_matches(v, path),
        PathMatch::Regex(r) => r.is_match(path),
    };
    if !path_ok {
        return Some(RouteMiss::Path);
    }
    if let Some(method) = &m.method {
        if req.method() != method {
            return Some(RouteMiss::Method);
        }
    }
    let header = m.headers.iter().position(|h| {
        let values: Vec<&str> = req
            .headers()
            .get_all(&h.name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        values.is_empty() || !h.value.matches(&values.join(","))
    });
    if let Some(i) = header {
        return Some(RouteMiss::Header(i));
    }
    m.query
        .iter()
        .position(|q| {
            !query
                .get_or_init(|| parse_query(req.uri().query()))
                .iter()
                .find(|(k, _)| k == &q.name)
                .is_some_and(|(_, v)| q.value.matches(v))
        })
        .map(RouteMiss::Query)
}

/// Query parameters, percent-decoded, in order.
pub fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    pairs(query)
        .map(|(k, v)| (decode(k).into_owned(), decode(v).into_owned()))
        .collect()
}

/// The first value of query parameter `name` (matched after percent-decoding), decoded;
/// borrowed from the query unless it has escapes. Allocates nothing when the parameter is
/// absent: the JWT filter looks for `access_token` on every request.
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    pairs(query).find_map(|(k, v)| (decode(k) == name).then(|| decode(v)))
}

/// `key=value` pairs of a query, undecoded (a pair without `=` has an empty value).
fn pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

/// Percent-decodes `s` (invalid escapes stay as they are; invalid UTF-8 becomes U+FFFD).
fn decode(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    if !bytes.contains(&b'%') {
        return Cow::Borrowed(s);
    }
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::model::*;
    use http::Method;
    use regex::Regex;

    fn route(name: &str, created: Option<&str>, rules: Vec<Vec<RouteMatch>>) -> Arc<Route> {
        Arc::new(Route {
            name: crate::model::NamespacedName::new("ns", name),
            kind: RouteKind::Http,
            created: created.map(str::to_string),
            operation: None,
            rules: rules
                .into_iter()
                .map(|matches| Rule {
                    name: None,
                    matches,
                    filters: vec![],
                    backends: vec![],
                    timeouts: Timeouts::default(),
                    retry: None,
                    hash_policy: vec![],
                })
                .collect(),
        })
    }

    fn path(p: PathMatch) -> RouteMatch {
        RouteMatch {
            path: p,
            ..RouteMatch::default()
        }
    }

    fn req(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    fn found(t: &RouteTable, r: &Request<()>) -> Option<(String, usize)> {
        t.find(r).map(|m| (m.route.name.name.clone(), m.rule_index))
    }

    #[test]
    fn prefix_is_segment_wise() {
        assert!(prefix_matches("/foo", "/foo"));
        assert!(prefix_matches("/foo", "/foo/bar"));
        assert!(prefix_matches("/foo/", "/foo"));
        assert!(!prefix_matches("/foo", "/foobar"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn precedence_exact_prefix_method_headers_query_age_name() {
        let a = route(
            "a",
            Some("2024-01-02T00:00:00Z"),
            vec![
                vec![path(PathMatch::Prefix("/v1".into()))],
                vec![path(PathMatch::Exact("/v1/exact".into()))],
                vec![RouteMatch {
                    path: PathMatch::Prefix("/v1".into()),
                    method: Some(Method::POST),
                    ..RouteMatch::default()
                }],
                vec![RouteMatch {
                    path: PathMatch::Prefix("/v1".into()),
                    headers: vec![HeaderMatch {
                        name: "version".parse().unwrap(),
                        value: StringMatch::Exact("two".into()),
                    }],
                    ..RouteMatch::default()
                }],
                vec![RouteMatch {
                    path: PathMatch::Prefix("/v1".into()),
                    query: vec![QueryMatch {
                        name: "q".into(),
                        value: StringMatch::Regex(Regex::new("^x+$").unwrap()),
                    }],
                    ..RouteMatch::default()
                }],
            ],
        );
        let older = route(
            "z",
            Some("2024-01-01T00:00:00Z"),
            vec![vec![path(PathMatch::Prefix("/v1".into()))]],
        );
        let t = RouteTable::new(&[a, older]);
        assert_eq!(
            found(&t, &req(Method::GET, "/v1/exact", &[])),
            Some(("a".into(), 1))
        );
        assert_eq!(
            found(&t, &req(Method::POST, "/v1/x", &[("version", "two")])),
            Some(("a".into(), 2))
        );
        assert_eq!(
            found(&t, &req(Method::GET, "/v1/x", &[("Version", "two")])),
            Some(("a".into(), 3))
        );
        assert_eq!(
            found(&t, &req(Method::GET, "/v1/x?q=xx", &[])),
            Some(("a".into(), 4))
        );
        assert_eq!(
            found(&t, &req(Method::GET, "/v1/x?q=xy", &[])),
            Some(("z".into(), 0)),
            "oldest wins ties"
        );
        assert_eq!(found(&t, &req(Method::GET, "/v2", &[])), None);
    }

    #[test]
    fn longest_prefix_and_regex_last() {
        let r = route(
            "r",
            None,
            vec![
                vec![path(PathMatch::Regex(Regex::new("^/.*$").unwrap()))],
                vec![path(PathMatch::Prefix("/a".into()))],
                vec![path(PathMatch::Prefix("/a/b".into()))],
            ],
        );
        let t = RouteTable::new(&[r]);
        assert_eq!(found(&t, &req(Method::GET, "/a/b/c", &[])).unwrap().1, 2);
        assert_eq!(found(&t, &req(Method::GET, "/a/c", &[])).unwrap().1, 1);
        assert_eq!(found(&t, &req(Method::GET, "/zzz", &[])).unwrap().1, 0);
    }

    #[test]
    fn same_age_falls_back_to_name_then_rule_order() {
        let b = route("b", None, vec![vec![], vec![]]);
        let a = route("a", None, vec![vec![]]);
        let t = RouteTable::new(&[b, a]);
        assert_eq!(
            found(&t, &req(Method::GET, "/", &[])),
            Some(("a".into(), 0))
        );
    }

    #[test]
    fn one_query_parameter_is_found_decoded_and_borrowed_when_plain() {
        let q = Some("n=1024&access%5Ftoken=a%2Eb&x&access_token=second&bad=%zz%4");
        assert_eq!(query_param(q, "access_token").as_deref(), Some("a.b"));
        assert!(matches!(query_param(q, "n"), Some(Cow::Borrowed("1024"))));
        assert_eq!(query_param(q, "x").as_deref(), Some(""));
        assert_eq!(query_param(q, "bad").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param(None, "n"), None);
    }

    #[test]
    fn query_values_are_decoded_and_first_wins() {
        assert_eq!(
            parse_query(Some("a=1&b=x%20y&a=2")),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("a".into(), "2".into())
            ]
        );
    }
}
