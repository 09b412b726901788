//! The request corpus of the RBAC differential: values taken from each policy, expanded
//! to matching and non-matching concrete requests.

use std::collections::BTreeSet;
use std::net::IpAddr;

use filters::authz::{Attributes, HttpAttributes, JwtAuth};
use http::HeaderMap;
use serde_yaml::Value;

// ---------------------------------------------------------------------------------------
// Requests

#[derive(Debug, Clone, Default)]
pub struct Jwt {
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Jwt {
    pub fn auth(&self) -> JwtAuth {
        let s = |k: &str| self.claims.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let audiences = match self.claims.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        JwtAuth {
            principal: format!("{}/{}", s("iss"), s("sub")),
            audiences,
            presenter: self
                .claims
                .get("azp")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            claims: serde_json::Value::Object(self.claims.clone()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Req {
    pub tcp: bool,
    pub principal: Option<String>,
    pub source_ip: IpAddr,
    pub remote_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub port: u16,
    pub sni: Option<String>,
    pub method: String,
    pub host: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub jwt: Option<Jwt>,
}

impl Req {
    pub fn baseline(tcp: bool) -> Self {
        Req {
            tcp,
            principal: Some("cluster.local/ns/foo/sa/sleep".into()),
            source_ip: "10.0.0.1".parse().unwrap(),
            remote_ip: "10.0.0.1".parse().unwrap(),
            destination_ip: "10.96.0.10".parse().unwrap(),
            port: 8000,
            sni: None,
            method: "GET".into(),
            host: "httpbin.foo".into(),
            path: "/".into(),
            query: None,
            headers: Vec::new(),
            jwt: None,
        }
    }

    pub fn describe(&self) -> String {
        if self.tcp {
            format!(
                "TCP principal={:?} src={} remote={} dst={}:{} sni={:?}",
                self.principal,
                self.source_ip,
                self.remote_ip,
                self.destination_ip,
                self.port,
                self.sni
            )
        } else {
            format!(
                "HTTP {} {}{}{} host={:?} principal={:?} src={} remote={} dst={}:{} sni={:?} headers={:?} jwt={}",
                self.method,
                self.path,
                if self.query.is_some() { "?" } else { "" },
                self.query.as_deref().unwrap_or(""),
                self.host,
                self.principal,
                self.source_ip,
                self.remote_ip,
                self.destination_ip,
                self.port,
                self.sni,
                self.headers,
                self.jwt
                    .as_ref()
                    .map(|j| serde_json::Value::Object(j.claims.clone()).to_string())
                    .unwrap_or_else(|| "none".into())
            )
        }
    }

    /// Runs `f` with the request's attributes (namespace and service account derived from
    /// the principal, as the HBONE peer certificate gives them).
    pub fn with_attrs<T>(&self, f: impl FnOnce(&Attributes<'_>) -> T) -> T {
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            headers.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let auth = self.jwt.as_ref().map(Jwt::auth);
        let parts: Vec<&str> = self
            .principal
            .as_deref()
            .map(|p| p.split('/').collect())
            .unwrap_or_default();
        let (namespace, service_account) =
            if parts.len() == 5 && parts[1] == "ns" && parts[3] == "sa" {
                (Some(parts[2].into()), Some(parts[4].into()))
            } else {
                (None, None)
            };
        let attrs = Attributes {
            principal_uri: None,
            principal: self.principal.as_deref().map(Into::into),
            namespace,
            service_account,
            source_ip: Some(self.source_ip),
            remote_ip: Some(self.remote_ip),
            destination_ip: Some(self.destination_ip),
            destination_port: Some(self.port),
            sni: self.sni.as_deref().map(Into::into),
            http: (!self.tcp).then(|| HttpAttributes {
                path_and_query: None,
                method: &self.method,
                host: &self.host,
                path: &self.path,
                query: self.query.as_deref(),
                headers: &headers,
                auth: auth.as_ref(),
            }),
        };
        f(&attrs)
    }
}

// ---------------------------------------------------------------------------------------
// Values mentioned by the policies, and concrete values derived from them

/// Istio's value forms expanded into concrete values: ones that match and ones that do
/// not (a value next to it, a different case).
pub fn expand(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    if v == "*" {
        out.push("any-value".to_string());
    } else if let Some(p) = v.strip_suffix('*') {
        out.extend([p.to_string(), format!("{p}x"), format!("x{p}")]);
    } else if let Some(s) = v.strip_prefix('*') {
        out.extend([s.to_string(), format!("x{s}"), format!("{s}x")]);
    } else {
        out.extend([v.to_string(), format!("{v}x")]);
        if v.len() > 1 {
            out.push(v[..v.len() - 1].to_string());
        }
        if v.to_ascii_uppercase() != v {
            out.push(v.to_ascii_uppercase());
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Paths: value forms and `{*}` / `{**}` templates expanded.
pub fn expand_path(v: &str) -> Vec<String> {
    if v.contains("{*}") || v.contains("{**}") {
        let mut out = Vec::new();
        for (one, many) in [("a", "a/b"), ("a", "a"), ("a.b", "x/y/z"), ("", "")] {
            out.push(v.replace("{**}", many).replace("{*}", one));
        }
        out.push(v.replace("{**}", "a").replace("{*}", "a/b"));
        return out;
    }
    let mut out = expand(v);
    out.retain(|p| p.starts_with('/'));
    if out.is_empty() || v == "*" {
        out.push("/any/path".into());
    }
    if let Some(s) = v.strip_prefix('*') {
        out.push(format!("/x{s}"));
    }
    out
}

pub fn expand_ip(v: &str) -> Vec<IpAddr> {
    let net: ipnet::IpNet = v
        .parse()
        .or_else(|_| v.parse::<IpAddr>().map(ipnet::IpNet::from))
        .unwrap_or_else(|_| panic!("IP {v:?}"));
    let (first, last) = (net.network(), net.broadcast());
    let bump = |ip: IpAddr, up: bool| -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let n = u32::from(a);
                IpAddr::V4(
                    if up {
                        n.wrapping_add(1)
                    } else {
                        n.wrapping_sub(1)
                    }
                    .into(),
                )
            }
            IpAddr::V6(a) => {
                let n = u128::from(a);
                IpAddr::V6(
                    if up {
                        n.wrapping_add(1)
                    } else {
                        n.wrapping_sub(1)
                    }
                    .into(),
                )
            }
        }
    };
    vec![first, last, bump(last, true), bump(first, false)]
}

#[derive(Default)]
pub struct Pools {
    pub principals: BTreeSet<Option<String>>,
    pub source_ips: BTreeSet<IpAddr>,
    pub remote_ips: BTreeSet<IpAddr>,
    pub destination_ips: BTreeSet<IpAddr>,
    pub ports: BTreeSet<u16>,
    pub snis: BTreeSet<Option<String>>,
    pub methods: BTreeSet<String>,
    pub hosts: BTreeSet<String>,
    pub paths: BTreeSet<(String, Option<String>)>,
    /// Header name → values (None: absent; several: sent as several header lines).
    pub headers: Vec<(String, BTreeSet<Vec<String>>)>,
    /// JWTs (None: no token).
    pub jwts: Vec<Option<Jwt>>,
}

pub fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|x| match x {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn both(v: &Value, key: &str) -> Vec<String> {
    let not = format!("not{}{}", key[..1].to_ascii_uppercase(), &key[1..]);
    let mut out = strings(v, key);
    out.extend(strings(v, &not));
    out
}

pub fn seq<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
    v.get(key)
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

pub fn principal_for_namespace(ns: &str) -> String {
    format!("cluster.local/ns/{ns}/sa/default")
}

pub fn jwt_with(iss: &str, sub: &str) -> Jwt {
    let mut j = Jwt::default();
    j.claims.insert("iss".into(), iss.into());
    j.claims.insert("sub".into(), sub.into());
    j
}

/// Splits an `iss/sub` request principal the way Istio's generated RBAC does (at the last
/// `/`), offering a few JWTs for each concrete value.
pub fn jwts_for_request_principal(c: &str) -> Vec<Jwt> {
    let mut out = vec![jwt_with(c, "sub"), jwt_with("iss", c)];
    if let Some((iss, sub)) = c.rsplit_once('/') {
        if !iss.is_empty() && !sub.is_empty() {
            out.push(jwt_with(iss, sub));
        }
    }
    out
}

impl Pools {
    pub fn from_policies(docs: &[Value], tcp: bool) -> Self {
        let mut p = Pools::default();
        let base = Req::baseline(tcp);
        p.principals.insert(base.principal.clone());
        p.principals.insert(None);
        p.principals
            .insert(Some("cluster.local/ns/other/sa/other".into()));
        p.source_ips.insert(base.source_ip);
        p.remote_ips.insert(base.remote_ip);
        p.destination_ips.insert(base.destination_ip);
        p.ports.extend([base.port, 80]);
        p.snis.insert(None);
        p.methods.insert(base.method.clone());
        p.hosts.insert(base.host.clone());
        p.paths.insert((base.path.clone(), None));
        p.paths.insert(("/x".into(), Some("a=b".into())));
        let mut headers: Vec<(String, BTreeSet<Vec<String>>)> = Vec::new();
        let mut header = |name: &str, values: Vec<String>| {
            let name = name.to_ascii_lowercase();
            let i = match headers.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    headers.push((name, [Vec::new()].into()));
                    headers.len() - 1
                }
            };
            let set = &mut headers[i].1;
            for v in &values {
                set.insert(vec![v.clone()]);
                set.insert(vec!["other".into(), v.clone()]);
            }
        };
        let mut jwts: Vec<Jwt> = vec![jwt_with("https://issuer", "user")];
        let mut claim_values: Vec<(Vec<String>, Vec<serde_json::Value>)> = Vec::new();
        for doc in docs {
            let ns = doc
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            let Some(rules) = doc.get("spec").and_then(|s| s.get("rules")) else {
                continue;
            };
            for rule in rules.as_sequence().into_iter().flatten() {
                for from in seq(rule, "from") {
                    let Some(s) = from.get("source") else {
                        continue;
                    };
                    for v in both(s, "principals") {
                        p.principals.extend(expand(&v).into_iter().map(Some));
                    }
                    for v in both(s, "namespaces") {
                        p.principals
                            .extend(expand(&v).iter().map(|n| Some(principal_for_namespace(n))));
                    }
                    for v in both(s, "serviceAccounts") {
                        let (n, sa) = v.split_once('/').unwrap_or((&ns, &v));
                        p.principals
                            .insert(Some(format!("cluster.local/ns/{n}/sa/{sa}")));
                        p.principals
                            .insert(Some(format!("cluster.local/ns/{n}/sa/{sa}x")));
                        p.principals
                            .insert(Some(format!("cluster.local/ns/other/sa/{sa}")));
                    }
                    for v in both(s, "trustDomains") {
                        for td in expand(&v) {
                            p.principals.insert(Some(format!("{td}/ns/foo/sa/sleep")));
                        }
                    }
                    for v in both(s, "ipBlocks") {
                        p.source_ips.extend(expand_ip(&v));
                    }
                    for v in both(s, "remoteIpBlocks") {
                        p.remote_ips.extend(expand_ip(&v));
                    }
                    for v in both(s, "requestPrincipals") {
                        for c in expand(&v) {
                            jwts.extend(jwts_for_request_principal(&c));
                        }
                    }
                }
                for to in seq(rule, "to") {
                    let Some(o) = to.get("operation") else {
                        continue;
                    };
                    for v in both(o, "hosts") {
                        for h in expand(&v) {
                            p.hosts.insert(format!("{h}:80"));
                            p.hosts.insert(h);
                        }
                    }
                    for v in both(o, "methods") {
                        p.methods.extend(expand(&v));
                    }
                    for v in both(o, "ports") {
                        let n: u16 = v.parse().unwrap();
                        p.ports.extend([n, n + 1]);
                    }
                    for v in both(o, "paths") {
                        for path in expand_path(&v) {
                            p.paths.insert((path.clone(), Some("q=1".into())));
                            p.paths.insert((path, None));
                        }
                    }
                }
                for when in seq(rule, "when") {
                    let key = when.get("key").and_then(Value::as_str).unwrap_or_default();
                    let values = both(when, "values");
                    let concrete: Vec<String> = values.iter().flat_map(|v| expand(v)).collect();
                    match key {
                        "source.ip" => p
                            .source_ips
                            .extend(values.iter().flat_map(|v| expand_ip(v))),
                        "remote.ip" => p
                            .remote_ips
                            .extend(values.iter().flat_map(|v| expand_ip(v))),
                        "destination.ip" => p
                            .destination_ips
                            .extend(values.iter().flat_map(|v| expand_ip(v))),
                        "destination.port" => {
                            for v in &values {
                                let n: u16 = v.parse().unwrap();
                                p.ports.extend([n, n + 1]);
                            }
                        }
                        "source.namespace" => p
                            .principals
                            .extend(concrete.iter().map(|n| Some(principal_for_namespace(n)))),
                        "source.principal" => {
                            p.principals.extend(concrete.iter().cloned().map(Some))
                        }
                        "connection.sni" => p.snis.extend(concrete.iter().cloned().map(Some)),
                        "request.auth.principal" => {
                            for c in &concrete {
                                jwts.extend(jwts_for_request_principal(c));
                            }
                        }
                        "request.auth.audiences" => claim_values.push((
                            vec!["aud".into()],
                            concrete
                                .iter()
                                .flat_map(|c| {
                                    [c.as_str().into(), serde_json::json!([c, "other-aud"])]
                                })
                                .collect(),
                        )),
                        "request.auth.presenter" => claim_values.push((
                            vec!["azp".into()],
                            concrete.iter().map(|c| c.as_str().into()).collect(),
                        )),
                        _ => {
                            if let Some(name) = key
                                .strip_prefix("request.headers[")
                                .and_then(|k| k.strip_suffix(']'))
                            {
                                match name {
                                    // Pseudo-headers are the request line's.
                                    ":method" => p.methods.extend(concrete),
                                    ":authority" => p.hosts.extend(concrete),
                                    ":path" => p.paths.extend(
                                        concrete
                                            .into_iter()
                                            .filter(|c| c.starts_with('/'))
                                            .map(|c| (c, None)),
                                    ),
                                    _ => {
                                        let mut vs = concrete;
                                        // Bytes beyond visible ASCII (obs-text) and empty.
                                        let non_ascii: Vec<String> =
                                            vs.iter().map(|v| format!("\u{e9}{v}")).collect();
                                        vs.extend(non_ascii);
                                        vs.push(String::new());
                                        header(name, vs)
                                    }
                                }
                            } else if let Some(rest) = key.strip_prefix("request.auth.claims") {
                                let path: Vec<String> = rest
                                    .trim_start_matches('[')
                                    .trim_end_matches(']')
                                    .split("][")
                                    .map(str::to_string)
                                    .collect();
                                let mut vs: Vec<serde_json::Value> = concrete
                                    .iter()
                                    .flat_map(|c| {
                                        [c.as_str().into(), serde_json::json!(["other", c])]
                                    })
                                    .collect();
                                // Non-string claims: Istio matches strings only.
                                vs.extend([
                                    serde_json::json!(true),
                                    serde_json::json!(7),
                                    serde_json::json!({"k": "v"}),
                                ]);
                                claim_values.push((path, vs));
                            }
                        }
                    }
                }
            }
        }
        p.headers = headers;
        // JWTs: each principal-derived token, then the first token with each claim value.
        p.jwts.push(None);
        p.jwts.extend(jwts.iter().cloned().map(Some));
        for (path, values) in &claim_values {
            for v in values {
                let mut j = jwts[0].clone();
                set_claim(&mut j.claims, path, v.clone());
                p.jwts.push(Some(j));
            }
        }
        // One token with every claim condition's first value (to reach rules that AND them).
        let mut all = jwts[0].clone();
        for (path, values) in &claim_values {
            if let Some(v) = values.first() {
                set_claim(&mut all.claims, path, v.clone());
            }
        }
        p.jwts.push(Some(all));
        p
    }
}

pub fn set_claim(
    claims: &mut serde_json::Map<String, serde_json::Value>,
    path: &[String],
    v: serde_json::Value,
) {
    let (last, parents) = path.split_last().unwrap();
    let mut cur = claims;
    for k in parents {
        let entry = cur
            .entry(k.clone())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if !entry.is_object() {
            *entry = serde_json::Value::Object(Default::default());
        }
        cur = entry.as_object_mut().unwrap();
    }
    cur.insert(last.clone(), v);
}

/// A small deterministic generator (the corpus is the same on every run).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        &items[((self.0 >> 33) as usize) % items.len()]
    }
}

/// Every single-attribute variation of `base`.
pub fn variations(base: &Req, p: &Pools, out: &mut Vec<Req>) {
    let mut push = |f: &dyn Fn(&mut Req)| {
        let mut r = base.clone();
        f(&mut r);
        out.push(r);
    };
    for v in &p.principals {
        push(&|r| r.principal = v.clone());
    }
    for v in &p.source_ips {
        push(&|r| r.source_ip = *v);
    }
    for v in &p.remote_ips {
        push(&|r| r.remote_ip = *v);
    }
    for v in &p.destination_ips {
        push(&|r| r.destination_ip = *v);
    }
    for v in &p.ports {
        push(&|r| r.port = *v);
    }
    for v in &p.snis {
        push(&|r| r.sni = v.clone());
    }
    if base.tcp {
        return;
    }
    for v in &p.methods {
        push(&|r| r.method = v.clone());
    }
    for v in &p.hosts {
        push(&|r| r.host = v.clone());
    }
    for (path, q) in &p.paths {
        push(&|r| {
            r.path = path.clone();
            r.query = q.clone();
        });
    }
    for (name, values) in &p.headers {
        for vs in values {
            push(&|r| {
                r.headers.retain(|(n, _)| n != name);
                r.headers
                    .extend(vs.iter().map(|v| (name.clone(), v.clone())));
            });
        }
    }
    for j in &p.jwts {
        push(&|r| r.jwt = j.clone());
    }
}

/// A baseline that takes, for every attribute, the pool value at `i` (wrapping).
pub fn greedy(p: &Pools, tcp: bool, i: usize) -> Req {
    pub fn nth<T: Clone>(s: &BTreeSet<T>, i: usize) -> T {
        s.iter().nth(i % s.len()).unwrap().clone()
    }
    let mut r = Req::baseline(tcp);
    r.principal = nth(&p.principals, i);
    r.source_ip = nth(&p.source_ips, i);
    r.remote_ip = nth(&p.remote_ips, i);
    r.destination_ip = nth(&p.destination_ips, i);
    r.port = nth(&p.ports, i);
    r.sni = nth(&p.snis, i);
    r.method = nth(&p.methods, i);
    r.host = nth(&p.hosts, i);
    let (path, q) = nth(&p.paths, i);
    r.path = path;
    r.query = q;
    for (name, values) in &p.headers {
        r.headers
            .extend(nth(values, i + 1).into_iter().map(|v| (name.clone(), v)));
    }
    r.jwt = p.jwts[(i + 1) % p.jwts.len()].clone();
    r
}

pub fn random(p: &Pools, tcp: bool, rng: &mut Lcg) -> Req {
    pub fn any<T: Clone>(s: &BTreeSet<T>, rng: &mut Lcg) -> T {
        rng.pick(&s.iter().cloned().collect::<Vec<_>>()).clone()
    }
    let mut r = Req::baseline(tcp);
    r.principal = any(&p.principals, rng);
    r.source_ip = any(&p.source_ips, rng);
    r.remote_ip = any(&p.remote_ips, rng);
    r.destination_ip = any(&p.destination_ips, rng);
    r.port = any(&p.ports, rng);
    r.sni = any(&p.snis, rng);
    r.method = any(&p.methods, rng);
    r.host = any(&p.hosts, rng);
    let (path, q) = any(&p.paths, rng);
    r.path = path;
    r.query = q;
    for (name, values) in &p.headers {
        r.headers
            .extend(any(values, rng).into_iter().map(|v| (name.clone(), v)));
    }
    r.jwt = rng.pick(&p.jwts).clone();
    r
}

pub fn corpus(p: &Pools, tcp: bool) -> Vec<Req> {
    let mut out = Vec::new();
    let mut bases = vec![Req::baseline(tcp)];
    bases.extend((0..4).map(|i| greedy(p, tcp, i)));
    for b in &bases {
        out.push(b.clone());
        variations(b, p, &mut out);
    }
    let mut rng = Lcg(0x5eed);
    out.extend((0..400).map(|_| random(p, tcp, &mut rng)));
    out
}
