//! Certificate revocation lists for the TLS a waypoint originates (DestinationRule `tls`
//! SIMPLE/MUTUAL), in istiod's shapes over Delta ADS, to an external HTTPS server (a
//! ServiceEntry with `resolution: DNS`: istiod's STRICT_DNS cluster).
//!
//! istiod writes a CRL in two places:
//! - the rule's `caCrl` (a file in the pod): `constructUpstreamTLS`
//!   (pilot/pkg/networking/core/cluster_tls.go) puts it as `crl: {filename}` in the
//!   combined validation context's default context, next to the SDS secret
//!   `file-root:<caCertificates>` that pilot-agent serves from the file;
//! - a `credentialName` Secret's `ca.crl` (or `crl` next to `cacert`): `ExtractRoot`
//!   (pilot/pkg/credentials/kube/secrets.go) reads it and `toEnvoyCaSecret`
//!   (pilot/pkg/xds/sds.go) sends it inline as the `-cacert` secret's
//!   `validation_context.crl`, next to the inline `trusted_ca`.
//!
//! A server certificate the CRL lists fails the handshake: 503 `UF`.

mod istiod;

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret,
};
use envoy_types::pb::google::protobuf::Any;
use hbone::tls::{DevCa, IssuedCert};
use istiod::*;
use prost::Message;
use serde_json::json;
use testkit::tls_echo::TlsEcho;
use xds::ads::types::SECRET;

const ORIGIN: &str = "origin.example.test";
const CA_SECRET: &str = "kubernetes://api-creds-cacert";

/// The external server's CA and two certificates it issued for [`ORIGIN`]: the one the
/// server presents, and another.
fn internet_ca() -> (DevCa, IssuedCert, IssuedCert) {
    let ca = DevCa::new("internet-ca").unwrap();
    let id = filters::model::Identity::new("cluster.local", "internet", "api");
    let server = ca.issue_with_dns(&id, ORIGIN).unwrap();
    let other = ca.issue_with_dns(&id, ORIGIN).unwrap();
    (ca, server, other)
}

/// An external HTTPS server on a fresh loopback address, presenting `server`.
async fn external(server: &IssuedCert) -> TlsEcho {
    let addr = SocketAddr::new(testkit::free_loopback_ip(8443), 8443);
    let who = testkit::echo::EchoIdentity {
        pod: "tls-external".into(),
        namespace: "internet".into(),
    };
    TlsEcho::start_simple(addr, &server.certs().unwrap(), who)
        .await
        .unwrap()
}

/// Port 8100's cluster as istiod's STRICT_DNS ServiceEntry cluster to `server`, with the
/// rule's SIMPLE TLS inside the `internal_upstream` socket (`buildWaypointTLSContext`,
/// cluster_waypoint.go; `constructUpstreamTLS`, cluster_tls.go), its validation context
/// `validation`.
fn tls_cluster(c: &mut serde_json::Value, server: SocketAddr, validation: serde_json::Value) {
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
                            "combined_validation_context": validation,
                        },
                        "sni": ORIGIN,
                    },
                },
            },
        }),
    );
}

/// `credentialName: api-creds` (`ApplyCustomSDSToClientCommonTLSContext`,
/// pilot/pkg/security/model/authentication.go): the roots from the ADS secret
/// `kubernetes://api-creds-cacert`.
fn credential_validation() -> serde_json::Value {
    json!({
        "default_validation_context": {"match_subject_alt_names": [{"exact": ORIGIN}]},
        "validation_context_sds_secret_config": {"name": CA_SECRET, "sds_config": {"ads": {}, "resource_api_version": "V3"}},
    })
}

/// `caCertificates: <ca>` and `caCrl: <crl>` (`constructUpstreamTLS`): the CRL file in the
/// default context, the roots as pilot-agent's `file-root:` SDS secret.
fn file_validation(ca: &std::path::Path, crl: &std::path::Path) -> serde_json::Value {
    let sds = json!({"api_config_source": {"api_type": "GRPC", "grpc_services": [
        {"envoy_grpc": {"cluster_name": "sds-grpc"}}], "set_node_on_first_message_only": true,
        "transport_api_version": "V3"}, "resource_api_version": "V3"});
    json!({
        "default_validation_context": {
            "match_subject_alt_names": [{"exact": ORIGIN}],
            "crl": {"filename": crl.display().to_string()},
        },
        "validation_context_sds_secret_config": {"name": format!("file-root:{}", ca.display()), "sds_config": sds},
    })
}

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    })
}

/// `toEnvoyCaSecret` (pilot/pkg/xds/sds.go): the Secret's `ca.crt` as inline `trusted_ca`
/// and its `ca.crl` as inline `crl`.
fn ca_secret(roots: &str, crl: &str) -> (String, Any) {
    let s = Secret {
        name: CA_SECRET.into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(roots),
                crl: inline(crl),
                ..Default::default()
            },
        )),
    };
    (
        s.name.clone(),
        Any {
            type_url: SECRET.into(),
            value: s.encode_to_vec(),
        },
    )
}

