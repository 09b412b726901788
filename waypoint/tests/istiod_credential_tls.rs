//! DestinationRule `trafficPolicy.tls.credentialName` over xDS, in istiod's shapes, served
//! over Delta ADS to a real waypoint process that originates TLS to an external HTTPS
//! server (a ServiceEntry with `resolution: DNS`, an IP endpoint: istiod's STRICT_DNS
//! cluster), and to a mesh pod inside the HBONE tunnel.
//!
//! The cluster's `internal_upstream` socket wraps an `UpstreamTlsContext`
//! (`buildWaypointTLSContext`, pilot/pkg/networking/core/cluster_waypoint.go, and
//! `constructUpstreamTLS`, cluster_tls.go: `tls_params` TLS 1.2–1.3, the rule's SNI). With
//! `credentialName`, `ApplyCustomSDSToClientCommonTLSContext`
//! (pilot/pkg/security/model/authentication.go) names two ADS secrets
//! (`ConstructSdsSecretConfigForCredential`, `ToResourceName` in
//! pilot/pkg/model/credentials/resource.go): `kubernetes://<name>` as the client
//! certificate (MUTUAL only) and `kubernetes://<name>-cacert` as the roots, in a combined
//! validation context whose default context carries the rule's SANs. istiod's `SecretGen`
//! (pilot/pkg/xds/sds.go) answers the waypoint's subscription on the same ADS stream with
//! `toEnvoyTLSSecret` (chain and key inline) and `toEnvoyCaSecret` (the Secret's `ca.crt`
//! inline), from the Secret in the waypoint's own namespace (`ParseResourceName`,
//! `filterAuthorizedResources`).

mod istiod;

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use envoy_types::pb::google::protobuf::Any;
use hbone::tls::{DevCa, IssuedCert};
use istiod::*;
use prost::Message;
use serde_json::json;
use testkit::tls_echo::TlsEcho;
use xds::ads::types::SECRET;

const ORIGIN: &str = "origin.example.test";
const CERT_SECRET: &str = "kubernetes://api-creds";
const CA_SECRET: &str = "kubernetes://api-creds-cacert";

/// The external server's CA and the server certificate it issued for [`ORIGIN`].
fn internet_ca() -> (DevCa, IssuedCert) {
    let ca = DevCa::new("internet-ca").unwrap();
    let server = ca
        .issue_with_dns(
            &filters::model::Identity::new("cluster.local", "internet", "api"),
            ORIGIN,
        )
        .unwrap();
    (ca, server)
}

/// A client certificate from `ca` (what the Secret `api-creds` holds for MUTUAL).
fn client_cert(ca: &DevCa, name: &str) -> IssuedCert {
    ca.issue(&filters::model::Identity::new(
        "cluster.local",
        "default",
        name,
    ))
    .unwrap()
}

/// An external HTTPS server on a fresh loopback address; `mutual`: it requires a client
/// certificate signed by its CA.
async fn external(server: &IssuedCert, mutual: bool) -> TlsEcho {
    let certs = server.certs().unwrap();
    let addr = SocketAddr::new(testkit::free_loopback_ip(8443), 8443);
    let who = testkit::echo::EchoIdentity {
        pod: "tls-external".into(),
        namespace: "internet".into(),
    };
    if mutual {
        TlsEcho::start_mutual(addr, &certs, who).await.unwrap()
    } else {
        TlsEcho::start_simple(addr, &certs, who).await.unwrap()
    }
}

/// Port 8100's cluster as istiod's STRICT_DNS ServiceEntry cluster to `server`, with the
/// rule's TLS (`credentialName: api-creds`, `sni`) inside the `internal_upstream` socket.
fn credential_cluster(c: &mut serde_json::Value, server: SocketAddr, mutual: bool) {
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
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    let mut common = json!({
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
        "combined_validation_context": {
            "default_validation_context": {"match_subject_alt_names": [{"exact": ORIGIN}]},
            "validation_context_sds_secret_config": {"name": CA_SECRET, "sds_config": ads},
        },
    });
    if mutual {
        common["tls_certificate_sds_secret_configs"] =
            json!([{"name": CERT_SECRET, "sds_config": ads}]);
    }
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
                        "common_tls_context": common,
                        "sni": ORIGIN,
                    },
                },
            },
        }),
    );
}

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    })
}

