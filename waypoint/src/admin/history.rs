//! What changed, and when: the last configuration versions the sources offered (accepted
//! or rejected, with the reason) and, for accepted ones, a structural diff against the
//! snapshot they replaced (Services, workloads, route tables, policies: added, removed,
//! changed), served at `/config_history` and logged with every change.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use filters::Snapshot;
use serde::Serialize;
use serde_json::Value;

/// How many versions are kept.
pub const KEPT: usize = 32;

/// One configuration offered by a source.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The snapshot version (accepted ones).
    pub version: Option<u64>,
    /// `file:<path>` or `xds:<server>`.
    pub source: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Whether it was applied.
    pub accepted: bool,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What changed against the snapshot it replaced (accepted ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<BTreeMap<String, SectionChanges>>,
}

/// What changed in one part of the snapshot (`services`, `routes`, `authz`...): names
/// added, removed and changed; a part that is not a map lists `*` as changed.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SectionChanges {
    /// Keys new in this version.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    /// Keys gone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Keys whose content differs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

/// Parts of the snapshot that are bookkeeping, not configuration.
const IGNORED: &[&str] = &["version", "source"];

/// The structural difference between two snapshots, part by part; empty parts are left out.
pub fn diff(before: &Snapshot, after: &Snapshot) -> BTreeMap<String, SectionChanges> {
    let (a, b) = (to_value(before), to_value(after));
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut out = BTreeMap::new();
    for key in a.keys().chain(b.keys()) {
        if IGNORED.contains(&key.as_str()) || out.contains_key(key) {
            continue;
        }
        let changes = section(a.get(key), b.get(key));
        if changes != SectionChanges::default() {
            out.insert(key.clone(), changes);
        }
    }
    out
}

fn to_value(s: &Snapshot) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

fn section(a: Option<&Value>, b: Option<&Value>) -> SectionChanges {
    let mut c = SectionChanges::default();
    match (a, b) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            for (k, v) in b {
                match a.get(k) {
                    None => c.added.push(k.clone()),
                    Some(old) if old != v => c.changed.push(k.clone()),
                    Some(_) => {}
                }
            }
            c.removed = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
        }
        (a, b) if a != b => c.changed.push("*".into()),
        _ => {}
    }
    c
}

/// The last [`KEPT`] configurations.
#[derive(Debug, Default)]
pub struct ConfigHistory {
    entries: Mutex<VecDeque<Entry>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ConfigHistory {
    fn push(&self, entry: Entry) {
        let mut entries = self.entries.lock().expect("history lock");
        if entries.len() == KEPT {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// Records `after` replacing `before`, and logs what changed.
    pub fn accepted(&self, before: &Snapshot, after: &Snapshot) {
        let changes = diff(before, after);
        let summary: Vec<String> = changes
            .iter()
            .map(|(k, c)| {
                format!(
                    "{k}: +{} -{} ~{}",
                    c.added.len(),
                    c.removed.len(),
                    c.changed.len()
                )
            })
            .collect();
        tracing::info!(version = after.version(), source = after.source(), changes = %summary.join(", "), "configuration applied");
        self.push(Entry {
            version: Some(after.version()),
            source: after.source().to_string(),
            at_unix_ms: now_ms(),
            accepted: true,
            reason: None,
            changes: Some(changes),
        });
    }

    /// Records a configuration `source` offered and that was refused.
    pub fn rejected(&self, source: &str, reason: &str) {
        self.push(Entry {
            version: None,
            source: source.to_string(),
            at_unix_ms: now_ms(),
            accepted: false,
            reason: Some(reason.to_string()),
            changes: None,
        });
    }

    /// The kept entries, oldest first.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .expect("history lock")
            .iter()
            .cloned()
            .collect()
    }
}
