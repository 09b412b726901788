use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::load;
use filters::Publisher;
use filters::SourceOptions;

/// Polls `path` every `interval` and publishes each valid change. An invalid change is
/// logged and reported to the publisher; the last good configuration stays in place.
///
/// Polling (rather than inotify) also follows the symlink swaps Kubernetes uses for
/// mounted ConfigMaps. Runs until the task is dropped.
pub async fn watch(
    path: PathBuf,
    options: SourceOptions,
    publisher: Arc<dyn Publisher>,
    interval: Duration,
) {
    let mut last = std::fs::read(&path).ok();
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
            continue;
        }
        last = Some(current);
        let version = publisher.current_version() + 1;
        match load(&path, &options, version) {
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
