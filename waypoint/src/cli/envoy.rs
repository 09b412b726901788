//! Envoy's command line, as pilot-agent starts the proxy: `envoy -c <bootstrap>
//! --drain-time-s 45 --drain-strategy immediate --local-address-ip-version v4
//! --file-flush-interval-msec 1000 --disable-hot-restart --allow-unknown-static-fields
//! [--file-flush-min-size-kb N] [-l warning] [--component-log-level misc:error]
//! [--config-yaml <override>] [--concurrency 2] ...`. The bootstrap (with the
//! `--config-yaml` override merged over it) gives the node (sent to istiod and the SDS
//! server unchanged), the admin address, the xDS and SDS sockets and the static listeners
//! (readiness through the `agent` cluster, Prometheus); the waypoint then runs as
//! `run --xds-address ... --sds-address ...` would. Flags it has no use for are accepted
//! and ignored (logged), as pilot-agent passes several.

use anyhow::Context;
use clap::Parser;

use super::run::RunArgs;
use envoy_types::pb::envoy::config::core::v3::Node;
use xds::ads::static_listeners::StaticListener;

/// What the bootstrap decides beyond `run`'s flags.
#[derive(Debug, Clone)]
pub struct FromBootstrap {
    /// The bootstrap's node, sent to the xDS and SDS servers as it is.
    pub node: Node,
    /// The static HTTP listeners, served instead of `--ready-addr` and `--metrics-addr`.
    pub listeners: Vec<StaticListener>,
}

/// `run`'s arguments, parsed on their own.
#[derive(Debug, Parser)]
#[command(name = "waypoint")]
struct RunOnly {
    #[command(flatten)]
    run: RunArgs,
}

/// Envoy flags that take a value (the rest are switches).
const WITH_VALUE: &[&str] = &[
    "-c",
    "--config-path",
    "--config-yaml",
    "--drain-time-s",
    "--parent-shutdown-time-s",
    "--local-address-ip-version",
    "-l",
    "--log-level",
    "--component-log-level",
    "--concurrency",
    "--service-cluster",
    "--service-node",
    "--service-zone",
    "--drain-strategy",
    "--file-flush-interval-msec",
    "--file-flush-min-size-kb",
    "--stats-tag",
    "--disable-extensions",
    "--base-id-path",
    "--restart-epoch",
    "--base-id",
    "--log-format",
    "--log-path",
    "--mode",
    "--admin-address-path",
    "--socket-path",
    "--socket-mode",
];

/// The parsed Envoy flags the waypoint uses.
#[derive(Debug, Default, PartialEq)]
pub struct EnvoyFlags {
    /// `-c`.
    pub config_path: Option<String>,
    /// `--config-yaml`: a bootstrap override merged over the `-c` file.
    pub config_yaml: Option<String>,
    /// `--drain-time-s`.
    pub drain_time_s: Option<u64>,
    /// `--parent-shutdown-time-s`.
    pub parent_shutdown_time_s: Option<u64>,
    /// `--local-address-ip-version`.
    pub ip_version: Option<String>,
    /// `-l`.
    pub log_level: Option<String>,
    /// `--component-log-level`.
    pub component_log_level: Option<String>,
    /// `--concurrency`.
    pub concurrency: Option<usize>,
    /// Flags accepted but not used.
    pub ignored: Vec<String>,
}

/// Whether `argv` is an Envoy-style invocation (the binary installed as `envoy`, or
/// started with `-c`).
pub fn is_envoy_invocation(argv: &[String]) -> bool {
    let name = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or_default();
    name == "envoy"
        || argv
            .get(1)
            .is_some_and(|a| a == "-c" || a == "--config-path" || a.starts_with("--config-path="))
}

/// Parses Envoy's flags; unknown ones are kept in `ignored`.
pub fn parse_flags(argv: &[String]) -> anyhow::Result<EnvoyFlags> {
    let mut f = EnvoyFlags::default();
    let mut i = 1;
    while i < argv.len() {
        let arg = &argv[i];
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let takes_value = WITH_VALUE.contains(&name.as_str());
        let value = if takes_value && inline.is_none() {
            i += 1;
            Some(
                argv.get(i)
                    .cloned()
                    .with_context(|| format!("{name} needs a value"))?,
            )
        } else {
            inline
        };
        let num = |v: &Option<String>| -> anyhow::Result<u64> {
            v.as_deref()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("{name}: not a number"))
        };
        match name.as_str() {
            "-c" | "--config-path" => f.config_path = value,
            "--config-yaml" => f.config_yaml = value,
            "--drain-time-s" => f.drain_time_s = Some(num(&value)?),
            "--parent-shutdown-time-s" => f.parent_shutdown_time_s = Some(num(&value)?),
            "--local-address-ip-version" => f.ip_version = value,
            "-l" | "--log-level" => f.log_level = value,
            "--component-log-level" => f.component_log_level = value,
            "--concurrency" => f.concurrency = Some(num(&value)? as usize),
            _ => f.ignored.push(match value {
                Some(v) => format!("{name}={v}"),
                None => name,
            }),
        }
        i += 1;
    }
    Ok(f)
}

