//! `waypoint explain`: why a request gets its answer, step by step, from a configuration
//! file (offline) or from a running waypoint's admin API (`--admin`, the live snapshot,
//! istiod's included).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use filters::explain::{Explanation, Query, Verdict};
use filters::model::NamespacedName;

/// Exit status when the query or the configuration is invalid, or the admin API cannot
/// be reached (the verdicts use 0 to 4, see [`Verdict::exit_code`]).
const EXIT_INVALID: i32 = 5;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Local configuration (Kubernetes YAML) to explain against.
    #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
    config: Option<PathBuf>,
    /// A running waypoint's admin address (`127.0.0.1:15000`): explain against its live
    /// configuration.
    #[arg(long)]
    admin: Option<String>,
    /// With --config: the waypoint's Gateway as `namespace/name` (default: the only
    /// istio-waypoint Gateway).
    #[arg(long)]
    gateway: Option<String>,
    /// With --config: SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The client's identity: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    #[arg(long)]
    from: String,
    /// The client's IP (`source.ip`, `ipBlocks`).
    #[arg(long)]
    source_ip: Option<std::net::IpAddr>,
    /// A request header, `name=value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// A JWT, sent as `Authorization: Bearer <token>`.
    #[arg(long)]
    jwt: Option<String>,
    /// The CONNECT authority (`VIP:port` or `podIP:port`) instead of resolving the URL's
    /// host to a Service.
    #[arg(long)]
    authority: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    /// The request method.
    method: String,
    /// The request URL, `http://<service>[.<ns>][:port]/path?query`.
    url: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Explains the request and exits with its verdict's status: 0 allowed, 1 denied (401 or
/// 403), 2 not routed (no Service at the authority, no route, no usable backend), 3 an
/// ext_authz provider decides, 4 the port is not HTTP, 5 invalid query or configuration.
pub fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let explanation = match explain(&args) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("waypoint explain: {e}");
            std::process::exit(EXIT_INVALID);
        }
    };
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&explanation)? + "\n",
        Output::Text => render(&explanation),
    };
    // A closed pipe (`| head`) is not an error of the explanation: the status still is.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    std::process::exit(explanation.answer.verdict.exit_code());
}

fn query(args: &ExplainArgs) -> Result<Query, String> {
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once('=')
            .or_else(|| h.split_once(':'))
            .ok_or_else(|| format!("--header {h:?}: expected name=value"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    if let Some(t) = &args.jwt {
        headers.push(("authorization".into(), format!("Bearer {t}")));
    }
    Ok(Query {
        from: args.from.clone(),
        method: Some(args.method.to_ascii_uppercase()),
        url: args.url.clone(),
        headers,
        authority: args.authority.clone(),
        source_ip: args.source_ip,
    })
}

fn explain(args: &ExplainArgs) -> Result<Explanation, String> {
    let query = query(args)?;
    match (&args.admin, &args.config) {
        (Some(admin), _) => remote(admin, &query),
        (None, Some(config)) => offline(args, config, &query),
        (None, None) => Err("give --config or --admin".into()),
    }
}

/// Explains against the configuration file, translated as `waypoint run` translates it.
fn offline(args: &ExplainArgs, config: &PathBuf, query: &Query) -> Result<Explanation, String> {
    let gateway = match args.gateway.as_deref().map(|g| g.split_once('/')) {
        Some(Some((ns, name))) => Some(NamespacedName::new(ns, name)),
        Some(None) => return Err("--gateway must be namespace/name".into()),
        None => None,
    };
    let options = filters::SourceOptions {
        gateway,
        trust_domain: args.trust_domain.clone(),
        ..Default::default()
    };
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let objects = kube_config::parse(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let (snapshot, _) = kube_config::translate_with_status(
        &objects,
        &options,
        1,
        format!("file:{}", config.display()),
    )
    .map_err(|e| format!("{}: {e}", config.display()))?;
    let snapshot = std::sync::Arc::new(snapshot);
    let input = query.input(&snapshot).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(runtime.block_on(filters::explain::explain(snapshot, input)))
}

/// Asks a running waypoint's admin API (`POST /explain`).
fn remote(admin: &str, query: &Query) -> Result<Explanation, String> {
    let body = serde_json::to_vec(query).map_err(|e| e.to_string())?;
    let mut stream = TcpStream::connect(admin).map_err(|e| format!("{admin}: {e}"))?;
    let timeout = Some(Duration::from_secs(10));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST /explain HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&body))
        .map_err(|e| format!("{admin}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("{admin}: {e}"))?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{admin}: malformed HTTP response"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let body = &response[split + 4..];
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!(
            "{admin}/explain answered {status}: {}",
            String::from_utf8_lossy(body).trim()
        ));
    }
    serde_json::from_slice(body).map_err(|e| format!("{admin}/explain: {e}"))
}

/// The explanation as numbered steps and a final answer.
fn render(e: &Explanation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "request: {}", e.request);
    let _ = writeln!(out, "config:  {}", e.config);
    for (i, s) in e.steps.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>3}. {:<14} {}: {}",
            i + 1,
            s.stage.as_str(),
            s.subject,
            s.outcome
        );
        if let Some(d) = &s.detail {
            let _ = writeln!(out, "     {:<14} {d}", "");
        }
    }
    let a = &e.answer;
    let what = match (a.verdict, a.status, &a.backend) {
        (Verdict::ProviderDecides, _, _) => {
            "the CUSTOM ext_authz provider decides; if it allows, the steps above follow".into()
        }
        (_, None, Some(b)) => format!("forwarded to {b} (the backend's status)"),
        (_, Some(s), _) => format!("{s} ({})", a.details),
        (_, None, None) => a.details.clone(),
    };
    let verdict = serde_json::to_value(a.verdict)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let _ = writeln!(out, "answer:  {verdict}: {what}");
    if let Some(r) = &a.route {
        let _ = writeln!(out, "route:   {r}");
    }
    out
}
