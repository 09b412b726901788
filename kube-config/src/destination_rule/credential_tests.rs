//! DestinationRule `tls.credentialName`: a Secret of the configuration in the rule's
//! namespace, read as istiod reads it (pilot/pkg/credentials/kube/secrets.go).

use base64::Engine as _;
use filters::model::{ClientCertificate, TlsRoots, UpstreamTls};
use filters::SourceOptions;

use crate::{parse, translate, LocalConfigError};

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: egress}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: egress}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
  namespace: egress
  labels: {istio.io/use-waypoint: waypoint}
spec:
  hosts: [api.example.test]
  addresses: [240.0.0.1]
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 443}
  endpoints:
  - address: 127.0.0.7
"#;

struct Pems {
    ca: String,
    /// An empty revocation list signed by the CA.
    crl: String,
    chain: String,
    key: String,
}

fn pems() -> Pems {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["client.example.test".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca, &ca_key)
    .unwrap()
    .pem()
    .unwrap();
    Pems {
        crl,
        ca: ca.pem(),
        chain: leaf.pem(),
        key: key.serialize_pem(),
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A `kubernetes.io/tls` Secret with base64 `data`.
fn tls_secret(name: &str, ns: &str, p: &Pems, with_ca: bool) -> String {
    let ca = if with_ca {
        format!("  ca.crt: {}\n", b64(&p.ca))
    } else {
        String::new()
    };
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n{ca}",
        b64(&p.chain),
        b64(&p.key)
    )
}

fn rule(tls: &str) -> String {
    format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: egress}}\nspec:\n  host: api.example.test\n  trafficPolicy:\n    tls:\n{tls}")
}

fn snap(text: &str) -> Result<filters::Snapshot, LocalConfigError> {
    translate(&parse(text)?, &SourceOptions::default(), 1, "test".into())
}

fn tls(text: &str) -> UpstreamTls {
    snap(text).unwrap().services()["egress/api.example.test"]
        .port(80)
        .unwrap()
        .tls
        .as_deref()
        .cloned()
        .unwrap()
}

fn refusal(text: &str) -> String {
    snap(text).unwrap_err().to_string()
}

#[test]
fn mutual_takes_the_certificate_key_and_ca_from_the_secret() {
    let p = pems();
    let text = format!(
        "{MESH}{}{}",
        tls_secret("creds", "egress", &p, true),
        rule("      mode: MUTUAL\n      credentialName: creds\n      sni: origin.example.test\n")
    );
    let t = tls(&text);
    assert_eq!(t.roots, TlsRoots::Pem(p.ca.clone()));
    match &t.client_certificate {
        Some(ClientCertificate::Pem { chain, key }) => {
            assert_eq!(chain, &p.chain);
            assert_eq!(key.expose(), p.key);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.sni.as_deref(), Some("origin.example.test"));
    // The key shows in no dump of the configuration.
    let dump = serde_json::to_string(&snap(&text).unwrap()).unwrap();
    assert!(
        !dump.contains(p.key.lines().nth(1).unwrap()),
        "key in the dump"
    );
    let debug = format!("{:?}", parse(&text).unwrap());
    assert!(!debug.contains(&b64(&p.key)), "key in Debug");
}

#[test]
fn simple_prefers_the_cacert_secret_and_reads_generic_keys_and_string_data() {
    let p = pems();
    let other = pems();
    // `<name>-cacert` first (GetCaCert), with the generic key `cacert` in stringData.
    let indented: String = other.ca.lines().map(|l| format!("    {l}\n")).collect();
    let cacert = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: creds-cacert, namespace: egress}}\nstringData:\n  cacert: |\n{indented}"
    );
    let text = format!(
        "{MESH}{}{cacert}{}",
        tls_secret("creds", "egress", &p, true),
        rule("      mode: SIMPLE\n      credentialName: kubernetes://creds\n")
    );
    let t = tls(&text);
    assert_eq!(t.roots, TlsRoots::Pem(other.ca.clone()));
    assert!(t.client_certificate.is_none(), "SIMPLE presents nothing");
    assert!(t.auto_sni && t.auto_san_validation);
    // Without it, the Secret's own ca.crt.
    let text = format!(
        "{MESH}{}{}",
        tls_secret("creds", "egress", &p, true),
        rule("      mode: SIMPLE\n      credentialName: kubernetes://egress/creds\n")
    );
    assert_eq!(tls(&text).roots, TlsRoots::Pem(p.ca.clone()));
    // MUTUAL with insecureSkipVerify: the certificate, no verification.
    let text = format!(
        "{MESH}{}{}",
        tls_secret("creds", "egress", &p, false),
        rule("      mode: MUTUAL\n      credentialName: creds\n      insecureSkipVerify: true\n")
    );
    let t = tls(&text);
    assert_eq!(t.roots, TlsRoots::Insecure);
    assert!(!t.auto_san_validation);
    assert!(t.client_certificate.is_some());
}

