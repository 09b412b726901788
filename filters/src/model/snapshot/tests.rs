use super::*;

#[test]
fn bound_lists_gateway_then_service_and_copies_only_when_both_have_some() {
    use std::borrow::Cow;
    let (gw, svc, none) = (vec![1, 2], vec![3], Vec::new());
    assert!(matches!(bound(&gw, None), Cow::Borrowed([1, 2])));
    assert!(matches!(bound(&gw, Some(&none)), Cow::Borrowed([1, 2])));
    assert!(matches!(bound(&[], Some(&svc)), Cow::Borrowed([3])));
    assert!(matches!(bound(&gw, Some(&svc)), Cow::Owned(v) if v == [1, 2, 3]));
}

#[test]
fn stack_keys_match_formatted_ones() {
    for (ns, name) in [("default", "echo"), ("a", ""), ("n", &"x".repeat(500)[..])] {
        let svc = NamespacedName::new(ns, name);
        for port in [0u16, 7, 80, 9080, 65535] {
            assert_eq!(
                with_key(&svc, Some(port), str::to_string),
                route_key(&svc, port)
            );
        }
        assert_eq!(with_key(&svc, None, str::to_string), svc.to_string());
    }
}

fn workload(ns: &str, name: &str, ip: &str, served: bool) -> Arc<Workload> {
    Arc::new(Workload {
        name: NamespacedName::new(ns, name),
        ips: vec![ip.parse().unwrap()],
        identity: Identity::new("cluster.local", ns, "default"),
        labels: BTreeMap::new(),
        hbone: true,
        served,
        named_ports: BTreeMap::new(),
    })
}

fn service(name: &str, vip: &str, port: u16) -> Service {
    Service {
        name: NamespacedName::new("default", name),
        hostname: format!("{name}.default.svc.cluster.local"),
        vips: vec![vip.parse().unwrap()],
        ranges: Vec::new(),
        ports: vec![ServicePort::new(
            Some("http".into()),
            port,
            TargetPort::Number(8080),
            Protocol::Http,
            vec![],
        )],
        served: true,
    }
}

fn waypoint() -> Waypoint {
    Waypoint {
        gateway: NamespacedName::new("default", "waypoint"),
        trust_domain: "cluster.local".into(),
    }
}

fn snapshot(
    services: Vec<Service>,
    workloads: Vec<Arc<Workload>>,
) -> Result<Snapshot, ConflictingAddress> {
    let mut parts = SnapshotParts::empty(1, "test".into(), waypoint());
    parts.services = services.into_iter().map(Arc::new).collect();
    parts.workloads = workloads;
    Snapshot::new(parts)
}

#[test]
fn resolves_vips_and_served_pods_only() {
    let snap = snapshot(
        vec![service("a", "127.96.0.1", 80)],
        vec![
            workload("default", "served", "127.128.0.1", true),
            workload("default", "other", "127.128.0.2", false),
        ],
    )
    .unwrap();
    assert!(matches!(
        snap.resolve("127.96.0.1:80".parse().unwrap()),
        Some(Target::Service { port: 80, .. })
    ));
    assert!(snap.resolve("127.96.0.1:81".parse().unwrap()).is_none());
    assert!(matches!(
        snap.resolve("127.128.0.1:9000".parse().unwrap()),
        Some(Target::Workload { port: 9000, .. })
    ));
    assert!(snap.resolve("127.128.0.2:9000".parse().unwrap()).is_none());
}

#[test]
fn rejects_duplicate_vip_port() {
    let err = snapshot(
        vec![
            service("a", "127.96.0.1", 80),
            service("b", "127.96.0.1", 80),
        ],
        vec![],
    )
    .unwrap_err();
    assert_eq!(err.address, "127.96.0.1:80");
    assert_eq!(err.second, "Service default/b");
}

#[test]
fn ranges_serve_every_address_inside_after_vips_and_pods_longest_first() {
    let ranged = |name: &str, net: &str, port: u16| Service {
        vips: Vec::new(),
        ranges: vec![net.parse().unwrap()],
        ..service(name, "127.96.0.1", port)
    };
    let name = |t: Option<Target>| match t {
        Some(Target::Service { service, port }) => format!("{}:{port}", service.name.name),
        Some(Target::Workload { workload, port }) => {
            format!("pod {}:{port}", workload.name.name)
        }
        None => "none".into(),
    };
    let snap = snapshot(
        vec![
            ranged("wide", "127.97.0.0/16", 80),
            ranged("narrow", "127.97.1.0/24", 80),
            service("exact", "127.97.1.10", 80),
        ],
        vec![workload("default", "pod", "127.97.1.20", true)],
    )
    .unwrap();
    let at = |a: &str| name(snap.resolve(a.parse().unwrap()));
    assert_eq!(at("127.97.1.10:80"), "exact:80");
    assert_eq!(at("127.97.1.20:80"), "pod pod:80");
    assert_eq!(at("127.97.1.99:80"), "narrow:80");
    assert_eq!(at("127.97.200.1:80"), "wide:80");
    assert_eq!(at("127.98.0.1:80"), "none");
    assert_eq!(at("127.97.1.99:81"), "none");
    let err = snapshot(
        vec![
            ranged("a", "127.97.0.0/24", 80),
            ranged("b", "127.97.0.0/24", 80),
        ],
        vec![],
    )
    .unwrap_err();
    assert_eq!(err.address, "127.97.0.0/24");
}
