//! AuthorizationPolicy CUSTOM over xDS: the filters istiod generates for a CUSTOM policy,
//! served over Delta ADS to a real waypoint process, with a test ext_authz server.
//!
//! The shapes follow istiod's source: `pilot/pkg/security/authz/builder/builder.go`
//! (`buildHTTP`/`buildTCP` for the CUSTOM builder: an RBAC filter whose `shadow_rules` are the
//! CUSTOM rules, named `istio-ext-authz-<provider>-ns[<ns>]-policy[<name>]-rule[<i>]`, with
//! `shadow_rules_stat_prefix: istio_ext_authz_`, then the ext_authz filter) and
//! `builder/extauthz.go` (`generateGRPCConfig`, `generateHTTPConfig`,
//! `generateFilterMatcherForProvider`), as their golden files show them:
//! `builder/testdata/http/extended-custom-grpc-provider-out{1,2}.yaml`,
//! `extended-custom-http-provider-out{1,2}.yaml` and
//! `testdata/tcp/custom-both-http-tcp-out{1,2}.yaml`. The pair goes first in the HTTP filters
//! (`listener_waypoint.go` `buildWaypointHTTPFilters`) and in the network filters
//! (`networkfilter.go` `buildCompleteNetworkFilters`). The provider's `outbound|<port>||<host>`
//! cluster is an EDS cluster (`cluster_builder.go`), sent to a waypoint because the provider
//! is one of its `ExtraWaypointServices` (`cluster.go`).

mod istiod;

use std::time::Duration;

use istiod::*;
use serde_json::{json, Value};
use testkit::ext_authz::{GrpcAuthz, HttpAuthz};
use testkit::free_loopback_ip;

const AUTHZ_HOST: &str = "ext-authz.authz-system.svc.cluster.local";
const SHADOW_ID: &str = "istio_ext_authz_shadow_effective_policy_id";

fn outbound(port: u16) -> String {
    format!("outbound|{port}||{AUTHZ_HOST}")
}

/// The CUSTOM policy's RBAC filter (HTTP or network): shadow DENY rules on paths under
/// `/secure` (HTTP; `any` on TCP, where istiod drops HTTP-only fields).
fn custom_rbac(provider: &str, network: bool) -> Value {
    let permission = if network {
        json!({"and_rules": {"rules": [{"any": true}]}})
    } else {
        json!({"and_rules": {"rules": [{"or_rules": {"rules": [
            {"url_path": {"path": {"prefix": "/secure"}}}]}}]}})
    };
    let policy = format!("istio-ext-authz-{provider}-ns[default]-policy[ext-authz]-rule[0]");
    let mut config = json!({
        "shadow_rules": {"action": "DENY", "policies": {policy: {
            "permissions": [permission],
            "principals": [{"and_ids": {"ids": [{"any": true}]}}]
        }}},
        "shadow_rules_stat_prefix": "istio_ext_authz_"
    });
    let (name, kind) = if network {
        config["stat_prefix"] = json!("tcp.");
        ("envoy.filters.network.rbac", "network")
    } else {
        ("envoy.filters.http.rbac", "http")
    };
    config["@type"] = json!(format!(
        "type.googleapis.com/envoy.extensions.filters.{kind}.rbac.v3.RBAC"
    ));
    json!({"name": name, "typed_config": config})
}

/// `generateFilterMatcherForProvider`: the RBAC filter's shadow policy id starts with
/// `istio-ext-authz-<provider>`.
fn enabled_metadata(provider: &str, network: bool) -> Value {
    let filter = if network {
        "envoy.filters.network.rbac"
    } else {
        "envoy.filters.http.rbac"
    };
    json!({"filter": filter, "path": [{"key": SHADOW_ID}],
           "value": {"string_match": {"prefix": format!("istio-ext-authz-{provider}")}}})
}