/// Envoy's log level names as a tracing filter (unknown or absent: `info`).
fn log_filter(level: Option<&str>) -> &'static str {
    level
        .and_then(crate::admin::logging::filter_for)
        .unwrap_or("info")
}

/// Runs the waypoint from Envoy's command line.
pub fn run(argv: Vec<String>) -> anyhow::Result<()> {
    let flags = parse_flags(&argv)?;
    super::init_logging(log_filter(flags.log_level.as_deref()));
    if !flags.ignored.is_empty() {
        tracing::info!(flags = ?flags.ignored, "Envoy flags accepted and not used");
    }
    let path = flags
        .config_path
        .clone()
        .context("-c <bootstrap> is required")?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading bootstrap {path}"))?;
    let b = xds::ads::bootstrap::parse_with_override(&text, flags.config_yaml.as_deref())?;
    let xds_address = b
        .xds
        .clone()
        .context("the bootstrap has no xds-grpc cluster")?;
    let sds_address = b
        .sds
        .clone()
        .context("the bootstrap has no sds-grpc cluster")?;
    let gateway = b.gateway();
    let any = if flags.ip_version.as_deref() == Some("v6") {
        "[::]"
    } else {
        "0.0.0.0"
    };
    let env = |k: &str| std::env::var(k).ok();
    let mut args: Vec<String> = vec!["waypoint".into()];
    let mut push = |k: &str, v: String| {
        args.push(k.to_string());
        args.push(v);
    };
    push("--xds-address", xds_address.to_string());
    push("--sds-address", sds_address.to_string());
    push("--gateway", gateway.to_string());
    push("--node-id", b.node.id.clone());
    push(
        "--admin-addr",
        b.admin
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1:15000".into()),
    );
    // The HBONE listener is connect_terminate's (always 15008 in Istio); an override for
    // running beside a real ztunnel or in tests.
    push(
        "--hbone-addr",
        env("WAYPOINT_HBONE_ADDR").unwrap_or_else(|| format!("{any}:15008")),
    );
    if let Some(td) = env("TRUST_DOMAIN") {
        push("--trust-domain", td);
    }
    if let Some(c) = env("CLUSTER_ID") {
        push("--cluster-id", c);
    }
    if let Some(n) = flags.concurrency.filter(|n| *n > 0) {
        push("--concurrency", n.to_string());
    }
    if let Some(d) = flags.drain_time_s {
        push("--drain-timeout", d.max(1).to_string());
    }
    tracing::info!(
        bootstrap = %path,
        %gateway,
        node = %b.node.id,
        node_cluster = %b.node.cluster,
        override = flags.config_yaml.is_some(),
        listeners = ?b.listeners.iter().map(|l| l.address).collect::<Vec<_>>(),
        "starting from Envoy's command line"
    );
    let mut parsed = RunOnly::try_parse_from(&args).context("translating Envoy's flags")?;
    parsed.run.bootstrap = Some(FromBootstrap {
        node: b.node,
        listeners: b.listeners,
    });
    super::run::run(parsed.run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn reads_pilot_agents_flags_and_tolerates_the_rest() {
        let a = argv("/usr/local/bin/envoy -c etc/istio/proxy/envoy-rev.json --drain-time-s 45 --drain-strategy immediate --local-address-ip-version v4 --file-flush-interval-msec 1000 --file-flush-min-size-kb 64 --disable-hot-restart --allow-unknown-static-fields -l warning --component-log-level misc:error --skip-deprecated-logs --enable-core-dump --config-yaml {} --concurrency 2 --parent-shutdown-time-s=60");
        assert!(is_envoy_invocation(&a));
        let f = parse_flags(&a).unwrap();
        assert_eq!(
            f.config_path.as_deref(),
            Some("etc/istio/proxy/envoy-rev.json")
        );
        assert_eq!(f.drain_time_s, Some(45));
        assert_eq!(f.parent_shutdown_time_s, Some(60));
        assert_eq!(f.concurrency, Some(2));
        assert_eq!(f.log_level.as_deref(), Some("warning"));
        assert_eq!(f.component_log_level.as_deref(), Some("misc:error"));
        assert!(f.ignored.contains(&"--disable-hot-restart".to_string()));
        assert!(f
            .ignored
            .contains(&"--file-flush-min-size-kb=64".to_string()));
        assert_eq!(f.config_yaml.as_deref(), Some("{}"));
        assert!(f
            .ignored
            .contains(&"--drain-strategy=immediate".to_string()));
        assert!(!is_envoy_invocation(&argv("waypoint run --config x")));
        assert!(parse_flags(&argv("envoy --concurrency")).is_err());
    }
}
