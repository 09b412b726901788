//! Istio's standard metric labels for the two ends of a request.
//!
//! The source end comes from the CONNECT request's `baggage` header (as ztunnel sends it:
//! `k8s.namespace.name`, `k8s.deployment.name`, `service.name`, `service.version`, ...),
//! completed from the peer certificate and, failing that, from the source pod the snapshot
//! knows by IP. The destination end comes from the Service and pod the request went to.
//! Every value is bounded in length so that a peer cannot inflate memory.
//!
//! `app` and `version` are what Envoy's waypoint reports: the peer's `app.name` and
//! `app.version` baggage when sent (ztunnel sends neither), else its canonical service and
//! revision, as Istio's workload discovery gives a peer (`service.istio.io/canonical-name`,
//! else `app.kubernetes.io/name`, else `app`; `-revision`, `app.kubernetes.io/version`,
//! `version`, else `latest`), from the pod's labels or from ztunnel's `service.name` and
//! `service.version` baggage.

use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use filters::model::{Service, Snapshot, TunnelInfo, Workload};

/// Longest label value kept; longer values are cut.
const MAX_VALUE: usize = 128;

/// Labels describing one end (source or destination) of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PeerLabels {
    /// Workload name (Deployment, StatefulSet, ... or pod).
    pub workload: String,
    /// Workload namespace.
    pub namespace: String,
    /// SPIFFE identity.
    pub principal: String,
    /// `app` label.
    pub app: String,
    /// `version` label.
    pub version: String,
    /// Canonical service (`service.istio.io/canonical-name`).
    pub canonical_service: String,
    /// Canonical revision (`service.istio.io/canonical-revision`).
    pub canonical_revision: String,
    /// Cluster id.
    pub cluster: String,
}

/// The Service end of the destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ServiceLabels {
    /// Service hostname (`name.namespace.svc.cluster.local`).
    pub host: String,
    /// Service name.
    pub name: String,
    /// Service namespace.
    pub namespace: String,
}

/// Labels shared by every sample of a tunnel or destination, hashed once when built: a
/// metric key hashes one `u64` per end instead of every label string, and compares by
/// pointer before comparing by value.
#[derive(Debug)]
pub struct Shared<T> {
    labels: Arc<T>,
    hash: u64,
}

/// The source end's labels.
pub type SourceLabels = Shared<PeerLabels>;
/// The destination Service's and pod's labels.
pub type DestinationLabels = Shared<(ServiceLabels, PeerLabels)>;

impl<T: Hash> Shared<T> {
    /// Shares `labels`, hashing them once.
    pub fn new(labels: T) -> Self {
        // Fixed keys: the hash only ever feeds this process's maps.
        let mut h = std::hash::DefaultHasher::new();
        labels.hash(&mut h);
        Self {
            labels: Arc::new(labels),
            hash: h.finish(),
        }
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self {
            labels: self.labels.clone(),
            hash: self.hash,
        }
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.labels
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.labels, &other.labels)
            || (self.hash == other.hash && *self.labels == *other.labels)
    }
}

impl<T: Eq> Eq for Shared<T> {}

impl<T> Hash for Shared<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

const UNKNOWN: &str = "unknown";

fn bounded(v: &str) -> String {
    if v.len() <= MAX_VALUE {
        return v.to_string();
    }
    let mut end = MAX_VALUE;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_string()
}

impl PeerLabels {
    /// Labels of a tunnel's source workload.
    pub fn source(info: &TunnelInfo, snapshot: &Snapshot, cluster: &str) -> Self {
        let mut l = PeerLabels {
            principal: bounded(&info.peer.to_string()),
            namespace: bounded(&info.peer.namespace),
            cluster: cluster.to_string(),
            ..Default::default()
        };
        let pod = info.source_ip.and_then(|ip| snapshot.workload(ip));
        if let Some(w) = pod {
            l.fill_from_workload(w);
        }
        if let Some(baggage) = &info.baggage {
            l.apply_baggage(baggage);
        }
        l.app_from_canonical();
        l.fill_unknown();
        l
    }

    /// Labels of a destination pod.
    pub fn destination(workload: Option<&Workload>, cluster: &str) -> Self {
        let mut l = PeerLabels {
            cluster: cluster.to_string(),
            ..Default::default()
        };
        if let Some(w) = workload {
            l.principal = bounded(&w.identity.to_string());
            l.fill_from_workload(w);
        }
        l.app_from_canonical();
        l.fill_unknown();
        l
    }

