//! Connecting to an endpoint that has more than one address (EDS `additional_addresses`,
//! which istiod writes for a dual-stack pod; a Kubernetes pod's further `podIPs`), as
//! Envoy does (Happy Eyeballs, RFC 8305): the endpoint's own address is tried first, then
//! the others with the address families alternating. The next attempt starts as soon as
//! the running one fails, or [`ATTEMPT_DELAY`] after it started if it has not completed
//! by then; attempts run side by side, the first to connect wins and the others are
//! dropped. When every attempt fails, the last failure is the endpoint's.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

/// How long an attempt runs alone before the next address is tried beside it (Envoy's
/// fixed Happy Eyeballs delay).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(300);

/// The addresses of an endpoint at `primary` whose pod also has `ips`, in the order they
/// are tried: `primary` first, then the other IPs (on `primary`'s port) alternating
/// families, starting with the family `primary` is not in; within a family, in the order
/// given. Only a pod that owns `primary` has further addresses.
pub fn order(primary: SocketAddr, ips: &[std::net::IpAddr]) -> Vec<SocketAddr> {
    if !ips.contains(&primary.ip()) {
        return vec![primary];
    }
    let others = ips
        .iter()
        .filter(|ip| **ip != primary.ip())
        .map(|ip| SocketAddr::new(*ip, primary.port()));
    let (mut same, mut other): (Vec<_>, Vec<_>) =
        others.partition(|a| a.is_ipv4() == primary.is_ipv4());
    same.reverse();
    other.reverse();
    let mut out = vec![primary];
    // Alternate, starting with the other family.
    loop {
        match (other.pop(), same.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Runs `attempt` on `first`, then on each of `rest` in turn (at once when the running
/// attempt failed, after `delay` when it has not completed), until one succeeds; with all
/// failed, the last error.
pub async fn connect<T, E, F, Fut>(
    first: SocketAddr,
    rest: &[SocketAddr],
    delay: Duration,
    mut attempt: F,
) -> Result<T, E>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    if rest.is_empty() {
        return attempt(first).await;
    }
    let mut waiting = rest.iter().copied();
    let mut running = FuturesUnordered::new();
    running.push(attempt(first));
    loop {
        let more = waiting.len() > 0;
        tokio::select! {
            Some(result) = running.next() => match result {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    if let Some(next) = waiting.next() {
                        tracing::debug!(address = %next, "connection attempt failed, trying the next address");
                        running.push(attempt(next));
                    } else if running.is_empty() {
                        return Err(e);
                    }
                }
            },
            _ = tokio::time::sleep(delay), if more => {
                if let Some(next) = waiting.next() {
                    tracing::debug!(address = %next, ?delay, "connection attempt still running, trying the next address beside it");
                    running.push(attempt(next));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_order_starts_with_the_primary_and_alternates_families() {
        let primary: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let ips = [
            ip("10.0.0.1"),
            ip("10.0.0.2"),
            ip("10.0.0.3"),
            ip("fd00::1"),
            ip("fd00::2"),
        ];
        let got: Vec<String> = order(primary, &ips).iter().map(|a| a.to_string()).collect();
        assert_eq!(
            got,
            [
                "10.0.0.1:80",
                "[fd00::1]:80",
                "10.0.0.2:80",
                "[fd00::2]:80",
                "10.0.0.3:80"
            ]
        );
        // An address the workload does not own has no alternatives.
        assert_eq!(order("10.9.9.9:80".parse().unwrap(), &ips).len(), 1);
    }

    /// Runs [`connect`] over addresses whose attempts end after a delay each, with or
    /// without success; returns the winner, the order attempts started in and when.
    async fn run(
        outcomes: &[(u64, bool)],
        delay: Duration,
    ) -> (Result<SocketAddr, SocketAddr>, Vec<(SocketAddr, Duration)>) {
        let addrs: Vec<SocketAddr> = (0..outcomes.len())
            .map(|i| SocketAddr::new(ip("127.0.0.1"), 1000 + i as u16))
            .collect();
        let started = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let log = started.clone();
        let result = connect(addrs[0], &addrs[1..], delay, |a| {
            log.lock().unwrap().push((a, t0.elapsed()));
            let (after, ok) = outcomes[usize::from(a.port() - 1000)];
            async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                if ok {
                    Ok(a)
                } else {
                    Err(a)
                }
            }
        })
        .await;
        let started = started.lock().unwrap().clone();
        (result, started)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_attempt_moves_to_the_next_address_at_once() {
        let (result, started) = run(&[(10, false), (10, true)], ATTEMPT_DELAY).await;
        assert_eq!(result.unwrap().port(), 1001);
        assert_eq!(started[1].1, Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_gets_a_second_beside_it_after_the_delay() {
        // The first hangs for 5 s; the second starts at 300 ms and wins.
        let (result, started) = run(&[(5000, true), (10, true)], ATTEMPT_DELAY).await;
        assert_eq!(result.unwrap().port(), 1001);
        assert_eq!(started.len(), 2);
        assert_eq!(started[1].1, ATTEMPT_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn every_attempt_failing_gives_the_last_error() {
        let (result, started) = run(&[(400, false), (10, false), (10, false)], ATTEMPT_DELAY).await;
        assert_eq!(started.len(), 3);
        // The first is still running when the others fail: its failure comes last.
        assert_eq!(result.unwrap_err().port(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_is_one_attempt() {
        let (result, started) = run(&[(10, false)], ATTEMPT_DELAY).await;
        assert_eq!(result.unwrap_err().port(), 1000);
        assert_eq!(started.len(), 1);
    }
}
