//! istiod's own ext_authz filter configs (its builder's golden files,
//! `pilot/pkg/security/authz/builder/testdata/{http,tcp}/*-out2.yaml`, in the shared test
//! data) convert field by field; what the waypoint cannot honour is refused by field.

use std::path::{Path, PathBuf};

use filters::authz::ext::{HeaderPattern, ProviderKind};
use filters::rbac::model::ValueMatcher;
use filters::rbac::string_match::StringMatch;
use serde_json::json;

use super::*;

fn testdata() -> PathBuf {
    std::env::var("WAYPOINT_ISTIO_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/istio/authz-builder")
        })
}

/// The `typedConfig` of a golden filter file.
fn golden(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(testdata().join(name)).unwrap();
    let v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    v["typedConfig"].clone()
}

fn http(v: &serde_json::Value) -> R<ExtAuthzFilter> {
    let pb: PbHttpExtAuthz =
        crate::envoy::from_json("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", v).unwrap();
    http_filter(&pb)
}

fn network(v: &serde_json::Value) -> R<ExtAuthzFilter> {
    let pb: PbNetworkExtAuthz =
        crate::envoy::from_json("envoy.extensions.filters.network.ext_authz.v3.ExtAuthz", v)
            .unwrap();
    network_filter(&pb)
}

#[test]
fn istiod_grpc_provider() {
    let f = http(&golden("http/extended-custom-grpc-provider-out2.yaml")).unwrap();
    let p = &f.provider;
    assert_eq!(p.service, "my-custom-ext-authz.foo.svc.cluster.local");
    assert_eq!(p.port, 9000);
    assert_eq!(
        p.cluster.as_deref(),
        Some("outbound|9000||my-custom-ext-authz.foo.svc.cluster.local")
    );
    assert_eq!(p.timeout, Duration::from_millis(2));
    assert!(p.fail_open);
    assert_eq!(p.status_on_error, StatusCode::FORBIDDEN);
    let b = p.body.unwrap();
    assert_eq!((b.max_request_bytes, b.allow_partial_message), (4096, true));
    assert!(matches!(p.kind, ProviderKind::Grpc));
    let m = f.enabled_metadata.unwrap();
    assert_eq!(m.filter, "envoy.filters.http.rbac");
    assert_eq!(m.path[0].key, "istio_ext_authz_shadow_effective_policy_id");
    let ValueMatcher::StringMatch(s) = &m.value else {
        panic!("{:?}", m.value)
    };
    assert!(matches!(&s.kind, StringMatch::Prefix(p) if p == "istio-ext-authz-default"));
}

#[test]
fn istiod_http_provider() {
    let f = http(&golden("http/extended-custom-http-provider-out2.yaml")).unwrap();
    let p = &f.provider;
    assert_eq!(p.timeout, Duration::from_secs(10));
    assert!(p.body.unwrap().pack_as_bytes);
    let ProviderKind::Http(s) = &p.kind else {
        panic!("an HTTP provider")
    };
    assert_eq!(s.path_prefix, "/check");
    assert_eq!(
        s.include_request_headers,
        vec![
            HeaderPattern::Exact("x-custom-id".into()),
            HeaderPattern::Prefix("x-prefix-".into()),
            HeaderPattern::Suffix("-suffix".into()),
        ]
    );
    assert_eq!(s.additional_headers.len(), 2);
    assert_eq!(s.additional_headers[0].0, "x-header-1");
    assert_eq!(s.additional_headers[1].1, "value-2");
    assert_eq!(
        s.headers_to_upstream_on_allow[0],
        HeaderPattern::Exact("authorization".into())
    );
    assert_eq!(
        s.headers_to_downstream_on_deny[0],
        HeaderPattern::Exact("set-cookie".into())
    );
    assert_eq!(s.headers_to_downstream_on_allow.len(), 3);
}

#[test]
fn istiod_tcp_provider() {
    let f = network(&golden("tcp/custom-both-http-tcp-out2.yaml")).unwrap();
    assert!(f.provider.fail_open);
    assert!(matches!(f.provider.kind, ProviderKind::Grpc));
    assert_eq!(
        f.enabled_metadata.unwrap().filter,
        "envoy.filters.network.rbac"
    );
}

