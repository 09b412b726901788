//! Durations as configuration writes them: one parser, two grammars.
//!
//! - [`parse`]: Go's `time.ParseDuration` form, which Istio's protobuf durations in YAML
//!   and JSON also accept (`1.5s`, `1m30s`, `500ms`, `250us`, `0`), and command-line flags;
//! - [`parse_gateway_api`]: the Gateway API's stricter form (GEP-2257: one to four whole
//!   numbers of at most five digits, each with `h`, `m`, `s` or `ms`), as HTTPRoute
//!   timeouts must be written.

use std::time::Duration;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct InvalidDuration {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// One `<number><unit>` component.
struct Part<'a> {
    number: &'a str,
    unit: &'a str,
}

/// Splits `s` into components; `None` with the reason when it is not that shape.
fn parts(s: &str) -> Result<Vec<Part<'_>>, &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or("a number needs a unit (ns, us, ms, s, m, h)")?;
        if n == 0 {
            return Err("expected a number");
        }
        let u = rest[n..]
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .map_or(rest.len(), |i| n + i);
        out.push(Part {
            number: &rest[..n],
            unit: &rest[n..u],
        });
        rest = &rest[u..];
    }
    Ok(out)
}

fn unit_nanos(unit: &str) -> Option<f64> {
    Some(match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => return None,
    })
}

/// Parses a Go-style duration (`1.5s`, `1m30s`, `500ms`, `0`).
pub fn parse(s: &str) -> Result<Duration, InvalidDuration> {
    let bad = |reason| InvalidDuration {
        input: s.to_string(),
        reason,
    };
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let mut nanos = 0f64;
    for p in parts(t).map_err(bad)? {
        let n: f64 = p.number.parse().map_err(|_| bad("not a number"))?;
        let unit = unit_nanos(p.unit).ok_or(bad("unknown unit (ns, us, ms, s, m, h)"))?;
        nanos += n * unit;
    }
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// Parses a Gateway API duration (GEP-2257: `10s`, `500ms`, `1h30m`; no fractions).
pub fn parse_gateway_api(s: &str) -> Result<Duration, InvalidDuration> {
    let bad = |reason| InvalidDuration {
        input: s.to_string(),
        reason,
    };
    let parts = parts(s).map_err(bad)?;
    if parts.len() > 4 {
        return Err(bad("at most four components"));
    }
    let mut total = Duration::ZERO;
    for p in parts {
        if p.number.len() > 5 || !p.number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("each number is a whole number of at most five digits"));
        }
        let n: u64 = p.number.parse().map_err(|_| bad("not a number"))?;
        total += match p.unit {
            "h" => Duration::from_secs(n * 3600),
            "m" => Duration::from_secs(n * 60),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            _ => return Err(bad("unknown unit (h, m, s, ms)")),
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse("1.5s"), Ok(ms(1500)));
        assert_eq!(parse("500ms"), Ok(ms(500)));
        assert_eq!(parse("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse(" 20m "), Ok(ms(1_200_000)));
        for bad in ["", "10", "s", "1x", "1..5s", "-1s", "1s2"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            parse("5d").unwrap_err().to_string(),
            "invalid duration \"5d\": unknown unit (ns, us, ms, s, m, h)"
        );
    }

    #[test]
    fn gateway_api_durations() {
        assert_eq!(parse_gateway_api("10s"), Ok(ms(10_000)));
        assert_eq!(parse_gateway_api("500ms"), Ok(ms(500)));
        assert_eq!(parse_gateway_api("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_gateway_api("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_gateway_api("0s"), Ok(Duration::ZERO));
        for bad in ["", "1.5s", "100000s", "1h1m1s1ms1h", "10us", "10"] {
            assert!(parse_gateway_api(bad).is_err(), "{bad:?} parsed");
        }
    }
}
