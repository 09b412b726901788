//! Prometheus text exposition format (version 0.0.4) helpers.

use std::fmt::Write;

use super::histogram::Histogram;

/// `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Appends `name="value"` pairs, escaping values as the format requires.
pub fn labels(out: &mut String, pairs: &[(&str, &str)]) {
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Writes the `# TYPE` line of a metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample `name{labels} value`.
pub fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Writes the `_bucket`, `_sum` and `_count` samples of a histogram.
pub fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    for (bound, count) in h.cumulative() {
        let le = bound.map_or_else(|| "+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {count}");
    }
    sample(out, &format!("{name}_sum"), labels, h.sum());
    sample(out, &format!("{name}_count"), labels, h.count());
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_label_values() {
        let mut s = String::new();
        super::labels(&mut s, &[("a", "x\"y\\z\n"), ("b", "")]);
        assert_eq!(s, r#"a="x\"y\\z\n",b="""#);
    }
}
