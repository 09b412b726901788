//! The benchmark's Markdown report: per-scenario medians over rounds, the memory and
//! handshake measures, the relay floor, and the CPU ratios (waypoint/nginx, istiod/nginx,
//! istiod/waypoint and, in an A/B run, waypoint/baseline).

use std::time::Duration;

use serde::Serialize;
use testkit::loadgen::LoadReport;

use super::{BenchArgs, SCENARIOS};

/// One measured phase: a scenario, response size and load mode in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `direct`, `relay`, `tcp`, `waypoint`, `istiod`, `baseline` or `nginx`.
    pub scenario: String,
    /// Response size, bytes.
    pub size: usize,
    /// `fixed` or `saturation`.
    pub mode: String,
    /// What the load generator saw.
    pub report: LoadReport,
    /// The proxy's CPU per request (none for `direct`).
    pub cpu_us_per_req: Option<f64>,
}

/// The median (the upper one for an even count); NaN when empty.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The handshake measurements: over sockets through the waypoint, and the in-memory floor.
pub struct Handshakes {
    /// Handshakes per second achieved.
    pub rate: f64,
    /// Waypoint CPU seconds over the handshake phase.
    pub cpu: f64,
    /// Server CPU per handshake in memory ([`super::tls_floor`]).
    pub floor: Option<Duration>,
}

/// The record-crypto floor ([`super::record_crypto`]): per response size, and one 16 KiB
/// plaintext copy.
pub struct RecordFloor {
    /// The cipher suite the HBONE handshake negotiated (its AEAD is the one timed).
    pub suite: String,
    /// Per response size: seal + open of the response and of a request head, or why not.
    pub per_size: Vec<(usize, Result<super::record_crypto::Measured, String>)>,
    /// One 16 KiB `memcpy`, or why not.
    pub copy: Result<super::record_crypto::Measured, String>,
}

impl RecordFloor {
    /// Nothing measured, for `why`.
    pub fn unmeasured(why: String) -> Self {
        Self {
            suite: "-".into(),
            per_size: Vec::new(),
            copy: Err(why),
        }
    }

    /// Record crypto per request at `size`, µs (NaN when unmeasured).
    fn crypto_us(&self, size: usize) -> f64 {
        self.per_size
            .iter()
            .find(|(s, _)| *s == size)
            .and_then(|(_, m)| m.as_ref().ok())
            .map_or(f64::NAN, |m| m.per_round.as_secs_f64() * 1e6)
    }
}

/// The rows of one scenario, response size and load mode, one per round.
fn pick<'a>(rows: &'a [Row], scenario: &str, size: usize, mode: &str) -> Vec<&'a Row> {
    rows.iter()
        .filter(|r| r.scenario == scenario && r.size == size && r.mode == mode)
        .collect()
}

/// The median over rounds of the proxy's CPU per request; NaN when unmeasured.
fn median_cpu(rows: &[Row], scenario: &str, size: usize, mode: &str) -> f64 {
    median(
        pick(rows, scenario, size, mode)
            .iter()
            .map(|r| r.cpu_us_per_req.unwrap_or(f64::NAN))
            .collect(),
    )
}

/// The median over rounds of the fixed-rate p99 latency, µs.
fn median_fixed_p99(rows: &[Row], scenario: &str, size: usize) -> f64 {
    median(
        pick(rows, scenario, size, "fixed")
            .iter()
            .map(|r| r.report.p99_us as f64)
            .collect(),
    )
}

/// The opening paragraph: how the run was set up.
fn push_intro(md: &mut String, a: &BenchArgs, duration: Duration) {
    md.push_str(&format!(
        "# waypoint benchmark\n\nOne run on this machine: {} round(s), {:.1}s phases, fixed rate {} req/s over 4 HTTP/1.1 tunnels, saturation = closed loop over 8 tunnels. Proxy pinned to core {}, load generator (one thread, with the fake destination and the echo apps) to core {}. Medians over rounds. Absolute numbers are context on a shared, noisy machine; compare within the run.\n\n",
        a.rounds, duration.as_secs_f64(), a.rate, a.proxy_core, a.load_core
    ));
}

/// The latency table: one line of medians per scenario, response size and load mode.
fn push_latency_table(md: &mut String, rows: &[Row]) {
    md.push_str("| scenario | response | mode | req/s | errors | p50 µs | p90 µs | p99 µs | p99.9 µs | proxy CPU µs/req |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for size in [1024usize, 16384] {
        for mode in ["fixed", "saturation"] {
            for scenario in SCENARIOS {
                let rs = pick(rows, scenario, size, mode);
                if rs.is_empty() {
                    continue;
                }
                let m = |f: &dyn Fn(&Row) -> f64| median(rs.iter().map(|r| f(r)).collect());
                let cpu = m(&|r| r.cpu_us_per_req.unwrap_or(f64::NAN));
                md.push_str(&format!(
                    "| {scenario} | {} KiB | {mode} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |\n",
                    size / 1024,
                    m(&|r| r.report.rps),
                    m(&|r| r.report.errors as f64),
                    m(&|r| r.report.p50_us as f64),
                    m(&|r| r.report.p90_us as f64),
                    m(&|r| r.report.p99_us as f64),
                    m(&|r| r.report.p999_us as f64),
                    if cpu.is_nan() { "-".to_string() } else { format!("{cpu:.1}") }
                ));
            }
        }
    }
}

