//! The local configuration loader under mutated input (issue 19's fuzzing, in the test
//! suite): real configurations with lines deleted, duplicated, re-indented, truncated or
//! spliced with YAML's sharp edges (anchors, tags, deep flow collections, huge numbers).
//! Every mutation must give a snapshot or a named error, never a panic, and quickly.

use std::time::{Duration, Instant};

use filters::source::SourceOptions;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MUTATIONS: usize = 5_000;

fn seeds() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out =
        vec![std::fs::read_to_string(root.join("examples/local-config/mesh.yaml")).unwrap()];
    // A richer one: the mesh conformance manifests (Services, HTTPRoutes, Deployments).
    let mesh = root.join("../shared/testdata/gateway-api/mesh/manifests.yaml");
    if let Ok(text) = std::fs::read_to_string(mesh) {
        out.push(text);
    }
    out
}

const JUNK: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "&a",
    "*a",
    "!!binary",
    "!!map",
    ":",
    "- ",
    "null",
    "~",
    "? ",
    "99999999999999999999999",
    "-1",
    "0x10",
    "\t",
    "'",
    "\"",
    "|",
    ">-",
    "<<: *a",
    "%YAML 1.1",
    "---",
    "...",
    "\u{0}",
    "\u{feff}",
    "port: 70000",
    "name: \"\"",
    "kind: HTTPRoute",
    "apiVersion: v1",
    "metadata: {}",
    "spec: []",
];

fn mutate(text: &str, rng: &mut StdRng) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..rng.gen_range(1..4) {
        if lines.is_empty() {
            break;
        }
        let i = rng.gen_range(0..lines.len());
        match rng.gen_range(0..6) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => lines[i] = format!("  {}", lines[i]),
            3 => lines[i] = lines[i].trim_start().to_string(),
            4 => {
                let junk = JUNK[rng.gen_range(0..JUNK.len())];
                let at = rng.gen_range(0..=lines[i].len());
                let at = (0..=at)
                    .rev()
                    .find(|a| lines[i].is_char_boundary(*a))
                    .unwrap_or(0);
                lines[i].insert_str(at, junk);
            }
            _ => lines.truncate(i),
        }
    }
    lines.join("\n")
}

#[test]
fn mutated_configurations_give_a_snapshot_or_a_named_error() {
    let mut rng = StdRng::seed_from_u64(2026);
    let options = SourceOptions::default();
    let seeds = seeds();
    let (mut accepted, mut refused) = (0, 0);
    let started = Instant::now();
    for n in 0..MUTATIONS {
        let text = mutate(&seeds[n % seeds.len()], &mut rng);
        let one = Instant::now();
        let result = kube_config::parse(&text)
            .and_then(|objects| kube_config::translate(&objects, &options, 1, "file:fuzz".into()));
        match result {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
        assert!(
            one.elapsed() < Duration::from_secs(2),
            "one configuration took {:?}:\n{text}",
            one.elapsed()
        );
    }
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
    eprintln!(
        "{accepted} accepted, {refused} refused in {:?}",
        started.elapsed()
    );
}
