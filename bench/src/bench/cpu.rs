//! The CPU time a process has used, from `/proc`.

/// CPU time of `pid` (all its threads), seconds: the scheduler's nanosecond count per
/// thread (`/proc/<pid>/task/*/schedstat`), else utime + stime from `/proc/<pid>/stat`,
/// which counts in clock ticks (10 ms): at 1000 req/s over 5 s that is 2 µs per request,
/// too coarse for the fixed-rate rows.
pub fn cpu_seconds(pid: u32) -> f64 {
    schedstat_seconds(pid).unwrap_or_else(|| stat_seconds(pid))
}

/// The sum of the first `schedstat` field (time on CPU, ns) over the process's threads.
fn schedstat_seconds(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    (ns > 0).then_some(ns as f64 / 1e9)
}

/// utime + stime of `pid`, seconds.
fn stat_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is index 0, utime 11, stime 12.
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_time_counts_this_process_in_nanoseconds_and_agrees_with_ticks() {
        let pid = std::process::id();
        let before = schedstat_seconds(pid).expect("schedstat readable");
        // Burn about 50 ms of CPU on this thread (bounded by time).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = schedstat_seconds(pid).expect("schedstat readable");
        assert!(after - before >= 0.03, "{before} -> {after}");
        // The tick count is the same time, coarser (10 ms ticks, sampled).
        let ticks = stat_seconds(pid);
        assert!(
            (after - ticks).abs() < 0.5,
            "schedstat {after} vs ticks {ticks}"
        );
    }
}
