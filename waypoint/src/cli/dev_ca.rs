use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use filters::model::Identity;
use hbone::tls::DevCa;

#[derive(Debug, Args)]
pub struct DevCaArgs {
    /// Output directory: `root-cert.pem`, `root-key.pem`, and `<ns>.<sa>/` per identity.
    #[arg(long)]
    out: PathBuf,
    /// Identities to issue, as `spiffe://<td>/ns/<ns>/sa/<sa>` (repeatable).
    #[arg(long = "identity", required = true)]
    identities: Vec<String>,
}

pub fn run(args: DevCaArgs) -> anyhow::Result<()> {
    let ca = if args.out.join("root-key.pem").exists() {
        DevCa::load(&args.out).context("loading the existing root")?
    } else {
        let ca = DevCa::new("waypoint dev")?;
        ca.write_root(&args.out)?;
        ca
    };
    for raw in &args.identities {
        let id: Identity = raw.parse()?;
        let dir = args
            .out
            .join(format!("{}.{}", id.namespace, id.service_account));
        ca.issue(&id)?.write(&dir)?;
        println!("{id} -> {}", dir.display());
    }
    Ok(())
}
