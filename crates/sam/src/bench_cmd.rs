//! `sam bench`: one publisher, S members, real processes and disks; throughput and latency.
//!
//! The publisher and the members run in this process (each a node with its own sockets), so
//! one clock times a message from its send to each delivery: the payload carries its send
//! time. Without `--config` the command starts a local cluster of its own (fsync on) in a
//! temporary directory and stops it at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sam_node::config::{ClusterConfig, SecurityMode, LOCAL_CHECKPOINT_SERVERS, LOCAL_SERVERS};
use sam_node::launch::member_spec;
use sam_node::node::{Event, Node};
use serde_json::json;

use crate::bench_plot::{write_svg, Run};
use crate::local_cmd::Servers;

/// Measure committed and delivered messages per second and the latency from send to delivery.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A running cluster's configuration file; without it, a local cluster is started.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Members that deliver.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Messages the publisher sends.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Payload bytes per message (at least 8: the send time).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// The most messages the publisher has sent and not seen committed.
    #[arg(long, default_value_t = 4_096)]
    window: usize,
    /// The first port of the local cluster started without --config.
    #[arg(long, default_value_t = 25_400)]
    base_port: u16,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also draw committed msgs/s over the run and latency by percentile into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// How the local cluster started without --config protects its frames (to measure what
    /// security costs).
    #[arg(long, value_enum, default_value_t = SecurityArg::Encrypt)]
    security: SecurityArg,
}

/// `security.mode` of the benchmark's own cluster.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum SecurityArg {
    /// Every frame sealed and encrypted (the default of every local cluster).
    Encrypt,
    /// Every frame sealed, payloads in the clear.
    Authenticate,
    /// No keys: a CRC and the cluster id only.
    Off,
}

impl SecurityArg {
    fn mode(self) -> SecurityMode {
        match self {
            SecurityArg::Encrypt => SecurityMode::Encrypt,
            SecurityArg::Authenticate => SecurityMode::Authenticate,
            SecurityArg::Off => SecurityMode::Off,
        }
    }
}

/// Messages handed to the node at once.
const SEND_BATCH: usize = 256;
/// Events taken from a node at once.
const EVENTS_PER_READ: usize = 1_024;

/// What one run measured.
struct Measured {
    committed_per_s: f64,
    delivered_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    expired: usize,
    /// When each message was seen committed, from the first send.
    commit_times: Vec<Duration>,
    /// Every latency, in µs, sorted.
    latencies_us: Vec<u64>,
}

