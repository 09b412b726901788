//! Upstream HTTP/2 connection settings istiod writes from a DestinationRule's
//! `connectionPool` (pilot/pkg/networking/core/cluster_traffic_policy.go,
//! applyConnectionPool: `http.maxConcurrentStreams` becomes
//! `http2_protocol_options.max_concurrent_streams`, `http.http2KeepAlive` becomes
//! `http2_protocol_options.connection_keepalive` {interval, timeout}, both only on a
//! cluster that is explicit HTTP/2 by then, i.e. a `grpc`/`http2` port: cluster_waypoint.go
//! buildWaypointInboundVIPCluster calls buildCluster (setUpstreamProtocol, setH2Options)
//! before applyConnectionPool), served over Delta ADS to a real waypoint process and
//! checked at an h2c pod behind HBONE.

mod istiod;

use std::time::{Duration, Instant};

use istiod::*;
use serde_json::json;
use testkit::h2_app::H2App;

/// Port 8100's cluster as istiod names it for a `grpc` port.
const GRPC_8100: &str = "inbound-vip|8100|grpc|httpbin.default.svc.cluster.local";

/// Makes httpbin's port 8100 a `grpc` port whose only endpoint is the pod at `pod`, with
/// `h2` as the cluster's `http2_protocol_options` (setH2Options, then applyConnectionPool).
fn grpc_port(ls: &mut Named, cs: &mut Named, es: &mut Named, pod: IpAddr, h2: serde_json::Value) {
    set_only_endpoint(es, CLUSTER_8100, pod);
    edit_cluster(cs, CLUSTER_8100, |c| {
        c["name"] = json!(GRPC_8100);
        c["eds_cluster_config"]["service_name"] = json!(GRPC_8100);
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": h2}}});
    });
    for (name, _) in cs.iter_mut().chain(es.iter_mut()) {
        if name == CLUSTER_8100 {
            *name = GRPC_8100.into();
        }
    }
    let (_, e) = es.iter_mut().find(|(n, _)| n == GRPC_8100).unwrap();
    let mut cla = <envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as prost::Message>::decode(e.value.as_slice()).unwrap();
    cla.cluster_name = GRPC_8100.into();
    *e = fixture::any(ENDPOINT, &cla);
    fixture::edit_listener(ls, |json| {
        let renamed = json.to_string().replace(CLUSTER_8100, GRPC_8100);
        *json = serde_json::from_str(&renamed).unwrap();
    });
}

async fn world(app: &H2App, h2: serde_json::Value) -> World {
    start_with_pod(Some(App::Forward(app.addr)), |ls, cs, es, extra| {
        grpc_port(ls, cs, es, extra.unwrap(), h2)
    })
    .await
}

