//! The RBAC matcher on arbitrary policies and requests: the input is an
//! `envoy.config.rbac.v3.RBAC` (protobuf after its length, two bytes little-endian) followed by a request (principal,
//! path and one header, separated by newlines). The policy translates or is refused by
//! field; a translated policy evaluates without panicking, and consistently: ALLOW lets the
//! request through exactly when a policy matched, DENY exactly when none did.
#![no_main]

use std::borrow::Cow;

use envoy_types::pb::envoy::config::rbac::v3::Rbac;
use filters::authz::attributes::{Attributes, HttpAttributes};
use filters::rbac::eval::RbacInput;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = u16::from_le_bytes(*len) as usize;
    let (policy, request) = rest.split_at(len.min(rest.len()));
    let Ok(pb) = Rbac::decode(policy) else {
        return;
    };
    let rbac = match xds::translate::rbac::rbac(&pb, "rules") {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let request = String::from_utf8_lossy(request);
    let mut parts = request.splitn(4, '\n');
    let principal = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or("/");
    let mut headers = http::HeaderMap::new();
    if let Some((k, v)) = parts.next().and_then(|h| h.split_once(':')) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            headers.insert(k, v);
        }
    }
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let attrs = Attributes {
        principal: Some(Cow::Borrowed(principal)),
        namespace: Some(Cow::Borrowed("default")),
        source_ip: Some([127, 0, 0, 1].into()),
        destination_port: Some(80),
        http: Some(HttpAttributes {
            method: "GET",
            host: "echo.default.svc.cluster.local",
            path,
            query,
            path_and_query: None,
            headers: &headers,
            auth: None,
        }),
        ..Default::default()
    };
    let input = RbacInput::new(&attrs);
    let result = rbac.evaluate(&input);
    let matched = rbac.matching_policy(&input).is_some();
    match pb.action {
        0 => assert_eq!(result.allowed, matched),
        1 => assert_eq!(result.allowed, !matched),
        _ => {}
    }
});
