//! BackendTLSPolicy: what it originates, its precedence under a DestinationRule, and its
//! refusals.

use filters::model::{TlsRoots, UpstreamTls};
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
  - {number: 8080, name: grpc, protocol: GRPC, targetPort: 8443}
  endpoints:
  - address: 127.0.0.7
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: egress}
spec:
  clusterIP: 10.0.0.9
  ports:
  - {name: http, port: 80}
  - {name: https, port: 443}
"#;

fn ca_pem() -> String {
    rcgen::generate_simple_self_signed(vec!["ca.example.test".into()])
        .unwrap()
        .cert
        .pem()
}

fn config_map(name: &str, pem: &str) -> String {
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: egress}}\ndata:\n  ca.crt: |\n{indented}")
}

fn policy(name: &str, targets: &str, validation: &str) -> String {
    format!("---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: egress}}\nspec:\n  targetRefs:\n{targets}  validation:\n{validation}")
}

const ENTRY: &str = "  - {group: networking.istio.io, kind: ServiceEntry, name: api}\n";
const SYSTEM: &str = "    hostname: origin.example.test\n    wellKnownCACertificates: System\n";

fn snap(text: &str) -> Result<filters::Snapshot, LocalConfigError> {
    translate(&parse(text)?, &SourceOptions::default(), 1, "test".into())
}

fn tls(s: &filters::Snapshot, service: &str, port: u16) -> Option<UpstreamTls> {
    s.services()[service]
        .port(port)
        .unwrap()
        .tls
        .as_deref()
        .cloned()
}

fn refusal(text: &str) -> String {
    snap(text).unwrap_err().to_string()
}

#[test]
fn a_configmap_ca_and_the_hostname_become_sni_roots_and_san_check() {
    let pem = ca_pem();
    let text = format!(
        "{MESH}{}{}",
        config_map("ca", &pem),
        policy(
            "api",
            ENTRY,
            "    hostname: origin.example.test\n    caCertificateRefs:\n    - {group: '', kind: ConfigMap, name: ca}\n"
        )
    );
    let s = snap(&text).unwrap();
    let http = tls(&s, "egress/api.example.test", 80).unwrap();
    assert_eq!(http.sni.as_deref(), Some("origin.example.test"));
    assert!(!http.auto_sni);
    assert!(http.auto_san_validation, "the hostname must be the SAN");
    assert!(http.subject_alt_names.is_empty());
    assert!(matches!(&http.roots, TlsRoots::Pem(p) if p.contains(pem.trim())));
    assert!(http.alpn.is_empty());
    // The gRPC port offers h2, as istiod's HTTP/2 clusters do.
    assert_eq!(
        tls(&s, "egress/api.example.test", 8080).unwrap().alpn,
        ["h2"]
    );
}

#[test]
fn subject_alt_names_replace_the_hostname_check_and_system_roots_apply() {
    let text = format!(
        "{MESH}{}",
        policy(
            "api",
            ENTRY,
            &format!("{SYSTEM}    subjectAltNames:\n    - {{type: Hostname, hostname: san.example.test}}\n    - {{type: URI, uri: 'spiffe://td/ns/a/sa/b'}}\n")
        )
    );
    let t = tls(&snap(&text).unwrap(), "egress/api.example.test", 80).unwrap();
    assert_eq!(
        t.subject_alt_names,
        ["san.example.test", "spiffe://td/ns/a/sa/b"]
    );
    // The same policy as v1alpha3 (Istio 1.2x) reads the same.
    let alpha = text.replace(
        "gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy",
        "gateway.networking.k8s.io/v1alpha3\nkind: BackendTLSPolicy",
    );
    assert_ne!(alpha, text);
    let a = tls(&snap(&alpha).unwrap(), "egress/api.example.test", 80).unwrap();
    assert_eq!(a, t);
    assert!(!t.auto_san_validation);
    assert_eq!(t.roots, TlsRoots::System);
}

#[test]
fn a_section_name_applies_to_that_port_of_a_service_only() {
    let text = format!(
        "{MESH}{}",
        policy(
            "web",
            "  - {group: '', kind: Service, name: web, sectionName: https}\n",
            SYSTEM
        )
    );
    let s = snap(&text).unwrap();
    assert!(tls(&s, "egress/web", 443).is_some());
    assert!(tls(&s, "egress/web", 80).is_none());
    assert!(tls(&s, "egress/api.example.test", 80).is_none());
}

