//! `sam status`: where the group stands, and each server's reachability and lag.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use sam_core::{Alarms, Pid, Seq};
use sam_node::config::ClusterConfig;
use sam_node::launch::member_spec;
use sam_node::node::{Event, Node, Progress};
use serde_json::json;

/// Print the epoch, the sequencer, the highest committed number, the advertised checkpoint,
/// and for each server its roles, address, reachability, lag, (for a local cluster) pid and
/// where it serves metrics.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  sam status                                # epoch, sequencer, and each server's lag, alarms, metrics\n  sam status --json | jq .servers"
)]
pub struct StatusArgs {
    #[command(flatten)]
    config: crate::config_arg::ConfigArg,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// How long to listen for the sequencer and the servers' answers, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    wait_ms: u64,
}

/// Asks every server and prints what it learned.
pub fn execute(args: StatusArgs) -> Result<std::process::ExitCode> {
    let config_path = args.config.path()?;
    let cluster = ClusterConfig::load(&config_path)?;
    let spec = member_spec(&cluster, rand::random(), false)?;
    let wait = Duration::from_millis(args.wait_ms);
    let (progress, answers) = crate::runtime()?.block_on(async {
        let mut node = Node::start(spec).await.context("starting a member")?;
        let answers = ask(&mut node, &cluster, wait).await?;
        let progress = node.progress().await?;
        node.stop().await?;
        anyhow::Ok((progress, answers))
    })?;
    let pids = local_pids(&config_path);
    let report = report(&cluster, progress, &answers, &pids);
    if args.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    let reachable = answers.len();
    Ok(std::process::ExitCode::from(u8::from(reachable == 0)))
}

/// Pings every server, again every 100 ms, and collects the answers until every server and
/// the sequencer's heartbeat were heard, or `wait` passed.
/// A server's answer: how far it is, and the alarms it raises.
type Answer = (Seq, Alarms);

async fn ask(node: &mut Node, cluster: &ClusterConfig, wait: Duration) -> Result<HashMap<Pid, Answer>> {
    let start = Instant::now();
    let mut answers = HashMap::new();
    let mut next_ping = start;
    while start.elapsed() < wait {
        let heard = node.progress().await?.is_some_and(|p| p.sequencer.is_some());
        if heard && answers.len() == cluster.servers.len() {
            break;
        }
        if Instant::now() >= next_ping {
            for server in cluster.servers.iter().filter(|s| !answers.contains_key(&s.id)) {
                node.ping(server.id, server.id.0).await?;
            }
            next_ping += Duration::from_millis(100);
        }
        let left = wait.saturating_sub(start.elapsed()).min(Duration::from_millis(100));
        let event = tokio::time::timeout(left, node.next_event()).await;
        if let Ok(Some(Event::Pong { from, committed, alarms, .. })) = event {
            answers.insert(from, (committed, alarms));
        }
    }
    Ok(answers)
}

/// The process ids `sam local up` wrote beside the configuration, in server order.
fn local_pids(config: &Path) -> Vec<Option<u32>> {
    let file = config.parent().map(|d| d.join("pids"));
    let text = file.and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
    text.lines().map(|l| l.trim().parse().ok()).collect()
}

fn report(
    cluster: &ClusterConfig,
    progress: Option<Progress>,
    answers: &HashMap<Pid, Answer>,
    pids: &[Option<u32>],
) -> serde_json::Value {
    let committed = progress.map_or(0, |p| p.committed.0);
    let sequencer = progress.and_then(|p| p.sequencer);
    let servers: Vec<serde_json::Value> = cluster
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut roles: Vec<&str> = s.roles.iter().map(|r| r.name()).collect();
            if sequencer == Some(s.id) {
                roles.insert(0, "sequencer");
            }
            let answer = answers.get(&s.id);
            json!({
                "id": s.id.0,
                "roles": roles,
                "address": s.address.to_string(),
                "reachable": answer.is_some(),
                "committed": answer.map(|(c, _)| c.0),
                "lag": answer.map(|(c, _)| committed.saturating_sub(c.0)),
                "storage_full": answer.map(|(_, alarms)| alarms.contains(Alarms::STORAGE_FULL)),
                "alarms": answer.map(|(_, alarms)| alarms.names().collect::<Vec<_>>()),
                "pid": pids.get(i).copied().flatten(),
                "metrics": s.metrics.map(|m| format!("http://{m}/metrics")),
            })
        })
        .collect();
    json!({
        "epoch": progress.filter(|p| p.sequencer.is_some()).map(|p| p.epoch.to_string()),
        "sequencer": sequencer.map(|p| p.0),
        "committed": committed,
        "checkpoint": progress.and_then(|p| p.checkpoint).map(|c| json!({ "seq": c.seq.0, "size": c.size, "blocks": c.blocks })),
        "servers": servers,
    })
}

fn print_text(report: &serde_json::Value) {
    let field =
        |v: &serde_json::Value| if v.is_null() { "-".to_string() } else { v.to_string().trim_matches('"').to_string() };
    println!(
        "epoch {}  sequencer {}  committed {}  checkpoint {}",
        field(&report["epoch"]),
        field(&report["sequencer"]),
        field(&report["committed"]),
        field(&report["checkpoint"]["seq"]),
    );
    println!(
        "{:>4}  {:<28} {:<21} {:<9} {:>6} {:>8}  {:<37} alarms",
        "id", "roles", "address", "reachable", "lag", "pid", "metrics"
    );
    for s in report["servers"].as_array().into_iter().flatten() {
        let roles: Vec<String> = s["roles"].as_array().into_iter().flatten().map(field).collect();
        let alarms: Vec<String> = s["alarms"].as_array().into_iter().flatten().map(field).collect();
        let alarms = alarms.join("; ");
        println!(
            "{:>4}  {:<28} {:<21} {:<9} {:>6} {:>8}  {:<37} {alarms}",
            field(&s["id"]),
            roles.join(","),
            field(&s["address"]),
            if s["reachable"].as_bool() == Some(true) { "yes" } else { "no" },
            field(&s["lag"]),
            field(&s["pid"]),
            field(&s["metrics"]),
        );
    }
}
