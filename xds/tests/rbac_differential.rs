//! The differential between our AuthorizationPolicy engine and Envoy RBAC: for every input of
//! Istio's authz builder testdata (`../shared/testdata/istio/authz-builder/{http,tcp}/`)
//! with generated RBAC outputs, the policies compiled by `kube_config::authz::compile` and
//! decided by `filters::authz::evaluate` must allow and deny exactly the requests that the
//! generated RBAC filters (loaded through `xds::translate::rbac`'s protobuf converter,
//! evaluated in order with `filters::rbac`) allow and deny.
//!
//! Requests are generated from the values each policy mentions (every principal, namespace,
//! path, method, host, port, header, IP and claim value, wildcards expanded to matching and
//! non-matching concrete values), around baselines, plus a deterministic sample of
//! combinations. CUSTOM inputs are compared on the RBAC filters only (the ext_authz filter
//! is the provider call): the engine's CUSTOM check must be asked exactly when the RBAC
//! shadow rules (`istio-ext-authz-*` policies) match, and the enforced decision must agree
//! for a provider that allows and (for the `custom-bad` outputs, where istiod denies) one
//! that denies. Dry-run inputs also compare the shadow (dry-run) decision.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use filters::authz::evaluate;
use filters::authz::model::Policy;
use filters::rbac::model::{HTTP_RBAC_TYPE, NETWORK_RBAC_TYPE};
use filters::rbac::{evaluate_chain, RbacConfig, RbacInput};
use kube_config::authz::{compile, AuthorizationPolicy};
use serde_yaml::Value;
use xds::translate::rbac::from_proto_json;

fn testdata() -> PathBuf {
    std::env::var("WAYPOINT_ISTIO_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/istio/authz-builder")
        })
}

#[path = "rbac_differential/requests.rs"]
mod requests;
use requests::*;

// ---------------------------------------------------------------------------------------
// The cases

/// How a case's CUSTOM provider answers, and what the generated filters stand for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Custom {
    /// No CUSTOM policy in the input.
    None,
    /// A usable provider: the RBAC has shadow rules marking requests for ext_authz; the
    /// ext_authz answer is outside RBAC, so compare with a provider that allows.
    Provider,
    /// istiod found the provider unusable and emitted DENY rules instead
    /// (`-deny-due-to-bad-CUSTOM-action`): compare with a provider that denies.
    BadProvider,
    /// An HTTP provider on TCP: istiod emits no filter, and `ext::custom_plan` skips such
    /// a provider on TCP (unit-tested there); compare the decision only.
    HttpProviderOnTcp,
}

struct Case {
    input: PathBuf,
    outputs: Vec<PathBuf>,
    custom: Custom,
}

/// Inputs whose outputs do not share their name: Istio's builder test runs
/// `custom-simple-http-in.yaml` under several MeshConfigs (`custom-grpc-provider`,
/// `custom-http-provider`, `custom-grpc-provider-no-namespace`; `custom-bad` with a
/// provider istiod cannot use).
fn extra_pairings(dir: &Path) -> Vec<Case> {
    let input = dir.join("custom-simple-http-in.yaml");
    let mut out = Vec::new();
    let bad_multiple = dir.join("custom-bad-multiple-providers-in.yaml");
    if bad_multiple.exists() {
        // Istio's current test pairs it with custom-bad-out.yaml (two providers: unusable).
        out.push(Case {
            input: bad_multiple,
            outputs: outputs_of(dir, "custom-bad"),
            custom: Custom::BadProvider,
        });
    }
    let tcp_custom = dir.join("custom-only-http-in.yaml");
    if tcp_custom.exists() {
        // istiod emits no network filter for CUSTOM policies with HTTP-only rules: every
        // connection is allowed and no check is made.
        out.push(Case {
            input: tcp_custom,
            outputs: Vec::new(),
            custom: Custom::HttpProviderOnTcp,
        });
    }
    for (stem, custom) in [
        ("custom-grpc-provider", Custom::Provider),
        ("custom-http-provider", Custom::Provider),
        ("custom-grpc-provider-no-namespace", Custom::Provider),
        ("custom-bad", Custom::BadProvider),
    ] {
        let outputs = outputs_of(dir, stem);
        if input.exists() && !outputs.is_empty() {
            out.push(Case {
                input: input.clone(),
                outputs,
                custom,
            });
        }
    }
    out
}

