//! TCP traffic shifting from the local configuration: a Gateway API `TCPRoute` (v1alpha2)
//! attached to a Service port sends each new TCP tunnel to one of its backendRefs, drawn
//! by weight; a zero-weight backendRef never gets a tunnel.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::*;
use testkit::mesh::{MeshYaml, Port};
use testkit::ztunnel::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The pod's apps: the Service `echo` (port 9000) reaches 9000, the Services tcp-a, tcp-b
/// and tcp-c (port 7000) reach 9001, 9002 and 9003; each app names its Service first.
const APPS: [(u16, &str); 4] = [
    (9000, "echo|"),
    (9001, "tcp-a|"),
    (9002, "tcp-b|"),
    (9003, "tcp-c|"),
];

/// The backend Services, each with a TCP port 7000 on the echo pod.
fn backend_services() -> Vec<String> {
    APPS[1..]
        .iter()
        .enumerate()
        .map(|(i, (target, banner))| {
            let name = banner.trim_end_matches('|');
            let vip = format!("127.96.0.{}", 20 + i).parse().unwrap();
            let ports = [Port {
                name: "tcp",
                port: 7000,
                target: *target,
            }];
            MeshYaml::default()
                .service(NS, name, vip, "echo", &ports)
                .render()
        })
        .collect()
}

fn spec(route: &str) -> Spec {
    let mut extra_yaml = backend_services();
    extra_yaml.push(route.to_string());
    Spec {
        ports: vec![Port {
            name: "tcp-echo",
            port: 9000,
            target: 9000,
        }],
        apps: APPS
            .iter()
            .map(|(port, banner)| (*port, App::ServerFirst(banner)))
            .collect::<HashMap<_, _>>(),
        extra_yaml,
        ..Spec::default()
    }
}

/// A TCPRoute on the Service echo's port 9000 with these backendRefs (YAML flow lines).
fn tcp_route(backend_refs: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata:\n  name: shift\n  namespace: {NS}\nspec:\n  parentRefs:\n  - group: \"\"\n    kind: Service\n    name: echo\n    port: 9000\n  rules:\n  - backendRefs:\n{backend_refs}"
    )
}

/// Opens a tunnel to echo:9000 and reads the app's banner up to its `|`: the Service that
/// answered, or `None` when the tunnel closed (or gave nothing in 2 s).
async fn answered_by(conn: &testkit::client::HboneConnection) -> Option<String> {
    let mut t = conn.tunnel(authority(9000), &[]).await.ok()?;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while t.read_exact(&mut byte).await.is_ok() {
            if byte[0] == b'|' {
                return true;
            }
            got.push(byte[0]);
        }
        false
    };
    let complete = tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .unwrap_or(false);
    let _ = t.shutdown().await;
    complete.then(|| String::from_utf8_lossy(&got).into_owned())
}

/// Opens `n` tunnels, eight at a time over one HBONE connection; counts who answered
/// (`-` for a tunnel closed without an answer).
async fn tally(h: &Harness, n: usize) -> BTreeMap<String, usize> {
    let conn = h.client().connect().await.unwrap();
    let mut counts = BTreeMap::new();
    let started = Instant::now();
    for _ in 0..n / 8 {
        let batch = futures::future::join_all((0..8).map(|_| answered_by(&conn))).await;
        for who in batch {
            *counts.entry(who.unwrap_or_else(|| "-".into())).or_default() += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "tunnels too slow"
        );
    }
    counts
}

#[tokio::test]
async fn a_tcp_route_shifts_tunnels_by_weight() {
    let route = tcp_route(
        "    - {name: tcp-a, port: 7000, weight: 1}\n    - {name: tcp-b, port: 7000, weight: 3}\n    - {name: tcp-c, port: 7000, weight: 0}\n",
    );
    let h = Harness::start(spec(&route)).await;
    let counts = tally(&h, 200).await;
    let a = counts.get("tcp-a").copied().unwrap_or(0);
    let b = counts.get("tcp-b").copied().unwrap_or(0);
    // Neither the zero-weight tcp-c nor the Service's own app gets a tunnel.
    assert_eq!(a + b, 200, "only tcp-a and tcp-b answer: {counts:?}");
    // Expected 50 of 200 (standard deviation about 6): a wide, still decisive bound.
    assert!(
        (25..=80).contains(&a),
        "tcp-a got {a} of 200 (want about 50)"
    );
    // The tunnels' metrics name the Service each went to.
    let samples = h.prometheus().await;
    let opened = |svc: &str| {
        metric(
            &samples,
            "istio_tcp_connections_opened_total",
            &[(
                "destination_service",
                &format!("{svc}.{NS}.svc.cluster.local"),
            )],
        )
    };
    assert_eq!(opened("tcp-a"), a as f64);
    assert_eq!(opened("tcp-b"), b as f64);
    assert_eq!(opened("tcp-c"), 0.0);
}