#[test]
fn a_destination_rule_tls_wins_and_the_policy_fills_the_gaps() {
    let rule = |tls: &str| {
        format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web, namespace: egress}}\nspec:\n  host: web.egress.svc.cluster.local\n  trafficPolicy:\n{tls}")
    };
    let whole = policy("all", "  - {kind: Service, name: web}\n", SYSTEM);
    let https = policy(
        "https",
        "  - {kind: Service, name: web, sectionName: https}\n",
        &SYSTEM.replace("origin", "port"),
    );
    let sni = |s: &filters::Snapshot, port| tls(s, "egress/web", port).and_then(|t| t.sni);
    // The rule's top-level tls beats the policy's whole-Service setting...
    let s = snap(&format!(
        "{MESH}{whole}{https}{}",
        rule("    tls: {mode: SIMPLE, sni: rule.example.test}\n")
    ))
    .unwrap();
    assert_eq!(sni(&s, 80).as_deref(), Some("rule.example.test"));
    // ...but not the policy's port-level one (istiod appends it to portLevelSettings).
    assert_eq!(sni(&s, 443).as_deref(), Some("port.example.test"));
    // A rule's port-level tls (even DISABLE) wins over everything for its port.
    let s = snap(&format!(
        "{MESH}{whole}{https}{}",
        rule("    portLevelSettings:\n    - port: {number: 443}\n      tls: {mode: DISABLE}\n")
    ))
    .unwrap();
    assert_eq!(sni(&s, 443), None);
    // A rule without tls leaves it to the policy.
    let s = snap(&format!(
        "{MESH}{whole}{}",
        rule("    loadBalancer: {simple: ROUND_ROBIN}\n")
    ))
    .unwrap();
    assert_eq!(sni(&s, 80).as_deref(), Some("origin.example.test"));
    assert_eq!(sni(&s, 443).as_deref(), Some("origin.example.test"));
}

#[test]
fn of_two_policies_for_one_target_the_first_by_name_wins() {
    let text = format!(
        "{MESH}{}{}",
        policy("b", ENTRY, &SYSTEM.replace("origin", "b")),
        policy("a", ENTRY, &SYSTEM.replace("origin", "a"))
    );
    let t = tls(&snap(&text).unwrap(), "egress/api.example.test", 80).unwrap();
    assert_eq!(t.sni.as_deref(), Some("a.example.test"));
}

#[test]
fn missing_targets_and_ignored_policies_have_no_effect() {
    let text = format!(
        "{MESH}{}{}",
        policy(
            "gone",
            "  - {kind: Service, name: nothing}\n  - {group: networking.istio.io, kind: ServiceEntry, name: api, sectionName: nope}\n",
            SYSTEM
        ),
        policy("ignored", ENTRY, SYSTEM).replace(
            "namespace: egress}",
            "namespace: egress, annotations: {istio.io/ignore-policy-attachment: 'true'}}"
        )
    );
    let s = snap(&text).unwrap();
    assert!(tls(&s, "egress/api.example.test", 80).is_none());
}

#[test]
fn unknown_and_unimplemented_fields_are_refused_by_name() {
    let cases = [
        (
            policy("p", ENTRY, &format!("{SYSTEM}    colour: red\n")),
            "spec.validation.colour",
        ),
        (
            format!("{}  options:\n    example.com/x: y\n", policy("p", ENTRY, SYSTEM)),
            "spec.options[example.com/x]",
        ),
        (
            policy("p", ENTRY, &SYSTEM.replace("System", "Mozilla")),
            "spec.validation.wellKnownCACertificates",
        ),
        (
            policy(
                "p",
                ENTRY,
                "    hostname: a.example.test\n    caCertificateRefs: [{group: '', kind: Secret, name: ca}]\n",
            ),
            "spec.validation.caCertificateRefs[0].kind",
        ),
        (
            policy(
                "p",
                ENTRY,
                "    hostname: a.example.test\n    caCertificateRefs: [{group: '', kind: ConfigMap, name: absent}]\n",
            ),
            "spec.validation.caCertificateRefs[0].name",
        ),
        (
            format!(
                "{}{}",
                config_map("bad", "not a certificate"),
                policy(
                    "p",
                    ENTRY,
                    "    hostname: a.example.test\n    caCertificateRefs: [{group: '', kind: ConfigMap, name: bad}]\n",
                )
            ),
            "spec.validation.caCertificateRefs[0].name",
        ),
        (
            policy("p", ENTRY, "    hostname: a.example.test\n"),
            "spec.validation",
        ),
        (
            policy("p", ENTRY, &SYSTEM.replace("origin.example.test", "10.0.0.1")),
            "spec.validation.hostname",
        ),
        (
            policy(
                "p",
                ENTRY,
                &format!("{SYSTEM}    subjectAltNames: [{{type: URI, hostname: a.example.test}}]\n"),
            ),
            "spec.validation.subjectAltNames[0].uri",
        ),
        (
            policy(
                "p",
                "  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}\n",
                SYSTEM,
            ),
            "spec.targetRefs[0].kind",
        ),
    ];
    for (text, field) in cases {
        let err = refusal(&format!("{MESH}{text}"));
        assert!(
            err.contains("BackendTLSPolicy egress/p") && err.contains(field),
            "{field}: {err}"
        );
    }
}
