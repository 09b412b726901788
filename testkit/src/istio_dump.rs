//! Resources from Istio's httpbin waypoint config dump (`waypoint-httpbin-1.21.json` in the
//! shared test data), moved onto loopback, with RBAC, routes, a split and a JWT filter added
//! as istiod generates them: what the tests that drive a waypoint over xDS serve, and the
//! benchmark's `istiod` scenario.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use xds::ads::types::{CLUSTER, ENDPOINT, LISTENER};
use xds::envoy::from_json;

/// Resources by name.
pub type Named = Vec<(String, Any)>;

/// The httpbin Service's VIP after the move.
pub const VIP: &str = "127.96.0.10";
const DUMP_VIP: &str = "10.104.171.68";
const DUMP_POD: &str = "192.168.195.248";

/// `m` as an `Any` of `type_url`.
pub fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

/// The dump's resources with the VIP and the pod moved to loopback, and a cluster and
/// endpoints for both Service ports (the dump has the cluster of one and the endpoints of
/// the other).
pub fn resources(pod: std::net::IpAddr) -> (Named, Named, Named) {
    let (ls, cs, es, _) = resources_with(&httpbin_dump(), pod, None, false);
    (ls, cs, es)
}

/// The dump in the shared test data beside this checkout.
pub fn httpbin_dump() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/istio/config-dumps/waypoint-httpbin-1.21.json")
}

/// As [`resources`], from the dump at `dump`, plus:
/// - with `canary`, a second Service `httpbin-v2` on that pod, and a `/split` route on port
///   8000 sending 3/4 of requests to httpbin and 1/4 to httpbin-v2, as istiod generates for
///   weighted backendRefs;
/// - with `rds`, port 8100's routes served over RDS (the listener names them) instead of
///   inline; the route configurations are returned too.
///
/// # Panics
/// When the dump cannot be read or is not the httpbin dump (test set-up).
pub fn resources_with(
    dump: &std::path::Path,
    pod: std::net::IpAddr,
    canary: Option<std::net::IpAddr>,
    rds: bool,
) -> (Named, Named, Named, Named) {
    let text = std::fs::read_to_string(dump)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dump.display()))
        .replace(&format!("{DUMP_POD}:800"), &format!("{pod}:8080"))
        .replace(DUMP_POD, &pod.to_string())
        .replace(DUMP_VIP, VIP);
    let dump: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (mut ls, mut cs, mut es, mut rs) = (vec![], vec![], vec![], vec![]);
    for cfg in dump["configs"].as_array().unwrap() {
        let t = cfg["@type"].as_str().unwrap();
        if t.ends_with("ListenersConfigDump") {
            for l in cfg["dynamic_listeners"].as_array().unwrap() {
                let mut json = l["active_state"]["listener"].clone();
                add_rbac(&mut json);
                add_routes(&mut json);
                add_split(&mut json);
                add_jwt(&mut json);
                if rds {
                    rs.extend(move_routes_to_rds(&mut json));
                }
                let l: Listener = from_json("envoy.config.listener.v3.Listener", &json).unwrap();
                ls.push((l.name.clone(), any(LISTENER, &l)));
            }
        } else if t.ends_with("ClustersConfigDump") {
            let c = &cfg["dynamic_active_clusters"][0]["cluster"];
            for port in ["8000", "8100"] {
                let json: serde_json::Value =
                    serde_json::from_str(&c.to_string().replace("|8000|", &format!("|{port}|")))
                        .unwrap();
                let c: Cluster = from_json("envoy.config.cluster.v3.Cluster", &json).unwrap();
                cs.push((c.name.clone(), any(CLUSTER, &c)));
            }
            if canary.is_some() {
                let json: serde_json::Value = serde_json::from_str(
                    &c.to_string()
                        .replace("httpbin.default", "httpbin-v2.default")
                        .replace("\"name\":\"httpbin\"", "\"name\":\"httpbin-v2\""),
                )
                .unwrap();
                let c: Cluster = from_json("envoy.config.cluster.v3.Cluster", &json).unwrap();
                cs.push((c.name.clone(), any(CLUSTER, &c)));
            }
        } else if t.ends_with("EndpointsConfigDump") {
            let e = &cfg["dynamic_endpoint_configs"][0]["endpoint_config"];
            for port in ["8000", "8100"] {
                let json: serde_json::Value =
                    serde_json::from_str(&e.to_string().replace("|8100|", &format!("|{port}|")))
                        .unwrap();
                let e: ClusterLoadAssignment =
                    from_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &json).unwrap();
                es.push((e.cluster_name.clone(), any(ENDPOINT, &e)));
            }
            if let Some(canary) = canary {
                let json: serde_json::Value = serde_json::from_str(
                    &e.to_string()
                        .replace(
                            "|8100|http|httpbin.default",
                            "|8000|http|httpbin-v2.default",
                        )
                        .replace(&pod.to_string(), &canary.to_string())
                        .replace(
                            "httpbin;default;httpbin;v1",
                            "httpbin-v2;default;httpbin;v2",
                        ),
                )
                .unwrap();
                let e: ClusterLoadAssignment =
                    from_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &json).unwrap();
                es.push((e.cluster_name.clone(), any(ENDPOINT, &e)));
            }
        }
    }
    (ls, cs, es, rs)
}

