//! `conformance`: runs the Gateway API mesh conformance suite against a waypoint binary and
//! prints the results table.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut suite = conformance::Suite {
        waypoint: PathBuf::from("target/debug/waypoint"),
        testdata: PathBuf::from("../shared/testdata/gateway-api"),
        cases: PathBuf::from("conformance/cases/mesh"),
        base: "mesh/manifests.yaml".into(),
        filter: None,
        profile: conformance::Profile::Mesh,
    };
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--waypoint" => suite.waypoint = value()?.into(),
            "--testdata" => suite.testdata = value()?.into(),
            "--cases" => suite.cases = value()?.into(),
            "--run" => suite.filter = Some(value()?),
            "--profile" => match value()?.as_str() {
                "mesh" => suite.profile = conformance::Profile::Mesh,
                "gateway" => {
                    suite.profile = conformance::Profile::Gateway;
                    suite.base = "gateway/base-manifests.yaml".into();
                }
                other => anyhow::bail!("unknown profile {other}; use mesh or gateway"),
            },
            other => anyhow::bail!(
                "unknown argument {other}; use --waypoint, --testdata, --cases, --run, --profile"
            ),
        }
    }
    let report = tokio::runtime::Runtime::new()?.block_on(conformance::run_suite(&suite))?;
    print!("{report}");
    if !report.failures().is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