/// The measures table's header and the waypoint's added p99 over direct, per size.
fn push_added_latency(md: &mut String, a: &BenchArgs, rows: &[Row]) {
    md.push_str("\n| measure | value |\n| --- | --- |\n");
    for size in [1024usize, 16384] {
        let v = median_fixed_p99(rows, "waypoint", size) - median_fixed_p99(rows, "direct", size);
        if v.is_finite() {
            md.push_str(&format!(
                "| added p99 over direct at {} req/s, {} KiB | {v:.0} µs |\n",
                a.rate,
                size / 1024
            ));
        }
    }
}

/// The memory measures: peak RSS, and RSS with idle tunnels unless skipped.
fn push_memory(md: &mut String, a: &BenchArgs, m: &Memory) {
    let mb = |kib: u64| kib as f64 / 1024.0;
    md.push_str(&format!(
        "| waypoint RSS at {:.0} req/s (VmRSS at the end of each fixed-rate phase, the most over rounds) | {:.1} MB |\n| waypoint peak RSS up to its last fixed-rate phase (VmHWM: the most resident at any moment until then, the saturation phases of earlier rounds included) | {:.1} MB |\n| waypoint peak RSS over the whole run | {:.1} MB |\n",
        a.rate,
        mb(m.rss_fixed_kib),
        mb(m.peak_fixed_kib),
        mb(m.peak_all_kib),
    ));
    if !a.no_idle {
        md.push_str(&format!(
            "| waypoint RSS with {} idle tunnels (before: {:.1} MB) | {:.1} MB |\n",
            a.idle_tunnels,
            mb(m.rss_before_idle),
            mb(m.rss_idle)
        ));
    }
}

/// The waypoint's memory over the run, KiB.
pub struct Memory {
    /// Its high-water mark (VmHWM) after its last fixed-rate phase.
    pub peak_fixed_kib: u64,
    /// The most it had resident (VmRSS) at the end of one of its fixed-rate phases.
    pub rss_fixed_kib: u64,
    /// Its high-water mark after all rounds.
    pub peak_all_kib: u64,
    /// Resident before the idle tunnels were opened.
    pub rss_before_idle: u64,
    /// Resident with the idle tunnels open.
    pub rss_idle: u64,
}

/// The handshake measures: rate, proxy CPU per handshake and the in-memory floor.
fn push_handshakes(md: &mut String, hs: &Handshakes, duration: Duration) {
    let hs_cpu_us = if hs.rate > 0.0 {
        hs.cpu * 1e6 / (hs.rate * duration.as_secs_f64())
    } else {
        f64::NAN
    };
    let floor_us = hs.floor.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
    md.push_str(&format!(
        "| HBONE mTLS handshakes per second achieved (4 sequential clients on the load core, full handshakes) | {:.0} |\n| proxy CPU per handshake | {:.0} µs |\n| HBONE mTLS handshakes per proxy core-second (1 s / proxy CPU per handshake) | {:.0} |\n| floor: the listener's TLS server handshake alone, in memory (rustls + ring, thread CPU) | {:.0} µs, at most {:.0} per core-second |\n",
        hs.rate,
        hs_cpu_us,
        1e6 / hs_cpu_us,
        floor_us,
        1e6 / floor_us,
    ));
}

/// The relay floor: what is left for TLS, HTTP/2 and HTTP once the kernel and the
/// runtime have taken their share of each request; of that, at least the record crypto.
fn push_relay_floor(md: &mut String, rows: &[Row], crypto: &RecordFloor) {
    for size in [1024usize, 16384] {
        for mode in ["fixed", "saturation"] {
            let r = median_cpu(rows, "relay", size, mode);
            if r.is_finite() {
                let c = crypto.crypto_us(size);
                let mut above = String::new();
                for scenario in ["tcp", "waypoint", "istiod"] {
                    let w = median_cpu(rows, scenario, size, mode);
                    if w.is_finite() {
                        above.push_str(&format!("; {scenario} {:.1} µs above it", w - r));
                        if c.is_finite() {
                            above.push_str(&format!(
                                ", of which at least {c:.1} µs is record crypto"
                            ));
                        }
                    }
                }
                md.push_str(&format!(
                    "| floor: a byte relay on the proxy core (no TLS, no HTTP), {} KiB, {mode} | {r:.1} µs per request{above} |\n",
                    size / 1024,
                ));
            }
        }
    }
}