fn outputs_of(dir: &Path, stem: &str) -> Vec<PathBuf> {
    let single = dir.join(format!("{stem}-out.yaml"));
    if single.exists() {
        return vec![single];
    }
    (1..10)
        .map(|i| dir.join(format!("{stem}-out{i}.yaml")))
        .take_while(|p| p.exists())
        .collect()
}

fn load_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The trust-domain bundles (trust domain and its aliases) Istio's builder test
/// (`TestGenerator_GenerateHTTP`) generates these inputs with; the inputs do not say.
fn trust_domain_bundle(input: &Path) -> Option<&'static [&'static str]> {
    match input.file_name()?.to_str()? {
        "simple-policy-td-aliases-in.yaml" => Some(&["td1", "cluster.local"]),
        "simple-policy-multiple-td-aliases-in.yaml" => Some(&["td1", "cluster.local", "some-td"]),
        "simple-policy-principal-with-wildcard-in.yaml" => Some(&["td1", "foobar"]),
        "td-aliases-source-principal-in.yaml" => Some(&["new-td", "old-td", "some-trustdomain"]),
        _ => None,
    }
}

/// The request with its principal's trust domain replaced by each member of `bundle`
/// (when it is a member): how istiod's alias expansion lets a policy naming one trust
/// domain of the bundle match principals of the others.
fn alias_variants(req: &Req, bundle: &[&str]) -> Vec<Req> {
    let mut out = vec![req.clone()];
    if let Some((td, rest)) = req.principal.as_deref().and_then(|p| p.split_once('/')) {
        if bundle.contains(&td) {
            for other in bundle.iter().filter(|t| **t != td) {
                let mut r = req.clone();
                r.principal = Some(format!("{other}/{rest}"));
                out.push(r);
            }
        }
    }
    out
}

struct Outcome {
    compared: usize,
    /// Requests the generated RBAC allowed (both outcomes must be exercised to mean much).
    allowed: usize,
    mismatches: Vec<String>,
}

fn run_case(case: &Case, tcp: bool) -> Result<Outcome, String> {
    let docs = load_docs(&case.input);
    let mut filters = Vec::new();
    for o in &case.outputs {
        let text = std::fs::read_to_string(o).unwrap();
        // `None`: the ext_authz filter of a CUSTOM output, the provider call, not RBAC.
        if let Some(f) = rbac_document(&text).map_err(|e| format!("{}: {e}", o.display()))? {
            filters.push(f);
        }
    }
    Ok(compare(
        &docs,
        &filters,
        tcp,
        case.custom,
        trust_domain_bundle(&case.input),
    ))
}

/// The RBAC config of a `{name, typedConfig}` filter document (loaded as istiod's are,
/// through the protobuf converter), or `None` when the filter is not RBAC (by `@type`).
fn rbac_document(text: &str) -> Result<Option<RbacConfig>, String> {
    let doc: serde_json::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let Some(fields) = doc.as_object() else {
        return Err("not a {name, typedConfig} document".into());
    };
    if let Some(k) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "name" | "typedConfig"))
    {
        return Err(format!("unknown field {k:?} of a filter"));
    }
    let typed = &doc["typedConfig"];
    match typed.get("@type").and_then(serde_json::Value::as_str) {
        Some(HTTP_RBAC_TYPE | NETWORK_RBAC_TYPE) => {
            from_proto_json(typed).map(Some).map_err(|e| e.to_string())
        }
        _ => Ok(None),
    }
}

