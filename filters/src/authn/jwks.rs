//! JWT verification keys: inline (`jwks`) or fetched from `jwksUri`.
//!
//! Fetched key sets live in a [`JwksRegistry`] shared by every configuration snapshot, so
//! a configuration reload keeps keys already fetched. The fetching itself (network,
//! schedule) is the binary's; this module holds the state: the last good keys, the last
//! error, and which URIs are in use. While a URI's keys have never been fetched, tokens of
//! its issuer are refused (401), as Istio refuses them when istiod cannot fetch the keys;
//! a failed refresh keeps the last good keys.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use jsonwebtoken::jwk::JwkSet;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// The keys of one `jwksUri`.
#[derive(Debug)]
pub struct RemoteJwks {
    uri: String,
    keys: RwLock<Option<Arc<JwkSet>>>,
    status: Mutex<FetchStatus>,
}

/// The outcome of the latest fetches of one URI.
#[derive(Debug, Clone, Default)]
pub struct FetchStatus {
    /// When keys were last fetched successfully.
    pub last_success: Option<SystemTime>,
    /// The error of the latest fetch, if it failed.
    pub last_error: Option<String>,
    /// Fetch attempts so far.
    pub attempts: u64,
}

impl RemoteJwks {
    fn new(uri: &str) -> Self {
        Self {
            uri: uri.to_string(),
            keys: RwLock::new(None),
            status: Mutex::new(FetchStatus::default()),
        }
    }

    /// The URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The last good keys, if any were ever fetched.
    pub fn keys(&self) -> Option<Arc<JwkSet>> {
        self.keys.read().expect("jwks lock").clone()
    }

    /// Records a successful fetch.
    pub fn store(&self, keys: JwkSet) {
        *self.keys.write().expect("jwks lock") = Some(Arc::new(keys));
        let mut s = self.status.lock().expect("jwks lock");
        s.last_success = Some(SystemTime::now());
        s.last_error = None;
        s.attempts += 1;
    }

    /// Records a failed fetch; the last good keys stay.
    pub fn fail(&self, error: String) {
        let mut s = self.status.lock().expect("jwks lock");
        s.last_error = Some(error);
        s.attempts += 1;
    }

    /// The fetch status.
    pub fn status(&self) -> FetchStatus {
        self.status.lock().expect("jwks lock").clone()
    }
}

/// Every `jwksUri` the configuration uses, with its keys.
#[derive(Debug, Default)]
pub struct JwksRegistry {
    entries: Mutex<BTreeMap<String, Arc<RemoteJwks>>>,
    added: tokio::sync::Notify,
}

impl JwksRegistry {
    /// The keys of `uri`, registering it (the fetcher is woken for a new one).
    pub fn get(&self, uri: &str) -> Arc<RemoteJwks> {
        let mut entries = self.entries.lock().expect("jwks lock");
        if let Some(e) = entries.get(uri) {
            return e.clone();
        }
        let e = Arc::new(RemoteJwks::new(uri));
        entries.insert(uri.to_string(), e.clone());
        drop(entries);
        self.added.notify_one();
        e
    }

    /// The URIs some rule still uses; forgets the others.
    pub fn active(&self) -> Vec<Arc<RemoteJwks>> {
        let mut entries = self.entries.lock().expect("jwks lock");
        entries.retain(|_, e| Arc::strong_count(e) > 1);
        entries.values().cloned().collect()
    }

    /// Waits until a new URI is registered.
    pub async fn added(&self) {
        self.added.notified().await
    }
}

/// Where a rule's keys come from.
#[derive(Debug, Clone)]
pub enum JwksKeys {
    /// `jwks`: inline.
    Inline(Arc<JwkSet>),
    /// `jwksUri`: fetched.
    Remote(Arc<RemoteJwks>),
}

impl JwksKeys {
    /// The keys to verify with now, or why there are none.
    pub fn current(&self) -> Result<Arc<JwkSet>, String> {
        match self {
            JwksKeys::Inline(k) => Ok(k.clone()),
            JwksKeys::Remote(r) => r.keys().ok_or_else(|| {
                let why = r
                    .status()
                    .last_error
                    .unwrap_or_else(|| "not fetched yet".into());
                format!("keys from {} unavailable: {why}", r.uri)
            }),
        }
    }
}

impl Serialize for JwksKeys {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            JwksKeys::Inline(k) => {
                let mut st = s.serialize_struct("JwksKeys", 1)?;
                st.serialize_field("inline_keys", &k.keys.len())?;
                st.end()
            }
            JwksKeys::Remote(r) => {
                let status = r.status();
                let mut st = s.serialize_struct("JwksKeys", 4)?;
                st.serialize_field("jwks_uri", &r.uri)?;
                st.serialize_field("keys", &r.keys().map(|k| k.keys.len()))?;
                st.serialize_field("last_error", &status.last_error)?;
                st.serialize_field("attempts", &status.attempts)?;
                st.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_last_good_keys_and_forgets_unused_uris() {
        let reg = JwksRegistry::default();
        let r = reg.get("http://a/keys");
        assert!(Arc::ptr_eq(&r, &reg.get("http://a/keys")));
        let keys = JwksKeys::Remote(r.clone());
        assert!(keys.current().unwrap_err().contains("not fetched yet"));
        r.fail("connection refused".into());
        assert!(keys.current().unwrap_err().contains("connection refused"));
        r.store(JwkSet { keys: vec![] });
        r.fail("timeout".into());
        assert!(keys.current().is_ok(), "a failed refresh keeps the keys");
        assert_eq!(reg.active().len(), 1);
        drop(keys);
        drop(r);
        assert!(reg.active().is_empty());
    }
}