#[test]
fn a_missing_or_unusable_secret_refuses_the_configuration_naming_it() {
    let p = pems();
    let simple = rule("      mode: SIMPLE\n      credentialName: creds\n");
    // No Secret at all, or only in another namespace.
    for extra in [String::new(), tls_secret("creds", "default", &p, true)] {
        let e = refusal(&format!("{MESH}{extra}{simple}"));
        assert!(
            e.contains("DestinationRule egress/api")
                && e.contains("spec.trafficPolicy.tls.credentialName")
                && e.contains("no Secret egress/creds"),
            "{e}"
        );
    }
    // No CA bundle for SIMPLE.
    let e = refusal(&format!(
        "{MESH}{}{simple}",
        tls_secret("creds", "egress", &p, false)
    ));
    assert!(
        e.contains("Secret egress/creds (and no Secret egress/creds-cacert): no CA bundle"),
        "{e}"
    );
    // MUTUAL without a certificate in it.
    let cacert_only = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: creds, namespace: egress}}\ndata:\n  ca.crt: {}\n",
        b64(&p.ca)
    );
    let e = refusal(&format!(
        "{MESH}{cacert_only}{}",
        rule("      mode: MUTUAL\n      credentialName: creds\n")
    ));
    assert!(
        e.contains("Secret egress/creds") && e.contains("no client certificate"),
        "{e}"
    );
    // Not base64.
    let broken = tls_secret("creds", "egress", &p, true).replace("ca.crt: ", "ca.crt: x*");
    let e = refusal(&format!("{MESH}{broken}{simple}"));
    assert!(e.contains("data.ca.crt") && e.contains("not base64"), "{e}");
    // A `ca.crl` that holds no CRL.
    let crl = format!(
        "{}  ca.crl: {}\n",
        tls_secret("creds", "egress", &p, true),
        b64("crl")
    );
    let e = refusal(&format!("{MESH}{crl}{simple}"));
    assert!(
        e.contains("data.ca.crl") && e.contains("no X509 CRL block"),
        "{e}"
    );
    // A CRL under the key istiod reads with the other bundle key (`crl` goes with
    // `cacert`), which istiod would ignore.
    let crl = format!(
        "{}  crl: {}\n",
        tls_secret("creds", "egress", &p, true),
        b64(&p.crl)
    );
    let e = refusal(&format!("{MESH}{crl}{simple}"));
    assert!(e.contains("data.crl") && e.contains("ignore"), "{e}");
    // Another namespace by name.
    let e = refusal(&format!(
        "{MESH}{}{}",
        tls_secret("creds", "default", &p, true),
        rule("      mode: SIMPLE\n      credentialName: kubernetes://default/creds\n")
    ));
    assert!(e.contains("rule's namespace"), "{e}");
}