/// Decides every request of the corpus generated from `docs` with the engine and with
/// `filters`, and lists the disagreements.
fn compare(
    docs: &[Value],
    filters: &[RbacConfig],
    tcp: bool,
    custom: Custom,
    bundle: Option<&[&str]>,
) -> Outcome {
    let policies: Vec<Arc<Policy>> = docs
        .iter()
        .map(|d| {
            let p: AuthorizationPolicy = serde_yaml::from_value(d.clone()).unwrap();
            Arc::new(compile(&p).unwrap_or_else(|(f, m)| panic!("{f}: {m}")))
        })
        .collect();
    if bundle.is_some() {
        // The emulation below (allowed under any alias) holds for ALLOW-only inputs.
        assert!(
            policies
                .iter()
                .all(|p| p.action == filters::authz::model::Action::Allow && !p.dry_run),
            "trust-domain emulation needs ALLOW-only policies"
        );
    }
    let pools = Pools::from_policies(docs, tcp);
    let has_dry_run = policies.iter().any(|p| p.dry_run);
    let mut compared = 0;
    let mut allowed = 0;
    let mut mismatches = Vec::new();
    for req in corpus(&pools, tcp) {
        compared += 1;
        if let Some(bundle) = bundle {
            // Documented difference: the engine has no trust-domain aliases (MeshConfig
            // `trustDomainAliases` is not read); emulate istiod's alias expansion by asking
            // the engine under every alias of the request's trust domain.
            let rbac = req.with_attrs(|a| evaluate_chain(filters, &RbacInput::new(a)).allowed);
            let engine = alias_variants(&req, bundle)
                .iter()
                .any(|r| r.with_attrs(|a| evaluate(&policies, a, None).verdict.allowed()));
            allowed += usize::from(rbac);
            if rbac != engine {
                mismatches.push(format!(
                    "{}: engine (with aliases {bundle:?}) {} / RBAC {}",
                    req.describe(),
                    word(engine),
                    word(rbac)
                ));
            }
            continue;
        }
        let (rbac, engine, ext_asked, shadow, audit) = req.with_attrs(|attrs| {
            let input = RbacInput::new(attrs);
            let chain = evaluate_chain(filters, &input);
            let ext_shadow = chain.shadow_matched("istio-ext-authz");
            let asked = std::cell::Cell::new(false);
            let provider_allows = custom != Custom::BadProvider;
            let ask = |_: &str| {
                asked.set(true);
                provider_allows
            };
            let d = evaluate(&policies, attrs, Some(&ask));
            // Shadow (dry-run) decision from the RBAC: every dry-run filter's shadow result.
            let rbac_shadow = chain
                .shadow
                .iter()
                .filter(|(_, prefix, _)| prefix.starts_with("istio_dry_run_"))
                .all(|(_, _, r)| r.allowed);
            let engine_shadow = d.dry_run.as_ref().map(|v| v.allowed()).unwrap_or(true);
            // AUDIT: the LOG filter's policy matched iff the engine audited.
            let rbac_logged = chain.matched.iter().any(|(i, _)| {
                filters[*i]
                    .rules
                    .as_ref()
                    .is_some_and(|r| r.action == filters::rbac::Action::Log)
            });
            (
                chain.allowed,
                d.verdict.allowed(),
                (asked.get(), ext_shadow),
                (engine_shadow, rbac_shadow),
                (!d.audited.is_empty(), rbac_logged),
            )
        });
        allowed += usize::from(rbac);
        if rbac != engine {
            mismatches.push(format!(
                "{}: engine {} / RBAC {}",
                req.describe(),
                word(engine),
                word(rbac)
            ));
        }
        if custom == Custom::Provider && ext_asked.0 != ext_asked.1 {
            mismatches.push(format!(
                "{}: engine asks ext_authz: {} / RBAC shadow marks it for ext_authz: {}",
                req.describe(),
                ext_asked.0,
                ext_asked.1
            ));
        }
        if audit.0 != audit.1 {
            mismatches.push(format!(
                "{}: audit: engine audited {} / RBAC LOG policy matched {}",
                req.describe(),
                audit.0,
                audit.1
            ));
        }
        if has_dry_run && shadow.0 != shadow.1 {
            mismatches.push(format!(
                "{}: dry-run: engine {} / RBAC shadow {}",
                req.describe(),
                word(shadow.0),
                word(shadow.1)
            ));
        }
    }
    Outcome {
        compared,
        allowed,
        mismatches,
    }
}

