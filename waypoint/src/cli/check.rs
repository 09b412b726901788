use std::path::PathBuf;

use clap::Args;
use filters::model::NamespacedName;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Local configuration to validate.
    #[arg(long)]
    config: PathBuf,
    /// The waypoint's Gateway as `namespace/name` (default: the only istio-waypoint Gateway).
    #[arg(long)]
    gateway: Option<String>,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
}

/// Validates a configuration without starting anything. Exit status: 0 when everything is
/// accepted, 1 when some route is not (fully) accepted, 2 when the file is invalid.
pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    let gateway = match args.gateway.as_deref().map(|g| g.split_once('/')) {
        Some(Some((ns, name))) => Some(NamespacedName::new(ns, name)),
        Some(None) => anyhow::bail!("--gateway must be namespace/name"),
        None => None,
    };
    let options = filters::SourceOptions {
        gateway,
        trust_domain: args.trust_domain,
        ..Default::default()
    };
    let result = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("cannot read {}: {e}", args.config.display()))
        .and_then(|text| kube_config::parse(&text).map_err(|e| e.to_string()))
        .and_then(|objects| {
            kube_config::translate_with_status(&objects, &options, 1, "check".into())
                .map_err(|e| e.to_string())
        });
    let (snapshot, statuses) = match result {
        Ok(r) => r,
        Err(e) => {
            println!("INVALID {}: {e}", args.config.display());
            std::process::exit(2);
        }
    };
    let served: Vec<&str> = snapshot
        .services()
        .values()
        .filter(|s| s.served)
        .map(|s| s.hostname.as_str())
        .collect();
    println!(
        "waypoint {}: {} services served ({}), {} workloads known",
        snapshot.waypoint().gateway,
        served.len(),
        served.join(", "),
        snapshot.workloads().len()
    );
    let authz = &snapshot.authz();
    let names = |list: &[std::sync::Arc<filters::authz::model::Policy>]| {
        list.iter()
            .map(|p| p.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(policies) = authz.istio() {
        println!(
            "AuthorizationPolicies on the waypoint: [{}]",
            names(&policies.gateway)
        );
        for (svc, list) in &policies.services {
            println!("AuthorizationPolicies on Service {svc}: [{}]", names(list));
        }
    }
    let mut all_ok = true;
    for st in &statuses {
        for line in st.lines() {
            println!("{line}");
        }
        all_ok &= st.parents.iter().all(|p| p.accepted && p.resolved_refs);
    }
    if !all_ok {
        std::process::exit(1);
    }
    Ok(())
}
