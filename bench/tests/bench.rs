//! `waypoint-bench bench` end to end, over real sockets: the byte-relay floor and the
//! xDS-configured (`istiod`) scenario carry traffic without errors and report their CPU.
//! No timing is asserted (the machine is shared; the benchmark is not a test).

use std::process::Command;

/// The cells of the report row for `scenario`, 1 KiB, fixed rate.
fn row(md: &str, scenario: &str) -> Vec<String> {
    let prefix = format!("| {scenario} | 1 KiB | fixed |");
    let line = md
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {scenario} row in:\n{md}"));
    line.split('|').map(|c| c.trim().to_string()).collect()
}

#[test]
fn the_relay_floor_and_the_istiod_scenario_carry_traffic_and_report_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.md");
    let status = Command::new(env!("CARGO_BIN_EXE_waypoint-bench"))
        .args([
            "--log-level",
            "warn",
            "bench",
            "--quick",
            "--scenarios",
            "relay,waypoint,istiod",
            "--sizes",
            "1024",
            "--modes",
            "fixed",
            "--no-idle",
            "--no-handshakes",
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "bench exited with {status}");
    let md = std::fs::read_to_string(&out).unwrap();
    for scenario in ["relay", "istiod"] {
        // | scenario | response | mode | req/s | errors | p50 | p90 | p99 | p99.9 | CPU |
        let cells = row(&md, scenario);
        let rps: f64 = cells[4].parse().unwrap();
        assert!(rps > 0.0, "{scenario}: {cells:?}");
        assert_eq!(cells[5], "0", "{scenario} had errors: {cells:?}");
        let cpu: f64 = cells[10]
            .parse()
            .unwrap_or_else(|_| panic!("{scenario} has no CPU figure: {cells:?}"));
        assert!(cpu > 0.0, "{scenario}: {cells:?}");
    }
    assert!(
        md.contains("| floor: a byte relay on the proxy core (no TLS, no HTTP), 1 KiB, fixed |"),
        "{md}"
    );
    assert!(
        md.contains("| CPU per request istiod/waypoint, 1 KiB, fixed |"),
        "{md}"
    );
    // The record-crypto floor, with the suite the HBONE handshake negotiated (rustls with
    // ring's default suites: AES-256-GCM first), and its share of the distance to the relay.
    let crypto = md
        .lines()
        .find(|l| l.starts_with("| floor: TLS record crypto") && l.contains(", 1 KiB ("))
        .unwrap_or_else(|| panic!("no record-crypto row: {md}"));
    assert!(crypto.contains("TLS13_AES_256_GCM_SHA384"), "{crypto}");
    let us = |line: &str| -> f64 {
        let value = line
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap()
            .trim();
        value.split(' ').next().unwrap().parse().unwrap()
    };
    assert!(us(crypto) > 0.0, "{crypto}");
    let relay = md
        .lines()
        .find(|l| l.starts_with("| floor: a byte relay") && l.contains("1 KiB, fixed"))
        .unwrap();
    assert!(
        relay.contains("waypoint") && relay.contains("µs is record crypto"),
        "{relay}"
    );
    let copy = md
        .lines()
        .find(|l| l.starts_with("| one plaintext copy of 16 KiB"))
        .unwrap_or_else(|| panic!("no copy row: {md}"));
    assert!(us(copy) > 0.0, "{copy}");
}