/// The gRPC golden with `edit` applied: the error's field, or panics if it converts.
fn refused(edit: impl FnOnce(&mut serde_json::Value)) -> InvalidExtAuthz {
    let mut v = golden("http/extended-custom-grpc-provider-out2.yaml");
    edit(&mut v);
    http(&v).expect_err("refused")
}

#[test]
fn what_cannot_be_honoured_is_refused_by_field() {
    let field = |e: InvalidExtAuthz| e.field;
    assert_eq!(
        field(refused(|v| {
            v["grpcService"] = json!({"googleGrpc": {"targetUri": "x", "statPrefix": "s"}})
        })),
        "grpc_service.google_grpc"
    );
    assert_eq!(
        field(refused(|v| v["metadataContextNamespaces"] = json!(["a"]))),
        "metadata_context_namespaces"
    );
    assert_eq!(
        field(refused(|v| v["includePeerCertificate"] = json!(true))),
        "include_peer_certificate"
    );
    assert_eq!(
        field(refused(
            |v| v["grpcService"]["envoyGrpc"]["clusterName"] = json!("inbound-vip|9000|http|x")
        )),
        "grpc_service.envoy_grpc.cluster_name"
    );
    assert_eq!(
        field(refused(
            |v| v["grpcService"]["initialMetadata"] = json!([{"key": "a", "value": "b"}])
        )),
        "grpc_service.initial_metadata"
    );
    assert_eq!(
        field(refused(|v| v["transportApiVersion"] = json!("AUTO"))),
        "transport_api_version"
    );
    assert_eq!(
        field(refused(
            |v| v["allowedHeaders"] = json!({"patterns": [{"exact": "x"}]})
        )),
        "allowed_headers"
    );
    assert_eq!(
        field(refused(
            |v| v["filterEnabled"] = json!({"defaultValue": {"numerator": 50}})
        )),
        "filter_enabled"
    );
    assert_eq!(
        field(refused(|v| v["statusOnError"] = json!({"code": 0}))),
        "status_on_error.code"
    );
    assert_eq!(
        field(refused(|v| v["filterEnabledMetadata"]["value"] = json!({}))),
        "filter_enabled_metadata.value"
    );
    let mut h = golden("http/extended-custom-http-provider-out2.yaml");
    h["httpService"]["pathOverride"] = json!("/x");
    assert_eq!(http(&h).unwrap_err().field, "http_service.path_override");
    let mut h = golden("http/extended-custom-http-provider-out2.yaml");
    h["allowedHeaders"]["patterns"][0] = json!({"safeRegex": {"regex": "x.*"}});
    assert_eq!(http(&h).unwrap_err().field, "allowed_headers.patterns[0]");
    let mut h = golden("http/extended-custom-http-provider-out2.yaml");
    h["httpService"]["serverUri"]
        .as_object_mut()
        .unwrap()
        .remove("timeout");
    assert_eq!(
        http(&h).unwrap_err().field,
        "http_service.server_uri.timeout"
    );
    let mut t = golden("tcp/custom-both-http-tcp-out2.yaml");
    t["sendTlsAlertOnDenial"] = json!(true);
    assert_eq!(network(&t).unwrap_err().field, "send_tls_alert_on_denial");
}

#[test]
fn defaults_follow_envoy() {
    let mut v = golden("http/extended-custom-grpc-provider-out2.yaml");
    let obj = v.as_object_mut().unwrap();
    obj.remove("statusOnError");
    obj.remove("withRequestBody");
    obj.remove("filterEnabledMetadata");
    v["grpcService"].as_object_mut().unwrap().remove("timeout");
    let f = http(&v).unwrap();
    assert_eq!(f.provider.status_on_error, StatusCode::FORBIDDEN);
    assert_eq!(f.provider.timeout, ENVOY_DEFAULT_TIMEOUT);
    assert!(f.provider.body.is_none());
    assert!(f.enabled_metadata.is_none(), "enabled for every request");
}
