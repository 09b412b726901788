use super::*;
use crate::parse;

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels: {istio.io/use-waypoint: waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  clusterIP: 127.96.0.1
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: tcp-raw, port: 9000, targetPort: 9000}
---
apiVersion: v1
kind: Service
metadata:
  name: optout
  namespace: default
  labels: {istio.io/use-waypoint: none}
spec:
  clusterIP: 127.96.0.2
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-1
  namespace: default
  labels: {app: echo}
  annotations: {ambient.istio.io/redirection: enabled}
spec:
  serviceAccountName: echo
  containers: [{ports: [{name: web, containerPort: 8080}]}]
status: {podIP: 127.128.0.1, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-2, namespace: default, labels: {app: echo}}
spec: {containers: [{}]}
status: {podIP: 127.128.0.2}
"#;

fn snap(text: &str) -> Result<Snapshot, LocalConfigError> {
    translate(&parse(text)?, &SourceOptions::default(), 1, "test".into())
}

#[test]
fn tcp_routes_win_on_tcp_ports_and_http_routes_elsewhere() {
    use filters::route::model::RouteKind;
    let routes = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: t, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo, port: 9000, weight: 2}]}]
"#;
    let text = format!("{MESH}{routes}");
    let (s, statuses) = translate_with_status(
        &parse(&text).unwrap(),
        &SourceOptions::default(),
        1,
        "test".into(),
    )
    .unwrap();
    let echo = NamespacedName::new("default", "echo");
    assert_eq!(s.routes(&echo, 80).unwrap().kind, Some(RouteKind::Http));
    assert_eq!(s.routes(&echo, 9000).unwrap().kind, Some(RouteKind::Tcp));
    let conflicted = |route: &str| -> Vec<String> {
        statuses
            .iter()
            .filter(|st| st.route == route)
            .flat_map(|st| st.parents.iter())
            .filter(|p| p.accepted_reason == "Conflicted")
            .map(|p| p.message.clone())
            .collect()
    };
    // Each is in use on one of the Service's ports: neither is Conflicted.
    assert!(conflicted("TCPRoute default/t").is_empty());
    assert!(conflicted("HTTPRoute default/h").is_empty());
    // A TCPRoute on the HTTP port alone loses there.
    let text = text.replace(
        "rules: [{backendRefs: [{name: echo, port: 9000, weight: 2}]}]",
        "rules: [{backendRefs: [{name: echo, port: 9000, weight: 2}]}]\n---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: t80, namespace: default}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n  rules: [{backendRefs: [{name: echo, port: 9000}]}]",
    );
    let (_, statuses) = translate_with_status(
        &parse(&text).unwrap(),
        &SourceOptions::default(),
        1,
        "test".into(),
    )
    .unwrap();
    let st = statuses
        .iter()
        .find(|st| st.route == "TCPRoute default/t80")
        .unwrap();
    assert_eq!(st.parents[0].accepted_reason, "Conflicted");
    assert_eq!(
        st.parents[0].message,
        "a HTTPRoute on default/echo:80 takes precedence over TCPRoutes"
    );
}

#[test]
fn translates_services_pods_and_labels() {
    let s = snap(MESH).unwrap();
    let echo = &s.services()["default/echo"];
    assert!(echo.served);
    assert!(!s.services()["default/optout"].served);
    let http = echo.port(80).unwrap();
    assert_eq!(http.protocol, Protocol::Http);
    // echo-2 has no container port named "web": not an endpoint of port 80.
    assert_eq!(http.endpoints.len(), 1);
    assert_eq!(
        http.endpoints[0].address().unwrap().to_string(),
        "127.128.0.1:8080"
    );
    assert_eq!(echo.port(9000).unwrap().endpoints.len(), 2);
    assert_eq!(echo.port(9000).unwrap().protocol, Protocol::Tcp);
    let pod1 = s.workload("127.128.0.1".parse().unwrap()).unwrap();
    assert!(pod1.hbone);
    assert_eq!(
        pod1.identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/echo"
    );
    assert!(!s.workload("127.128.0.2".parse().unwrap()).unwrap().hbone);
    assert!(s.resolve("127.96.0.1:80".parse().unwrap()).is_some());
    assert!(s.resolve("127.96.0.2:80".parse().unwrap()).is_none());
    // waypoint-for defaults to service: pod IPs are not served.
    assert!(s.resolve("127.128.0.1:8080".parse().unwrap()).is_none());
}

#[test]
fn waypoint_for_workload_serves_pods() {
    let text = MESH.replace(
        "metadata: {name: waypoint, namespace: default}",
        "metadata: {name: waypoint, namespace: default, labels: {istio.io/waypoint-for: all}}",
    );
    let s = snap(&text).unwrap();
    assert!(s.resolve("127.128.0.1:8080".parse().unwrap()).is_some());
}

#[test]
fn errors_name_object_and_field() {
    let bad_ip = MESH.replace("clusterIP: 127.96.0.1", "clusterIP: 999.1.1.1");
    let err = snap(&bad_ip).unwrap_err().to_string();
    assert_eq!(
        err,
        "Service default/echo (document 3): spec.clusterIP: not an IP address: \"999.1.1.1\""
    );
    let dup = MESH.replace("port: 9000, targetPort: 9000", "port: 80, targetPort: 9000");
    let err = snap(&dup).unwrap_err().to_string();
    assert!(
        err.contains("spec.ports[1].port: duplicate port 80"),
        "{err}"
    );
    let no_gw = MESH.replace("istio-waypoint", "istio");
    assert!(matches!(snap(&no_gw), Err(LocalConfigError::NoWaypoint(_))));
    let same_vip = MESH.replace("clusterIP: 127.96.0.2", "clusterIP: 127.96.0.1");
    // optout is not served, so its VIP does not conflict.
    assert!(snap(&same_vip).is_ok());
}
