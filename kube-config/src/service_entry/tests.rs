//! The local ServiceEntry's translation and its refusals.

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
"#;

fn entry(spec: &str) -> String {
    format!(
        "{MESH}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api\n  namespace: egress\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n{spec}"
    )
}

fn snap(text: &str) -> Result<filters::Snapshot, LocalConfigError> {
    translate(&parse(text)?, &SourceOptions::default(), 1, "test".into())
}

const STATIC: &str = "  hosts: [api.example.test]\n  addresses: [240.0.0.1]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  exportTo: ['.']\n  ports:\n  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}\n  - {number: 9000, name: tcp, protocol: TCP}\n  endpoints:\n  - address: 127.0.0.7\n  - address: 127.0.0.8\n    ports: {http: 8081}\n    labels: {app: api}\n";

#[test]
fn static_entry_is_a_served_service_with_plain_tcp_endpoints() {
    let s = snap(&entry(STATIC)).unwrap();
    let svc = &s.services()["egress/api.example.test"];
    assert!(svc.served);
    assert_eq!(svc.hostname, "api.example.test");
    assert_eq!(
        svc.vips,
        vec!["240.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    let http = svc.port(80).unwrap();
    assert_eq!(http.protocol, filters::model::Protocol::Http);
    let addrs: Vec<String> = http
        .endpoints
        .iter()
        .map(|e| e.address().unwrap().to_string())
        .collect();
    assert_eq!(addrs, ["127.0.0.7:8080", "127.0.0.8:8081"]);
    assert!(http.endpoints.iter().all(|e| !e.workload.hbone));
    assert_eq!(http.endpoints[1].workload.labels["app"], "api");
    let tcp = svc.port(9000).unwrap();
    assert_eq!(tcp.protocol, filters::model::Protocol::Tcp);
    assert_eq!(
        tcp.endpoints[0].address().unwrap().to_string(),
        "127.0.0.7:9000"
    );
    assert!(s.resolve("240.0.0.1:80".parse().unwrap()).is_some());
}

#[test]
fn without_the_label_it_is_known_but_not_served() {
    let text = entry(STATIC).replace("  labels: {istio.io/use-waypoint: waypoint}\n", "");
    let s = snap(&text).unwrap();
    assert!(!s.services()["egress/api.example.test"].served);
    assert!(s.resolve("240.0.0.1:80".parse().unwrap()).is_none());
}

#[test]
fn dns_round_robin_uses_the_first_endpoint_and_dns_all() {
    let rr = STATIC.replace("STATIC", "DNS_ROUND_ROBIN");
    let s = snap(&entry(&rr)).unwrap();
    assert_eq!(
        s.services()["egress/api.example.test"]
            .port(80)
            .unwrap()
            .endpoints
            .len(),
        1
    );
    let dns = STATIC.replace("STATIC", "DNS");
    let s = snap(&entry(&dns)).unwrap();
    assert_eq!(
        s.services()["egress/api.example.test"]
            .port(80)
            .unwrap()
            .endpoints
            .len(),
        2
    );
}

fn refused(spec: &str) -> String {
    snap(&entry(spec)).unwrap_err().to_string()
}

#[test]
fn fields_not_implemented_or_invalid_are_refused_by_name() {
    let object = "ServiceEntry egress/api (document 3)";
    for (from, to, field) in [
        ("resolution: STATIC", "resolution: NONE", "spec.endpoints"),
        (
            "resolution: STATIC",
            "resolution: DYNAMIC_DNS",
            "spec.hosts[0]",
        ),
        (
            "resolution: STATIC",
            "resolution: SOMETIMES",
            "spec.resolution",
        ),
        (
            "exportTo: ['.']",
            "workloadSelector: {labels: {a: b}}",
            "spec.endpoints",
        ),
        (
            "exportTo: ['.']",
            "workloadSelector: {labelz: {a: b}}",
            "spec.workloadSelector",
        ),
        ("exportTo: ['.']", "exportTo: ['.']\n  hostz: [a]", "spec"),
        ("[api.example.test]", "['*.example.test']", "spec.hosts[0]"),
        ("[api.example.test]", "[a.test, b.test]", "spec.addresses"),
        ("[api.example.test]", "[a.test, a.test]", "spec.hosts[1]"),
        ("[240.0.0.1]", "[240.0.0.0/33]", "spec.addresses[0]"),
        ("[240.0.0.1]", "[240.0.0.1, a.test]", "spec.addresses[1]"),
        ("number: 9000", "number: 70000", "spec.ports[1].number"),
        (
            "targetPort: 8080",
            "targetPort: 0",
            "spec.ports[0].targetPort",
        ),
        (
            "address: 127.0.0.7",
            "address: api.example.test",
            "spec.endpoints[0].address",
        ),
        (
            "labels: {app: api}",
            "weight: 3",
            "spec.endpoints[1].weight",
        ),
        (
            "labels: {app: api}",
            "labelz: {app: api}",
            "spec.endpoints[1]",
        ),
    ] {
        assert!(STATIC.contains(from), "{from}");
        let err = refused(&STATIC.replace(from, to));
        assert!(
            err.starts_with(&format!("{object}: {field}")),
            "{to}: {err}"
        );
    }
    let two_names = STATIC
        .replace("STATIC", "DNS")
        .replace("address: 127.0.0.8", "address: b.example.test");
    assert!(refused(&two_names).starts_with(
        "ServiceEntry egress/api (document 3): spec.endpoints[1].address: a host name among several"
    ));
}

#[test]
fn dns_names_become_targets_resolved_outside_the_snapshot() {
    let named = STATIC
        .replace("STATIC", "DNS_ROUND_ROBIN")
        .replace("  - address: 127.0.0.7\n", "")
        .replace("address: 127.0.0.8", "address: backend.example.test");
    let s = snap(&entry(&named)).unwrap();
    let port = s.services()["egress/api.example.test"].port(80).unwrap();
    assert!(port.endpoints.is_empty());
    let dns = port.dns().unwrap();
    assert_eq!(
        (dns.hostname.as_str(), dns.port, dns.logical),
        ("backend.example.test", 8081, true)
    );
    assert_eq!(dns.workload.labels["app"], "api");
    assert!(!dns.workload.hbone);
    // No endpoints: the host itself, at the target port.
    let host = &STATIC[..STATIC.find("  endpoints:").unwrap()].replace("STATIC", "DNS");
    let s = snap(&entry(host)).unwrap();
    let dns = s.services()["egress/api.example.test"]
        .port(80)
        .unwrap()
        .dns()
        .unwrap();
    assert_eq!(
        (dns.hostname.as_str(), dns.port, dns.logical),
        ("api.example.test", 8080, false)
    );
}

const WILDCARD: &str = "  hosts: ['*.example.test']\n  location: MESH_EXTERNAL\n  resolution: DYNAMIC_DNS\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n";
const ALLOCATED: &str = "status:\n  addresses:\n  - {value: 240.240.0.9, host: '*.example.test'}\n";

#[test]
fn dynamic_dns_is_a_forward_proxy_on_the_allocated_address() {
    let s = snap(&format!("{}{ALLOCATED}", entry(WILDCARD))).unwrap();
    let svc = &s.services()["egress/*.example.test"];
    assert_eq!(
        svc.vips,
        vec!["240.240.0.9".parse::<std::net::IpAddr>().unwrap()]
    );
    let fp = svc.port(80).unwrap().forward_proxy().unwrap();
    assert_eq!(fp.wildcard.as_deref(), Some("*.example.test"));
    assert_eq!(fp.max_hosts, filters::forward_proxy::DEFAULT_MAX_HOSTS);
    assert!(s.resolve("240.240.0.9:80".parse().unwrap()).is_some());
    let object = "ServiceEntry egress/api (document 3)";
    for (from, to, field) in [
        ("['*.example.test']", "[a.example.test]", "spec.hosts[0]"),
        ("['*.example.test']", "['*']", "spec.hosts[0]"),
        (
            "location: MESH_EXTERNAL",
            "addresses: [240.0.0.1]",
            "spec.addresses",
        ),
        (
            "location: MESH_EXTERNAL",
            "location: MESH_INTERNAL",
            "spec.location",
        ),
        (
            "location: MESH_EXTERNAL",
            "endpoints: [{address: 127.0.0.1}]",
            "spec.endpoints",
        ),
        ("protocol: HTTP", "protocol: TCP", "spec.ports[0].protocol"),
    ] {
        assert!(WILDCARD.contains(from), "{from}");
        let err = refused(&WILDCARD.replace(from, to));
        assert!(
            err.starts_with(&format!("{object}: {field}")),
            "{to}: {err}"
        );
    }
    let bad = snap(&format!(
        "{}{}",
        entry(WILDCARD),
        ALLOCATED.replace("240.240.0.9", "nope")
    ))
    .unwrap_err()
    .to_string();
    assert!(
        bad.starts_with(&format!("{object}: status.addresses[0].value")),
        "{bad}"
    );
}

#[test]
fn resolution_none_sends_to_the_original_destination_at_the_target_port() {
    let none = &STATIC[..STATIC.find("  endpoints:").unwrap()].replace("STATIC", "NONE");
    let s = snap(&entry(none)).unwrap();
    let svc = &s.services()["egress/api.example.test"];
    let http = svc.port(80).unwrap();
    assert!(http.endpoints.is_empty());
    assert_eq!(http.original_dst().unwrap().port_override, Some(8080));
    assert_eq!(
        svc.port(9000)
            .unwrap()
            .original_dst()
            .unwrap()
            .port_override,
        None
    );
    // Wildcard hosts are fine with NONE (the address decides).
    let wild = none.replace("[api.example.test]", "['*.example.test']");
    assert!(snap(&entry(&wild)).is_ok());
}

#[test]
fn each_host_is_a_service_with_the_addresses_allocated_to_it() {
    let two = "  hosts: [a.example.test, b.example.test]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n";
    let status = "status:\n  addresses:\n  - {value: 240.240.0.1, host: a.example.test}\n  - {value: 240.240.0.2, host: b.example.test}\n";
    let s = snap(&format!("{}{status}", entry(two))).unwrap();
    for (host, vip) in [
        ("a.example.test", "240.240.0.1"),
        ("b.example.test", "240.240.0.2"),
    ] {
        let svc = &s.services()[&format!("egress/{host}")];
        assert_eq!(svc.vips, vec![vip.parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(svc.port(80).unwrap().dns().unwrap().hostname, host);
        let target = s.resolve(format!("{vip}:80").parse().unwrap()).unwrap();
        let filters::model::Target::Service { service, .. } = target else {
            panic!("a Service")
        };
        assert_eq!(service.hostname, host);
    }
}

#[test]
fn headless_services_send_to_the_original_destination() {
    let text = format!(
        "{MESH}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: db\n  namespace: egress\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  clusterIP: None\n  selector: {{app: db}}\n  ports:\n  - {{name: tcp, port: 5432}}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: db-0\n  namespace: egress\n  labels: {{app: db}}\nspec:\n  containers: [{{name: db}}]\nstatus:\n  podIP: 127.0.9.1\n  conditions: [{{type: Ready, status: 'True'}}]\n"
    );
    let s = snap(&text).unwrap();
    let svc = &s.services()["egress/db"];
    assert!(svc.vips.is_empty());
    let port = svc.port(5432).unwrap();
    assert!(port.endpoints.is_empty());
    assert_eq!(port.original_dst().unwrap().port_override, None);
}

#[test]
fn a_destination_rule_for_the_host_applies() {
    let text = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: egress}}\nspec:\n  host: api.example.test\n  trafficPolicy:\n    connectionPool:\n      http: {{http2MaxRequests: 7}}\n",
        entry(STATIC)
    );
    let s = snap(&text).unwrap();
    let port = s.services()["egress/api.example.test"].port(80).unwrap();
    assert_eq!(port.max_requests(), Some(7));
}

#[test]
fn a_cidr_address_serves_every_address_inside_it() {
    let cidr = STATIC.replace("[240.0.0.1]", "[240.0.0.9/24, 240.0.1.1]");
    let s = snap(&entry(&cidr)).unwrap();
    let svc = &s.services()["egress/api.example.test"];
    assert_eq!(svc.ranges, vec!["240.0.0.0/24".parse().unwrap()], "masked");
    assert_eq!(
        svc.vips,
        vec!["240.0.1.1".parse::<std::net::IpAddr>().unwrap()]
    );
    for inside in [
        "240.0.0.0:80",
        "240.0.0.77:80",
        "240.0.0.255:9000",
        "240.0.1.1:80",
    ] {
        match s.resolve(inside.parse().unwrap()) {
            Some(filters::model::Target::Service { service, port }) => {
                assert_eq!(service.hostname, "api.example.test");
                assert_eq!(
                    port,
                    inside.rsplit(':').next().unwrap().parse::<u16>().unwrap()
                );
            }
            other => panic!("{inside}: {other:?}"),
        }
    }
    for outside in ["240.0.1.2:80", "240.0.0.77:81"] {
        assert!(s.resolve(outside.parse().unwrap()).is_none(), "{outside}");
    }
    // NONE keeps the range too; DNS refuses it, as istiod's validation does.
    let none = cidr
        .replace("resolution: STATIC", "resolution: NONE")
        .split("  endpoints:")
        .next()
        .unwrap()
        .to_string();
    let s = snap(&entry(&none)).unwrap();
    assert!(s.resolve("240.0.0.3:80".parse().unwrap()).is_some());
    let err = refused(&cidr.replace("resolution: STATIC", "resolution: DNS"));
    assert!(
        err.contains("spec.addresses[0]") && err.contains("NONE/STATIC"),
        "{err}"
    );
}
