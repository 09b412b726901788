//! The Kubernetes manifests in `examples/kubernetes/` (README "Deploy on Kubernetes"), read
//! as the Kubernetes objects they are, with the fields the Gateway API and Istio define:
//! strict structs refuse a misspelled field; each example's meaning is checked (the image
//! patch reaches the `istio-proxy` container, a `parametersRef` names a ConfigMap in the
//! Gateway's namespace, the canary names an existing waypoint with a weight).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// An object of any kind: its type and metadata, the rest kept as YAML.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    api_version: String,
    kind: String,
    metadata: Meta,
    #[serde(flatten)]
    rest: serde_yaml::Mapping,
}

/// `gateway.networking.k8s.io/v1` Gateway `spec` (the fields a waypoint uses).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GatewaySpec {
    gateway_class_name: String,
    listeners: Vec<Listener>,
    #[serde(default)]
    infrastructure: Option<Infrastructure>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Listener {
    name: String,
    port: u16,
    protocol: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Infrastructure {
    parameters_ref: Option<LocalParametersReference>,
    /// Schema fields, accepted (copied onto the pod by istiod).
    #[serde(default)]
    #[allow(dead_code)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalParametersReference {
    group: String,
    kind: String,
    name: String,
}

/// The `deployment` key of a Gateway customization ConfigMap: a strategic-merge patch of
/// the rendered Deployment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentPatch {
    spec: PatchSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchSpec {
    template: PatchTemplate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchTemplate {
    spec: PatchPodSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchPodSpec {
    containers: Vec<PatchContainer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchContainer {
    name: String,
    image: String,
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes")
}

fn objects(file: &str) -> Vec<Object> {
    let text = std::fs::read_to_string(examples().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Object::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .collect()
}

fn gateway(o: &Object) -> GatewaySpec {
    assert_eq!(o.api_version, "gateway.networking.k8s.io/v1");
    let spec = o.rest.get("spec").expect("Gateway spec").clone();
    let spec: GatewaySpec = serde_yaml::from_value(spec).unwrap();
    assert_eq!(spec.gateway_class_name, "istio-waypoint");
    assert!(
        spec.listeners
            .iter()
            .any(|l| l.protocol == "HBONE" && l.port == 15008 && !l.name.is_empty()),
        "a waypoint listens for HBONE on 15008"
    );
    assert!(matches!(
        o.metadata
            .labels
            .get("istio.io/waypoint-for")
            .map(String::as_str),
        Some("service" | "workload" | "all" | "none")
    ));
    spec
}

/// The image a customization ConfigMap gives the `istio-proxy` container.
fn patched_image(o: &Object) -> String {
    assert_eq!(
        (o.api_version.as_str(), o.kind.as_str()),
        ("v1", "ConfigMap")
    );
    let data: BTreeMap<String, String> =
        serde_yaml::from_value(o.rest.get("data").expect("data").clone()).unwrap();
    assert!(
        data.keys().all(|k| [
            "deployment",
            "service",
            "serviceAccount",
            "horizontalPodAutoscaler",
            "podDisruptionBudget"
        ]
        .contains(&k.as_str())),
        "only the overlay keys istiod reads: {:?}",
        data.keys()
    );
    let patch: DeploymentPatch = serde_yaml::from_str(&data["deployment"]).unwrap();
    let proxy = patch
        .spec
        .template
        .spec
        .containers
        .iter()
        .find(|c| c.name == "istio-proxy")
        .expect("the istio-proxy container");
    proxy.image.clone()
}

fn image_is_ours(image: &str) {
    assert!(image.contains('/'), "a full image reference: {image}");
    assert!(image.contains("waypoint-proxyv2:"), "{image}");
}

#[test]
fn the_class_defaults_configmap_patches_every_waypoint() {
    let objs = objects("gatewayclass-defaults.yaml");
    assert_eq!(objs.len(), 1);
    let cm = &objs[0];
    assert_eq!(cm.metadata.namespace.as_deref(), Some("istio-system"));
    assert_eq!(
        cm.metadata.labels["gateway.istio.io/defaults-for-class"],
        "istio-waypoint"
    );
    image_is_ours(&patched_image(cm));
}

#[test]
fn parameters_ref_names_a_configmap_in_the_gateways_namespace() {
    let objs = objects("gateway-parametersref.yaml");
    let gw = objs.iter().find(|o| o.kind == "Gateway").unwrap();
    let spec = gateway(gw);
    let r = spec.infrastructure.unwrap().parameters_ref.unwrap();
    assert_eq!((r.group.as_str(), r.kind.as_str()), ("", "ConfigMap"));
    let cm = objs
        .iter()
        .find(|o| o.kind == "ConfigMap" && o.metadata.name == r.name)
        .expect("the referenced ConfigMap");
    assert_eq!(cm.metadata.namespace, gw.metadata.namespace);
    image_is_ours(&patched_image(cm));
}

#[test]
fn the_annotation_names_a_full_image() {
    let objs = objects("gateway-annotation.yaml");
    let gw = &objs[0];
    gateway(gw);
    image_is_ours(&gw.metadata.annotations["sidecar.istio.io/proxyImage"]);
}

#[test]
fn the_canary_names_an_existing_waypoint_with_a_weight() {
    let objs = objects("canary.yaml");
    let waypoints: Vec<&Object> = objs.iter().filter(|o| o.kind == "Gateway").collect();
    for w in &waypoints {
        gateway(w);
    }
    let svc = objs.iter().find(|o| o.kind == "Service").unwrap();
    let primary = &svc.metadata.labels["istio.io/use-waypoint"];
    let canary = &svc.metadata.labels["istio.io/use-waypoint-canary"];
    let weight: u32 = svc.metadata.annotations["istio.io/use-waypoint-canary-weight"]
        .parse()
        .unwrap();
    assert!(weight <= 100);
    let find = |name: &str| {
        waypoints
            .iter()
            .find(|w| w.metadata.name == name && w.metadata.namespace == svc.metadata.namespace)
            .unwrap_or_else(|| panic!("waypoint {name}"))
    };
    assert!(
        find(primary).metadata.annotations.is_empty(),
        "the primary stays Envoy"
    );
    image_is_ours(&find(canary).metadata.annotations["sidecar.istio.io/proxyImage"]);
}

#[test]
fn every_manifest_is_a_kubernetes_object() {
    let mut seen = 0;
    let mut dirs = vec![examples()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let rel = path.strip_prefix(examples()).unwrap().display().to_string();
                for o in objects(&rel) {
                    assert!(!o.kind.is_empty() && !o.api_version.is_empty(), "{rel}");
                    assert!(!o.metadata.name.is_empty(), "{rel}");
                    seen += 1;
                }
            }
        }
    }
    assert!(seen >= 7, "{seen} objects");
}
