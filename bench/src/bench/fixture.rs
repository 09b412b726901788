//! The benchmark's mesh: the dev CA and identities, the fake destination pod behind its
//! ztunnel, and the local configuration (the echo Service with an HTTPRoute and an
//! AuthorizationPolicy, and `echo-tcp`, the same pod behind a port declared TCP).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use filters::model::Identity;
use hbone::tls::DevCa;
use testkit::echo::EchoIdentity;
use testkit::mesh::{MeshYaml, Port};
use testkit::ztunnel::{FakeZtunnel, ZtunnelOptions};

/// The dev CA, the identities, the fake destination pod and the mesh configuration file.
pub(super) struct Fixture {
    pub(super) ca: DevCa,
    pub(super) waypoint_id: Identity,
    pub(super) client_id: Identity,
    pub(super) pod_id: Identity,
    /// The destination pod behind its fake ztunnel (HBONE on 15008, the echo app on 8080).
    pub(super) pod: FakeZtunnel,
    /// The echo Service's VIP.
    pub(super) vip: IpAddr,
    /// The VIP of `echo-tcp`, the same pod behind a port declared TCP (scenario `tcp`).
    pub(super) tcp_vip: IpAddr,
    /// The local configuration file: the Service, the pod, an HTTPRoute and a policy.
    pub(super) config: PathBuf,
}

/// Issues the certificates, starts the fake destination pod and writes the mesh config.
pub(super) async fn set_up_mesh(dir: &Path) -> anyhow::Result<Fixture> {
    let ca = DevCa::new("bench")?;
    let waypoint_id = Identity::new("cluster.local", "default", "waypoint");
    let client_id = Identity::new("cluster.local", "default", "sleep");
    let pod_id = Identity::new("cluster.local", "default", "echo");
    ca.issue(&waypoint_id)?.write(dir)?;
    let pod_certs = ca.issue(&pod_id)?;
    let pod = FakeZtunnel::start_fresh(|ip| ZtunnelOptions {
        ip,
        certs: pod_certs.certs().expect("pod certs"),
        allowed_caller: None,
        who: EchoIdentity {
            pod: "echo-0".into(),
            namespace: "default".into(),
        },
        apps: HashMap::new(),
    })
    .await?;
    let vip = "127.96.0.10".parse()?;
    let tcp_vip = "127.96.0.11".parse()?;
    let mesh = MeshYaml::new("default", "waypoint")
        .service("default", "echo", vip, "echo", &[Port { name: "http", port: 80, target: 8080 }])
        .service("default", "echo-tcp", tcp_vip, "echo", &[Port { name: "tcp", port: 80, target: 8080 }])
        .pod("default", "echo-0", pod.ip, "echo", "echo", true)
        .raw("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: echo, namespace: default}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /}}]\n    backendRefs: [{name: echo, port: 80}]\n")
        .raw("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-default, namespace: default}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - from: [{source: {namespaces: [default]}}]\n    to: [{operation: {methods: [GET]}}]\n");
    let config = dir.join("mesh.yaml");
    std::fs::write(&config, mesh.render())?;
    Ok(Fixture {
        ca,
        waypoint_id,
        client_id,
        pod_id,
        pod,
        vip,
        tcp_vip,
        config,
    })
}