fn word(allowed: bool) -> &'static str {
    if allowed {
        "ALLOW"
    } else {
        "DENY"
    }
}

#[test]
fn policies_and_generated_rbac_decide_alike() {
    let mut files = 0;
    let mut total = 0;
    let mut failures = Vec::new();
    for dir_name in ["http", "tcp"] {
        let dir = testdata().join(dir_name);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with("-in.yaml"))
            .collect();
        inputs.sort();
        let mut cases = Vec::new();
        for input in inputs {
            let name = input.file_name().unwrap().to_string_lossy().to_string();
            let stem = name.trim_end_matches("-in.yaml");
            let outputs = outputs_of(&dir, stem);
            if outputs.is_empty() {
                // Paired in extra_pairings (outputs named after the MeshConfig, or none).
                if !matches!(stem, "custom-simple-http" | "custom-only-http") {
                    println!("SKIP {dir_name}/{name}: no {stem}-out*.yaml");
                }
                continue;
            }
            let custom = if load_docs(&input).iter().any(|d| {
                d.get("spec")
                    .and_then(|s| s.get("action"))
                    .and_then(Value::as_str)
                    == Some("CUSTOM")
            }) {
                if outputs.iter().any(|o| {
                    std::fs::read_to_string(o)
                        .unwrap()
                        .contains("deny-due-to-bad-CUSTOM-action")
                }) {
                    Custom::BadProvider
                } else {
                    Custom::Provider
                }
            } else {
                Custom::None
            };
            cases.push(Case {
                input,
                outputs,
                custom,
            });
        }
        cases.extend(extra_pairings(&dir));
        for case in cases {
            let label = format!(
                "{dir_name}/{} vs {}",
                case.input.file_name().unwrap().to_string_lossy(),
                case.outputs
                    .iter()
                    .map(|o| o.file_name().unwrap().to_string_lossy().to_string())
                    .collect::<Vec<_>>()
                    .join("+")
            );
            if let Some(b) = trust_domain_bundle(&case.input) {
                println!(
                    "NOTE {label}: Istio generated it with the trust-domain bundle {b:?}; the engine has no trust-domain aliases, so aliases are emulated (any alias allowed)"
                );
            }
            if label.contains("allow-host-before-111") {
                println!(
                    "NOTE {label}: the output for proxies before Istio 1.11 (hosts as (?i) regexes); same decisions expected"
                );
            }
            if label.contains("custom-bad-multiple-providers-out1") {
                println!(
                    "NOTE {label}: not referenced by Istio's current builder test, which pairs this input with custom-bad-out.yaml (compared too)"
                );
            }
            match run_case(&case, dir_name == "tcp") {
                Ok(o) => {
                    files += 1;
                    total += o.compared;
                    println!(
                        "{label}: {} requests compared ({} allowed by the RBAC), {} mismatches",
                        o.compared,
                        o.allowed,
                        o.mismatches.len()
                    );
                    for m in o.mismatches.iter().take(20) {
                        println!("  MISMATCH {m}");
                    }
                    if !o.mismatches.is_empty() {
                        failures.push(format!("{label}: {} mismatches", o.mismatches.len()));
                    }
                }
                Err(e) => failures.push(format!("{label}: {e}")),
            }
        }
    }
    println!("{files} cases, {total} requests compared");
    assert!(files >= 25, "{files} cases");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Inputs Istio's testdata does not exercise, with the RBAC in the shape istiod generates