/// `generateGRPCConfig` (HTTP filter), with `extra` fields merged in.
fn grpc_ext_authz(provider: &str, port: u16, extra: Value) -> Value {
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "grpc_service": {"envoy_grpc": {"cluster_name": outbound(port), "authority": AUTHZ_HOST},
                         "timeout": "5s"},
        "filter_enabled_metadata": enabled_metadata(provider, false),
        "transport_api_version": "V3"
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    json!({"name": "envoy.filters.http.ext_authz", "typed_config": config})
}

/// `generateHTTPConfig` for an `envoyExtAuthzHttp` provider that sends `x-ext-authz` to the
/// server, passes `x-user` and `x-ext-authz-check-result` upstream and `x-ext-authz-down`
/// to the client on allow, and `x-ext-authz-reason` on deny.
fn http_ext_authz(provider: &str, port: u16) -> Value {
    let exact = |h: &str| json!({"exact": h, "ignore_case": true});
    json!({"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "allowed_headers": {"patterns": [exact("x-ext-authz")]},
        "http_service": {
            "server_uri": {"uri": format!("http://{AUTHZ_HOST}"), "cluster": outbound(port),
                           "timeout": "5s"},
            "path_prefix": "/check",
            "authorization_request": {"headers_to_add": [{"key": "x-from-waypoint", "value": "yes"}]},
            "authorization_response": {
                "allowed_upstream_headers": {"patterns": [exact("x-user"), exact("x-ext-authz-check-result")]},
                "allowed_client_headers": {"patterns": [exact("x-ext-authz-reason")]},
                "allowed_client_headers_on_success": {"patterns": [exact("x-ext-authz-down")]}
            }
        },
        "filter_enabled_metadata": enabled_metadata(provider, false),
        "transport_api_version": "V3"
    }})
}

/// Puts `filters` first in the HTTP filters of httpbin's port `port` chain.
fn prepend_http_filters(ls: &mut Named, port: u16, filters: Vec<Value>) {
    fixture::edit_listener(ls, |json| {
        let prefix = format!("inbound-vip|{port}|");
        for chain in json["filter_chains"].as_array_mut().unwrap() {
            if chain["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&prefix))
            {
                let list = chain["filters"][0]["typed_config"]["http_filters"]
                    .as_array_mut()
                    .unwrap();
                for (i, f) in filters.iter().enumerate() {
                    list.insert(i, f.clone());
                }
            }
        }
    });
}

/// The provider's outbound EDS cluster (`http2` for a gRPC server) and its endpoint, a pod
/// outside the mesh at `addr` (a plain socket address, as EDS sends one without HBONE).
/// The cluster is what `buildOutboundClusters` (cluster.go) writes for a waypoint with no
/// DestinationRule: `buildCluster`, `applyMetadataExchange` (the `istio.metadata_exchange`
/// filter) and `setH2Options` in cluster_builder.go, `applyConnectionPool` and
/// `applyLoadBalancer` in cluster_traffic_policy.go, and for an auto-detected
/// ISTIO_MUTUAL the `hbone`, `tlsMode-istio` and `tlsMode-disabled` transport socket
/// matches of `applyHBONETransportSocketMatches` (cluster_tls.go).
fn provider_cluster(cs: &mut Named, es: &mut Named, port: u16, addr: Option<SocketAddr>, h2: bool) {
    let name = outbound(port);
    let raw = json!({"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}});
    let mut cluster = json!({
        "name": name, "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}, "initial_fetch_timeout": "0s",
                                              "resource_api_version": "V3"},
                               "service_name": name},
        "alt_stat_name": format!("{name};"), "common_lb_config": {},
        "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295u32,
            "max_pending_requests": 4294967295u32, "max_requests": 4294967295u32,
            "max_retries": 4294967295u32, "track_remaining": true}]},
        "metadata": {"filter_metadata": {"istio": {"services": [
            {"host": AUTHZ_HOST, "name": "ext-authz", "namespace": "authz-system"}]}}},
        "filters": [{"name": "istio.metadata_exchange", "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
            "value": {"protocol": "istio-peer-exchange", "enable_discovery": true}}}],
        "transport_socket_matches": [
            {"name": "hbone", "match": {"tunnel": "http"}, "transport_socket": {
                "name": "envoy.transport_sockets.internal_upstream", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                "passthrough_metadata": [
                    {"kind": {"host": {}}, "name": "envoy.filters.listener.original_dst"},
                    {"kind": {"cluster": {}}, "name": "istio"},
                    {"kind": {"host": {}}, "name": "istio"}],
                "transport_socket": raw.clone()}}},
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {
                "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": {"ads": {}}}],
                    "alpn_protocols": ["istio-peer-exchange", "istio"]},
                "sni": format!("outbound_.{port}_._.{AUTHZ_HOST}")}}},
            {"name": "tlsMode-disabled", "match": {}, "transport_socket": raw}]
    });
    if h2 {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}});
    }
    let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
        xds::envoy::from_json("envoy.config.cluster.v3.Cluster", &cluster).unwrap();
    cs.push((name.clone(), fixture::any(CLUSTER, &c)));
    if let Some(addr) = addr {
        let cla = json!({"cluster_name": name, "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port()}}},
            "metadata": {"filter_metadata": {"istio": {
                "workload": "ext-authz;authz-system;ext-authz;v1;Kubernetes"}}},
            "load_balancing_weight": 1}]}]});
        let e: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
            xds::envoy::from_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &cla).unwrap();
        es.push((name, fixture::any(ENDPOINT, &e)));
    }
}