fn any(s: &Secret) -> (String, Any) {
    (
        s.name.clone(),
        Any {
            type_url: SECRET.into(),
            value: s.encode_to_vec(),
        },
    )
}

/// `toEnvoyCaSecret` (pilot/pkg/xds/sds.go): the Secret's `ca.crt` as inline `trusted_ca`.
fn ca_secret(pem: &str) -> (String, Any) {
    any(&Secret {
        name: CA_SECRET.into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(pem),
                ..Default::default()
            },
        )),
    })
}

/// `toEnvoyTLSSecret` (pilot/pkg/xds/sds.go): `tls.crt` and `tls.key` inline.
fn cert_secret(cert: &IssuedCert) -> (String, Any) {
    any(&Secret {
        name: CERT_SECRET.into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&cert.chain_pem),
            private_key: inline(&cert.key_pem),
            ..Default::default()
        })),
    })
}

/// The leaf of a PEM chain, DER.
fn leaf_der(cert: &IssuedCert) -> Vec<u8> {
    rustls_pemfile::certs(&mut cert.chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec()
}

/// Sends until `GET /get` on 8100 answers `status` (ten seconds at most).
async fn until_status(w: &World, status: u16) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(w, 8100, "/get").await;
        if answer.status == status {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "still {} instead of {status}",
            answer.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the waypoint has counted a `503` with response flag `UF`.
async fn until_uf_counted(w: &World) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = testkit::process::http_get(w._wp.metrics, "/stats/prometheus")
            .await
            .unwrap()
            .1;
        if text.lines().any(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("response_code=\"503\"")
                && l.contains("response_flags=\"UF\"")
        }) {
            return;
        }
        assert!(Instant::now() < deadline, "no 503 UF counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn subscribed(w: &World, name: &str) -> bool {
    w.server
        .subscriptions()
        .iter()
        .any(|s| s.type_url == SECRET && s.subscribe.iter().any(|n| n == name))
}

#[tokio::test]
async fn simple_roots_come_from_the_kubernetes_secret_over_ads() {
    let (ca, server_cert) = internet_ca();
    let server = external(&server_cert, false).await;
    let addr = server.addr;
    let w =
        start(|_, cs, _| edit_cluster(cs, CLUSTER_8100, |c| credential_cluster(c, addr, false)))
            .await;
    // Before istiod sends the Secret's CA, nothing verifies the server: 503 UF.
    assert_eq!(get(&w, 8100, "/get").await.status, 503);
    until_uf_counted(&w).await;
    assert!(subscribed(&w, CA_SECRET), "{:?}", w.server.subscriptions());
    assert!(
        !subscribed(&w, CERT_SECRET),
        "SIMPLE presents no certificate"
    );
    w.server.set(SECRET, vec![ca_secret(&ca.root_pem())]);
    let answer = until_status(&w, 200).await;
    assert_eq!(answer.echo()["pod"], "tls-external");
    let names = server.server_names();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|n| n.as_deref() == Some(ORIGIN)),
        "{names:?}"
    );
    assert!(
        server.client_certificates().iter().all(Option::is_none),
        "SIMPLE: no client certificate"
    );
    assert!(
        w.server.replies().iter().all(|r| r.error.is_none()),
        "nothing NACKed: {:?}",
        w.server.replies()
    );
    // istiod pushes the Secret with another CA: new connections no longer verify.
    let other = DevCa::new("other-ca").unwrap().root_pem();
    w.server.set(SECRET, vec![ca_secret(&other)]);
    until_status(&w, 503).await;
}