/// Replaces port 8100's inline route configuration with an RDS reference; returns the
/// configuration as a resource.
fn move_routes_to_rds(listener: &mut serde_json::Value) -> Named {
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    let mut out = Vec::new();
    for chain in listener["filter_chains"].as_array_mut().unwrap() {
        if chain["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("inbound-vip|8100|"))
        {
            let hcm = chain["filters"][0]["typed_config"].as_object_mut().unwrap();
            let rc = hcm.remove("route_config").unwrap();
            let name = rc["name"].as_str().unwrap().to_string();
            hcm.insert(
                "rds".into(),
                serde_json::json!({"route_config_name": name, "config_source": {"ads": {}}}),
            );
            let rc: RouteConfiguration =
                from_json("envoy.config.route.v3.RouteConfiguration", &rc).unwrap();
            out.push((name, any(xds::ads::types::ROUTE, &rc)));
        }
    }
    out
}

/// The RBAC filters istiod would generate for two policies on httpbin port 8000: DENY
/// `/admin*` for everyone, and ALLOW only the `sleep` service account (matched on the
/// filter state Istio's waypoint sets from the HBONE peer).
fn add_rbac(listener: &mut serde_json::Value) {
    let deny = serde_json::json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "DENY", "policies": {"ns[default]-policy[deny-admin]-rule[0]": {
                "permissions": [{"url_path": {"path": {"prefix": "/admin"}}}],
                "principals": [{"any": true}]
            }}}
        }
    });
    let allow = serde_json::json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"policies": {"ns[default]-policy[allow-sleep]-rule[0]": {
                "permissions": [{"any": true}],
                "principals": [{"filter_state": {"key": "io.istio.peer_principal", "string_match": {"exact": "spiffe://cluster.local/ns/default/sa/sleep"}}}]
            }}}
        }
    });
    for chain in listener["filter_chains"].as_array_mut().unwrap() {
        if chain["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("inbound-vip|8000|"))
        {
            let filters = chain["filters"][0]["typed_config"]["http_filters"]
                .as_array_mut()
                .unwrap();
            filters.insert(0, allow.clone());
            filters.insert(0, deny.clone());
        }
    }
}

/// Routes istiod would generate on httpbin port 8100 for an HTTPRoute with a redirect rule
/// and a URL-rewrite rule, ahead of the default route.
fn add_routes(listener: &mut serde_json::Value) {
    let cluster = "inbound-vip|8100|http|httpbin.default.svc.cluster.local";
    let routes = serde_json::json!([
        {"name": "default.redirect.0", "match": {"path_separated_prefix": "/old"},
         "redirect": {"path_redirect": "/new", "response_code": "MOVED_PERMANENTLY"}},
        {"name": "default.rewrite.0", "match": {"path_separated_prefix": "/v1"},
         "route": {"cluster": cluster, "prefix_rewrite": "/v2", "host_rewrite_literal": "rewritten.example"}},
    ]);
    for chain in listener["filter_chains"].as_array_mut().unwrap() {
        if chain["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("inbound-vip|8100|"))
        {
            let vh = &mut chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
                ["routes"];
            let existing = vh.as_array().unwrap().clone();
            let mut all = routes.as_array().unwrap().clone();
            all.extend(existing);
            *vh = serde_json::Value::Array(all);
        }
    }
}

/// A weighted route on port 8000: `/split` goes 3:1 to httpbin and httpbin-v2.
fn add_split(listener: &mut serde_json::Value) {
    let route = serde_json::json!({
        "name": "default.split.0",
        "match": {"path_separated_prefix": "/split"},
        "route": {"weighted_clusters": {"clusters": [
            {"name": "inbound-vip|8000|http|httpbin.default.svc.cluster.local", "weight": 3},
            {"name": "inbound-vip|8000|http|httpbin-v2.default.svc.cluster.local", "weight": 1}
        ]}}
    });
    for chain in listener["filter_chains"].as_array_mut().unwrap() {
        if chain["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("inbound-vip|8000|"))
        {
            let routes = chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
                ["routes"]
                .as_array_mut()
                .unwrap();
            routes.insert(0, route.clone());
        }
    }
}

/// The issuer whose tokens port 8100 checks (RequestAuthentication over xDS).
pub fn issuer() -> &'static super::jwt::JwtIssuer {
    static ISSUER: std::sync::OnceLock<super::jwt::JwtIssuer> = std::sync::OnceLock::new();
    ISSUER.get_or_init(|| super::jwt::JwtIssuer::new("https://issuer.example", "key-1"))
}

/// The jwt_authn filter istiod generates for a RequestAuthentication on httpbin (port
/// 8100 here): one provider, any-of with allow-missing.
fn add_jwt(listener: &mut serde_json::Value) {
    let filter = serde_json::json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"origins-0": {
                "issuer": "https://issuer.example",
                "local_jwks": {"inline_string": issuer().jwks()},
                "forward": true,
                "payload_in_metadata": "https://issuer.example"
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "origins-0"}, {"allow_missing": {}}
            ]}}}],
            "bypass_cors_preflight": true
        }
    });
    for chain in listener["filter_chains"].as_array_mut().unwrap() {
        if chain["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("inbound-vip|8100|"))
        {
            let filters = chain["filters"][0]["typed_config"]["http_filters"]
                .as_array_mut()
                .unwrap();
            filters.insert(0, filter.clone());
        }
    }
}

