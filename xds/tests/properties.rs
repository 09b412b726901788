//! The xDS translators under mutated resources (issue 19's fuzzing, in the test suite):
//! Istio's real waypoint resources with random bytes flipped, inserted or cut in their
//! protobuf encoding, and with random values swapped into their proto-JSON form. Every
//! mutation must translate or be refused with the resource and field named, never panic.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xds::translate::{cluster, endpoint, listener};

const CASES: usize = 10_000;

fn dump() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/istio/config-dumps/waypoint-httpbin-1.21.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every resource of the dump whose `@type` ends with `suffix`, decoded.
fn resources<M: Message + Default>(full_name: &str) -> Vec<M> {
    let mut out = Vec::new();
    fn walk<M: Message + Default>(v: &serde_json::Value, name: &str, out: &mut Vec<M>) {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("@type").and_then(|t| t.as_str())
                    == Some(&format!("type.googleapis.com/{name}"))
                {
                    if let Ok(r) = xds::envoy::from_json_allowing_unknown::<M>(name, v) {
                        out.push(r);
                    }
                    return;
                }
                m.values().for_each(|x| walk(x, name, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, name, out)),
            _ => {}
        }
    }
    walk(&dump(), full_name, &mut out);
    assert!(!out.is_empty(), "the dump has a {full_name}");
    out
}

fn mutate_bytes(mut b: Vec<u8>, rng: &mut StdRng) -> Vec<u8> {
    for _ in 0..rng.gen_range(1..5) {
        if b.is_empty() {
            break;
        }
        let i = rng.gen_range(0..b.len());
        match rng.gen_range(0..4) {
            0 => b[i] ^= 1 << rng.gen_range(0..8),
            1 => b[i] = rng.gen(),
            2 => b.insert(i, rng.gen()),
            _ => b.truncate(i),
        }
    }
    b
}

/// The number of leaves (strings, numbers, booleans, nulls) in `v`.
fn leaves(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Object(m) => m.values().map(leaves).sum(),
        serde_json::Value::Array(a) => a.iter().map(leaves).sum(),
        _ => 1,
    }
}

/// Leaf number `k` of `v` (depth first).
fn leaf<'a>(v: &'a mut serde_json::Value, k: &mut usize) -> Option<&'a mut serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m.values_mut().find_map(|x| leaf(x, k)),
        serde_json::Value::Array(a) => a.iter_mut().find_map(|x| leaf(x, k)),
        _ if *k == 0 => Some(v),
        _ => {
            *k -= 1;
            None
        }
    }
}

/// Replaces one random leaf of `v` with a hostile value.
fn mutate_json(v: &mut serde_json::Value, rng: &mut StdRng) {
    use serde_json::json;
    let n = leaves(v);
    if n == 0 {
        return;
    }
    let hostile = [
        json!(""),
        json!("*"),
        json!("/"),
        json!("a|b|c|d"),
        json!("inbound-vip|0|http|"),
        json!("../../etc"),
        json!("\u{0}"),
        json!(".*(a+)+$"),
        json!("999999999999"),
        json!(-1),
        json!(0),
        json!(4294967295u64),
        json!(true),
        json!("1.5s"),
        json!("-5s"),
        json!("127.0.0.1:99999"),
        json!("spiffe://x/ns/y/sa/z"),
    ];
    let mut k = rng.gen_range(0..n);
    if let Some(at) = leaf(v, &mut k) {
        *at = hostile[rng.gen_range(0..hostile.len())].clone();
    }
}

fn check<M: Message + Default>(full_name: &str, translate: impl Fn(&M) -> Result<(), String>) {
    let seeds: Vec<M> = resources(full_name);
    let mut rng = StdRng::seed_from_u64(full_name.len() as u64);
    let (mut ok, mut refused) = (0, 0);
    for n in 0..CASES {
        let seed = &seeds[n % seeds.len()];
        let mutated = if n % 2 == 0 {
            M::decode(mutate_bytes(seed.encode_to_vec(), &mut rng).as_slice()).ok()
        } else {
            let mut json = xds::envoy::to_json(full_name, seed).unwrap();
            mutate_json(&mut json, &mut rng);
            xds::envoy::from_json::<M>(full_name, &json).ok()
        };
        let Some(m) = mutated else { continue };
        match translate(&m) {
            Ok(()) => ok += 1,
            Err(e) => {
                assert!(!e.is_empty());
                refused += 1;
            }
        }
    }
    eprintln!("{full_name}: {ok} translated, {refused} refused");
}

#[test]
fn mutated_listeners_translate_or_are_refused_by_field() {
    check::<Listener>("envoy.config.listener.v3.Listener", |l| {
        listener::convert(l).map(|_| ()).map_err(|e| e.to_string())
    });
}

#[test]
fn mutated_clusters_translate_or_are_refused_by_field() {
    check::<Cluster>("envoy.config.cluster.v3.Cluster", |c| {
        cluster::convert(c).map(|_| ()).map_err(|e| e.to_string())
    });
}

#[test]
fn mutated_endpoints_translate_or_are_refused_by_field() {
    check::<ClusterLoadAssignment>("envoy.config.endpoint.v3.ClusterLoadAssignment", |e| {
        endpoint::convert(e).map(|_| ()).map_err(|e| e.to_string())
    });
}