fn pod_requests(w: &World) -> usize {
    w._pods
        .0
        .counters
        .requests
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Sends until the answer is `status` (the configuration may still be arriving), bounded.
async fn until(w: &World, port: u16, path: &str, headers: &[(&str, &str)], status: u16) -> Answer {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = send(w, port, "GET", path, headers).await;
        if a.status == status || std::time::Instant::now() > deadline {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn grpc_provider_checks_only_requests_its_custom_rules_match() {
    let ip = free_loopback_ip(9000);
    let authz = GrpcAuthz::start(SocketAddr::new(ip, 9000)).await.unwrap();
    let w = start(|ls, cs, es| {
        prepend_http_filters(
            ls,
            8000,
            vec![
                custom_rbac("grpc", false),
                grpc_ext_authz("grpc", 9000, json!({})),
            ],
        );
        provider_cluster(cs, es, 9000, Some(authz.addr), true);
    })
    .await;
    // (a) Denied by the provider: its status and body; the pod is never asked.
    let before = pod_requests(&w);
    let denied = until(&w, 8000, "/secure/x", &[], 401).await;
    assert_eq!(denied.status, 401, "{:?}", denied.body);
    assert_eq!(denied.body, "denied by ext_authz");
    assert_eq!(denied.header("x-ext-authz-reason"), Some("denied"));
    assert_eq!(
        pod_requests(&w),
        before,
        "a denied request never reaches the pod"
    );
    assert_eq!(authz.calls(), 1);
    // Allowed: reaches the pod with the headers the provider set.
    let allowed = send(&w, 8000, "GET", "/secure/x", &[("x-ext-authz", "allow")]).await;
    assert_eq!(allowed.status, 200);
    let echo = allowed.echo();
    assert_eq!(echo["headers"]["X-Ext-Authz-Check-Result"][0], "allowed");
    assert_eq!(
        echo["path"], "/secure/x?authz=ok",
        "query_parameters_to_set"
    );
    assert_eq!(allowed.header("x-ext-authz-down"), Some("yes"));
    let check = authz.log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(check.path, "/secure/x");
    assert_eq!(
        check.source_principal,
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    // (b) Outside the CUSTOM rules: the provider is not asked at all.
    let calls = authz.calls();
    let public = send(&w, 8000, "GET", "/get", &[]).await;
    assert_eq!(public.status, 200);
    assert_eq!(public.echo()["path"], "/get");
    assert_eq!(authz.calls(), calls, "not sent to the provider");
    // The RBAC filters after the pair still apply: DENY /admin*.
    assert_eq!(get(&w, 8000, "/admin").await.status, 403);
    assert_eq!(authz.calls(), calls);
    // Port 8100 has no CUSTOM policy.
    assert_eq!(get(&w, 8100, "/secure/x").await.status, 200);
    assert_eq!(authz.calls(), calls);
}

#[tokio::test]
async fn http_provider_passes_its_allowed_headers() {
    let ip = free_loopback_ip(8000);
    let authz = HttpAuthz::start(SocketAddr::new(ip, 8000)).await.unwrap();
    let w = start(|ls, cs, es| {
        prepend_http_filters(
            ls,
            8100,
            vec![custom_rbac("http", false), http_ext_authz("http", 8000)],
        );
        provider_cluster(cs, es, 8000, Some(authz.addr), false);
    })
    .await;
    let allowed = until(&w, 8100, "/secure/x", &[("x-ext-authz", "allow")], 200).await;
    assert_eq!(allowed.status, 200, "{:?}", allowed.body);
    let echo = allowed.echo();
    assert_eq!(
        echo["headers"]["X-User"][0], "alice",
        "allowed_upstream_headers reach the pod"
    );
    assert_eq!(echo["headers"]["X-Ext-Authz-Check-Result"][0], "allowed");
    assert!(echo["headers"].get("X-Unlisted").is_none());
    assert_eq!(allowed.header("x-ext-authz-down"), Some("yes"));
    assert_eq!(allowed.header("x-unlisted"), None);
    let check = authz.log.lock().unwrap()[0].clone();
    assert_eq!(
        check.path, "/check/secure/x",
        "path_prefix + the request's path"
    );
    assert_eq!(check.headers["x-ext-authz"], "allow");
    assert_eq!(check.headers["x-from-waypoint"], "yes", "headers_to_add");

    let before = pod_requests(&w);
    let denied = send(&w, 8100, "GET", "/secure/x", &[("x-ext-authz", "no")]).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body, "denied by http ext_authz");
    assert_eq!(denied.header("x-ext-authz-reason"), Some("denied"));
    assert_eq!(
        denied.header("x-unlisted"),
        None,
        "not in allowed_client_headers"
    );
    assert_eq!(pod_requests(&w), before);
    let calls = authz.calls();
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
    assert_eq!(authz.calls(), calls, "outside the CUSTOM rules");
}

#[tokio::test]
async fn provider_down_fails_closed_with_status_on_error_or_open() {
    let [closed] = testkit::free_ports::<1>();
    let down = SocketAddr::new("127.0.0.1".parse().unwrap(), closed);
    let w = start(|ls, cs, es| {
        // Port 8000: statusOnError 503, fail closed; port 8100: failOpen.
        prepend_http_filters(
            ls,
            8000,
            vec![
                custom_rbac("closed", false),
                grpc_ext_authz(
                    "closed",
                    9000,
                    json!({"status_on_error": {"code": 503}, "failure_mode_allow": false}),
                ),
            ],
        );
        prepend_http_filters(
            ls,
            8100,
            vec![
                custom_rbac("open", false),
                grpc_ext_authz("open", 9000, json!({"failure_mode_allow": true})),
            ],
        );
        provider_cluster(cs, es, 9000, Some(down), true);
    })
    .await;
    let before = pod_requests(&w);
    let closed = until(&w, 8000, "/secure/x", &[("x-ext-authz", "allow")], 503).await;
    assert_eq!(closed.status, 503, "status_on_error");
    assert_eq!(pod_requests(&w), before);
    let open = send(&w, 8100, "GET", "/secure/x", &[]).await;
    assert_eq!(open.status, 200, "failure_mode_allow");
    assert_eq!(open.echo()["path"], "/secure/x");
    assert_eq!(
        get(&w, 8000, "/get").await.status,
        200,
        "not checked, so not failing"
    );
}

#[tokio::test]
async fn a_cluster_that_never_arrived_fails_like_a_down_provider() {
    let w = start(|ls, _, _| {
        prepend_http_filters(
            ls,
            8000,
            vec![
                custom_rbac("grpc", false),
                grpc_ext_authz("grpc", 9999, json!({})),
            ],
        );
    })
    .await;
    let r = until(&w, 8000, "/secure/x", &[("x-ext-authz", "allow")], 403).await;
    assert_eq!(r.status, 403, "Envoy's default status_on_error");
    assert_eq!(get(&w, 8000, "/get").await.status, 200);
}

#[tokio::test]
async fn unsupported_fields_are_nacked_by_name_and_the_last_good_listener_serves() {
    let w = start(|_, _, _| {}).await;
    assert_eq!(get(&w, 8000, "/secure/x").await.status, 200);
    let mut ls = w.listeners.clone();
    let mut f = grpc_ext_authz("grpc", 9000, json!({}));
    f["typed_config"]["grpc_service"] =
        json!({"google_grpc": {"target_uri": "ext-authz:9000", "stat_prefix": "x"}});
    prepend_http_filters(&mut ls, 8000, vec![custom_rbac("grpc", false), f]);
    w.server.set(LISTENER, ls);
    let error = nack(&w).await;
    assert!(
        error.contains("listener main_internal")
            && error.contains("http_filters[1].typed_config.grpc_service.google_grpc"),
        "{error}"
    );
    assert_eq!(get(&w, 8000, "/secure/x").await.status, 200);
}

#[tokio::test]
async fn a_provider_in_the_mesh_is_reached_over_hbone() {
    let authz = GrpcAuthz::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // The authorization server is a pod in the ambient mesh: EDS gives the cluster an
    // HBONE endpoint, and the check goes through that pod's ztunnel.
    let w = start_with_pod(Some(App::Forward(authz.addr)), |ls, cs, es, extra| {
        prepend_http_filters(
            ls,
            8000,
            vec![
                custom_rbac("grpc", false),
                grpc_ext_authz("grpc", 9000, json!({})),
            ],
        );
        provider_cluster(cs, es, 9000, None, true);
        let e = mesh_endpoints(es, &outbound(9000), extra.unwrap());
        es.push((outbound(9000), e));
    })
    .await;
    let denied = until(&w, 8000, "/secure/x", &[], 401).await;
    assert_eq!(denied.status, 401, "{:?}", denied.body);
    let allowed = send(&w, 8000, "GET", "/secure/x", &[("x-ext-authz", "allow")]).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(authz.calls(), 2);
    let pod = w._pods.2.as_ref().unwrap();
    assert!(
        pod.counters
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the checks went through the provider pod's ztunnel"
    );
}

/// `generateGRPCConfig`'s network filter.
fn network_ext_authz(provider: &str, port: u16) -> Value {
    json!({"name": "envoy.filters.network.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
        "stat_prefix": "tcp.",
        "grpc_service": {"envoy_grpc": {"cluster_name": outbound(port), "authority": AUTHZ_HOST},
                         "timeout": "5s"},
        "transport_api_version": "V3",
        "filter_enabled_metadata": enabled_metadata(provider, true)
    }})
}

#[tokio::test]
async fn network_ext_authz_deny_closes_the_tunnel() {
    let ip = free_loopback_ip(9000);
    let authz = GrpcAuthz::start(SocketAddr::new(ip, 9000)).await.unwrap();
    let w = start_with_pod(Some(App::TcpEcho), |ls, cs, es, extra| {
        tcp_port(
            ls,
            cs,
            es,
            extra.unwrap(),
            vec![custom_rbac("grpc", true), network_ext_authz("grpc", 9000)],
        );
        provider_cluster(cs, es, 9000, Some(authz.addr), true);
    })
    .await;
    // The test server denies every check without `x-ext-authz: allow`: a TCP check has no
    // headers, so the tunnel is closed before any byte reaches the pod.
    let back = tcp_round_trip(&w).await;
    assert!(back.is_empty(), "a denied tunnel carries nothing: {back:?}");
    assert_eq!(authz.calls(), 1);
    let check = authz.log.lock().unwrap()[0].clone();
    assert_eq!(check.path, "", "connection attributes only");
    assert_eq!(
        check.source_principal,
        "spiffe://cluster.local/ns/default/sa/sleep"
    );

    // Without the CUSTOM pair the same tunnel echoes, and the provider is not asked.
    let mut ls = w.listeners.clone();
    fixture::edit_listener(&mut ls, |json| {
        for chain in json["filter_chains"].as_array_mut().unwrap() {
            if chain["name"] == TCP_CHAIN {
                let filters = chain["filters"].as_array_mut().unwrap();
                filters.retain(|f| {
                    !f["name"].as_str().unwrap().contains("rbac")
                        && !f["name"].as_str().unwrap().contains("ext_authz")
                });
            }
        }
    });
    w.server.set(LISTENER, ls);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut back = tcp_round_trip(&w).await;
    while back.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        back = tcp_round_trip(&w).await;
    }
    assert_eq!(back, b"hello");
    let calls = authz.calls();
    assert_eq!(tcp_round_trip(&w).await, b"hello");
    assert_eq!(authz.calls(), calls);
}

#[tokio::test]
async fn a_provider_cluster_field_that_would_not_take_effect_is_nacked_by_name() {
    // istiod never writes per_connection_buffer_limit_bytes; it used to be ignored on a
    // provider's cluster (none of its fields were read but the name and the protocol).
    let w = start(|_, cs, es| {
        provider_cluster(cs, es, 9000, None, true);
        edit_cluster(cs, &outbound(9000), |c| {
            c["per_connection_buffer_limit_bytes"] = json!(32768)
        });
    })
    .await;
    let e = nack(&w).await;
    assert!(
        e.contains(&outbound(9000)) && e.contains("per_connection_buffer_limit_bytes"),
        "{e}"
    );
}

#[tokio::test]
async fn a_provider_that_never_opens_the_tunnel_fails_after_its_clusters_connect_timeout() {
    // The provider is a mesh pod whose HBONE port accepts TCP and never answers the TLS
    // handshake; its cluster's connect_timeout (DestinationRule
    // `connectionPool.tcp.connectTimeout`, cluster_traffic_policy.go applyConnectionPool)
    // is 300 ms, the gRPC call's timeout 5 s.
    let ip = free_loopback_ip(15008);
    let silent = testkit::silent::SilentListener::bind(SocketAddr::new(ip, 15008))
        .await
        .unwrap();
    let w = start(|ls, cs, es| {
        prepend_http_filters(
            ls,
            8000,
            vec![
                custom_rbac("grpc", false),
                grpc_ext_authz("grpc", 9000, json!({"failure_mode_allow": false})),
            ],
        );
        provider_cluster(cs, es, 9000, None, true);
        edit_cluster(cs, &outbound(9000), |c| {
            c["connect_timeout"] = json!("0.300s")
        });
        let e = mesh_endpoints(es, &outbound(9000), ip);
        es.push((outbound(9000), e));
    })
    .await;
    // Once the filters are in place, a checked request fails closed (403).
    let first = until(&w, 8000, "/secure/x", &[("x-ext-authz", "allow")], 403).await;
    assert_eq!(first.status, 403);
    let started = std::time::Instant::now();
    let a = tokio::time::timeout(
        Duration::from_secs(8),
        send(&w, 8000, "GET", "/secure/x", &[("x-ext-authz", "allow")]),
    )
    .await
    .expect("answered within the gRPC timeout");
    let took = started.elapsed();
    assert_eq!(a.status, 403, "Envoy's default status_on_error");
    assert!(silent.accepted() >= 2, "the pod's HBONE port was reached");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "failed after {took:?}, not after the 300 ms connect timeout"
    );
}
