//! A non-blocking line writer: requests hand lines to a bounded queue; one thread writes
//! them to stdout or appends them to a file. A full queue (the output blocked) drops lines
//! and counts them rather than slowing requests.
//!
//! A file is opened for appending (created if missing). When it cannot be opened or
//! written, the error is logged (once until it recovers), the lines are dropped and
//! counted, and opening is retried at most once a second. When the path stops naming the
//! open file (rotated away or removed), the file is reopened, so rotation by renaming
//! works without a signal.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lines buffered before new ones are dropped.
const QUEUE: usize = 8192;
/// How often a file's path is checked for rotation, and a failed open retried.
const RECHECK: Duration = Duration::from_secs(1);

/// Line counters.
#[derive(Debug, Default)]
pub struct LineStats {
    /// Lines written.
    pub written: AtomicU64,
    /// Lines dropped: the queue was full or the output failed.
    pub dropped: AtomicU64,
}

/// One output's writer.
pub struct LineWriter {
    tx: SyncSender<String>,
    stats: Arc<LineStats>,
}

impl LineWriter {
    /// Starts the writer thread for stdout.
    pub fn stdout() -> Self {
        Self::spawn("access-log", None)
    }

    /// Starts the writer thread appending to `path`.
    pub fn file(path: &str) -> Self {
        Self::spawn("access-log-file", Some(PathBuf::from(path)))
    }

    fn spawn(name: &str, path: Option<PathBuf>) -> Self {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let stats = Arc::new(LineStats::default());
        let counts = stats.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || match path {
                // Locked per line, not for the thread's life: the process's own logs go
                // to stdout too, and would wait forever for the lock.
                None => run(rx, &counts, std::io::stdout()),
                Some(p) => run(rx, &counts, Reopening::new(p)),
            })
            .expect("spawn access log thread");
        Self { tx, stats }
    }

    /// Queues one line (it must end with a newline).
    pub fn write(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &LineStats {
        &self.stats
    }
}

fn run(rx: Receiver<String>, stats: &LineStats, mut out: impl Write) {
    let put = |out: &mut dyn Write, line: &str| {
        let counter = match out.write_all(line.as_bytes()) {
            Ok(()) => &stats.written,
            Err(_) => &stats.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    };
    while let Ok(line) = rx.recv() {
        put(&mut out, &line);
        // Drain what else is queued before flushing.
        while let Ok(more) = rx.try_recv() {
            put(&mut out, &more);
        }
        let _ = out.flush();
    }
}

/// A file opened for appending, reopened when it fails or its path names another file.
struct Reopening {
    path: PathBuf,
    file: Option<(File, u64, u64)>,
    checked: Instant,
    failing: bool,
}

impl Reopening {
    fn new(path: PathBuf) -> Self {
        let mut r = Self {
            path,
            file: None,
            checked: Instant::now(),
            failing: false,
        };
        r.open();
        r
    }

    fn open(&mut self) {
        self.checked = Instant::now();
        let opened = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .and_then(|f| {
                let m = f.metadata()?;
                Ok((f, m.dev(), m.ino()))
            });
        match opened {
            Ok(f) => {
                if self.failing {
                    tracing::info!(path = %self.path.display(), "access log file reopened");
                }
                self.failing = false;
                self.file = Some(f);
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(path = %self.path.display(), error = %e, "access log file cannot be opened; lines are dropped until it can");
                }
                self.failing = true;
                self.file = None;
            }
        }
    }

    /// Reopens when due: after a failure, or when the path no longer names the open file.
    fn recheck(&mut self) {
        if self.checked.elapsed() < RECHECK {
            return;
        }
        self.checked = Instant::now();
        let moved = match (&self.file, std::fs::metadata(&self.path)) {
            (None, _) => true,
            (Some((_, dev, ino)), Ok(m)) => m.dev() != *dev || m.ino() != *ino,
            (Some(_), Err(_)) => true,
        };
        if moved {
            if let Some((f, _, _)) = &mut self.file {
                let _ = f.flush();
            }
            self.open();
        }
    }
}

impl Write for Reopening {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.recheck();
        let Some((f, _, _)) = &mut self.file else {
            return Err(std::io::Error::other("access log file is not open"));
        };
        match f.write(buf) {
            Ok(n) => Ok(n),
            Err(e) => {
                if !self.failing {
                    tracing::warn!(path = %self.path.display(), error = %e, "access log write failed; reopening");
                }
                self.failing = true;
                self.file = None;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some((f, _, _)) => f.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_stays_usable_by_others_while_the_writer_runs() {
        let w = LineWriter::stdout();
        w.write("line\n".into());
        wait(w.stats(), 1);
        // Another writer of stdout (the process's own logs) gets the lock.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let locked = std::io::stdout().lock();
            drop(locked);
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
    }

    fn wait(stats: &LineStats, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.written.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn appends_and_follows_rotation() {
        let dir = std::env::temp_dir().join(format!("wp-access-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        std::fs::write(&path, "existing\n").unwrap();
        let w = LineWriter::file(path.to_str().unwrap());
        w.write("one\n".into());
        wait(w.stats(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "existing\none\n");
        // Rotated away: the next line after the recheck goes to a new file at the path.
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(100));
        w.write("two\n".into());
        wait(w.stats(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(
            std::fs::read_to_string(dir.join("access.log.1")).unwrap(),
            "existing\none\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unopenable_file_drops_and_counts() {
        let w = LineWriter::file("/nonexistent-dir/access.log");
        w.write("lost\n".into());
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.stats().dropped.load(Ordering::Relaxed) < 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(w.stats().dropped.load(Ordering::Relaxed), 1);
        assert_eq!(w.stats().written.load(Ordering::Relaxed), 0);
    }
}
