//! The decision functions record steps only when a request is explained, and allocate
//! nothing for it otherwise.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::*;
use crate::authz::engine::{evaluate_traced, policy_matches, rule_miss, Part};
use crate::authz::matcher::{PathPattern, ValueMatch};
use crate::authz::model::{Action, Field, Operation, Policy, Rule, Source};
use crate::authz::{Attributes, HttpAttributes};
use crate::model::NamespacedName;
use crate::route::model::{PathMatch, Route, RouteKind, RouteMatch, Rule as RouteRule, Timeouts};
use crate::route::RouteTable;

/// Counts the allocations of the current thread while `COUNTING` is set.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The allocations `f` makes on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    ALLOCATIONS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, ALLOCATIONS.with(Cell::get))
}

fn field<T>(values: Vec<T>) -> Field<T> {
    Field {
        values,
        not_values: Vec::new(),
    }
}

fn policy(name: &str, action: Action, rule: Rule) -> Arc<Policy> {
    Arc::new(Policy {
        name: NamespacedName::new("default", name),
        action,
        dry_run: false,
        rules: vec![rule],
        matched: AtomicU64::new(0),
    })
}

fn policies() -> Vec<Arc<Policy>> {
    vec![
        policy(
            "deny-admin",
            Action::Deny,
            Rule {
                to: vec![Operation {
                    paths: field(vec![PathPattern::parse("/admin*").unwrap()]),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
        policy(
            "allow-sleep",
            Action::Allow,
            Rule {
                from: vec![Source {
                    namespaces: field(vec![ValueMatch::parse("default")]),
                    ..Default::default()
                }],
                to: vec![Operation {
                    methods: field(vec![ValueMatch::parse("GET")]),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
    ]
}

fn attrs<'a>(method: &'a str, path: &'a str, headers: &'a http::HeaderMap) -> Attributes<'a> {
    Attributes {
        principal: Some("cluster.local/ns/default/sa/sleep".into()),
        namespace: Some("default".into()),
        service_account: Some("sleep".into()),
        http: Some(HttpAttributes {
            path_and_query: None,
            method,
            host: "echo",
            path,
            query: None,
            headers,
            auth: None,
        }),
        ..Default::default()
    }
}

#[test]
fn misses_name_the_part_and_field() {
    let p = policies();
    let h = http::HeaderMap::new();
    let post = attrs("POST", "/x", &h);
    let m = rule_miss(&p[1].rules[0], &post, false).expect("POST is not allowed");
    assert_eq!((m.part, m.index, m.field), (Part::To, 0, "methods"));
    let mut other = attrs("GET", "/x", &h);
    other.namespace = Some("other".into());
    let m = rule_miss(&p[1].rules[0], &other, false).expect("another namespace");
    assert_eq!((m.part, m.field), (Part::From, "namespaces"));
    let m = rule_miss(&p[0].rules[0], &post, true).expect("not /admin");
    assert_eq!((m.part, m.field), (Part::To, "paths"));
    assert!(rule_miss(&p[0].rules[0], &attrs("GET", "/admin/x", &h), true).is_none());
    // On TCP, an ALLOW rule with HTTP fields never matches.
    let tcp = Attributes {
        http: None,
        ..other.clone()
    };
    assert_eq!(
        rule_miss(&p[1].rules[0], &tcp, false).map(|m| m.part),
        Some(Part::HttpOnTcp)
    );
}

#[test]
fn policies_are_recorded_only_while_explaining() {
    let p = policies();
    let h = http::HeaderMap::new();
    let a = attrs("POST", "/public", &h);
    let decision = evaluate_traced(&p, &a, None, Trace::OFF);
    assert_eq!(
        decision.verdict,
        crate::authz::Verdict::Deny("no ALLOW policy matched".into())
    );
    let sink = Sink::default();
    let explained = evaluate_traced(&p, &a, None, Trace::new(Some(&sink)));
    assert_eq!(explained.verdict, decision.verdict);
    let steps = sink.steps();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0].outcome, "not matched");
    assert!(
        steps[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("to[0].paths [\"/admin*\"] did not match \"/public\""),
        "{steps:?}"
    );
    assert!(
        steps[1]
            .detail
            .as_deref()
            .unwrap()
            .contains("to[0].methods [\"GET\"] did not match \"POST\""),
        "{steps:?}"
    );
    // Explained decisions are not counted against the policies.
    assert_eq!(p[0].matched.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn deciding_without_explaining_allocates_nothing() {
    let p = policies();
    let h = http::HeaderMap::new();
    let a = attrs("GET", "/public", &h);
    let (matched, n) = allocations(|| {
        (
            policy_matches(&p[0], &a),
            policy_matches(&p[1], &a),
            rule_miss(&p[0].rules[0], &a, true),
        )
    });
    assert_eq!(
        (matched.0, matched.1, matched.2.is_some()),
        (false, true, true)
    );
    assert_eq!(n, 0, "policy matching allocated");

    let route = |name: &str, path: PathMatch| {
        Arc::new(Route {
            name: NamespacedName::new("default", name),
            kind: RouteKind::Http,
            created: None,
            operation: None,
            rules: vec![RouteRule {
                name: None,
                matches: vec![RouteMatch {
                    path,
                    ..RouteMatch::default()
                }],
                filters: vec![],
                backends: vec![],
                timeouts: Timeouts::default(),
                retry: None,
                hash_policy: vec![],
            }],
        })
    };
    let table = RouteTable::new(&[
        route("exact", PathMatch::Exact("/v2/exact".into())),
        route("v2", PathMatch::Prefix("/v2".into())),
        route("other", PathMatch::Prefix("/other".into())),
    ]);
    let req = http::Request::get("/v2/page").body(()).unwrap();
    let (found, n) = allocations(|| table.find(&req).map(|m| m.route.name.name.len()));
    assert_eq!(found, Some(2));
    assert_eq!(n, 0, "route matching allocated");
    let sink = Sink::default();
    let found = table.find_traced(&req, Trace::new(Some(&sink)));
    assert_eq!(found.map(|m| m.route.name.name.as_str()), Some("v2"));
    let steps = sink.steps();
    assert_eq!(
        steps.iter().map(|s| s.outcome.as_str()).collect::<Vec<_>>(),
        // Exact first, then the longer prefix, then the match.
        ["not matched", "not matched", "selected"],
        "{steps:?}"
    );
    assert!(steps[0].subject.contains("default/exact"), "{steps:?}");
    assert!(steps[1].subject.contains("default/other"), "{steps:?}");
}