/// A fake pod running the echo app as `name` (identity `default/httpbin`), accepting the
/// waypoint `caller`.
///
/// # Panics
/// When the pod cannot start (test set-up).
pub async fn fake_pod(
    ca: &hbone::tls::DevCa,
    caller: &filters::model::Identity,
    name: &str,
) -> super::ztunnel::FakeZtunnel {
    use super::ztunnel::{FakeZtunnel, ZtunnelOptions};
    let certs = ca
        .issue(&filters::model::Identity::new(
            "cluster.local",
            "default",
            "httpbin",
        ))
        .unwrap();
    FakeZtunnel::start_fresh(|ip| ZtunnelOptions {
        ip,
        certs: certs.certs().unwrap(),
        allowed_caller: Some(caller.clone()),
        who: super::echo::EchoIdentity {
            pod: name.into(),
            namespace: "default".into(),
        },
        apps: std::collections::HashMap::new(),
    })
    .await
    .unwrap()
}

/// `port`'s inline routes in the `main_internal` listener among `listeners`, with `routes`
/// (Envoy `Route`s in proto-JSON) put first, as istiod orders a new HTTPRoute's rules.
///
/// # Panics
/// When there is no such listener or chain (test set-up).
pub fn prepend_routes(listeners: &mut Named, port: u16, routes: &[serde_json::Value]) {
    edit_listener(listeners, |json| {
        let prefix = format!("inbound-vip|{port}|");
        for chain in json["filter_chains"].as_array_mut().unwrap() {
            if chain["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&prefix))
            {
                let vh = &mut chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
                    [0]["routes"];
                let mut all = routes.to_vec();
                all.extend(vh.as_array().unwrap().iter().cloned());
                *vh = serde_json::Value::Array(all);
            }
        }
    });
}

/// Applies `edit` to the proto-JSON form of the `main_internal` listener among `listeners`.
///
/// # Panics
/// When the listener is missing or the edit leaves it invalid (test set-up).
pub fn edit_listener(listeners: &mut Named, edit: impl Fn(&mut serde_json::Value)) {
    let (_, any_l) = listeners
        .iter_mut()
        .find(|(n, _)| n == "main_internal")
        .expect("main_internal");
    let l = Listener::decode(any_l.value.as_slice()).unwrap();
    let mut json = xds::envoy::to_json("envoy.config.listener.v3.Listener", &l).unwrap();
    edit(&mut json);
    let l: Listener = from_json("envoy.config.listener.v3.Listener", &json).unwrap();
    *any_l = any(LISTENER, &l);
}

/// A DestinationRule subset cluster of httpbin port `port` as istiod names it
/// (`inbound-vip|<port>|http/<subset>|<host>`), and its endpoints: those `endpoints` holds
/// for the cluster `endpoints_of`, as EDS sends a subset's endpoints already filtered by
/// its labels.
///
/// # Panics
/// When `clusters` has no httpbin cluster for `port`, or `endpoints` none for
/// `endpoints_of` (test set-up).
pub fn subset(
    clusters: &Named,
    endpoints: &Named,
    port: u16,
    subset: &str,
    endpoints_of: &str,
) -> ((String, Any), (String, Any)) {
    let base = format!("inbound-vip|{port}|http|httpbin.default.svc.cluster.local");
    let name = format!("inbound-vip|{port}|http/{subset}|httpbin.default.svc.cluster.local");
    let (_, c) = clusters.iter().find(|(n, _)| *n == base).expect("cluster");
    let mut c = Cluster::decode(c.value.as_slice()).unwrap();
    c.name = name.clone();
    if let Some(eds) = c.eds_cluster_config.as_mut() {
        eds.service_name = name.clone();
    }
    let (_, e) = endpoints
        .iter()
        .find(|(n, _)| n == endpoints_of)
        .expect("endpoints");
    let mut e = ClusterLoadAssignment::decode(e.value.as_slice()).unwrap();
    e.cluster_name = name.clone();
    ((name.clone(), any(CLUSTER, &c)), (name, any(ENDPOINT, &e)))
}