/// The HBONE transport floor: the waypoint relaying the requests as TCP (both legs' TLS
/// and HTTP/2, no HTTP), and how much the HTTP path adds to it.
fn push_transport_floor(md: &mut String, rows: &[Row]) {
    for size in [1024usize, 16384] {
        for mode in ["fixed", "saturation"] {
            let t = median_cpu(rows, "tcp", size, mode);
            if !t.is_finite() {
                continue;
            }
            let mut above = String::new();
            for scenario in ["waypoint", "istiod"] {
                let w = median_cpu(rows, scenario, size, mode);
                if w.is_finite() {
                    above.push_str(&format!("; {scenario} {:.1} µs above it", w - t));
                }
            }
            md.push_str(&format!(
                "| floor: the waypoint's HBONE transport (scenario tcp: the same requests relayed as bytes through a port declared TCP, TLS and HTTP/2 on both legs, no HTTP), {} KiB, {mode} | {t:.1} µs per request{above} |\n",
                size / 1024,
            ));
        }
    }
}

/// The record-crypto floor per response size and the 16 KiB copy.
fn push_record_floor(md: &mut String, f: &RecordFloor) {
    for (size, m) in &f.per_size {
        let value = match m {
            Ok(m) => format!(
                "{:.2} µs per request ({} rounds)",
                m.per_round.as_secs_f64() * 1e6,
                m.rounds
            ),
            Err(why) => format!("not measured: {why}"),
        };
        md.push_str(&format!(
            "| floor: TLS record crypto of a proxy terminating TLS on both sides, {} KiB (seal + open of the response and of a {}-byte request head; {}, ring, on the proxy core) | {value} |\n",
            size / 1024,
            super::record_crypto::REQUEST_HEAD,
            f.suite,
        ));
    }
    let value = match &f.copy {
        Ok(m) => format!(
            "{:.2} µs ({} rounds)",
            m.per_round.as_secs_f64() * 1e6,
            m.rounds
        ),
        Err(why) => format!("not measured: {why}"),
    };
    md.push_str(&format!(
        "| one plaintext copy of 16 KiB (memcpy between two buffers hot in cache, on the proxy core; each copy of a body counts against the 16 KiB target) | {value} |\n"
    ));
}

/// Allocations per request, counted ([`super::allocations`]).
fn push_allocations(md: &mut String, counted: &[(&str, Result<f64, String>)]) {
    for (scenario, n) in counted {
        let value = match n {
            Ok(n) => format!("{n:.1}"),
            Err(why) => format!("not measured: {why}"),
        };
        md.push_str(&format!(
            "| allocations per request, {scenario} (counted: sequential HTTP/1.1 requests on one tunnel, 1 KiB) | {value} |\n"
        ));
    }
}

/// The CPU-per-request ratios between proxies, where both sides were measured.
fn push_cpu_ratios(md: &mut String, rows: &[Row]) {
    for (one, other) in [
        ("waypoint", "nginx"),
        ("tcp", "nginx"),
        ("istiod", "nginx"),
        ("istiod", "waypoint"),
        ("waypoint", "baseline"),
    ] {
        for size in [1024usize, 16384] {
            for mode in ["fixed", "saturation"] {
                let w = median_cpu(rows, one, size, mode);
                let n = median_cpu(rows, other, size, mode);
                if w.is_finite() && n.is_finite() && n > 0.0 {
                    md.push_str(&format!(
                        "| CPU per request {one}/{other}, {} KiB, {mode} | {:.2}x |\n",
                        size / 1024,
                        w / n
                    ));
                }
            }
        }
    }
}

/// The whole Markdown report: setup, latency table, measures, floors, ratios, peer note.
#[allow(clippy::too_many_arguments)]
pub fn render(
    a: &BenchArgs,
    rows: &[Row],
    memory: &Memory,
    hs: &Handshakes,
    allocations: &[(&str, Result<f64, String>)],
    record_floor: &RecordFloor,
    duration: Duration,
    peer_note: &str,
) -> String {
    let mut md = String::new();
    push_intro(&mut md, a, duration);
    push_latency_table(&mut md, rows);
    push_added_latency(&mut md, a, rows);
    push_memory(&mut md, a, memory);
    if !a.no_handshakes {
        push_handshakes(&mut md, hs, duration);
    }
    push_relay_floor(&mut md, rows, record_floor);
    push_transport_floor(&mut md, rows);
    push_record_floor(&mut md, record_floor);
    push_allocations(&mut md, allocations);
    push_cpu_ratios(&mut md, rows);
    md.push_str(&format!("\n{peer_note}\n"));
    md
}