#[tokio::test]
async fn mutual_presents_the_secrets_certificate_and_a_rotated_one_on_new_connections() {
    let (ca, server_cert) = internet_ca();
    let server = external(&server_cert, true).await;
    let addr = server.addr;
    let w = start(|_, cs, _| edit_cluster(cs, CLUSTER_8100, |c| credential_cluster(c, addr, true)))
        .await;
    let wait = Instant::now() + Duration::from_secs(10);
    while !(subscribed(&w, CA_SECRET) && subscribed(&w, CERT_SECRET)) {
        assert!(Instant::now() < wait, "{:?}", w.server.subscriptions());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only the CA so far: the waypoint has no certificate to present, nothing goes out.
    w.server.set(SECRET, vec![ca_secret(&ca.root_pem())]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&w, 8100, "/get").await.status, 503);
    let first = client_cert(&ca, "client-1");
    w.server
        .set(SECRET, vec![ca_secret(&ca.root_pem()), cert_secret(&first)]);
    let answer = until_status(&w, 200).await;
    assert_eq!(answer.echo()["pod"], "tls-external");
    let seen = server.client_certificates();
    assert_eq!(
        seen.last().cloned().flatten(),
        Some(leaf_der(&first)),
        "the server saw the Secret's certificate"
    );
    assert!(w.server.replies().iter().all(|r| r.error.is_none()));
    // `/config_dump` lists the secrets as Envoy does: the chain, the key redacted.
    let (code, dump) = testkit::process::http_get(w._wp.admin, "/config_dump")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let secrets = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.SecretsConfigDump")
        .unwrap()["dynamic_active_secrets"]
        .as_array()
        .unwrap()
        .clone();
    let listed = |name: &str| secrets.iter().find(|s| s["name"] == name).cloned();
    let cert = listed(CERT_SECRET).expect("the certificate secret is dumped");
    assert!(listed(CA_SECRET).is_some(), "the CA secret is dumped");
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let tls = &cert["secret"]["tls_certificate"];
    assert_eq!(
        tls["certificate_chain"]["inline_bytes"],
        b64(&first.chain_pem)
    );
    assert_eq!(tls["private_key"]["inline_bytes"], b64("[redacted]"));
    // Rotation: istiod pushes the Secret with a new certificate; the next connections
    // present it.
    let second = client_cert(&ca, "client-2");
    let before = seen.len();
    w.server.set(
        SECRET,
        vec![ca_secret(&ca.root_pem()), cert_secret(&second)],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(get(&w, 8100, "/get").await.status, 200);
        let seen = server.client_certificates();
        if seen[before..]
            .iter()
            .any(|c| c.as_deref() == Some(&leaf_der(&second)[..]))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate never went out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A certificate from a CA the server does not trust is refused by the server.
    let stranger = client_cert(&DevCa::new("stranger-ca").unwrap(), "client-3");
    w.server.set(
        SECRET,
        vec![ca_secret(&ca.root_pem()), cert_secret(&stranger)],
    );
    until_status(&w, 503).await;
}

#[tokio::test]
async fn a_secret_with_a_field_the_waypoint_does_not_implement_is_nacked_by_field() {
    let (ca, server_cert) = internet_ca();
    let server = external(&server_cert, true).await;
    let addr = server.addr;
    let w = start(|_, cs, _| edit_cluster(cs, CLUSTER_8100, |c| credential_cluster(c, addr, true)))
        .await;
    let cert = client_cert(&ca, "client-1");
    // istiod adds an OCSP staple when the Secret has `tls.ocsp-staple` (toEnvoyTLSSecret).
    let mut s = Secret::decode(cert_secret(&cert).1.value.as_slice()).unwrap();
    if let Some(secret::Type::TlsCertificate(t)) = &mut s.r#type {
        t.ocsp_staple = inline("staple");
    }
    w.server
        .set(SECRET, vec![ca_secret(&ca.root_pem()), any(&s)]);
    let e = nack(&w).await;
    assert!(
        e.contains(CERT_SECRET) && e.contains("tls_certificate.ocsp_staple"),
        "{e}"
    );
    // The valid CA secret of the same response is applied, the other is not: still 503.
    assert_eq!(get(&w, 8100, "/get").await.status, 503);
}

