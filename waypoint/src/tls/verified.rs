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

use super::{identity_of, Certs, TlsError};

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

    /// Remembers a chain that `certs` verified; returns its identity.
    pub fn insert(
        &self,
        certs: &Arc<Certs>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Identity, TlsError> {
        let identity = identity_of(end_entity)?;
        let (mut not_before, mut not_after) = (0u64, u64::MAX);
        for der in std::iter::once(end_entity).chain(intermediates) {
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
                .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
            let validity = cert.validity();
            not_before = not_before.max(validity.not_before.timestamp().max(0) as u64);
            not_after = not_after.min(validity.not_after.timestamp().max(0) as u64);
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