#[test]
fn fields_beside_credential_name_and_unknown_secret_fields_are_refused() {
    let p = pems();
    let secret = tls_secret("creds", "egress", &p, true);
    let e =
        refusal(&format!(
        "{MESH}{secret}{}",
        rule("      mode: SIMPLE\n      credentialName: creds\n      caCertificates: /etc/ca.pem\n")
    ));
    assert!(e.contains("spec.trafficPolicy.tls.caCertificates"), "{e}");
    let e = refusal(&format!(
        "{MESH}{secret}{}",
        rule("      mode: SIMPLE\n      credentialName: creds\n      insecureSkipVerify: true\n")
    ));
    assert!(
        e.contains("spec.trafficPolicy.tls.insecureSkipVerify"),
        "{e}"
    );
    let typo = secret.replace("type: kubernetes.io/tls", "typ: kubernetes.io/tls");
    let e = refusal(&format!(
        "{MESH}{typo}{}",
        rule("      mode: SIMPLE\n      credentialName: creds\n")
    ));
    assert!(
        e.contains("Secret egress/creds") && e.contains("typ"),
        "{e}"
    );
    let e = refusal(&format!(
        "{MESH}{secret}{}",
        rule("      mode: SIMPLE\n      credentialName: configmap://egress/ca\n")
    ));
    assert!(e.contains("credentialName"), "{e}");
}

#[test]
fn the_secrets_crl_and_the_rules_ca_crl_file_are_checked() {
    use filters::model::Crl;
    let p = pems();
    let simple = rule("      mode: SIMPLE\n      credentialName: creds\n");
    // `ca.crl` with `ca.crt` (`ExtractRoot`, pilot/pkg/credentials/kube/secrets.go).
    let secret = format!(
        "{}  ca.crl: {}\n",
        tls_secret("creds", "egress", &p, true),
        b64(&p.crl)
    );
    let t = tls(&format!("{MESH}{secret}{simple}"));
    assert_eq!(t.roots, TlsRoots::Pem(p.ca.clone()));
    assert_eq!(t.crl, Some(Crl::Pem(p.crl.clone())));
    // `crl` with `cacert`, in `stringData`; an empty one is no list.
    let generic = |crl: &str| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: creds, namespace: egress}}\nstringData:\n  cacert: |\n{}  crl: \"{}\"\n",
            p.ca.lines().map(|l| format!("    {l}\n")).collect::<String>(),
            crl.replace('\n', "\\n")
        )
    };
    let t = tls(&format!("{MESH}{}{simple}", generic(&p.crl)));
    assert_eq!(t.crl, Some(Crl::Pem(p.crl.clone())));
    assert_eq!(tls(&format!("{MESH}{}{simple}", generic(""))).crl, None);
    // Without credentialName: `caCrl` is a file in the pod, next to the roots (the
    // system's without `caCertificates`), as istiod's `constructUpstreamTLS` writes it.
    let t = tls(&format!(
        "{MESH}{}",
        rule("      mode: SIMPLE\n      caCertificates: /etc/ca.pem\n      caCrl: /etc/ca.crl\n")
    ));
    assert_eq!(t.roots, TlsRoots::File("/etc/ca.pem".into()));
    assert_eq!(t.crl, Some(Crl::File("/etc/ca.crl".into())));
    let t = tls(&format!(
        "{MESH}{}",
        rule("      mode: SIMPLE\n      caCrl: /etc/ca.crl\n")
    ));
    assert_eq!(t.roots, TlsRoots::System);
    assert_eq!(t.crl, Some(Crl::File("/etc/ca.crl".into())));
    // `insecureSkipVerify` verifies nothing: istiod drops the CRL with the roots.
    let t = tls(&format!(
        "{MESH}{}",
        rule("      mode: SIMPLE\n      caCrl: /etc/ca.crl\n      insecureSkipVerify: true\n")
    ));
    assert_eq!((t.roots, t.crl), (TlsRoots::Insecure, None));
    // `caCrl` beside credentialName is refused, as Istio's validation does.
    let e = refusal(&format!(
        "{MESH}{secret}{}",
        rule("      mode: SIMPLE\n      credentialName: creds\n      caCrl: /etc/ca.crl\n")
    ));
    assert!(e.contains("spec.trafficPolicy.tls.caCrl"), "{e}");
}