    fn fill_from_workload(&mut self, w: &Workload) {
        let label = |k: &str| w.labels.get(k).map(String::as_str);
        self.namespace = bounded(&w.name.namespace);
        self.workload = bounded(&workload_name(w));
        self.canonical_service = bounded(
            label("service.istio.io/canonical-name")
                .or(label("app.kubernetes.io/name"))
                .or(label("app"))
                .unwrap_or(&self.workload.clone()),
        );
        self.canonical_revision = bounded(
            label("service.istio.io/canonical-revision")
                .or(label("app.kubernetes.io/version"))
                .or(label("version"))
                .unwrap_or("latest"),
        );
    }

    /// Applies ztunnel's baggage (`key=value` pairs separated by commas).
    fn apply_baggage(&mut self, baggage: &str) {
        for (k, v) in filters::connect::baggage(baggage) {
            match k {
                "k8s.cluster.name" => self.cluster = bounded(v),
                "k8s.namespace.name" => self.namespace = bounded(v),
                "k8s.deployment.name"
                | "k8s.statefulset.name"
                | "k8s.daemonset.name"
                | "k8s.job.name"
                | "k8s.cronjob.name"
                | "k8s.replicaset.name"
                | "k8s.pod.name" => self.workload = bounded(v),
                "service.name" => self.canonical_service = bounded(v),
                "service.version" => self.canonical_revision = bounded(v),
                "app.name" => self.app = bounded(v),
                "app.version" => self.version = bounded(v),
                _ => {}
            }
        }
    }

    /// `app` and `version`, unless baggage named them: the canonical service and revision.
    fn app_from_canonical(&mut self) {
        if self.app.is_empty() {
            self.app = self.canonical_service.clone();
        }
        if self.version.is_empty() {
            self.version = self.canonical_revision.clone();
        }
    }

    fn fill_unknown(&mut self) {
        for v in [
            &mut self.workload,
            &mut self.namespace,
            &mut self.principal,
            &mut self.app,
            &mut self.version,
            &mut self.canonical_service,
            &mut self.canonical_revision,
            &mut self.cluster,
        ] {
            if v.is_empty() {
                *v = UNKNOWN.into();
            }
        }
    }
}

impl ServiceLabels {
    /// Labels of the destination Service.
    pub fn of(service: Option<&Service>) -> Self {
        match service {
            Some(s) => Self {
                host: bounded(&s.hostname),
                name: bounded(&s.name.name),
                namespace: bounded(&s.name.namespace),
            },
            None => Self {
                host: UNKNOWN.into(),
                name: UNKNOWN.into(),
                namespace: UNKNOWN.into(),
            },
        }
    }
}

/// The workload a pod belongs to: a Deployment's pods are `<deployment>-<rs hash>-<pod
/// hash>` and carry `pod-template-hash`; other pods are their own workload.
fn workload_name(w: &Workload) -> String {
    let name = &w.name.name;
    if let Some(hash) = w.labels.get("pod-template-hash") {
        let rs_suffix = format!("-{hash}-");
        if let Some(i) = name.rfind(&rs_suffix) {
            return name[..i].to_string();
        }
    }
    name.clone()
}

/// The destination ends of a request: the Service and the pod, cached by identity of the
/// snapshot objects so that steady traffic does not rebuild label strings.
#[derive(Default)]
pub struct DestinationCache {
    map: std::sync::Mutex<
        std::collections::HashMap<(usize, usize), CachedDestination, foldhash::fast::RandomState>,
    >,
}

struct CachedDestination {
    // Held so the addresses used as keys are not reused while cached.
    _service: Option<Arc<Service>>,
    _workload: Option<Arc<Workload>>,
    labels: DestinationLabels,
}

/// Entries kept before the cache starts over (snapshots replace objects over time).
const CACHE_LIMIT: usize = 4096;

