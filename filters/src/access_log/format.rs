//! Envoy access log format strings: parsed once into segments, rendered per request.
//!
//! Supported command operators: `START_TIME`, `REQ(h1?h2):len`, `RESP(h)`, `PROTOCOL`,
//! `RESPONSE_CODE`, `RESPONSE_FLAGS`, `RESPONSE_CODE_DETAILS`,
//! `CONNECTION_TERMINATION_DETAILS`, `UPSTREAM_TRANSPORT_FAILURE_REASON`, `BYTES_RECEIVED`,
//! `BYTES_SENT`, `DURATION`, `UPSTREAM_HOST`, `UPSTREAM_CLUSTER`, `UPSTREAM_LOCAL_ADDRESS`,
//! `DOWNSTREAM_LOCAL_ADDRESS`, `DOWNSTREAM_REMOTE_ADDRESS`, `REQUESTED_SERVER_NAME`,
//! `ROUTE_NAME`, `METHOD`. `:METHOD`, `:PATH` and `:AUTHORITY` work as pseudo-headers in
//! `REQ()`. An unknown operator is a configuration error naming it.

use super::record::HttpRecord;

/// Istio's default text format.
pub const ISTIO_TEXT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON keys and their operators.
pub const ISTIO_JSON: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("route_name", "%ROUTE_NAME%"),
];

/// A format string that names an operator we do not know.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("access log format: {0}")]
pub struct InvalidFormat(pub String);

#[derive(Debug, Clone, PartialEq)]
enum Op {
    StartTime,
    Req(Vec<String>, Option<usize>),
    Resp(String, Option<usize>),
    Protocol,
    Method,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    Empty,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    DownstreamLocal,
    DownstreamRemote,
    RouteName,
    UpstreamFailure,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Op(Op),
}

/// A parsed format string.
#[derive(Debug, Clone, PartialEq)]
pub struct Format(Vec<Segment>);

impl Format {
    /// Parses an Envoy format string.
    pub fn parse(s: &str) -> Result<Self, InvalidFormat> {
        let mut segs = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            if i > 0 {
                segs.push(Segment::Text(rest[..i].to_string()));
            }
            let after = &rest[i + 1..];
            let Some(j) = after.find('%') else {
                return Err(InvalidFormat(format!("unterminated operator in {s:?}")));
            };
            let op = &after[..j];
            if op.is_empty() {
                segs.push(Segment::Text("%".into()));
            } else {
                segs.push(Segment::Op(parse_op(op)?));
            }
            rest = &after[j + 1..];
        }
        if !rest.is_empty() {
            segs.push(Segment::Text(rest.to_string()));
        }
        Ok(Self(segs))
    }

    /// Renders the text form: missing values print as `-`.
    pub fn render(&self, r: &HttpRecord) -> String {
        let mut out = String::with_capacity(256);
        for seg in &self.0 {
            match seg {
                Segment::Text(t) => out.push_str(t),
                Segment::Op(op) => out.push_str(value(op, r).as_deref().unwrap_or("-")),
            }
        }
        out
    }

    /// Renders a JSON value: a lone numeric operator is a number, a missing lone value
    /// is `null`, anything else a string.
    pub fn render_json(&self, r: &HttpRecord) -> serde_json::Value {
        if let [Segment::Op(op)] = &self.0[..] {
            return match value(op, r) {
                None => serde_json::Value::Null,
                Some(v) if numeric(op) => v
                    .parse::<u64>()
                    .map(Into::into)
                    .unwrap_or(serde_json::Value::String(v)),
                Some(v) => serde_json::Value::String(v),
            };
        }
        serde_json::Value::String(self.render(r))
    }
}

fn numeric(op: &Op) -> bool {
    matches!(
        op,
        Op::ResponseCode | Op::BytesReceived | Op::BytesSent | Op::Duration
    ) || matches!(op, Op::Resp(h, _) if h == "x-envoy-upstream-service-time")
}

fn parse_op(op: &str) -> Result<Op, InvalidFormat> {
    let (op, len) = match op.rsplit_once("):") {
        Some((head, n)) => (
            &op[..head.len() + 1],
            Some(
                n.parse::<usize>()
                    .map_err(|_| InvalidFormat(format!("bad length in %{op}%")))?,
            ),
        ),
        None => (op, None),
    };
    let arg = |prefix: &str| {
        op.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(')'))
            .map(|a| a.to_ascii_lowercase())
    };
    if let Some(a) = arg("REQ(") {
        return Ok(Op::Req(a.split('?').map(str::to_string).collect(), len));
    }
    if let Some(a) = arg("RESP(") {
        return Ok(Op::Resp(a, len));
    }
    Ok(match op {
        "START_TIME" => Op::StartTime,
        "PROTOCOL" => Op::Protocol,
        "METHOD" => Op::Method,
        "RESPONSE_CODE" => Op::ResponseCode,
        "RESPONSE_FLAGS" => Op::ResponseFlags,
        "RESPONSE_CODE_DETAILS" => Op::ResponseCodeDetails,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamFailure,
        "CONNECTION_TERMINATION_DETAILS" | "UPSTREAM_LOCAL_ADDRESS" | "REQUESTED_SERVER_NAME" => {
            Op::Empty
        }
        "BYTES_RECEIVED" => Op::BytesReceived,
        "BYTES_SENT" => Op::BytesSent,
        "DURATION" => Op::Duration,
        "UPSTREAM_HOST" => Op::UpstreamHost,
        "UPSTREAM_CLUSTER" => Op::UpstreamCluster,
        "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocal,
        "DOWNSTREAM_REMOTE_ADDRESS" => Op::DownstreamRemote,
        "ROUTE_NAME" => Op::RouteName,
        other => return Err(InvalidFormat(format!("unsupported operator %{other}%"))),
    })
}

