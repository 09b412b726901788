use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::load_bytes;
use filters::Publisher;
use filters::SourceOptions;

/// Polls `path` every `interval` and publishes each valid change. An invalid change is
/// logged and reported to the publisher; the last good configuration stays in place.
///
/// A change is applied only once the file has read the same for [`settle_time`], so a file
/// being written in place in several chunks is not applied half-written (an atomic rename,
/// as Kubernetes swaps a mounted ConfigMap, needs no such wait but costs only it). Parsing
/// runs off the async runtime. Polling (rather than inotify) also follows the symlink swaps
/// Kubernetes uses for mounted ConfigMaps. Runs until the task is dropped.
pub async fn watch(
    path: PathBuf,
    options: SourceOptions,
    publisher: Arc<dyn Publisher>,
    interval: Duration,
) {
    let mut last = std::fs::read(&path).ok();
    let mut pending: Option<(Vec<u8>, tokio::time::Instant)> = None;
    let settle = settle_time(interval);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let current = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                if last.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "configuration file unreadable; keeping the current configuration");
                    last = None;
                }
                continue;
            }
        };
        if last.as_deref() == Some(&current[..]) {
            pending = None;
            continue;
        }
        match &pending {
            Some((bytes, since)) if *bytes == current => {
                if since.elapsed() < settle {
                    continue;
                }
            }
            // Changed since the last poll: wait until it stops changing.
            _ => {
                pending = Some((current, tokio::time::Instant::now()));
                continue;
            }
        }
        pending = None;
        last = Some(current.clone());
        let version = publisher.current_version() + 1;
        let loaded = {
            let (path, options) = (path.clone(), options.clone());
            tokio::task::spawn_blocking(move || load_bytes(&path, &current, &options, version))
                .await
        };
        let Ok(loaded) = loaded else {
            continue;
        };
        match loaded {
            Ok(snapshot) => {
                tracing::info!(path = %path.display(), version, services = snapshot.services().len(), workloads = snapshot.workloads().len(), "configuration change applied");
                publisher.publish(snapshot);
            }
            Err(e) => {
                let source = format!("file:{}", path.display());
                tracing::error!(path = %path.display(), error = %e, "configuration change rejected; keeping the current configuration");
                publisher.reject(&source, &e.to_string());
            }
        }
    }
}

/// How long a changed file must read the same before it is applied: one poll, and at least
/// half a second.
pub fn settle_time(interval: Duration) -> Duration {
    interval.max(Duration::from_millis(500))
}
