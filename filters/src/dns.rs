//! Upstreams named by a DNS host name (a ServiceEntry with `resolution: DNS` or
//! `DNS_ROUND_ROBIN` whose endpoint is a name, or that has no endpoints: its host).
//!
//! Resolved addresses change without any configuration change, so they live outside the
//! immutable [`crate::Snapshot`]: in the process-wide [`resolved`] cache, keyed by host
//! name, which the binary's resolver keeps fresh (honouring the answers' TTLs) and
//! [`crate::balance::pick`] reads when it picks the endpoint of a port with a
//! [`DnsTarget`].
//!
//! The port's balancing policy and outlier detection (a DestinationRule on the
//! ServiceEntry) apply over the addresses the name resolved to, each address an endpoint
//! as in Envoy's STRICT_DNS cluster: a consistent-hash table and the ejection state are
//! built for the current answer and rebuilt when it changes, an address that stays
//! keeping its counters and ejection and one that disappears dropping them. A LOGICAL_DNS
//! target has one endpoint, Envoy's single logical host: the first address, whose state is
//! kept whatever address it currently stands for.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::balance::outlier::{self, OutlierPolicy, Tracker};
use crate::balance::{Balancing, HashTable, Policy};
use crate::model::{Endpoint, Workload};

/// A Service port's upstream named by a host name.
#[derive(Debug, serde::Serialize)]
pub struct DnsTarget {
    /// The name resolved (without a trailing dot).
    pub hostname: String,
    /// The port connected to on every resolved address.
    pub port: u16,
    /// LOGICAL_DNS (`DNS_ROUND_ROBIN`): the first address only; else STRICT_DNS (`DNS`):
    /// every address, taken in turn.
    pub logical: bool,
    /// The workload the resolved addresses stand for (not a mesh pod: plain TCP).
    #[serde(skip)]
    pub workload: Arc<Workload>,
    #[serde(skip)]
    next: AtomicUsize,
    /// The endpoints of the current answer, with their balancing and outlier state.
    #[serde(skip)]
    view: RwLock<Option<Arc<View>>>,
}

/// The endpoints one DNS answer gives, balanced by one policy.
#[derive(Debug)]
struct View {
    /// The answer this was built for.
    answer: Arc<[IpAddr]>,
    /// That answer's generation ([`Answer::generation`]).
    generation: u64,
    policy: Policy,
    outlier: Option<OutlierPolicy>,
    /// One per address (LOGICAL_DNS: the first only).
    endpoints: Vec<Endpoint>,
    table: Option<HashTable>,
    tracker: Option<Arc<Tracker>>,
}

/// An address picked for a request, with where its outcome is recorded when the port has
/// outlier detection.
#[derive(Debug, Clone)]
pub struct PickedAddress {
    /// The address connected to.
    pub address: SocketAddr,
    /// The workload standing for it.
    pub workload: Arc<Workload>,
    /// The ejection state of the address and its index in it.
    pub outlier: Option<(Arc<Tracker>, usize)>,
}

impl DnsTarget {
    /// A target for `hostname:port`, standing for `workload`.
    pub fn new(hostname: &str, port: u16, logical: bool, workload: Workload) -> Self {
        Self {
            hostname: hostname.trim_end_matches('.').to_string(),
            port,
            logical,
            workload: Arc::new(workload),
            next: AtomicUsize::new(0),
            view: RwLock::new(None),
        }
    }

    /// The address to connect to now, in turn, from the [`resolved`] cache; `None` while
    /// the name has no address (not resolved yet, or it does not resolve).
    pub fn pick(&self) -> Option<SocketAddr> {
        self.pick_with(Policy::RoundRobin, None, None)
            .map(|p| p.address)
    }