#[tokio::test]
async fn secrets_no_cluster_names_are_unsubscribed() {
    let (ca, server_cert) = internet_ca();
    let server = external(&server_cert, true).await;
    let addr = server.addr;
    let mut clusters = None;
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| credential_cluster(c, addr, true));
        clusters = Some(cs.clone());
    })
    .await;
    let cert = client_cert(&ca, "client-1");
    w.server
        .set(SECRET, vec![ca_secret(&ca.root_pem()), cert_secret(&cert)]);
    until_status(&w, 200).await;
    // The rule loses its `tls`: istiod sends the cluster without the TLS context.
    let mut cs = clusters.unwrap();
    edit_cluster(&mut cs, CLUSTER_8100, |c| {
        c.as_object_mut().unwrap().remove("transport_socket");
    });
    w.server.set(CLUSTER, cs);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gone: Vec<String> = w
            .server
            .subscriptions()
            .into_iter()
            .filter(|s| s.type_url == SECRET)
            .flat_map(|s| s.unsubscribe)
            .collect();
        if gone.contains(&CA_SECRET.to_string()) && gone.contains(&CERT_SECRET.to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", w.server.subscriptions());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rule's TLS towards a mesh pod, inside the HBONE tunnel: the `internal_upstream`
/// socket of the EDS cluster wrapping the same `UpstreamTlsContext` (MUTUAL,
/// `credentialName: api-creds`, `subjectAltNames` the pod's SPIFFE identity, `sni` the
/// Service host).
fn pod_socket(san: &str) -> serde_json::Value {
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
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
                        "tls_certificate_sds_secret_configs": [{"name": CERT_SECRET, "sds_config": ads}],
                        "combined_validation_context": {
                            "default_validation_context": {"match_subject_alt_names": [{"exact": san}]},
                            "validation_context_sds_secret_config": {"name": CA_SECRET, "sds_config": ads},
                        },
                    },
                    "sni": HOST,
                },
            },
        },
    })
}

#[tokio::test]
async fn mutual_to_a_pod_inside_the_tunnel_uses_the_secrets() {
    // A pod whose app speaks only mutual TLS, with a certificate for its SPIFFE identity.
    let ca = DevCa::new("app-ca").unwrap();
    let app_cert = ca
        .issue(&filters::model::Identity::new(
            "cluster.local",
            "default",
            "httpbin",
        ))
        .unwrap();
    let app = TlsEcho::start(
        &app_cert.certs().unwrap(),
        testkit::echo::EchoIdentity {
            pod: "httpbin-tls".into(),
            namespace: "default".into(),
        },
    )
    .await
    .unwrap();
    let socket = pod_socket("spiffe://cluster.local/ns/default/sa/httpbin");
    let w = start_with_pod(Some(App::Forward(app.addr)), |_, cs, es, extra| {
        set_only_endpoint(es, CLUSTER_8100, extra.unwrap());
        edit_cluster(cs, CLUSTER_8100, |c| c["transport_socket"] = socket);
    })
    .await;
    assert_eq!(get(&w, 8100, "/get").await.status, 503, "no secrets yet");
    let client = client_cert(&ca, "waypoint-client");
    w.server.set(
        SECRET,
        vec![ca_secret(&ca.root_pem()), cert_secret(&client)],
    );
    let answer = until_status(&w, 200).await;
    assert_eq!(answer.echo()["pod"], "httpbin-tls");
    assert_eq!(
        app.client_certificates().last().cloned().flatten(),
        Some(leaf_der(&client)),
        "the pod saw the Secret's certificate"
    );
    assert_eq!(
        app.server_names().last().cloned().flatten().as_deref(),
        Some(HOST)
    );
}
