//! Envoy's `MAGLEV` load balancer (a DestinationRule `consistentHash` with `maglev`): a
//! lookup table of a prime size (`maglev_lb_config.table_size`, 65537 by default) filled
//! from each endpoint's own permutation of the slots, in turns in which each endpoint takes
//! slots in proportion to its weight (EDS `load_balancing_weight`). A key is the slot its
//! hash falls in, so it always lands on the same endpoint while the endpoints stay the same,
//! and a change of endpoints moves few keys besides those of the endpoints that changed.

use super::ring::{hash_of, weighted};
use crate::model::Endpoint;

/// Envoy's default `table_size`.
pub const DEFAULT_TABLE_SIZE: u64 = 65537;
/// The largest `table_size` Envoy accepts.
pub const MAX_TABLE_SIZE: u64 = 5_000_011;

/// Whether `n` is prime (Envoy refuses a table size that is not).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A filled Maglev table: each slot names an endpoint index.
#[derive(Debug, Default)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// The table of `size` slots (a prime) over the addressed endpoints.
    pub fn new(endpoints: &[Endpoint], weights: Option<&[u32]>, size: u64) -> Self {
        let hosts = weighted(endpoints, weights);
        if hosts.is_empty() || size < 2 {
            return Self::default();
        }
        let m = size;
        // Each endpoint walks slots `offset, offset + skip, ...` (mod m); skip is nonzero and
        // m prime, so the walk visits every slot.
        struct Walk {
            index: u32,
            offset: u64,
            skip: u64,
            next: u64,
            weight: u64,
            /// The turn from which the endpoint takes its next slot.
            due: u64,
        }
        let heaviest = hosts.iter().map(|h| h.2).max().unwrap_or(1);
        let mut walks: Vec<Walk> = hosts
            .iter()
            .map(|(i, addr, w)| Walk {
                index: *i as u32,
                offset: hash_of((addr, "offset")) % m,
                skip: hash_of((addr, "skip")) % (m - 1) + 1,
                next: 0,
                weight: *w,
                due: 0,
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; m as usize];
        let mut filled = 0u64;
        // In turn t an endpoint of weight w takes a slot when t * w has reached what it has
        // taken times the heaviest weight: the heaviest takes one every turn, one of half
        // its weight every other turn.
        let mut turn = 0u64;
        while filled < m {
            for walk in walks.iter_mut() {
                if filled == m {
                    break;
                }
                if turn * walk.weight < walk.due {
                    continue;
                }
                walk.due += heaviest;
                let slot = loop {
                    let s = (walk.offset + walk.skip * walk.next) % m;
                    walk.next += 1;
                    if table[s as usize] == EMPTY {
                        break s;
                    }
                };
                table[slot as usize] = walk.index;
                filled += 1;
            }
            turn += 1;
        }
        Self { table }
    }

    /// The endpoint for `hash` among those `ok` accepts: its slot's, else (an ejected
    /// endpoint) the next accepted slot's, so an ejected endpoint's keys spread over the
    /// others in their proportions and come back when it does.
    pub fn get_where(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.table.len();
        if n == 0 {
            return None;
        }
        let start = (hash % n as u64) as usize;
        (0..n)
            .map(|k| self.table[(start + k) % n] as usize)
            .find(|i| ok(*i))
    }

    /// The endpoint index for `hash`.
    pub fn get(&self, hash: u64) -> Option<usize> {
        self.get_where(hash, |_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ring::tests::{ep, keys};
    use super::*;

    fn counts(t: &Maglev, n: usize) -> Vec<usize> {
        let mut out = vec![0; n];
        for k in keys() {
            out[t.get(k).unwrap()] += 1;
        }
        out
    }

    #[test]
    fn slots_and_keys_follow_the_weights() {
        let two: Vec<Endpoint> = (1..=2).map(ep).collect();
        let t = Maglev::new(&two, Some(&[1, 3]), DEFAULT_TABLE_SIZE);
        let slots = t.table.iter().filter(|s| **s == 1).count();
        // 3/4 of 65537 slots, within a turn.
        assert!((49_150..=49_155).contains(&slots), "{slots}");
        let c = counts(&t, 2);
        assert!((6_900..=8_100).contains(&c[1]), "{c:?}");
        let even = counts(&Maglev::new(&two, None, DEFAULT_TABLE_SIZE), 2);
        assert!((4_400..=5_600).contains(&even[0]), "{even:?}");
        assert!(Maglev::new(&[], None, 7).get(1).is_none());
    }

    #[test]
    fn a_joining_endpoint_takes_its_share_and_little_else() {
        let three: Vec<Endpoint> = (1..=3).map(ep).collect();
        let four: Vec<Endpoint> = (1..=4).map(ep).collect();
        let before = Maglev::new(&three, None, DEFAULT_TABLE_SIZE);
        let after = Maglev::new(&four, None, DEFAULT_TABLE_SIZE);
        let (mut moved, mut to_new) = (0, 0);
        for k in keys() {
            let (b, a) = (before.get(k).unwrap(), after.get(k).unwrap());
            if a != b {
                moved += 1;
                to_new += usize::from(a == 3);
            }
        }
        assert!((2_200..=2_800).contains(&to_new), "{to_new} to the new one");
        assert!(
            moved - to_new <= 600,
            "{} moved between old ones",
            moved - to_new
        );
        // Ejecting one sends its keys elsewhere and leaves the others' keys alone.
        for k in keys() {
            let b = before.get(k).unwrap();
            let e = before.get_where(k, |i| i != 0).unwrap();
            assert_ne!(e, 0);
            if b != 0 {
                assert_eq!(e, b);
            }
        }
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(5_000_011) && is_prime(7));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(9));
    }
}