/// for them (the same shapes as `http/allow-full-rule-out.yaml`: a `request.headers[...]`
/// condition is a principal `header` matcher with the header's name as written, a claim
/// is `envoy.filters.http.jwt_authn` metadata under `payload` matched as a string or a list
/// of strings). They pin the engine fixes the differential led to: pseudo-headers in
/// `request.headers[]`, header values beyond visible ASCII, and claims that are not
/// strings.
#[test]
fn engine_fixes_decide_like_istio_shaped_rbac() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  rules:
  - when:
    - key: "request.headers[:method]"
      values: ["GET", "PO*"]
  - when:
    - key: "request.auth.claims[admin]"
      values: ["true", "7", "*"]
  - to:
    - operation:
        paths: ["/public/*"]
    when:
    - key: "request.headers[:authority]"
      values: ["*.example.com"]
  - when:
    - key: "request.headers[X-abc]"
      values: ["*-suffix", "exact"]
"#;
    let claim = |v: &str| {
        format!(
            "{{listMatch: {{oneOf: {{orMatch: {{valueMatchers: [{{stringMatch: {v}}}]}}}}}}}}, {{orMatch: {{valueMatchers: [{{stringMatch: {v}}}]}}}}"
        )
    };
    let rbac = format!(
        r#"
name: envoy.filters.http.rbac
typedConfig:
  '@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
  rules:
    policies:
      ns[foo]-policy[p]-rule[0]:
        permissions: [{{andRules: {{rules: [{{any: true}}]}}}}]
        principals:
        - andIds:
            ids:
            - orIds:
                ids:
                - header: {{name: ':method', stringMatch: {{exact: GET}}}}
                - header: {{name: ':method', stringMatch: {{prefix: PO}}}}
      ns[foo]-policy[p]-rule[1]:
        permissions: [{{andRules: {{rules: [{{any: true}}]}}}}]
        principals:
        - andIds:
            ids:
            - metadata:
                filter: envoy.filters.http.jwt_authn
                path: [{{key: payload}}, {{key: admin}}]
                value: {{orMatch: {{valueMatchers: [{}, {}, {}]}}}}
      ns[foo]-policy[p]-rule[2]:
        permissions:
        - andRules:
            rules:
            - orRules: {{rules: [{{urlPath: {{path: {{prefix: /public/}}}}}}]}}
        principals:
        - andIds:
            ids:
            - orIds:
                ids:
                - header: {{name: ':authority', stringMatch: {{suffix: .example.com}}}}
      ns[foo]-policy[p]-rule[3]:
        permissions: [{{andRules: {{rules: [{{any: true}}]}}}}]
        principals:
        - andIds:
            ids:
            - orIds:
                ids:
                - header: {{name: X-abc, stringMatch: {{suffix: -suffix}}}}
                - header: {{name: X-abc, stringMatch: {{exact: exact}}}}
  shadowRulesStatPrefix: istio_dry_run_allow_
"#,
        claim("{exact: 'true'}"),
        claim("{exact: '7'}"),
        claim("{safeRegex: {regex: '.+'}}"),
    );
    let docs: Vec<Value> = vec![serde_yaml::from_str(policy).unwrap()];
    let filter = rbac_document(&rbac)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("an RBAC filter");
    let o = compare(&docs, &[filter], false, Custom::None, None);
    println!(
        "synthetic pseudo-headers, header bytes and claims: {} requests compared ({} allowed), {} mismatches",
        o.compared,
        o.allowed,
        o.mismatches.len()
    );
    assert!(o.allowed > 0 && o.allowed < o.compared);
    for m in o.mismatches.iter().take(20) {
        println!("  MISMATCH {m}");
    }
    assert!(o.compared > 100);
    assert!(o.mismatches.is_empty(), "{} mismatches", o.mismatches.len());
}
