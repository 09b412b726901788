//! Client chains the HBONE listener already verified. A source ztunnel presents the same
//! certificate on every connection it opens, and verifying its chain is one of the two
//! ECDSA verifications of each handshake (the other, the CertificateVerify signature,
//! proves possession of the key and is always checked). An entry is used only for the
//! exact same chain bytes, against the same key material generation (roots), and only
//! inside the validity window of every certificate in the chain; anything else is
//! verified in full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use filters::model::Identity;
use rustls::pki_types::{CertificateDer, UnixTime};

use super::{identity_in, parse, Certs, TlsError};

/// Most chains remembered; the cache is emptied when full (peers are a node's ztunnels,
/// a handful per waypoint).
const LIMIT: usize = 1024;

struct Entry {
    /// The key material the chain was verified against.
    certs: Arc<Certs>,
    intermediates: Vec<Vec<u8>>,
    /// Latest notBefore and earliest notAfter of the chain, seconds since the epoch.
    not_before: u64,
    not_after: u64,
    identity: Identity,
}

/// Verified chains, keyed by the end-entity certificate's DER.
#[derive(Default)]
pub struct VerifiedChains {
    map: Mutex<HashMap<Vec<u8>, Entry>>,
}

impl std::fmt::Debug for VerifiedChains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedChains").finish_non_exhaustive()
    }
}

impl VerifiedChains {
    /// The identity of a chain verified before against `certs` and valid at `now`.
    pub fn get(
        &self,
        certs: &Arc<Certs>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Option<Identity> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.get(end_entity.as_ref())?;
        let now = now.as_secs();
        let same = Arc::ptr_eq(&e.certs, certs)
            && e.intermediates.len() == intermediates.len()
            && e.intermediates
                .iter()
                .zip(intermediates)
                .all(|(a, b)| a.as_slice() == b.as_ref());
        (same && e.not_before <= now && now <= e.not_after).then(|| e.identity.clone())
    }

    /// The identity of a remembered end-entity certificate (the identity depends on the
    /// certificate's bytes alone, whatever the chain was verified against).
    pub fn identity(&self, end_entity: &[u8]) -> Option<Identity> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(end_entity).map(|e| e.identity.clone())
    }

    /// Remembers a chain that `certs` verified; returns its identity.
    pub fn insert(
        &self,
        certs: &Arc<Certs>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Identity, TlsError> {
        let leaf = parse(end_entity)?;
        let identity = identity_in(&leaf)?;
        let (mut not_before, mut not_after) = (0u64, u64::MAX);
        let mut narrow = |cert: &x509_parser::certificate::X509Certificate<'_>| {
            let validity = cert.validity();
            not_before = not_before.max(validity.not_before.timestamp().max(0) as u64);
            not_after = not_after.min(validity.not_after.timestamp().max(0) as u64);
        };
        narrow(&leaf);
        for der in intermediates {
            narrow(&parse(der)?);
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= LIMIT {
            map.clear();
        }
        map.insert(
            end_entity.as_ref().to_vec(),
            Entry {
                certs: certs.clone(),
                intermediates: intermediates.iter().map(|c| c.as_ref().to_vec()).collect(),
                not_before,
                not_after,
                identity: identity.clone(),
            },
        );
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tls::DevCa;

    fn setup() -> (Arc<Certs>, CertificateDer<'static>, Identity) {
        let ca = DevCa::new("test").expect("ca");
        let id = Identity::new("cluster.local", "default", "sleep");
        let certs = Arc::new(ca.issue(&id).expect("issue").certs().expect("certs"));
        let leaf = certs.key.cert[0].clone();
        (certs, leaf, id)
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    #[test]
    fn two_uri_sans_are_not_an_svid() {
        let ca = DevCa::new("test").expect("ca");
        let two = ca
            .issue_uris(&[
                "spiffe://cluster.local/ns/default/sa/sleep",
                "spiffe://cluster.local/ns/default/sa/admin",
            ])
            .expect("issue");
        match two.certs() {
            Err(TlsError::SeveralUriSans(2)) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a two-SAN certificate was accepted"),
        }
        let one = ca
            .issue_uri("spiffe://cluster.local/ns/default/sa/sleep")
            .expect("issue");
        assert!(one.certs().is_ok());
    }

    #[test]
    fn remembered_chain_is_found_only_for_the_same_generation_chain_and_window() {
        let (certs, leaf, id) = setup();
        let cache = VerifiedChains::default();
        assert!(cache.get(&certs, &leaf, &[], UnixTime::now()).is_none());
        assert_eq!(cache.insert(&certs, &leaf, &[]).expect("insert"), id);
        assert_eq!(
            cache.get(&certs, &leaf, &[], UnixTime::now()),
            Some(id.clone())
        );
        assert_eq!(cache.identity(leaf.as_ref()), Some(id));
        // Other key material (a reload, new roots): verified again.
        let (other, _, _) = setup();
        assert!(cache.get(&other, &leaf, &[], UnixTime::now()).is_none());
        // Other intermediates: verified again.
        assert!(cache
            .get(&certs, &leaf, std::slice::from_ref(&leaf), UnixTime::now())
            .is_none());
        // Outside the validity window (rcgen's default is 1975..4096).
        assert!(cache.get(&certs, &leaf, &[], at(0)).is_none());
        assert!(cache.get(&certs, &leaf, &[], at(200_000_000_000)).is_none());
    }
}
