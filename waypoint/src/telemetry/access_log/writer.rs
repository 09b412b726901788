//! A non-blocking line writer: requests hand lines to a bounded queue; one thread writes
//! them to stdout. A full queue (stdout blocked) drops lines and counts them rather than
//! slowing requests.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

/// Lines buffered before new ones are dropped.
const QUEUE: usize = 8192;

/// The stdout writer.
pub struct LineWriter {
    tx: SyncSender<String>,
    dropped: AtomicU64,
    written: std::sync::Arc<AtomicU64>,
}

impl LineWriter {
    /// Starts the writer thread.
    pub fn stdout() -> Self {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let written = std::sync::Arc::new(AtomicU64::new(0));
        let count = written.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                while let Ok(line) = rx.recv() {
                    let mut out = stdout.lock();
                    let _ = out.write_all(line.as_bytes());
                    count.fetch_add(1, Ordering::Relaxed);
                    // Drain what else is queued before flushing.
                    while let Ok(more) = rx.try_recv() {
                        let _ = out.write_all(more.as_bytes());
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = out.flush();
                }
            })
            .expect("spawn access log thread");
        Self {
            tx,
            dropped: AtomicU64::new(0),
            written,
        }
    }

    /// Queues one line (it must end with a newline).
    pub fn write(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lines written.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}