#[tokio::test]
async fn max_concurrent_streams_opens_another_connection_past_the_limit() {
    // DestinationRule connectionPool.http.maxConcurrentStreams: 2.
    let app = H2App::start(5).await.unwrap();
    let w = world(&app, json!({"max_concurrent_streams": 2})).await;
    let requests: Vec<_> = (0..5).map(|_| in_background(&w, "/hold")).collect();
    for r in requests {
        let (status, _) = tokio::time::timeout(Duration::from_secs(15), r)
            .await
            .expect("answered in time")
            .unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(app.connections(), 3, "5 streams, at most 2 per connection");
    let peaks = app.peaks();
    assert!(peaks.iter().all(|p| *p <= 2), "{peaks:?}");
    assert_eq!(peaks.iter().sum::<usize>(), 5, "{peaks:?}");
}

#[tokio::test]
async fn without_a_stream_limit_one_connection_carries_every_request() {
    let app = H2App::start(5).await.unwrap();
    let w = world(&app, json!({})).await;
    let requests: Vec<_> = (0..5).map(|_| in_background(&w, "/hold")).collect();
    for r in requests {
        let (status, _) = tokio::time::timeout(Duration::from_secs(15), r)
            .await
            .expect("answered in time")
            .unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(app.connections(), 1);
    assert_eq!(app.peaks(), [5]);
}

#[tokio::test]
async fn a_connection_that_stops_answering_pings_is_abandoned() {
    // DestinationRule connectionPool.http.http2KeepAlive {interval: 300ms, timeout: 500ms}.
    let app = H2App::start(1).await.unwrap();
    let w = world(
        &app,
        json!({"connection_keepalive": {"interval": "0.300s", "timeout": "0.500s"}}),
    )
    .await;
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
    assert_eq!(app.connections(), 1);
    app.freeze(0);
    let frozen = Instant::now();
    while !app.closed(0) {
        assert!(
            frozen.elapsed() < Duration::from_secs(5),
            "the waypoint kept a connection whose PINGs go unanswered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An unanswered PING after 300 ms of silence, given up 500 ms later.
    assert!(
        frozen.elapsed() >= Duration::from_millis(700),
        "closed after {:?}",
        frozen.elapsed()
    );
    let a = tokio::time::timeout(Duration::from_secs(5), get(&w, 8100, "/get"))
        .await
        .expect("the next request does not wait on the dead connection");
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], b"1", "answered on a new connection");
    assert_eq!(app.connections(), 2);
}

#[tokio::test]
async fn a_keepalive_without_a_timeout_is_nacked_by_field() {
    // Envoy requires KeepaliveSettings.timeout; istiod copies what the rule says.
    let app = H2App::start(1).await.unwrap();
    let w = world(&app, json!({"connection_keepalive": {"interval": "1s"}})).await;
    let e = nack(&w).await;
    assert!(
        e.contains(GRPC_8100) && e.contains("http2_protocol_options.connection_keepalive.timeout"),
        "{e}"
    );
}

/// Port 8100 as a `grpc` port whose DestinationRule has `connectionPool.tcp.maxConnections:
/// 1`, `http.http2MaxRequests: 10`, `http.http1MaxPendingRequests: 1` and
/// `http.maxConcurrentStreams: 1`: applyConnectionPool (cluster_traffic_policy.go) writes
/// the first three into the cluster's one `circuit_breakers` threshold (the others at
/// getDefaultCircuitBreakerThresholds's MaxUint32) and the last into
/// `http2_protocol_options.max_concurrent_streams`.
async fn capped_world(app: &H2App) -> World {
    start_with_pod(Some(App::Forward(app.addr)), |ls, cs, es, extra| {
        grpc_port(
            ls,
            cs,
            es,
            extra.unwrap(),
            json!({"max_concurrent_streams": 1}),
        );
        edit_cluster(cs, GRPC_8100, |c| {
            c["circuit_breakers"] = json!({"thresholds": [{
                "max_connections": 1, "max_pending_requests": 1, "max_requests": 10,
                "max_retries": 4294967295u32, "track_remaining": true}]});
        });
    })
    .await
}

/// Sends `path` to port 8100 in the background; resolves to the status and the body.
fn request(w: &World, path: &'static str) -> tokio::task::JoinHandle<(u16, String)> {
    let client = w.client.clone();
    tokio::spawn(async move {
        let conn = client.connect().await.unwrap();
        let mut http = conn
            .http1(SocketAddr::new(VIP.parse().unwrap(), 8100))
            .await
            .unwrap();
        let req = http::Request::get(path)
            .header("host", HOST)
            .body(filters::body::empty())
            .unwrap();
        let resp = http.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn max_connections_caps_http2_connections_and_queues_streams_up_to_pending() {
    let app = H2App::start(1).await.unwrap();
    let w = capped_world(&app).await;
    // The first request takes the only stream of the only connection and is held there.
    let first = request(&w, "/gate");
    until("the first request reaches the pod", || app.requests() == 1).await;
    // Two more: the cap allows no second connection, so one waits for the stream (the one
    // pending request allowed) and the other overflows at once: 503 UO.
    let (a, b) = (request(&w, "/gate"), request(&w, "/gate"));
    let mut others = vec![a, b];
    let overflowed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(i) = others.iter().position(|h| h.is_finished()) {
                return others.swap_remove(i).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("one of the two overflows while the first is held");
    assert_eq!(overflowed.0, 503, "{}", overflowed.1);
    assert!(
        overflowed.1.ends_with("reset reason: overflow"),
        "{}",
        overflowed.1
    );
    // The waiting one has not reached the pod: it waits at the waypoint, not on a second
    // connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.requests(), 1);
    assert_eq!(app.connections(), 1);
    app.open_gate();
    let first = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.0, 200);
    let waited = tokio::time::timeout(Duration::from_secs(5), others.pop().unwrap())
        .await
        .expect("the waiting request is served once the stream is free")
        .unwrap();
    assert_eq!(waited.0, 200, "{}", waited.1);
    assert_eq!(waited.1, "0", "on the first connection");
    assert_eq!(app.requests(), 2);
    assert_eq!(
        app.connections(),
        1,
        "one connection carried both, one after the other"
    );
    assert_eq!(app.peaks(), [1]);
}
