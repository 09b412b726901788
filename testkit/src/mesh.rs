//! Writes local configuration files: Kubernetes objects as `kubectl get -o yaml` prints them.

use std::fmt::Write;
use std::net::IpAddr;

/// A Service port: name, port, targetPort.
#[derive(Debug, Clone)]
pub struct Port {
    /// Port name (its prefix declares the protocol: `http-`, `tcp-`, ...).
    pub name: &'static str,
    /// Service port.
    pub port: u16,
    /// Target port on the pods.
    pub target: u16,
}

/// Builds a multi-document YAML file.
#[derive(Debug, Default, Clone)]
pub struct MeshYaml {
    docs: Vec<String>,
}

impl MeshYaml {
    /// Starts with the waypoint `Gateway` `ns/name` and namespace `ns` using it.
    pub fn new(ns: &str, waypoint: &str) -> Self {
        let mut m = Self::default();
        m.docs.push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    istio.io/use-waypoint: {waypoint}\n"
        ));
        m.docs.push(format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {waypoint}\n  namespace: {ns}\n  labels:\n    istio.io/waypoint-for: all\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n"
        ));
        m
    }

    /// Adds a Service selecting `app: <app>`.
    pub fn service(mut self, ns: &str, name: &str, vip: IpAddr, app: &str, ports: &[Port]) -> Self {
        let mut d = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterIP: {vip}\n  clusterIPs:\n  - {vip}\n  selector:\n    app: {app}\n  ports:\n"
        );
        for p in ports {
            let _ = write!(
                d,
                "  - name: {}\n    port: {}\n    protocol: TCP\n    targetPort: {}\n",
                p.name, p.port, p.target
            );
        }
        self.docs.push(d);
        self
    }

    /// Adds a running Pod with label `app: <app>`; `hbone` marks it as in the ambient mesh.
    pub fn pod(
        mut self,
        ns: &str,
        name: &str,
        ip: IpAddr,
        app: &str,
        sa: &str,
        hbone: bool,
    ) -> Self {
        let annotations = if hbone {
            "  annotations:\n    ambient.istio.io/redirection: enabled\n"
        } else {
            ""
        };
        self.docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {app}\n{annotations}spec:\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: echo\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n"
        ));
        self
    }

    /// Adds a raw document.
    pub fn raw(mut self, doc: &str) -> Self {
        self.docs.push(doc.to_string());
        self
    }

    /// The YAML text.
    pub fn render(&self) -> String {
        self.docs.join("---\n")
    }
}