    /// Picks among the addresses the name resolves to now: by `hash` when `policy` is
    /// consistent hashing and the request has one, else in turn (LOGICAL_DNS: the first
    /// address); addresses `outlier` detection ejected are left out unless too few are
    /// left (Envoy's panic threshold). `None` when there is no address to take the request.
    pub fn pick_with(
        &self,
        policy: Policy,
        outlier: Option<&OutlierPolicy>,
        hash: Option<u64>,
    ) -> Option<PickedAddress> {
        let answer = resolved().answer(&self.hostname)?;
        let view = self.view_for(answer, policy, outlier);
        let n = view.endpoints.len();
        let now = outlier::now_ms();
        let tracker = view.tracker.as_ref().filter(|t| !t.in_panic(now));
        let ok = |i: usize| tracker.is_none_or(|t| !t.is_ejected(i, now));
        let index = match (&view.table, hash) {
            (Some(table), Some(h)) => table.get_where(h, ok),
            _ => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|i| (start + i) % n).find(|i| ok(*i))
            }
        }?;
        let ep = &view.endpoints[index];
        Some(PickedAddress {
            address: ep.address()?,
            workload: ep.workload.clone(),
            outlier: view.tracker.clone().map(|t| (t, index)),
        })
    }

    /// The view for `answer` under these settings: the current one, or one built now that
    /// takes over the state of the addresses the current one shares with it.
    fn view_for(
        &self,
        answer: Answer,
        policy: Policy,
        outlier: Option<&OutlierPolicy>,
    ) -> Arc<View> {
        let current = self.view.read().unwrap_or_else(|e| e.into_inner()).clone();
        // An address of the view that left an answer since and came back is new.
        let kept_since = |generation: u64, i: usize| answer.joined[i] <= generation;
        if let Some(v) = &current {
            let same = *v.answer == *answer.ips
                && (0..answer.ips.len()).all(|i| kept_since(v.generation, i));
            if same && v.policy == policy && v.outlier.as_ref() == outlier {
                return v.clone();
            }
        }
        let ips: &[IpAddr] = if self.logical {
            &answer.ips[..1.min(answer.ips.len())]
        } else {
            &answer.ips
        };
        let endpoints: Vec<Endpoint> = ips
            .iter()
            .map(|ip| {
                let mut w = (*self.workload).clone();
                w.ips = vec![*ip];
                Endpoint {
                    workload: Arc::new(w),
                    port: self.port,
                }
            })
            .collect();
        let table = match Balancing::new(policy, &endpoints, None) {
            Balancing::Hash(t) => Some(t),
            _ => None,
        };
        let tracker = outlier.map(|p| Arc::new(Tracker::new(p.clone(), endpoints.len())));
        if let (Some(now), Some(before)) = (&tracker, current.as_ref()) {
            if let Some(old) = &before.tracker {
                // The logical host is one host whatever address it stands for; an address
                // keeps its state if every answer since the view's listed it.
                let addresses: Vec<_> = endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        e.address()
                            .filter(|_| self.logical || kept_since(before.generation, i))
                    })
                    .collect();
                let old_addresses: Vec<_> = if self.logical {
                    addresses.clone()
                } else {
                    before.endpoints.iter().map(Endpoint::address).collect()
                };
                now.inherit(&addresses, old, &old_addresses);
            }
        }
        tracing::debug!(host = %self.hostname, addresses = ?answer.ips, "balancing over a DNS answer");
        let view = Arc::new(View {
            answer: answer.ips,
            generation: answer.generation,
            policy,
            outlier: outlier.cloned(),
            endpoints,
            table,
            tracker,
        });
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = Some(view.clone());
        view
    }

    /// Takes over the endpoint state of the same name's target in the snapshot this one
    /// replaces, so that a configuration push keeps ejections.
    pub fn inherit(&self, previous: &DnsTarget) {
        let same = (&self.hostname, self.port, self.logical)
            == (&previous.hostname, previous.port, previous.logical);
        if std::ptr::eq(self, previous) || !same {
            return;
        }
        let before = previous
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        if view.is_none() {
            *view = before;
        }
    }
}

/// Resolved addresses by host name.
#[derive(Debug, Default)]
pub struct Resolved {
    by_host: RwLock<HashMap<String, Answer>>,
    /// Counts the answers recorded, for [`Answer::joined`].
    generation: AtomicU64,
}

/// The addresses a host name resolved to last.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The addresses, in the answer's order.
    pub ips: Arc<[IpAddr]>,
    /// For each address, the generation of the first answer in the unbroken run of answers
    /// that listed it: state kept for an address is valid only if it was kept since then.
    pub joined: Arc<[u64]>,
    /// This answer's generation.
    pub generation: u64,
}

impl Resolved {
    /// The addresses `host` resolved to last; `None` if none.
    pub fn get(&self, host: &str) -> Option<Arc<[IpAddr]>> {
        self.answer(host).map(|a| a.ips)
    }

    /// The answer `host` resolved to last, with when each address joined it.
    pub fn answer(&self, host: &str) -> Option<Answer> {
        let map = self.by_host.read().unwrap_or_else(|e| e.into_inner());
        map.get(host).filter(|a| !a.ips.is_empty()).cloned()
    }

    /// Records the addresses `host` resolves to (none removes it). Addresses the previous
    /// answer listed keep their join generation; the others join now.
    pub fn set(&self, host: &str, ips: Vec<IpAddr>) {
        let mut map = self.by_host.write().unwrap_or_else(|e| e.into_inner());
        if ips.is_empty() {
            map.remove(host);
            return;
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let before = map.get(host);
        let joined: Vec<u64> = ips
            .iter()
            .map(|ip| {
                before
                    .and_then(|b| {
                        let i = b.ips.iter().position(|x| x == ip)?;
                        b.joined.get(i).copied()
                    })
                    .unwrap_or(generation)
            })
            .collect();
        let answer = Answer {
            ips: ips.into(),
            joined: joined.into(),
            generation,
        };
        map.insert(host.to_string(), answer);
    }

    /// Forgets every host not in `keep`.
    pub fn retain(&self, keep: &std::collections::BTreeSet<String>) {
        let mut map = self.by_host.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|h, _| keep.contains(h));
    }
}

