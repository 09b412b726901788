//! `waypoint explain --admin` against a waypoint configured by istiod over xDS: the RBAC
//! filters istiod generates for AuthorizationPolicies (the shared httpbin dump's port 8000,
//! `testkit::istio_dump::add_rbac`: DENY `/admin*`, ALLOW the `sleep` service account, as
//! `pilot/pkg/security/authz/builder/builder.go` builds them) are explained policy by
//! policy, and each answer is what the waypoint then does with the request.

mod istiod;

use std::process::Command;

use filters::explain::{Explanation, Stage, Verdict};
use istiod::*;

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";

fn explain(w: &World, from: &str, url: &str) -> (Explanation, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(["explain", "--admin", &w._wp.admin.to_string()])
        .args(["--from", from, "--output", "json", "GET", url])
        .output()
        .expect("run waypoint explain");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let e = serde_json::from_str(&stdout).unwrap_or_else(|err| {
        panic!(
            "not an explanation ({err}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (e, out.status.code().expect("exit status"))
}

fn has(e: &Explanation, stage: Stage, texts: &[&str]) -> bool {
    e.steps.iter().any(|s| {
        let t = format!(
            "{} {} {}",
            s.subject,
            s.outcome,
            s.detail.as_deref().unwrap_or_default()
        );
        s.stage == stage && texts.iter().all(|x| t.contains(x))
    })
}

#[tokio::test]
async fn explains_istiod_rbac_filters_as_the_waypoint_enforces_them() {
    let w = start(|_, _, _| {}).await;
    let url = |path: &str| format!("http://{HOST}:8000{path}");

    let (e, code) = explain(&w, SLEEP, &url("/admin/x"));
    let all = serde_json::to_string_pretty(&e).unwrap();
    assert!(e.config.contains("xds"), "{all}");
    assert_eq!(
        (e.answer.verdict, e.answer.status, code),
        (Verdict::Denied, Some(403), 1),
        "{all}"
    );
    assert!(
        has(
            &e,
            Stage::Authorization,
            &[
                "RBAC DENY policy ns[default]-policy[deny-admin]-rule[0]",
                "matched"
            ]
        ),
        "{all}"
    );
    assert_eq!(
        e.answer.details,
        "rbac_access_denied_matched_policy[ns[default]-policy[deny-admin]-rule[0]]"
    );
    assert_eq!(get(&w, 8000, "/admin/x").await.status, 403);

    let (e, code) = explain(&w, SLEEP, &url("/get"));
    let all = serde_json::to_string_pretty(&e).unwrap();
    assert_eq!(
        (e.answer.verdict, e.answer.status, code),
        (Verdict::Allowed, None, 0),
        "{all}"
    );
    assert!(
        has(
            &e,
            Stage::Authorization,
            &["deny-admin", "not matched", "no permission matched"]
        ),
        "{all}"
    );
    assert!(
        has(
            &e,
            Stage::Authorization,
            &[
                "RBAC ALLOW policy ns[default]-policy[allow-sleep]-rule[0]",
                "matched"
            ]
        ),
        "{all}"
    );
    assert_eq!(get(&w, 8000, "/get").await.status, 200);

    // Another service account: the ALLOW filter's permission matches, its principal does not.
    let (e, code) = explain(
        &w,
        "spiffe://cluster.local/ns/default/sa/other",
        &url("/get"),
    );
    let all = serde_json::to_string_pretty(&e).unwrap();
    assert_eq!(
        (e.answer.verdict, e.answer.status, code),
        (Verdict::Denied, Some(403), 1),
        "{all}"
    );
    assert!(
        has(
            &e,
            Stage::Authorization,
            &["allow-sleep", "not matched", "no principal did"]
        ),
        "{all}"
    );

    // Nothing at this port: the CONNECT would be refused.
    let (e, code) = explain(&w, SLEEP, &format!("http://{VIP}:9999/"));
    assert_eq!(
        (e.answer.verdict, e.answer.status, code),
        (Verdict::NotRouted, Some(404), 2)
    );
    assert!(has(&e, Stage::Authority, &["no match"]));
}
