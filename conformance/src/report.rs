//! The results table.

use std::fmt;

/// The result of one test.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Upstream ShortName.
    pub test: String,
    /// Upstream features.
    pub features: Vec<String>,
    /// Passed, failed or skipped.
    pub result: Result<(), String>,
    /// Cases run.
    pub cases: usize,
    /// Cases not run, with the reason.
    pub skipped: Vec<String>,
}

/// Every test's outcome.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// In run order.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Tests that failed.
    pub fn failures(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.result.is_err()).collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| test | features | result | cases | reason |")?;
        writeln!(f, "| --- | --- | --- | --- | --- |")?;
        for o in &self.outcomes {
            let (result, reason) = match &o.result {
                Ok(()) => ("pass", o.skipped.join("; ")),
                Err(e) => ("FAIL", e.replace('|', "\\|")),
            };
            writeln!(
                f,
                "| {} | {} | {result} | {} | {reason} |",
                o.test,
                o.features.join(", "),
                o.cases
            )?;
        }
        let failed = self.failures().len();
        writeln!(
            f,
            "\n{} passed, {failed} failed",
            self.outcomes.len() - failed
        )
    }
}