/// The process-wide cache of resolved addresses.
pub fn resolved() -> &'static Resolved {
    static CACHE: OnceLock<Resolved> = OnceLock::new();
    CACHE.get_or_init(Resolved::default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Identity, NamespacedName};

    fn target(host: &str, logical: bool) -> DnsTarget {
        let w = Workload {
            name: NamespacedName::new("egress", host),
            ips: vec![],
            identity: Identity::new("cluster.local", "egress", "default"),
            labels: Default::default(),
            hbone: false,
            served: false,
            named_ports: Default::default(),
        };
        DnsTarget::new(host, 8080, logical, w)
    }

    #[test]
    fn strict_takes_every_address_in_turn_and_logical_the_first() {
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.7".parse().unwrap(), "127.0.0.8".parse().unwrap());
        let strict = target("strict.test", false);
        assert_eq!(strict.pick(), None, "not resolved yet");
        resolved().set("strict.test", vec![a, b]);
        let picks: Vec<_> = (0..4).map(|_| strict.pick().unwrap().ip()).collect();
        assert_eq!(picks, [a, b, a, b]);
        resolved().set("logical.test", vec![a, b]);
        let logical = target("logical.test.", true);
        assert!((0..3).all(|_| logical.pick() == Some(SocketAddr::new(a, 8080))));
        resolved().set("strict.test", vec![]);
        assert_eq!(strict.pick(), None);
    }

    fn ejecting() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: Some(1),
            max_ejection_percent: 100,
            panic_threshold: 0.0,
            ..Default::default()
        }
    }

    /// Picks once; a 503 from `bad` is recorded (ejecting it). Returns the address picked.
    fn pick_and_fail(t: &DnsTarget, p: &OutlierPolicy, bad: IpAddr) -> Option<IpAddr> {
        let picked = t.pick_with(Policy::RoundRobin, Some(p), None)?;
        if picked.address.ip() == bad {
            let (tracker, i) = picked.outlier.clone().unwrap();
            tracker.record(i, outlier::Outcome::Status(503), outlier::now_ms());
        }
        Some(picked.address.ip())
    }

    #[test]
    fn ejection_is_per_address_and_goes_when_the_address_leaves_the_answer() {
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "127.0.0.7".parse().unwrap(),
            "127.0.0.8".parse().unwrap(),
            "127.0.0.9".parse().unwrap(),
        );
        let p = ejecting();
        let t = target("eject.test", false);
        resolved().set("eject.test", vec![a, b]);
        let first: Vec<_> = (0..2).map(|_| pick_and_fail(&t, &p, a)).collect();
        assert!(first.contains(&Some(a)));
        assert!(
            (0..6).all(|_| pick_and_fail(&t, &p, a) == Some(b)),
            "a ejected"
        );
        // A new answer that keeps `a` (in another place) keeps its ejection.
        resolved().set("eject.test", vec![c, a, b]);
        let picks: Vec<_> = (0..6).map(|_| pick_and_fail(&t, &p, a)).collect();
        assert!(
            !picks.contains(&Some(a)) && picks.contains(&Some(c)),
            "{picks:?}"
        );
        // A config push: the next snapshot's target takes the state over.
        let next = target("eject.test", false);
        next.inherit(&t);
        assert!((0..6).all(|_| pick_and_fail(&next, &p, a) != Some(a)));
        // `a` leaves the answer and comes back, with no pick in between: a fresh address.
        resolved().set("eject.test", vec![b]);
        resolved().set("eject.test", vec![a, b]);
        let picks: Vec<_> = (0..2).map(|_| pick_and_fail(&next, &p, c)).collect();
        assert!(picks.contains(&Some(a)), "{picks:?}");
        resolved().set("eject.test", vec![]);
    }

    #[test]
    fn a_logical_host_keeps_its_ejection_when_its_address_changes() {
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.7".parse().unwrap(), "127.0.0.8".parse().unwrap());
        let p = ejecting();
        let t = target("logical-eject.test", true);
        resolved().set("logical-eject.test", vec![a, b]);
        assert_eq!(pick_and_fail(&t, &p, a), Some(a));
        assert_eq!(pick_and_fail(&t, &p, a), None, "the one host is ejected");
        resolved().set("logical-eject.test", vec![b]);
        assert_eq!(pick_and_fail(&t, &p, a), None, "still the same host");
        resolved().set("logical-eject.test", vec![]);
    }

    #[test]
    fn consistent_hashing_spreads_keys_over_the_resolved_addresses() {
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.7".parse().unwrap(), "127.0.0.8".parse().unwrap());
        let t = target("hash.test", false);
        resolved().set("hash.test", vec![a, b]);
        for policy in [
            Policy::RingHash(crate::balance::ring::RingSize::default()),
            Policy::Maglev(65537),
        ] {
            let mut used = std::collections::HashSet::new();
            for key in 0..40u64 {
                let h = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let one = t.pick_with(policy, None, Some(h)).unwrap().address;
                assert!((0..3).all(|_| t.pick_with(policy, None, Some(h)).unwrap().address == one));
                used.insert(one);
            }
            assert_eq!(used.len(), 2, "{policy:?}");
        }
        resolved().set("hash.test", vec![]);
    }
}
