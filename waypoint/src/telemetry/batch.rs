//! The export loop telemetry exporters share: records from a bounded queue are sent in
//! batches of up to [`BATCH`], each waiting at most [`LINGER`] after its first record for
//! more, each export bounded by a timeout. A batch that fails is dropped (and counted by
//! the caller), never retried or queued: telemetry must not build up memory when its
//! collector is away.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

/// Most records in one export.
pub const BATCH: usize = 512;
/// Longest wait, after a batch's first record, for more.
pub const LINGER: Duration = Duration::from_millis(500);

/// Runs until every sender is gone: exports each batch with `export` (bounded by
/// `timeout`), then tells `done` how many records it held and how the export went.
pub async fn run<T, F, Fut>(
    mut rx: mpsc::Receiver<T>,
    timeout: Duration,
    mut export: F,
    mut done: impl FnMut(u64, Result<(), String>),
) where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let records = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        let outcome = match tokio::time::timeout(timeout, export(records)).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {timeout:?}")),
        };
        done(n, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn records_go_in_batches_and_failures_are_reported() {
        let (tx, rx) = mpsc::channel(2048);
        for i in 0..600 {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        let mut sizes = Vec::new();
        let mut outcomes = Vec::new();
        run(
            rx,
            Duration::from_secs(1),
            |b: Vec<i32>| {
                sizes.push(b.len());
                async move {
                    if b[0] == 0 {
                        Ok(())
                    } else {
                        Err("down".to_string())
                    }
                }
            },
            |n, r| outcomes.push((n, r.is_ok())),
        )
        .await;
        assert_eq!(sizes, [512, 88]);
        assert_eq!(outcomes, [(512, true), (88, false)]);
    }
}
