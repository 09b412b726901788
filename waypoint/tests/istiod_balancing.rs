//! Load balancing as istiod configures it from DestinationRules (consistent hashing, least
//! request, slow start, locality and endpoint weights), served over Delta ADS to a real
//! waypoint process and checked over HBONE.

mod istiod;

use std::time::Duration;

use istiod::*;
use serde_json::json;

#[tokio::test]
async fn consistent_hashing_keeps_each_user_on_one_pod() {
    // DestinationRule consistentHash (cluster_traffic_policy.go applyLoadBalancer):
    // RING_HASH on the cluster, hash_policy on the route (header, and a cookie with a TTL).
    let w = start_with_pod(Some(App::Echo), |ls, cs, es, extra| {
        add_endpoint(es, CLUSTER_8100, extra.unwrap());
        edit_cluster(cs, CLUSTER_8100, |c| c["lb_policy"] = json!("RING_HASH"));
        fixture::prepend_routes(
            ls,
            8100,
            &[
                json!({"name": "dr.header", "match": {"prefix": "/user"}, "route": {"cluster": CLUSTER_8100,
                       "hash_policy": [{"header": {"header_name": "x-user"}}]}}),
                json!({"name": "dr.cookie", "match": {"prefix": "/cookie"}, "route": {"cluster": CLUSTER_8100,
                       "hash_policy": [{"cookie": {"name": "sticky", "ttl": "60s", "path": "/"}}]}}),
            ],
        );
    })
    .await;
    let mut pods = std::collections::HashSet::new();
    for u in 0..20 {
        let user = format!("user-{u}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let a = send(&w, 8100, "GET", "/user", &[("x-user", &user)]).await;
            seen.insert(a.echo()["pod"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "{user} went to {seen:?}");
        pods.extend(seen);
    }
    assert_eq!(pods.len(), 2, "users spread over both pods: {pods:?}");

    // Without the cookie, one is generated and set; with it, the pod stays the same.
    let first = get(&w, 8100, "/cookie").await;
    let set = first
        .header("set-cookie")
        .expect("a generated cookie")
        .to_string();
    assert!(
        set.starts_with("sticky=") && set.contains("Max-Age=60"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let pod = first.echo()["pod"].as_str().unwrap().to_string();
    for _ in 0..6 {
        let a = send(&w, 8100, "GET", "/cookie", &[("cookie", &cookie)]).await;
        assert_eq!(a.echo()["pod"], pod.as_str());
        assert_eq!(a.header("set-cookie"), None);
    }
}

#[tokio::test]
async fn least_request_sends_new_requests_away_from_a_busy_pod() {
    // Istio's default load balancer (cluster.go defaultLBAlgorithm): LEAST_REQUEST.
    let w = start_with_pod(Some(App::Echo), |_, cs, es, extra| {
        add_endpoint(es, CLUSTER_8100, extra.unwrap());
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["lb_policy"] = json!("LEAST_REQUEST")
        });
    })
    .await;
    // One slow request holds one pod busy.
    let slow = in_background(&w, "/slow?delay=1500ms");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fast = std::collections::HashSet::new();
    for _ in 0..10 {
        fast.insert(
            get(&w, 8100, "/get").await.echo()["pod"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let (_, echo) = slow.await.unwrap();
    let busy = echo["pod"].as_str().unwrap().to_string();
    assert_eq!(fast.len(), 1, "every new request went to one pod: {fast:?}");
    assert!(!fast.contains(&busy), "not to the busy pod {busy}");
}

#[tokio::test]
async fn warmup_ramps_a_joining_pod_up_over_its_window() {
    // DestinationRule `loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 3s}}`:
    // istiod writes `round_robin_lb_config.slow_start_config` with aggression 1 (runtime
    // key "(") and min_weight_percent 10 (cluster_traffic_policy.go, setWarmup).
    let mut saved = None;
    let w = start_with_pod(Some(App::Echo), |_, cs, es, extra| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["lb_policy"] = json!("ROUND_ROBIN");
            c["round_robin_lb_config"] = json!({"slow_start_config": {
                "slow_start_window": "3s",
                "aggression": {"default_value": 1.0, "runtime_key": "("},
                "min_weight_percent": {"value": 10.0}}});
        });
        saved = Some((es.clone(), extra.unwrap()));
    })
    .await;
    let (mut es, extra) = saved.unwrap();
    let pods = |n: usize| {
        let w = &w;
        async move {
            let mut joined = 0;
            for _ in 0..n {
                let a = get(w, 8100, "/get").await;
                assert_eq!(a.status, 200);
                joined += usize::from(a.echo()["pod"] == "httpbin-extra");
            }
            joined
        }
    };
    // httpbin-1's own window passes; then EDS adds the extra pod.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    add_endpoint(&mut es, CLUSTER_8100, extra);
    w.server.set(ENDPOINT, es);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pods(5).await == 0 {
        assert!(std::time::Instant::now() < deadline, "the pod never joined");
    }
    let early = pods(40).await;
    assert!(
        early <= 14,
        "the joining pod took {early} of 40 while warming up"
    );
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let late = pods(60).await;
    assert!(
        (20..=40).contains(&late),
        "the joining pod took {late} of 60 after"
    );
}

#[tokio::test]
async fn locality_weights_split_traffic_between_localities() {
    // DestinationRule `localityLbSetting.distribute: [{from: r1/*, to: {r1/z1/*: 80,
    // r2/z2/*: 20}}]`: istiod sets `common_lb_config.locality_weighted_lb_config` on the
    // cluster (loadbalancer.go, LocalityLBSettings.ApplyToCluster) and each locality's
    // `load_balancing_weight` in EDS (applyLocalityWeights).
    use envoy_types::pb::envoy::config::core::v3::Locality;
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, LocalityLbEndpoints,
    };
    use envoy_types::pb::google::protobuf::UInt32Value;
    let w = start_with_pod(Some(App::Echo), |_, cs, es, extra| {
        add_endpoint(es, CLUSTER_8100, extra.unwrap());
        let (_, e) = es.iter_mut().find(|(n, _)| n == CLUSTER_8100).unwrap();
        let mut cla =
            <ClusterLoadAssignment as prost::Message>::decode(e.value.as_slice()).unwrap();
        let far = cla.endpoints[0].lb_endpoints.pop().unwrap();
        cla.endpoints[0].locality = Some(Locality {
            region: "r1".into(),
            zone: "z1".into(),
            ..Default::default()
        });
        cla.endpoints[0].load_balancing_weight = Some(UInt32Value { value: 80 });
        cla.endpoints.push(LocalityLbEndpoints {
            locality: Some(Locality {
                region: "r2".into(),
                zone: "z2".into(),
                ..Default::default()
            }),
            lb_endpoints: vec![far],
            load_balancing_weight: Some(UInt32Value { value: 20 }),
            ..Default::default()
        });
        *e = fixture::any(ENDPOINT, &cla);
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["lb_policy"] = json!("ROUND_ROBIN");
            c["common_lb_config"] = json!({"locality_weighted_lb_config": {}});
        });
    })
    .await;
    let mut near = 0;
    for _ in 0..100 {
        let a = get(&w, 8100, "/get").await;
        assert_eq!(a.status, 200);
        near += usize::from(a.echo()["pod"] == "httpbin-1");
    }
    // 80 expected; round robin over both pods would give 50.
    assert!(
        (65..=93).contains(&near),
        "the 80-weight locality took {near} of 100"
    );
}

