//! Consistent hashing over a Service port's endpoints (Envoy's `RING_HASH` and `MAGLEV`
//! load balancers, from a DestinationRule `consistentHash`): a request's hash (from the
//! route's `hash_policy`) always lands on the same endpoint while the endpoints stay the
//! same, and a change of endpoints moves only the keys of the endpoints that changed.
//!
//! One ring serves both policies: Maglev is a different table with the same contract, and
//! the endpoint a key lands on is not comparable across proxies anyway (Envoy hashes its
//! own host addresses).

use std::hash::{Hash, Hasher};

use crate::model::Endpoint;

/// Envoy's default `minimum_ring_size`.
pub const DEFAULT_RING_SIZE: usize = 1024;
/// The largest ring built, whatever is configured (Envoy's default maximum is 8M entries).
const MAX_RING_SIZE: usize = 1 << 16;

/// A hash ring: points sorted by hash, each naming an endpoint index.
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

/// A stable 64-bit hash (the same in every process of one build).
pub fn hash_of(value: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

impl Ring {
    /// A ring of about `size` points over the addressed endpoints, spread evenly.
    pub fn new(endpoints: &[Endpoint], size: usize) -> Self {
        let addressed: Vec<(usize, std::net::SocketAddr)> = endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.address().map(|a| (i, a)))
            .collect();
        if addressed.is_empty() {
            return Self::default();
        }
        let per = size.clamp(1, MAX_RING_SIZE).div_ceil(addressed.len());
        let mut points = Vec::with_capacity(per * addressed.len());
        for (i, addr) in addressed {
            for replica in 0..per {
                points.push((hash_of((addr, replica)), i));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The endpoint index for `hash`: the first point at or after it, around the ring.
    pub fn get(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|(h, _)| *h < hash);
        Some(self.points[i % self.points.len()].1)
    }

    /// The endpoint for `hash` among those `ok` accepts: the first accepted endpoint at or
    /// after the hash's point, going round the ring (an ejected endpoint's keys move to the
    /// next endpoint on the ring, and come back when it does).
    pub fn get_where(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        let start = self.points.partition_point(|(h, _)| *h < hash);
        (0..n)
            .map(|k| self.points[(start + k) % n].1)
            .find(|i| ok(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(i: u8) -> Endpoint {
        super::super::tests::ep(&format!("pod-{i}"), Some(&format!("127.128.0.{i}")))
    }

    #[test]
    fn same_key_same_endpoint_and_little_movement() {
        let three: Vec<Endpoint> = (1..=3).map(ep).collect();
        let ring = Ring::new(&three, DEFAULT_RING_SIZE);
        let keys: Vec<u64> = (0..1000).map(|k| hash_of(format!("user-{k}"))).collect();
        let before: Vec<usize> = keys.iter().map(|k| ring.get(*k).unwrap()).collect();
        assert_eq!(
            before,
            keys.iter()
                .map(|k| ring.get(*k).unwrap())
                .collect::<Vec<_>>()
        );
        for i in 0..3 {
            let share = before.iter().filter(|e| **e == i).count();
            assert!(
                (200..=470).contains(&share),
                "endpoint {i}: {share} of 1000"
            );
        }
        // A fourth endpoint takes about a quarter of the keys; the rest stay.
        let four: Vec<Endpoint> = (1..=4).map(ep).collect();
        let ring4 = Ring::new(&four, DEFAULT_RING_SIZE);
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|(k, b)| ring4.get(**k).unwrap() != **b)
            .count();
        assert!((150..=350).contains(&moved), "{moved} of 1000 moved");
        assert!(Ring::new(&[], 10).get(1).is_none());
    }
}
