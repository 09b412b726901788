//! A BackendTLSPolicy over xDS, in istiod's shapes, served over Delta ADS to a real
//! waypoint process. istiod turns the policy into a DestinationRule `tls` {mode: SIMPLE,
//! sni: <hostname>, credentialName: configmap://<ns>/<configmap>}
//! (`BackendTLSPolicyCollection`, pilot/pkg/config/kube/gateway/backend_policies.go);
//! the waypoint's cluster gets it as an `UpstreamTlsContext` inside the `internal_upstream`
//! socket (`buildWaypointTLSContext`, cluster_waypoint.go, and `constructUpstreamTLS`,
//! cluster_tls.go: `tls_params` TLS 1.2–1.3, the SNI, and a combined validation context
//! whose roots are the ADS secret `configmap://<ns>/<configmap>-cacert`, from
//! `ApplyCustomSDSToClientCommonTLSContext`, pilot/pkg/security/model/authentication.go);
//! istiod serves that secret as a validation context with the ConfigMap's `ca.crt` inline
//! (`toEnvoyCaSecret`, pilot/pkg/xds/sds.go). Here port 8100's cluster is made istiod's
//! STRICT_DNS cluster for a ServiceEntry (`resolution: DNS`, an IP endpoint) pointing at
//! an external TLS server with its own CA.

mod istiod;

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret,
};
use envoy_types::pb::google::protobuf::Any;
use istiod::*;
use prost::Message;
use serde_json::json;
use testkit::tls_echo::TlsEcho;
use xds::ads::types::SECRET;

const ORIGIN: &str = "origin.example.test";
const CA_SECRET: &str = "configmap://default/api-ca-cacert";

/// An external TLS server (its own CA, a certificate naming [`ORIGIN`]); returns it and
/// the CA's PEM.
async fn external() -> (TlsEcho, String) {
    let ca = hbone::tls::DevCa::new("internet-ca").unwrap();
    let certs = ca
        .issue_with_dns(
            &filters::model::Identity::new("cluster.local", "internet", "api"),
            ORIGIN,
        )
        .unwrap()
        .certs()
        .unwrap();
    let ip = testkit::free_loopback_ip(8443);
    let server = TlsEcho::start_simple(
        SocketAddr::new(ip, 8443),
        &certs,
        testkit::echo::EchoIdentity {
            pod: "tls-external".into(),
            namespace: "internet".into(),
        },
    )
    .await
    .unwrap();
    (server, ca.root_pem())
}

/// Port 8100's cluster as istiod's STRICT_DNS ServiceEntry cluster to `server`, with the
/// BackendTLSPolicy's TLS inside the `internal_upstream` socket.
fn backend_tls_cluster(c: &mut serde_json::Value, server: SocketAddr) {
    let o = c.as_object_mut().unwrap();
    o.remove("eds_cluster_config");
    o.insert("type".into(), json!("STRICT_DNS"));
    o.insert("dns_lookup_family".into(), json!("V4_ONLY"));
    o.insert("dns_refresh_rate".into(), json!("60s"));
    o.insert("respect_dns_ttl".into(), json!(true));
    o.insert("dns_jitter".into(), json!("0s"));
    o.insert(
        "load_assignment".into(),
        json!({"cluster_name": CLUSTER_8100, "endpoints": [{"locality": {}, "lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": server.ip().to_string(), "port_value": server.port()}}},
             "load_balancing_weight": 1}], "load_balancing_weight": 1}]}),
    );
    o.insert(
        "transport_socket".into(),
        json!({
            "name": "internal_upstream",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                "passthrough_metadata": [{"kind": {"host": {}}, "name": "envoy.filters.listener.original_dst"}],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "common_tls_context": {
                            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                            "combined_validation_context": {
                                "default_validation_context": {},
                                "validation_context_sds_secret_config": {
                                    "name": CA_SECRET,
                                    "sds_config": {"ads": {}, "resource_api_version": "V3"},
                                },
                            },
                        },
                        "sni": ORIGIN,
                    },
                },
            },
        }),
    );
}

/// istiod's secret for the ConfigMap: a validation context with `ca.crt` inline.
fn ca_secret(pem: &str) -> Vec<(String, Any)> {
    let s = Secret {
        name: CA_SECRET.into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    };
    vec![(
        CA_SECRET.into(),
        Any {
            type_url: SECRET.into(),
            value: s.encode_to_vec(),
        },
    )]
}

#[tokio::test]
async fn the_policys_ca_arrives_as_an_ads_secret_and_verifies_the_server() {
    let (server, ca) = external().await;
    let addr = server.addr;
    let w =
        start(|_, cs, _| edit_cluster(cs, CLUSTER_8100, |c| backend_tls_cluster(c, addr))).await;
    // Before istiod sends the CA, nothing verifies the server: no request gets through.
    assert_eq!(get(&w, 8100, "/get").await.status, 503);
    w.server.set(SECRET, ca_secret(&ca));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = get(&w, 8100, "/get").await;
        if answer.status == 200 {
            assert_eq!(answer.echo()["pod"], "tls-external");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {} after the secret",
            answer.status
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let names = server.server_names();
    assert!(
        names.iter().all(|n| n.as_deref() == Some(ORIGIN)),
        "{names:?}"
    );
    assert!(
        w.server.replies().iter().all(|r| r.error.is_none()),
        "nothing NACKed"
    );
    // Another CA in the secret: the server is refused again.
    let other = hbone::tls::DevCa::new("other-ca").unwrap().root_pem();
    w.server.set(SECRET, ca_secret(&other));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while get(&w, 8100, "/get").await.status != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new CA never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_ca_secret_with_more_than_a_bundle_is_nacked_by_field() {
    let (server, ca) = external().await;
    let addr = server.addr;
    let w =
        start(|_, cs, _| edit_cluster(cs, CLUSTER_8100, |c| backend_tls_cluster(c, addr))).await;
    let mut secret = ca_secret(&ca);
    let mut s = Secret::decode(secret[0].1.value.as_slice()).unwrap();
    if let Some(secret::Type::ValidationContext(v)) = &mut s.r#type {
        v.crl = Some(DataSource {
            specifier: Some(Specifier::InlineString("crl".into())),
            ..Default::default()
        });
    }
    secret[0].1.value = s.encode_to_vec();
    w.server.set(SECRET, secret);
    let e = nack(&w).await;
    assert!(
        e.contains(CA_SECRET) && e.contains("validation_context"),
        "{e}"
    );
}