#[tokio::test]
async fn endpoint_weights_split_traffic_between_pods() {
    // EDS `lb_endpoints[].load_balancing_weight` (istiod's endpoint builder writes each
    // endpoint's weight: a WorkloadEntry's `weight`, or 1): 3 to 1 here.
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::google::protobuf::UInt32Value;
    let w = start_with_pod(Some(App::Echo), |_, cs, es, extra| {
        add_endpoint(es, CLUSTER_8100, extra.unwrap());
        let (_, e) = es.iter_mut().find(|(n, _)| n == CLUSTER_8100).unwrap();
        let mut cla =
            <ClusterLoadAssignment as prost::Message>::decode(e.value.as_slice()).unwrap();
        let lbs = &mut cla.endpoints[0].lb_endpoints;
        lbs[0].load_balancing_weight = Some(UInt32Value { value: 3 });
        lbs[1].load_balancing_weight = Some(UInt32Value { value: 1 });
        *e = fixture::any(ENDPOINT, &cla);
        edit_cluster(cs, CLUSTER_8100, |c| c["lb_policy"] = json!("ROUND_ROBIN"));
    })
    .await;
    let mut heavy = 0;
    for _ in 0..100 {
        let a = get(&w, 8100, "/get").await;
        assert_eq!(a.status, 200);
        heavy += usize::from(a.echo()["pod"] == "httpbin-1");
    }
    // 75 expected; weights ignored would give 50.
    assert!(
        (60..=90).contains(&heavy),
        "the weight-3 pod took {heavy} of 100"
    );
}

