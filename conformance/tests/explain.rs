//! `waypoint explain` on the conformance mesh: every step kind explained offline (from the
//! configuration file) and through the admin API of the running waypoint, and each offline
//! answer checked against what the waypoint then does with the same request over HBONE.

use std::path::{Path, PathBuf};
use std::process::Command;

use conformance::cases::{Client, Request};
use conformance::cluster::{Cluster, WAYPOINT, WAYPOINT_NS};
use filters::explain::{Explanation, Stage, Verdict};
use testkit::client::ClientError;
use testkit::jwt::{now, JwtIssuer};

const CONSUMER_NS: &str = "gateway-conformance-mesh-consumer";

/// The `waypoint` binary of this build (as `tests/mesh.rs` finds it).
fn waypoint_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WAYPOINT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("waypoint");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "waypoint", "--bin", "waypoint"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the waypoint binary failed");
    }
    bin
}

/// The objects under test: a JWT rule and policies on three Services, routes on `echo`.
fn objects(jwks: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: authz-grpc
      envoyExtAuthzGrpc: {{service: 127.0.0.1, port: 1, timeout: 2s, statusOnError: "503"}}
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: {WAYPOINT_NS}}}
spec:
  selector: {{app: nobody}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: {WAYPOINT_NS}}}
spec:
  targetRefs: [{{group: "", kind: Service, name: echo-v2}}]
  jwtRules:
  - issuer: https://issuer.example
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: {WAYPOINT_NS}}}
spec:
  targetRefs: [{{group: "", kind: Service, name: echo-v2}}]
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["https://issuer.example/*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: {WAYPOINT_NS}}}
spec:
  targetRefs: [{{group: "", kind: Service, name: echo}}]
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-own-namespace, namespace: {WAYPOINT_NS}}}
spec:
  targetRefs: [{{group: "", kind: Service, name: echo}}]
  action: ALLOW
  rules:
  - from: [{{source: {{namespaces: ["{WAYPOINT_NS}"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-check, namespace: {WAYPOINT_NS}}}
spec:
  targetRefs: [{{group: "", kind: Service, name: echo-v1}}]
  action: CUSTOM
  provider: {{name: authz-grpc}}
  rules:
  - to: [{{operation: {{paths: ["/ext*"]}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo-routes, namespace: {WAYPOINT_NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]
    backendRefs: [{{name: echo-v2, port: 80}}]
  - matches: [{{path: {{type: Exact, value: /v2/exact}}}}]
    backendRefs: [{{name: echo-v1, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /split}}}}]
    backendRefs: [{{name: echo-v1, port: 80, weight: 30}}, {{name: echo-v2, port: 80, weight: 70}}]
  - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}, statusCode: 301}}
  - matches: [{{path: {{type: PathPrefix, value: /}}, headers: [{{name: x-version, value: v2}}]}}]
    backendRefs: [{{name: echo-v2, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /rewrite}}}}]
    filters:
    - type: URLRewrite
      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /rewritten}}}}
    backendRefs: [{{name: echo-v1, port: 80}}]
"#
    )
}

/// One request, and what its explanation must say.
struct Case {
    name: &'static str,
    /// The sending pod's Deployment and namespace.
    client: (&'static str, &'static str),
    host: &'static str,
    path: &'static str,
    headers: Vec<(String, String)>,
    verdict: Verdict,
    /// The waypoint's own status; `None`: forwarded (the backend answers).
    status: Option<u16>,
    route: Option<&'static str>,
    /// Steps that must be present: stage, then text the step (subject, outcome, detail)
    /// must contain, all of it.
    steps: Vec<(Stage, Vec<&'static str>)>,
}

impl Case {
    fn new(name: &'static str, host: &'static str, path: &'static str) -> Self {
        Self {
            name,
            client: ("echo-v1", WAYPOINT_NS),
            host,
            path,
            headers: Vec::new(),
            verdict: Verdict::Allowed,
            status: None,
            route: None,
            steps: Vec::new(),
        }
    }

    fn from(mut self, app: &'static str, ns: &'static str) -> Self {
        self.client = (app, ns);
        self
    }

    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    fn answer(
        mut self,
        verdict: Verdict,
        status: Option<u16>,
        route: Option<&'static str>,
    ) -> Self {
        self.verdict = verdict;
        self.status = status;
        self.route = route;
        self
    }