impl DestinationCache {
    /// The labels for `service` and `workload`.
    pub fn get(
        &self,
        service: Option<&Arc<Service>>,
        workload: Option<&Arc<Workload>>,
        cluster: &str,
    ) -> DestinationLabels {
        let key = (
            service.map_or(0, |s| Arc::as_ptr(s) as usize),
            workload.map_or(0, |w| Arc::as_ptr(w) as usize),
        );
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = map.get(&key) {
            return hit.labels.clone();
        }
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
        let labels = Shared::new((
            ServiceLabels::of(service.map(|s| &**s)),
            PeerLabels::destination(workload.map(|w| &**w), cluster),
        ));
        map.insert(
            key,
            CachedDestination {
                _service: service.cloned(),
                _workload: workload.cloned(),
                labels: labels.clone(),
            },
        );
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baggage_overrides_and_values_are_bounded() {
        let mut l = PeerLabels::default();
        let long = "x".repeat(500);
        l.apply_baggage(&format!(
            "k8s.cluster.name=c1, k8s.namespace.name=ns1,k8s.deployment.name=sleep,service.name=sleep-svc;p=1,service.version={long},bogus"
        ));
        l.app_from_canonical();
        l.fill_unknown();
        assert_eq!(l.cluster, "c1");
        assert_eq!(l.namespace, "ns1");
        assert_eq!(l.workload, "sleep");
        assert_eq!(l.canonical_service, "sleep-svc");
        assert_eq!(l.canonical_revision.len(), MAX_VALUE);
        // No app.name / app.version: the canonical service and revision.
        assert_eq!(l.app, "sleep-svc");
        assert_eq!(l.version.len(), MAX_VALUE);
        let mut named = PeerLabels::default();
        named.apply_baggage("service.name=s,service.version=v2,app.name=a,app.version=v1");
        named.app_from_canonical();
        assert_eq!((named.app.as_str(), named.version.as_str()), ("a", "v1"));
    }

    #[test]
    fn hostile_baggage_never_panics_and_every_value_stays_bounded() {
        const PIECES: &[&str] = &[
            "k8s.cluster.name=",
            "k8s.namespace.name=",
            "service.name=",
            "app.version=",
            "k8s.pod.name=",
            "=",
            ",",
            ";",
            ";p=1",
            " ",
            "é",
            "\u{0}",
            "%2C",
            "x",
            "ü",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let n = next() % 40;
            let mut v = String::new();
            for _ in 0..n {
                let piece = PIECES[(next() % PIECES.len() as u64) as usize];
                // Long values too, cut at any character.
                let times = if next().is_multiple_of(50) { 200 } else { 1 };
                v.push_str(&piece.repeat(times));
            }
            let mut l = PeerLabels::default();
            l.apply_baggage(&v);
            l.app_from_canonical();
            l.fill_unknown();
            for value in [&l.cluster, &l.namespace, &l.workload, &l.app, &l.version] {
                assert!(value.len() <= MAX_VALUE, "{value:?} from {v:?}");
            }
        }
    }

    #[test]
    fn app_and_version_from_the_pod_labels_as_workload_discovery_gives_them() {
        use filters::model::{Identity, NamespacedName};
        let pod = |labels: &[(&str, &str)]| Workload {
            name: NamespacedName::new("ns", "reviews-v2-abc-xyz"),
            ips: vec![],
            identity: Identity::new("cluster.local", "ns", "reviews"),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            hbone: true,
            served: false,
            named_ports: Default::default(),
        };
        let l = PeerLabels::destination(Some(&pod(&[("app", "reviews"), ("version", "v2")])), "c");
        assert_eq!((l.app.as_str(), l.version.as_str()), ("reviews", "v2"));
        let l = PeerLabels::destination(
            Some(&pod(&[
                ("app.kubernetes.io/name", "reviews-k8s"),
                ("service.istio.io/canonical-revision", "r3"),
            ])),
            "c",
        );
        assert_eq!((l.app.as_str(), l.version.as_str()), ("reviews-k8s", "r3"));
        let l = PeerLabels::destination(Some(&pod(&[])), "c");
        assert_eq!(
            (l.app.as_str(), l.version.as_str()),
            ("reviews-v2-abc-xyz", "latest")
        );
    }

    #[test]
    fn shared_labels_are_equal_by_value_and_hash_alike() {
        use std::hash::BuildHasher;
        let a = PeerLabels {
            workload: "sleep".into(),
            ..Default::default()
        };
        let mut b = a.clone();
        let (x, y) = (Shared::new(a), Shared::new(b.clone()));
        assert_eq!(x, y, "equal labels in distinct allocations");
        let s = std::hash::RandomState::new();
        assert_eq!(s.hash_one(&x), s.hash_one(&y));
        assert_eq!(x, x.clone());
        b.namespace = "other".into();
        assert_ne!(x, Shared::new(b));
    }
}