/// Sends `keys` distinct `x-user` hashes through a consistent-hash cluster whose pods weigh
/// 1 (httpbin-1) and 3 (httpbin-extra), each key twice; the number of keys on the heavy pod.
async fn heavy_share_under(policy: &'static str, lb_config: Option<serde_json::Value>) -> usize {
    // The cluster: ApplyRingHashLoadBalancer (cluster_traffic_policy.go) writes RING_HASH
    // (with `minimum_ring_size` when the DestinationRule sets one) or MAGLEV (with
    // `table_size`); the route: ConsistentHashToHashPolicy (route/route.go), a header.
    // Weights: EDS `load_balancing_weight` from istiod's endpoint builder (a WorkloadEntry's
    // `weight`, a ServiceEntry endpoint's `weight`; pilot/pkg/xds/endpoints).
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::google::protobuf::UInt32Value;
    let w = start_with_pod(Some(App::Echo), |ls, cs, es, extra| {
        add_endpoint(es, CLUSTER_8100, extra.unwrap());
        let (_, e) = es.iter_mut().find(|(n, _)| n == CLUSTER_8100).unwrap();
        let mut cla =
            <ClusterLoadAssignment as prost::Message>::decode(e.value.as_slice()).unwrap();
        let lbs = &mut cla.endpoints[0].lb_endpoints;
        lbs[0].load_balancing_weight = Some(UInt32Value { value: 1 });
        lbs[1].load_balancing_weight = Some(UInt32Value { value: 3 });
        *e = fixture::any(ENDPOINT, &cla);
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["lb_policy"] = json!(policy);
            if let Some((k, v)) = lb_config.as_ref().and_then(|v| v.as_object()?.iter().next()) {
                c[k.as_str()] = v.clone();
            }
        });
        fixture::prepend_routes(
            ls,
            8100,
            &[json!({"name": "dr.header", "match": {"prefix": "/user"}, "route": {"cluster": CLUSTER_8100,
                     "hash_policy": [{"header": {"header_name": "x-user"}}]}})],
        );
    })
    .await;
    let mut heavy = 0;
    for u in 0..200 {
        let user = format!("user-{u}");
        let mut pods = std::collections::HashSet::new();
        for _ in 0..2 {
            let a = send(&w, 8100, "GET", "/user", &[("x-user", &user)]).await;
            assert_eq!(a.status, 200);
            pods.insert(a.echo()["pod"].as_str().unwrap().to_string());
        }
        assert_eq!(pods.len(), 1, "{user} went to {pods:?}");
        heavy += usize::from(pods.contains("httpbin-extra"));
    }
    eprintln!("{policy}: the weight-3 pod took {heavy} of 200 keys");
    heavy
}

#[tokio::test]
async fn ring_hash_gives_each_pod_keys_in_proportion_to_its_weight() {
    let heavy = heavy_share_under(
        "RING_HASH",
        Some(json!({"ring_hash_lb_config": {"minimum_ring_size": "2048"}})),
    )
    .await;
    // 150 expected; weights ignored would give about 100.
    assert!(
        (125..=175).contains(&heavy),
        "the weight-3 pod took {heavy} of 200 keys"
    );
}

#[tokio::test]
async fn maglev_gives_each_pod_keys_in_proportion_to_its_weight() {
    let heavy = heavy_share_under(
        "MAGLEV",
        Some(json!({"maglev_lb_config": {"table_size": "65537"}})),
    )
    .await;
    assert!(
        (125..=175).contains(&heavy),
        "the weight-3 pod took {heavy} of 200 keys"
    );
}

#[tokio::test]
async fn a_generated_hash_cookie_carries_the_destination_rules_attributes() {
    // DestinationRule consistentHash.httpCookie {name, path, ttl, attributes}:
    // ConsistentHashToHashPolicy (route/route.go) copies each attribute's name and value
    // into the route's `hash_policy.cookie.attributes`.
    let w = start_with_pod(Some(App::Echo), |ls, cs, es, extra| {
        add_endpoint(es, CLUSTER_8100, extra.unwrap());
        edit_cluster(cs, CLUSTER_8100, |c| c["lb_policy"] = json!("RING_HASH"));
        fixture::prepend_routes(
            ls,
            8100,
            &[json!({"name": "dr.cookie", "match": {"prefix": "/cookie"}, "route": {"cluster": CLUSTER_8100,
                     "hash_policy": [{"cookie": {"name": "sticky", "ttl": "90s", "path": "/cookie",
                                                 "attributes": [{"name": "SameSite", "value": "Strict"},
                                                                {"name": "Secure"}]}}]}})],
        );
    })
    .await;
    let first = get(&w, 8100, "/cookie").await;
    assert_eq!(first.status, 200);
    let set = first.header("set-cookie").expect("a generated cookie");
    let (cookie, rest) = set.split_once(';').unwrap();
    assert!(cookie.starts_with("sticky=\""), "{set}");
    assert_eq!(
        rest,
        " Max-Age=90; Path=/cookie; SameSite=Strict; Secure; HttpOnly"
    );
    let pod = first.echo()["pod"].as_str().unwrap().to_string();
    for _ in 0..4 {
        let a = send(&w, 8100, "GET", "/cookie", &[("cookie", cookie)]).await;
        assert_eq!(a.echo()["pod"], pod.as_str());
        assert_eq!(a.header("set-cookie"), None);
    }
}