/// Runs the benchmark.
pub fn execute(args: BenchArgs) -> Result<std::process::ExitCode> {
    if args.size < 8 || args.messages == 0 || args.window == 0 {
        bail!("--size must be at least 8, --messages and --window positive");
    }
    let temp = tempfile::tempdir().context("a directory for the local cluster")?;
    let (config, mut servers) = match &args.config {
        Some(path) => (ClusterConfig::load(path)?, None),
        None => {
            let dir = temp.path();
            let mut cluster = ClusterConfig::local(LOCAL_SERVERS, LOCAL_CHECKPOINT_SERVERS, args.base_port, dir);
            cluster.with_local_keys(dir).context("writing the cluster's keys")?;
            cluster.security.mode = args.security.mode();
            let path = dir.join("sam.toml");
            std::fs::write(&path, cluster.to_toml_string()?)?;
            let servers = Servers::start(&path, &cluster, true, dir)?;
            // A measurement of part of the cluster would mislead.
            if let Some(exited) = servers.exited.first() {
                bail!("{exited}");
            }
            (cluster, Some(servers))
        }
    };
    let measured = crate::runtime()?.block_on(run(&config, &args));
    let rss = servers.as_ref().map_or_else(Vec::new, |s| s.pids().iter().map(|p| peak_rss_bytes(*p)).collect());
    if let Some(servers) = &mut servers {
        servers.stop();
    }
    let m = measured?;
    let server_rss_bytes = rss.iter().copied().max().unwrap_or(0);
    if let Some(path) = &args.plot {
        let caption = format!(
            "{} messages of {} bytes, {} members, window {}: {:.0} committed msgs/s",
            args.messages, args.size, args.members, args.window, m.committed_per_s
        );
        let run = Run { caption, commit_times: &m.commit_times, latencies_us: &m.latencies_us };
        write_svg(path, &run).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    if args.json {
        let report = json!({
            "committed_per_s": m.committed_per_s.round(),
            "delivered_per_s": m.delivered_per_s.round(),
            "p50_us": m.p50_us,
            "p99_us": m.p99_us,
            "server_rss_bytes": server_rss_bytes,
            "server_rss_bytes_each": rss,
            "expired": m.expired,
            "members": args.members,
            "messages": args.messages,
            "size": args.size,
            "window": args.window,
            "security": config.security.mode.name(),
        });
        println!("{report}");
    } else {
        println!(
            "{} messages of {} bytes, {} members, window {}, security {}",
            args.messages, args.size, args.members, args.window, config.security.mode
        );
        println!("  committed   {:>10.0} msgs/s", m.committed_per_s);
        println!("  delivered   {:>10.0} msgs/s (messages × members)", m.delivered_per_s);
        println!("  latency     p50 {} µs, p99 {} µs (send to delivery)", m.p50_us, m.p99_us);
        println!("  server RSS  {:.1} MiB peak (largest server)", server_rss_bytes as f64 / (1 << 20) as f64);
        if m.expired > 0 {
            println!("  expired     {}", m.expired);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run(cluster: &ClusterConfig, args: &BenchArgs) -> Result<Measured> {
    let mut members = Vec::new();
    for i in 0..args.members {
        members.push(Node::start(member_spec(cluster, rand::random::<u64>() ^ i as u64, false)?).await?);
    }
    // The publisher reads only its sends' fates.
    let mut publisher_spec = member_spec(cluster, rand::random(), false)?;
    publisher_spec.deliveries = false;
    let mut publisher = Node::start(publisher_spec).await?;
    for node in members.iter().chain([&publisher]) {
        wait_for_sequencer(node).await?;
    }
    let start = Instant::now();
    let receivers: Vec<_> = members.into_iter().map(|m| tokio::spawn(receive(m, args.messages, start))).collect();
    let (commit_times, expired) = publish(&mut publisher, args, start).await?;
    let commit_time = commit_times.last().copied().unwrap_or_default();
    let mut latencies = Vec::with_capacity(args.messages * args.members);
    let mut last_delivery = Duration::ZERO;
    for receiver in receivers {
        let (done, samples) = receiver.await.context("a member task")??;
        last_delivery = last_delivery.max(done);
        latencies.extend(samples);
    }
    publisher.stop().await?;
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0);
    let committed = (args.messages - expired) as f64;
    // Nothing committed (every send expired) is a rate of 0, not 0/0.
    let rate = |n: f64, over: Duration| if n == 0.0 { 0.0 } else { n / over.as_secs_f64().max(1e-9) };
    Ok(Measured {
        committed_per_s: rate(committed, commit_time),
        delivered_per_s: rate(committed * args.members as f64, last_delivery),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        expired,
        commit_times,
        latencies_us: latencies,
    })
}

async fn wait_for_sequencer(node: &Node) -> Result<()> {
    let start = Instant::now();
    while node.progress().await?.is_none_or(|p| p.sequencer.is_none()) {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("no sequencer heard within 10 s: is the cluster running?");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Sends every message with at most `window` uncommitted; returns when each was committed and
/// how many expired.
async fn publish(node: &mut Node, args: &BenchArgs, start: Instant) -> Result<(Vec<Duration>, usize)> {
    let bar = ProgressBar::new(args.messages as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} committed {per_sec}")
            .unwrap_or(ProgressStyle::default_bar()),
    );
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (mut sent, mut settled, mut expired) = (0, 0, 0);
    let mut events = Vec::with_capacity(EVENTS_PER_READ);
    let mut commit_times = Vec::with_capacity(args.messages);
    while settled < args.messages {
        // Fill the window: a batch at a time, so the node packs each into few datagrams.
        loop {
            let room = (args.window - (sent - settled)).min(args.messages - sent).min(SEND_BATCH);
            if room == 0 {
                break;
            }
            node.send_batch((0..room).map(|_| payload(start, args.size))).await?;
            sent += room;
        }
        events.clear();
        match tokio::time::timeout(Duration::from_secs(10), node.next_events(&mut events, EVENTS_PER_READ)).await {
            Ok(0) => bail!("the publisher stopped"),
            Ok(_) => {}
            Err(_) => bail!("nothing was committed for 10 s ({settled} of {} settled)", args.messages),
        }
        let now = start.elapsed();
        for event in &events {
            match event {
                Event::Committed { .. } => {
                    settled += 1;
                    commit_times.push(now);
                }
                Event::Expired { .. } | Event::OutcomeUnknown { .. } => {
                    settled += 1;
                    expired += 1;
                }
                _ => {}
            }
        }
        bar.set_position(settled as u64);
    }
    bar.finish_and_clear();
    Ok((commit_times, expired))
}

/// The send time (µs since `start`) followed by padding to `size` bytes.
fn payload(start: Instant, size: usize) -> Bytes {
    let mut bytes = vec![0u8; size];
    bytes[..8].copy_from_slice(&(start.elapsed().as_micros() as u64).to_le_bytes());
    Bytes::from(bytes)
}

/// Delivers `count` messages; returns when the last arrived and each one's latency in µs.
async fn receive(mut node: Node, count: usize, start: Instant) -> Result<(Duration, Vec<u64>)> {
    let mut latencies = Vec::with_capacity(count);
    let mut events = Vec::with_capacity(EVENTS_PER_READ);
    while latencies.len() < count {
        events.clear();
        match tokio::time::timeout(Duration::from_secs(30), node.next_events(&mut events, EVENTS_PER_READ)).await {
            Ok(0) => bail!("a member stopped"),
            Ok(_) => {}
            Err(_) => bail!("a member delivered nothing for 30 s ({} of {count})", latencies.len()),
        }
        let now = start.elapsed().as_micros() as u64;
        for event in &events {
            if let Event::Deliver { payload, .. } = event {
                if let Some(sent) = payload.get(..8) {
                    let sent = u64::from_le_bytes(sent.try_into().expect("8 bytes"));
                    latencies.push(now.saturating_sub(sent));
                }
            }
        }
    }
    let done = start.elapsed();
    node.stop().await?;
    Ok((done, latencies))
}

/// The peak resident set of process `pid` (`VmHWM`), in bytes; 0 if unknown.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