/// Sends until `GET /get` on 8100 answers `status` (ten seconds at most).
async fn until_status(w: &World, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(w, 8100, "/get").await;
        if answer.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {} instead of {status}",
            answer.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many requests the waypoint has counted as `503` with response flag `UF`.
async fn uf_count(w: &World) -> f64 {
    let text = testkit::process::http_get(w._wp.metrics, "/stats/prometheus")
        .await
        .unwrap()
        .1;
    text.lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("response_code=\"503\"")
                && l.contains("response_flags=\"UF\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn nothing_nacked(w: &World) {
    assert!(
        w.server.replies().iter().all(|r| r.error.is_none()),
        "nothing NACKed: {:?}",
        w.server.replies()
    );
}

#[tokio::test]
async fn a_server_certificate_the_secrets_crl_revokes_fails_with_uf() {
    let (ca, server_cert, other) = internet_ca();
    let server = external(&server_cert).await;
    let addr = server.addr;
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            tls_cluster(c, addr, credential_validation())
        })
    })
    .await;
    // The Secret's CRL lists another certificate of the CA: the server's is good.
    let unrelated = ca.revocation_list(&[&other]).unwrap();
    w.server
        .set(SECRET, vec![ca_secret(&ca.root_pem(), &unrelated)]);
    until_status(&w, 200).await;
    nothing_nacked(&w);
    // istiod pushes the Secret with a CRL listing the server's certificate: new
    // connections fail the handshake, 503 UF.
    let before = uf_count(&w).await;
    let revoking = ca.revocation_list(&[&other, &server_cert]).unwrap();
    w.server
        .set(SECRET, vec![ca_secret(&ca.root_pem(), &revoking)]);
    until_status(&w, 503).await;
    assert!(uf_count(&w).await > before, "the 503 is counted as UF");
    nothing_nacked(&w);
    // An empty `ca.crl` is no list (as Envoy reads it): the server is trusted again.
    w.server.set(SECRET, vec![ca_secret(&ca.root_pem(), "")]);
    until_status(&w, 200).await;
    // A CRL from a CA outside the chain leaves the server's status unknown, which fails
    // as in Envoy (a CRL must cover every CA of the chain).
    let stranger = DevCa::new("stranger-ca")
        .unwrap()
        .revocation_list(&[])
        .unwrap();
    w.server
        .set(SECRET, vec![ca_secret(&ca.root_pem(), &stranger)]);
    until_status(&w, 503).await;
    // An expired CRL fails too (Envoy checks its nextUpdate).
    let expired = ca.expired_revocation_list(&[]).unwrap();
    w.server
        .set(SECRET, vec![ca_secret(&ca.root_pem(), &unrelated)]);
    until_status(&w, 200).await;
    w.server
        .set(SECRET, vec![ca_secret(&ca.root_pem(), &expired)]);
    until_status(&w, 503).await;
    nothing_nacked(&w);
}

#[tokio::test]
async fn a_crl_secret_that_is_no_crl_is_nacked_by_field() {
    let (ca, server_cert, _) = internet_ca();
    let server = external(&server_cert).await;
    let addr = server.addr;
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            tls_cluster(c, addr, credential_validation())
        })
    })
    .await;
    w.server.set(
        SECRET,
        vec![ca_secret(&ca.root_pem(), "not a revocation list")],
    );
    let e = nack(&w).await;
    assert!(
        e.contains(CA_SECRET) && e.contains("validation_context.crl"),
        "{e}"
    );
    assert_eq!(get(&w, 8100, "/get").await.status, 503, "no roots applied");
}

/// The world with the rule's `caCertificates` and `caCrl` files, the CRL listing
/// `revoked`.
async fn file_world(revoked: bool) -> (World, TlsEcho, tempfile::TempDir) {
    let (ca, server_cert, other) = internet_ca();
    let server = external(&server_cert).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ca.pem");
    let crl = dir.path().join("ca.crl");
    std::fs::write(&root, ca.root_pem()).unwrap();
    let listed: Vec<&IssuedCert> = if revoked {
        vec![&other, &server_cert]
    } else {
        vec![&other]
    };
    std::fs::write(&crl, ca.revocation_list(&listed).unwrap()).unwrap();
    let addr = server.addr;
    let validation = file_validation(&root, &crl);
    let w = start(|_, cs, _| edit_cluster(cs, CLUSTER_8100, |c| tls_cluster(c, addr, validation)))
        .await;
    (w, server, dir)
}

#[tokio::test]
async fn the_rules_crl_file_revokes_the_server_certificate() {
    let (w, _server, _dir) = file_world(true).await;
    let before = uf_count(&w).await;
    assert_eq!(get(&w, 8100, "/get").await.status, 503);
    assert!(uf_count(&w).await > before, "the 503 is counted as UF");
    nothing_nacked(&w);
}

#[tokio::test]
async fn the_rules_crl_file_not_listing_the_server_lets_it_through() {
    let (w, _server, _dir) = file_world(false).await;
    until_status(&w, 200).await;
    nothing_nacked(&w);
}
