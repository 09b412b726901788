use std::collections::HashMap;

use super::*;

#[derive(Default)]
struct Facts {
    headers: HashMap<&'static str, &'static str>,
    labels: HashMap<&'static str, &'static str>,
    code: Option<i64>,
    path: &'static str,
}

impl Activation for Facts {
    fn attribute(&self, a: Attribute) -> Option<Value<'_>> {
        match a {
            Attribute::ResponseCode => self.code.map(Value::Int),
            Attribute::RequestUrlPath => Some(Value::Str(self.path.into())),
            Attribute::RequestMethod => Some(Value::Str("GET".into())),
            Attribute::ConnectionMtls => Some(Value::Bool(true)),
            Attribute::DestinationPort => Some(Value::Int(8080)),
            _ => None,
        }
    }
    fn entry(&self, m: MapAttribute, key: &str) -> Option<&str> {
        match m {
            MapAttribute::RequestHeaders => self.headers.get(key).copied(),
            MapAttribute::PeerLabels(Peer::Upstream) => self.labels.get(key).copied(),
            _ => None,
        }
    }
}

fn facts() -> Facts {
    Facts {
        headers: [("x-user", "alice"), ("x-n", "12")].into_iter().collect(),
        labels: [("app", "reviews")].into_iter().collect(),
        code: Some(503),
        path: "/api/v1",
    }
}

fn run(src: &str) -> Result<String, EvalError> {
    let p = Program::compile(src).unwrap_or_else(|e| panic!("{e}"));
    let f = facts();
    let v = p.eval(&f)?;
    Ok(v.to_text().into_owned())
}

#[test]
fn values_of_documented_attributes() {
    assert_eq!(run("request.headers['x-user']").unwrap(), "alice");
    assert_eq!(
        run("request.headers.x_missing == 'a'"),
        Err(EvalError::Missing)
    );
    assert_eq!(run("request.url_path").unwrap(), "/api/v1");
    assert_eq!(run("response.code").unwrap(), "503");
    assert_eq!(run("upstream_peer.labels['app']").unwrap(), "reviews");
    assert_eq!(run("string(destination.port)").unwrap(), "8080");
    assert_eq!(run("int(request.headers['x-n']) + 1").unwrap(), "13");
    assert_eq!(run("'u-' + request.headers['x-user']").unwrap(), "u-alice");
    assert_eq!(
        run("response.code >= 500 ? 'error' : 'ok'").unwrap(),
        "error"
    );
}

#[test]
fn predicates() {
    for (src, want) in [
        ("response.code >= 500", true),
        ("response.code >= 500 && response.code < 600", true),
        ("response.code == 200 || request.method == 'GET'", true),
        ("!(response.code == 503)", false),
        ("has(request.headers.x_user)", false),
        ("'x-user' in request.headers", true),
        ("request.method in ['GET', 'HEAD']", true),
        ("response.code in [200, 204]", false),
        ("request.url_path.startsWith('/api')", true),
        ("request.url_path.matches('^/api/v[0-9]+$')", true),
        ("connection.mtls", true),
        ("has(response.grpc_status)", false),
        ("size(request.url_path) == 7", true),
        ("0x1f3 == 499", true),
        ("response.code == 503u", true),
    ] {
        let p = Program::compile_bool(src).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.matches(&facts()), want, "{src}");
    }
}

#[test]
fn errors_absorb_as_cel_does() {
    // A missing header is an error; `false && error` is false, `true || error` true.
    let f = facts();
    let p =
        Program::compile_bool("request.headers['nope'] == 'x' && response.code == 200").unwrap();
    assert!(!p.matches(&f));
    assert_eq!(p.eval(&f), Ok(Value::Bool(false)));
    let p =
        Program::compile_bool("request.headers['nope'] == 'x' || response.code == 503").unwrap();
    assert_eq!(p.eval(&f), Ok(Value::Bool(true)));
    let p =
        Program::compile_bool("request.headers['nope'] == 'x' || response.code == 200").unwrap();
    assert_eq!(p.eval(&f), Err(EvalError::Missing));
    // A filter whose evaluation fails does not match.
    assert!(!p.matches(&f));
}

#[test]
fn refusals_name_the_expression_and_the_reason() {
    for (src, reason) in [
        (
            "response.code == '200'",
            "cannot compare a int with a string",
        ),
        ("request.nope", "attribute request.nope is not supported"),
        (
            "filter_state['x']",
            "attribute filter_state is not supported",
        ),
        (
            "request.time > timestamp('2020-01-01T00:00:00Z')",
            "attribute request.time",
        ),
        ("response.code >= 500 &&", "unexpected end of expression"),
        ("request.headers['a'] == 1.5", "floating point"),
        ("{'a': 1}", "map literals"),
        (
            "request.path.lowerAscii()",
            "function lowerAscii() is not supported",
        ),
        ("request.headers", ""),
        (
            "has(request.headers['x-user'])",
            "has() needs a field selection",
        ),
        ("response.code == 200 200", "unexpected integer 200"),
        ("request.path.matches('(')", "matches(\"(\")"),
    ] {
        let e = Program::compile_bool(src).unwrap_err();
        assert_eq!(e.expr, src);
        assert!(e.reason.contains(reason), "{src}: {}", e.reason);
    }
    assert!(Program::compile_value("request.headers")
        .unwrap_err()
        .reason
        .contains("map"));
    assert!(Program::compile_bool("request.path")
        .unwrap_err()
        .reason
        .contains("a bool is needed"));
}
