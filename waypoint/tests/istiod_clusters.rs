//! Cluster shapes istiod generates from DestinationRules (subsets, load balancing,
//! consistent hashing, circuit breakers), served over Delta ADS to a real waypoint process
//! and checked over HBONE.

mod istiod;

use std::time::Duration;

use istiod::*;
use serde_json::json;

#[tokio::test]
async fn destination_rule_subset_clusters_are_accepted_and_routable() {
    let w = start(|ls, cs, es| {
        // A DestinationRule with subset v2 on httpbin: istiod adds the subset cluster
        // whether or not a route names it; here a VirtualService-style route does.
        let canary_eps = "inbound-vip|8000|http|httpbin-v2.default.svc.cluster.local";
        let (c, e) = fixture::subset(cs, es, 8000, "v2", canary_eps);
        cs.push(c);
        es.push(e);
        fixture::prepend_routes(
            ls,
            8000,
            &[json!({"name": "vs.subset", "match": {"prefix": "/subset"},
                     "route": {"cluster": "inbound-vip|8000|http/v2|httpbin.default.svc.cluster.local"}})],
        );
    })
    .await;
    for _ in 0..8 {
        let a = get(&w, 8000, "/subset").await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.echo()["pod"],
            "httpbin-v2-1",
            "only the subset's endpoints"
        );
    }
    // The Service itself still balances over its own endpoints.
    assert_eq!(get(&w, 8000, "/get").await.echo()["pod"], "httpbin-1");
}

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
async fn a_circuit_breaker_answers_503_uo_past_its_limit() {
    // DestinationRule connectionPool http.http2MaxRequests: 1 (cluster_traffic_policy.go
    // applyConnectionPool): circuit_breakers max_requests 1 on the cluster.
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["circuit_breakers"] = json!({"thresholds": [{
                "max_connections": 4294967295u32, "max_pending_requests": 4294967295u32,
                "max_requests": 1, "max_retries": 4294967295u32, "track_remaining": true}]});
        })
    })
    .await;
    let slow = in_background(&w, "/slow?delay=1s");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let over = get(&w, 8100, "/get").await;
    assert_eq!(over.status, 503, "the second request in flight overflows");
    assert_eq!(slow.await.unwrap().0, 200);
    // With the first one done, requests go through again.
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
}