    fn step(mut self, stage: Stage, text: &[&'static str]) -> Self {
        self.steps.push((stage, text.to_vec()));
        self
    }
}

fn cases(issuer: &JwtIssuer) -> Vec<Case> {
    let route = Some("gateway-conformance-mesh/echo-routes");
    let good = issuer.token(serde_json::json!({"sub": "alice", "exp": now() + 3600}));
    let stranger = JwtIssuer::new("https://other.example", "k2")
        .token(serde_json::json!({"sub": "mallory", "exp": now() + 3600}));
    vec![
        Case::new("authority miss", "echo:81", "/")
            .answer(Verdict::NotRouted, Some(404), None)
            .step(Stage::Authority, &[":81", "no match", "CONNECT gets 404"]),
        Case::new("JWT from an unknown issuer", "echo-v2", "/")
            .header("authorization", &format!("Bearer {stranger}"))
            .answer(Verdict::Denied, Some(401), None)
            .step(
                Stage::Authentication,
                &["rejected", "Jwt issuer is not configured"],
            ),
        Case::new("JWT verified, ALLOW on requestPrincipals", "echo-v2", "/")
            .header("authorization", &format!("Bearer {good}"))
            .step(
                Stage::Authentication,
                &["verified", "https://issuer.example/alice"],
            )
            .step(
                Stage::Authorization,
                &["require-jwt (ALLOW)", "matched", "request_principals"],
            ),
        Case::new("no JWT: ALLOW does not match", "echo-v2", "/")
            .answer(Verdict::Denied, Some(403), None)
            .step(Stage::Authentication, &["no token"])
            .step(
                Stage::Authorization,
                &[
                    "require-jwt (ALLOW)",
                    "not matched",
                    "from[0].request_principals",
                    "(absent)",
                ],
            )
            .step(Stage::Authorization, &["denied", "no ALLOW policy matched"]),
        Case::new("DENY matches", "echo", "/admin/users")
            .answer(Verdict::Denied, Some(403), None)
            .step(
                Stage::Authorization,
                &["deny-admin (DENY)", "matched", "rule 0", "to[0].paths"],
            ),
        Case::new("DENY does not match, ALLOW does", "echo", "/v2/page")
            .answer(Verdict::Allowed, None, route)
            .step(
                Stage::Authorization,
                &[
                    "deny-admin (DENY)",
                    "not matched",
                    "to[0].paths",
                    "\"/v2/page\"",
                ],
            )
            .step(
                Stage::Authorization,
                &[
                    "allow-own-namespace (ALLOW)",
                    "matched",
                    "from[0].namespaces",
                ],
            )
            // Precedence: the Exact /v2/exact match ranks above PathPrefix /v2.
            .step(
                Stage::Route,
                &["rule 1 match 0", "not matched", "Exact", "/v2/page"],
            )
            .step(Stage::Route, &["rule 0 match 0", "selected"])
            .step(Stage::Backend, &["echo-v2:80"]),
        Case::new(
            "ALLOW does not match another namespace",
            "echo.gateway-conformance-mesh",
            "/v2",
        )
        .from("echo-v1", CONSUMER_NS)
        .answer(Verdict::Denied, Some(403), None)
        .step(
            Stage::Authorization,
            &[
                "allow-own-namespace (ALLOW)",
                "not matched",
                "from[0].namespaces",
                CONSUMER_NS,
            ],
        ),
        Case::new("CUSTOM matches: the provider decides", "echo-v1", "/ext/x")
            .answer(Verdict::ProviderDecides, None, None)
            .step(
                Stage::Authorization,
                &[
                    "ext-check (CUSTOM, provider authz-grpc)",
                    "matched",
                    "to[0].paths",
                ],
            )
            .step(
                Stage::Authorization,
                &["ext_authz provider authz-grpc", "asked"],
            ),
        Case::new("CUSTOM does not match", "echo-v1", "/public")
            .step(
                Stage::Authorization,
                &[
                    "ext-check (CUSTOM, provider authz-grpc)",
                    "not matched",
                    "to[0].paths",
                ],
            )
            .step(Stage::Route, &["no routes"]),
        Case::new(
            "route precedence: Exact over PathPrefix",
            "echo",
            "/v2/exact",
        )
        .answer(Verdict::Allowed, None, route)
        .step(Stage::Route, &["rule 1 match 0", "selected"])
        .step(Stage::Backend, &["echo-v1:80"]),
        Case::new("header match", "echo", "/anything")
            .header("x-version", "v2")
            .answer(Verdict::Allowed, None, route)
            .step(Stage::Route, &["rule 4 match 0", "selected"]),
        Case::new("header match missing: no route", "echo", "/anything")
            .answer(Verdict::NotRouted, Some(404), None)
            .step(
                Stage::Route,
                &[
                    "rule 4 match 0",
                    "not matched",
                    "header x-version",
                    "(absent)",
                ],
            )
            .step(Stage::Route, &["none matched"]),
        Case::new("weighted backends", "echo", "/split")
            .answer(Verdict::Allowed, None, route)
            .step(
                Stage::Backend,
                &[
                    "backendRefs",
                    "echo-v1:80 weight 30 (30%)",
                    "echo-v2:80 weight 70 (70%)",
                ],
            ),
        Case::new("path normalized, then DENY matches", "echo", "/v2/../admin")
            .answer(Verdict::Denied, Some(403), None)
            .step(Stage::Authorization, &["path", "normalized", "\"/admin\""])
            .step(Stage::Authorization, &["deny-admin (DENY)", "matched"]),
        Case::new("rewrite", "echo", "/rewrite/x?q=1")
            .answer(Verdict::Allowed, None, route)
            .step(Stage::Route, &["rule 5 match 0", "selected"])
            .step(
                Stage::Filter,
                &["URLRewrite", "sent as echo /rewritten/x?q=1"],
            ),
        Case::new("no endpoint", "empty", "/")
            .answer(Verdict::NotRouted, Some(503), None)
            .step(
                Stage::Backend,
                &["empty:80", "no endpoint", "no healthy upstream"],
            ),
        Case::new("redirect", "echo", "/old/page")
            .answer(Verdict::Allowed, Some(301), route)
            .step(Stage::Route, &["rule 3 match 0", "selected"])
            .step(Stage::Filter, &["RequestRedirect", "301", "/new/page"]),
    ]
}

/// `waypoint explain` with `source` (`--config <file>` or `--admin <addr>`): the parsed
/// JSON output and the exit status.
fn explain(source: &[&str], from: &str, case: &Case) -> (Explanation, i32) {
    let mut cmd = Command::new(waypoint_bin());
    cmd.arg("explain")
        .args(source)
        .args(["--from", from, "--output", "json"]);
    for (k, v) in &case.headers {
        cmd.args(["--header", &format!("{k}={v}")]);
    }
    cmd.args(["GET", &format!("http://{}{}", case.host, case.path)]);
    let out = cmd.output().expect("run waypoint explain");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let explanation: Explanation = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{}: explain output is not an explanation ({e}):\n{stdout}\n{}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (explanation, out.status.code().expect("exit status"))
}

fn check(case: &Case, e: &Explanation, code: i32, how: &str) {
    let all = serde_json::to_string_pretty(e).unwrap();
    let a = &e.answer;
    assert_eq!(
        a.verdict, case.verdict,
        "{} ({how}): verdict\n{all}",
        case.name
    );
    assert_eq!(
        code,
        case.verdict.exit_code(),
        "{} ({how}): exit status",
        case.name
    );
    assert_eq!(
        a.status, case.status,
        "{} ({how}): status\n{all}",
        case.name
    );
    assert_eq!(
        a.route.as_deref(),
        case.route,
        "{} ({how}): route\n{all}",
        case.name
    );
    for (stage, texts) in &case.steps {
        let found = e.steps.iter().any(|s| {
            let text = format!(
                "{} {} {}",
                s.subject,
                s.outcome,
                s.detail.as_deref().unwrap_or_default()
            );
            s.stage == *stage && texts.iter().all(|t| text.contains(t))
        });
        assert!(
            found,
            "{} ({how}): no {stage:?} step with {texts:?}\n{all}",
            case.name
        );
    }
}

/// The steps without the weighted draw (random per explanation).
fn deterministic(e: &Explanation) -> Vec<String> {
    e.steps
        .iter()
        .filter(|s| s.stage != Stage::Backend)
        .map(|s| format!("{s:?}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn explains_each_step_offline_and_live_as_the_waypoint_decides() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let testdata = std::env::var("WAYPOINT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("../shared/testdata/gateway-api"));
    let base = std::fs::read_to_string(testdata.join("mesh/manifests.yaml")).expect("manifests");
    let issuer = JwtIssuer::new("https://issuer.example", "k1");
    let cluster = Cluster::start(
        &waypoint_bin(),
        &base,
        &objects(issuer.jwks()),
        conformance::Profile::Mesh,
    )
    .await
    .expect("cluster starts");
    let config = cluster.config_path();
    let config = config.to_str().expect("utf-8 path");
    let gateway = format!("{WAYPOINT_NS}/{WAYPOINT}");
    let admin = cluster.waypoint.admin.to_string();
    for case in cases(&issuer) {
        let (app, ns) = case.client;
        let pod = cluster.pod(app, ns).expect("client pod");
        let from = pod.identity.to_string();

        let (offline, code) = explain(&["--config", config, "--gateway", &gateway], &from, &case);
        check(&case, &offline, code, "offline");
        let (live, code) = explain(&["--admin", &admin], &from, &case);
        check(&case, &live, code, "admin");
        assert_eq!(
            deterministic(&offline),
            deterministic(&live),
            "{}: the admin API explains it as the file does",
            case.name
        );

        // The waypoint itself, same request over HBONE.
        if case.verdict == Verdict::ProviderDecides {
            // The provider (unreachable here) decides at run time: statusOnError 503.
            continue;
        }
        let req = Request {
            host: case.host.into(),
            method: Some("GET".into()),
            path: Some(case.path.into()),
            headers: case.headers.iter().cloned().collect(),
            client: Some(Client {
                app: app.into(),
                namespace: ns.into(),
            }),
            service: None,
        };
        let sent =
            conformance::client::send(&cluster, &req, "http", conformance::Profile::Mesh).await;
        let (status, pod_name, echo) = match sent {
            Ok(o) => (o.status, o.pod().map(str::to_string), o.echo),
            Err(e) => match e.chain().find_map(|c| c.downcast_ref::<ClientError>()) {
                Some(ClientError::Refused(s)) => (s.as_u16(), None, None),
                _ => panic!("{}: request failed: {e:#}", case.name),
            },
        };
        // A rewrite: the backend sees the request as the explanation says it is sent.
        if let Some(sent_as) = offline
            .steps
            .iter()
            .filter(|s| s.stage == Stage::Filter)
            .find_map(|s| s.detail.as_deref()?.split("sent as ").nth(1))
        {
            let path = echo.as_ref().and_then(|e| e.get("path")?.as_str());
            let explained = sent_as.split(';').next().unwrap_or_default();
            assert_eq!(
                path.map(|p| format!("{} {p}", case.host)).as_deref(),
                Some(explained),
                "{}: the backend saw another request than explained",
                case.name
            );
        }
        match (offline.answer.status, &offline.answer.backend) {
            (Some(s), _) => assert_eq!(status, s, "{}: the waypoint answered", case.name),
            (None, Some(backend)) => {
                assert_eq!(
                    status, 200,
                    "{}: forwarded, the echo backend answers",
                    case.name
                );
                // `ns/echo-v2:80` is answered by an `echo-v2-...` pod; a weighted draw by
                // any backend of the rule.
                let pod_name = pod_name.unwrap_or_default();
                let backends: Vec<String> = offline
                    .steps
                    .iter()
                    .filter(|s| s.stage == Stage::Backend && s.subject == "backendRefs")
                    .flat_map(|s| s.detail.clone())
                    .collect();
                let deployment = |b: &str| {
                    b.split('/')
                        .nth(1)
                        .and_then(|b| b.split(':').next())
                        .map(str::to_string)
                        .unwrap_or_default()
                };
                let ok = if backends.is_empty() {
                    pod_name.starts_with(&format!("{}-", deployment(backend)))
                } else {
                    ["echo-v1-", "echo-v2-"]
                        .iter()
                        .any(|p| pod_name.starts_with(p) && backends[0].contains(&p[..7]))
                };
                assert!(
                    ok,
                    "{}: answered by {pod_name}, explained {backend} {backends:?}",
                    case.name
                );
            }
            (None, None) => panic!("{}: no status and no backend", case.name),
        }
    }
}
