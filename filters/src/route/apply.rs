//! Pure request and response transformations of route filters.

use http::header::{HeaderMap, HOST, LOCATION};
use http::{HeaderValue, Request, Uri};

use super::model::{HeaderModifier, PathMatch, PathModifier, Redirect, Rewrite};
use super::table::prefix_matches;

/// Applies a `RequestHeaderModifier` / `ResponseHeaderModifier`: set, then add, then remove.
pub fn modify_headers(headers: &mut HeaderMap, m: &HeaderModifier) {
    for (name, value) in &m.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &m.add {
        headers.append(name.clone(), value.clone());
    }
    for name in &m.remove {
        headers.remove(name);
    }
}

/// Replaces the part of `path` matched by `prefix` with `replacement`.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let p = if prefix.len() > 1 {
        prefix.trim_end_matches('/')
    } else {
        ""
    };
    if !prefix_matches(prefix, path) {
        return path.to_string();
    }
    let rest = &path[p.len()..];
    let out = if replacement.ends_with('/') && rest.starts_with('/') {
        format!("{}{rest}", replacement.trim_end_matches('/'))
    } else if rest.is_empty() || rest.starts_with('/') {
        format!("{replacement}{rest}")
    } else {
        format!("{}/{rest}", replacement.trim_end_matches('/'))
    };
    if out.is_empty() {
        "/".into()
    } else {
        out
    }
}

fn new_path(path: &str, matched: &PathMatch, m: &PathModifier) -> String {
    match (m, matched) {
        (PathModifier::ReplaceFullPath(p), _) => p.clone(),
        (PathModifier::ReplacePrefixMatch(r), PathMatch::Prefix(prefix)) => {
            replace_prefix(path, prefix, r)
        }
        // Only valid with a PathPrefix match; configuration validation rejects the rest.
        (PathModifier::ReplacePrefixMatch(_), _) => path.to_string(),
        (PathModifier::Regex(r), _) => r.apply(path),
    }
}

fn with_query(path: String, uri: &Uri) -> String {
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// The request's host name (without port) and port, from `Host` or the URI.
pub fn host_and_port<B>(req: &Request<B>) -> (String, Option<u16>) {
    let raw = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let auth: Option<http::uri::Authority> = raw.parse().ok();
    match auth {
        Some(a) => (a.host().to_string(), a.port_u16()),
        None => (raw, None),
    }
}

/// The `Location` of a `RequestRedirect`. `listener_port` is the port the request came in
/// on (the Service port in a mesh); `scheme` the request's scheme.
pub fn redirect_location<B>(
    req: &Request<B>,
    matched: &PathMatch,
    r: &Redirect,
    scheme: &str,
    listener_port: u16,
) -> String {
    let (host, _) = host_and_port(req);
    let scheme_out = r.scheme.clone().unwrap_or_else(|| scheme.to_string());
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(s)) => well_known_port(s),
        (None, None) => Some(listener_port),
    };
    let host = r.hostname.clone().unwrap_or(host);
    let port_part = match port {
        Some(p) if Some(p) == well_known_port(&scheme_out) => String::new(),
        Some(p) => format!(":{p}"),
        None => String::new(),
    };
    let path = match &r.path {
        Some(m) => new_path(req.uri().path(), matched, m),
        None => req.uri().path().to_string(),
    };
    format!(
        "{scheme_out}://{host}{port_part}{}",
        with_query(path, req.uri())
    )
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Applies a `URLRewrite`: the Host header and the path (the query is kept).
pub fn rewrite<B>(req: &mut Request<B>, matched: &PathMatch, r: &Rewrite) {
    if let Some(h) = &r.hostname {
        if let Ok(v) = HeaderValue::from_str(h) {
            req.headers_mut().insert(HOST, v);
        }
    }
    if let Some(m) = &r.path {
        let path = new_path(req.uri().path(), matched, m);
        if let Ok(uri) = with_query(path, req.uri()).parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
}

/// Builds the redirect response headers.
pub fn location_header(location: &str) -> Option<(http::HeaderName, HeaderValue)> {
    HeaderValue::from_str(location).ok().map(|v| (LOCATION, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_replacement() {
        assert_eq!(
            replace_prefix("/prefix/one/two", "/prefix/one", "/one"),
            "/one/two"
        );
        assert_eq!(
            replace_prefix("/strip-prefix/three", "/strip-prefix", "/"),
            "/three"
        );
        assert_eq!(replace_prefix("/strip-prefix", "/strip-prefix", "/"), "/");
        assert_eq!(replace_prefix("/a/b", "/a/", "/x/"), "/x/b");
        assert_eq!(replace_prefix("/a", "/a", "/x"), "/x");
    }

    fn req(host: &str, uri: &str) -> Request<()> {
        Request::get(uri).header("host", host).body(()).unwrap()
    }

    #[test]
    fn redirect_locations() {
        let m = PathMatch::Prefix("/".into());
        let base = Redirect {
            scheme: None,
            hostname: None,
            port: None,
            path: None,
            status: 302,
        };
        let r = req("echo", "/x?y=1");
        assert_eq!(
            redirect_location(&r, &m, &base, "http", 80),
            "http://echo/x?y=1"
        );
        assert_eq!(
            redirect_location(&r, &m, &base, "http", 8080),
            "http://echo:8080/x?y=1"
        );
        let https = Redirect {
            scheme: Some("https".into()),
            ..base.clone()
        };
        assert_eq!(
            redirect_location(&r, &m, &https, "http", 8080),
            "https://echo/x?y=1"
        );
        let port = Redirect {
            port: Some(8443),
            hostname: Some("example.org".into()),
            ..https.clone()
        };
        assert_eq!(
            redirect_location(&r, &m, &port, "http", 80),
            "https://example.org:8443/x?y=1"
        );
        let full = Redirect {
            path: Some(PathModifier::ReplaceFullPath("/new".into())),
            ..base.clone()
        };
        assert_eq!(
            redirect_location(&req("echo:80", "/x"), &m, &full, "http", 80),
            "http://echo/new"
        );
    }

    #[test]
    fn header_modifier_order() {
        let mut h = HeaderMap::new();
        h.insert("a", "1".parse().unwrap());
        h.insert("gone", "1".parse().unwrap());
        let m = HeaderModifier {
            set: vec![("a".parse().unwrap(), "set".parse().unwrap())],
            add: vec![
                ("b".parse().unwrap(), "x".parse().unwrap()),
                ("b".parse().unwrap(), "y".parse().unwrap()),
            ],
            remove: vec!["gone".parse().unwrap()],
        };
        modify_headers(&mut h, &m);
        assert_eq!(h["a"], "set");
        assert_eq!(h.get_all("b").iter().count(), 2);
        assert!(h.get("gone").is_none());
    }
}