fn truncate(mut v: String, len: Option<usize>) -> String {
    if let Some(n) = len {
        if v.len() > n {
            let mut end = n;
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            v.truncate(end);
        }
    }
    v
}

fn header(map: &http::HeaderMap, name: &str) -> Option<String> {
    map.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn value(op: &Op, r: &HttpRecord) -> Option<String> {
    let ms = |d: std::time::Duration| (d.as_millis() as u64).to_string();
    match op {
        Op::StartTime => Some(
            chrono::DateTime::<chrono::Utc>::from(r.start)
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
        ),
        Op::Req(names, len) => names
            .iter()
            .find_map(|n| match n.as_str() {
                // Empty for a TCP connection, which has no request.
                ":method" => (!r.method.is_empty()).then(|| r.method.clone()),
                ":path" => (!r.path.is_empty()).then(|| r.path.clone()),
                ":authority" => header(&r.request_headers, "host"),
                n => header(&r.request_headers, n),
            })
            .map(|v| truncate(v, *len)),
        Op::Resp(name, len) => {
            if name == "x-envoy-upstream-service-time" {
                r.upstream_service_time.map(ms)
            } else {
                header(&r.response_headers, name).map(|v| truncate(v, *len))
            }
        }
        Op::Protocol => (!r.protocol.is_empty()).then(|| r.protocol.into()),
        Op::Method => (!r.method.is_empty()).then(|| r.method.clone()),
        Op::ResponseCode => Some(r.code.to_string()),
        Op::ResponseFlags => Some(r.flags.into()),
        Op::ResponseCodeDetails => (!r.details.is_empty()).then(|| r.details.clone()),
        Op::Empty => None,
        Op::BytesReceived => Some(r.bytes_received.to_string()),
        Op::BytesSent => Some(r.bytes_sent.to_string()),
        Op::Duration => Some(ms(r.duration)),
        Op::UpstreamHost => r.upstream_host.clone(),
        Op::UpstreamCluster => r.upstream_cluster.clone(),
        Op::DownstreamLocal => Some(r.downstream_local_address.clone()),
        Op::DownstreamRemote => Some(r.downstream_remote_address.clone()),
        Op::RouteName => r.route_name.clone(),
        Op::UpstreamFailure => r.upstream_failure.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record() -> HttpRecord {
        let mut req = http::HeaderMap::new();
        req.insert("host", "echo.demo:80".parse().unwrap());
        req.insert("user-agent", "curl/8".parse().unwrap());
        HttpRecord {
            start: UNIX_EPOCH + Duration::from_millis(1_606_339_578_409),
            method: "GET".into(),
            path: "/a?b=1".into(),
            protocol: "HTTP/1.1",
            request_headers: req,
            response_headers: Default::default(),
            code: 503,
            flags: "UF",
            details: "upstream_reset_before_response_started{connection_failure}".into(),
            grpc_status: None,
            request_total: 0,
            response_total: 0,
            bytes_received: 0,
            bytes_sent: 91,
            duration: Duration::from_millis(12),
            upstream_service_time: None,
            upstream_host: Some("10.0.0.5:8080".into()),
            upstream_cluster: Some("inbound-vip|80|http|echo.demo.svc.cluster.local".into()),
            downstream_local_address: "10.96.0.10:80".into(),
            downstream_remote_address: "10.0.0.7:0".into(),
            route_name: None,
            upstream_failure: None,
        }
    }

    #[test]
    fn istio_default_text_line() {
        let f = Format::parse(ISTIO_TEXT).unwrap();
        assert_eq!(
            f.render(&record()),
            "[2020-11-25T21:26:18.409Z] \"GET /a?b=1 HTTP/1.1\" 503 UF upstream_reset_before_response_started{connection_failure} - \"-\" 0 91 12 - \"-\" \"curl/8\" \"-\" \"echo.demo:80\" \"10.0.0.5:8080\" inbound-vip|80|http|echo.demo.svc.cluster.local - 10.96.0.10:80 10.0.0.7:0 - -\n"
        );
    }

    #[test]
    fn json_values_are_typed() {
        let r = record();
        let code = Format::parse("%RESPONSE_CODE%").unwrap().render_json(&r);
        assert_eq!(code, serde_json::json!(503));
        let xff = Format::parse("%REQ(X-FORWARDED-FOR)%")
            .unwrap()
            .render_json(&r);
        assert_eq!(xff, serde_json::Value::Null);
        let ua = Format::parse("%REQ(USER-AGENT):4%")
            .unwrap()
            .render_json(&r);
        assert_eq!(ua, serde_json::json!("curl"));
    }

    #[test]
    fn unknown_operators_are_named() {
        assert_eq!(
            Format::parse("%NOPE%").unwrap_err().to_string(),
            "access log format: unsupported operator %NOPE%"
        );
        assert!(Format::parse("%START_TIME").is_err());
    }
}
