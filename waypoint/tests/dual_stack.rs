//! A pod with more than one IP in the local configuration (`status.podIPs`, as a
//! dual-stack pod lists its IPv4 and IPv6 addresses): the waypoint connects to its first
//! IP and, when that fails, to the next (Happy Eyeballs, as for istiod's EDS
//! `additional_addresses`, see istiod_dual_stack.rs), here over HBONE to the pod's
//! ztunnel. The two IPs are IPv4 loopback addresses (tests use 127.0.0.0/8 only); the
//! order and the fallback do not depend on the family.

mod common;

use common::*;

#[tokio::test]
async fn a_mesh_pod_is_reached_at_its_second_ip_when_the_first_refuses() {
    let h = Harness::start(Spec::default()).await;
    let ztunnel = h.pods[0].ip;
    // Nothing listens on the first IP's HBONE port: the tunnel there is refused.
    let first = testkit::free_loopback_ip(15008);
    let yaml = h.mesh.render();
    let single = format!("  podIP: {ztunnel}\n  podIPs:\n  - ip: {ztunnel}\n");
    assert!(yaml.contains(&single));
    let dual = format!("  podIP: {first}\n  podIPs:\n  - ip: {first}\n  - ip: {ztunnel}\n");
    h.write_config(&yaml.replace(&single, &dual));
    let shown = format!("\"{first}\"");
    let mut applied = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !applied {
        assert!(
            std::time::Instant::now() < deadline,
            "the pod's IPs were not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        applied = h.admin("/config_dump").await.1.contains(&shown);
    }
    let (status, pod) = answer_of(&h, authority(80), "echo.default.svc.cluster.local").await;
    assert_eq!(status, 200);
    assert_eq!(pod.as_deref(), Some("echo-0"));
}
