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
#[command(
    after_help = "Examples:\n  sam bench --members 10 --messages 200000 --plot bench.svg\n  sam bench --rate 2000 --messages 10000 --durability os   # unloaded latency\n  sam bench --config sam-local/sam.toml --json             # against a running cluster"
)]
pub struct BenchArgs {
    /// A running cluster's configuration file; without it, a local cluster is started.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Members that deliver.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Messages the publishers send, in all.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Publishers (nodes of this process), each sending its share of --messages (and of
    /// --rate) with a window of its own.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Payload bytes per message (at least 8: the send time).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// The most messages a publisher has sent and not seen committed.
    #[arg(long, default_value_t = 4_096)]
    window: usize,
    /// Send at this many messages a second whatever commits (open loop: latency is measured
    /// from each message's scheduled time, so a stall counts for every message it delays);
    /// without it, as fast as the window allows. The window still bounds what is outstanding.
    #[arg(long, value_name = "MSGS_PER_S")]
    rate: Option<f64>,
    /// When the local cluster started without --config acknowledges a write: once fsync'd
    /// (fsync), or once in the operating system's page cache (os).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Fsync)]
    durability: DurabilityArg,
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
    /// The local cluster started without --config signs its heartbeats, and its members
    /// deliver only what they vouch for (DESIGN section 12's signed frames; not with
    /// `--security off`).
    #[arg(long)]
    sign_server_frames: bool,
}

/// `storage.durability` of the benchmark's own cluster.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum DurabilityArg {
    /// Acknowledged once fsync'd.
    Fsync,
    /// Acknowledged once written to the page cache.
    Os,
}

impl DurabilityArg {
    fn durability(self) -> sam_store::Durability {
        match self {
            DurabilityArg::Fsync => sam_store::Durability::Fsync,
            DurabilityArg::Os => sam_store::Durability::Os,
        }
    }
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

/// The latency percentiles reported, with their JSON names.
const PERCENTILES: [(f64, &str); 5] =
    [(0.50, "p50_us"), (0.90, "p90_us"), (0.99, "p99_us"), (0.999, "p999_us"), (1.0, "max_us")];

/// What one run measured.
struct Measured {
    committed_per_s: f64,
    delivered_per_s: f64,
    /// Latency in µs at each of [`PERCENTILES`].
    percentiles_us: [u64; PERCENTILES.len()],
    /// CPU time (user and system) the cluster's servers spent per committed message, when
    /// this command started them.
    server_cpu_us_per_msg: Option<f64>,
    /// CPU time this process (the publisher and every member) spent per delivery.
    member_cpu_us_per_delivery: f64,
    expired: usize,
    /// When each message was seen committed, from the first send.
    commit_times: Vec<Duration>,
    /// Every latency, in µs, sorted.
    latencies_us: Vec<u64>,
}

/// Runs the benchmark.
pub fn execute(args: BenchArgs) -> Result<std::process::ExitCode> {
    if args.size < 8 || args.messages == 0 || args.window == 0 || args.publishers == 0 {
        bail!("--size must be at least 8, --messages, --window and --publishers positive");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of messages a second");
    }
    let temp = tempfile::tempdir().context("a directory for the local cluster")?;
    let (config, mut servers) = match &args.config {
        Some(path) => (ClusterConfig::load(path)?, None),
        None => {
            let dir = temp.path();
            let mut cluster = ClusterConfig::local(LOCAL_SERVERS, LOCAL_CHECKPOINT_SERVERS, args.base_port, dir);
            cluster.with_local_keys(dir).context("writing the cluster's keys")?;
            cluster.security.mode = args.security.mode();
            cluster.security.sign_server_frames = args.sign_server_frames;
            cluster.validate()?;
            cluster.storage.durability = args.durability.durability();
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
    let server_pids = servers.as_ref().map(Servers::pids);
    let measured = crate::runtime()?.block_on(run(&config, &args, server_pids.as_deref()));
    let rss = servers.as_ref().map_or_else(Vec::new, |s| s.pids().iter().map(|p| peak_rss_bytes(*p)).collect());
    if let Some(servers) = &mut servers {
        servers.stop();
    }
    let m = measured?;
    // Only the servers this command started are measured: a running cluster's are not its own.
    let server_rss_bytes = rss.iter().copied().max();
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
        let mut report = json!({
            "committed_per_s": m.committed_per_s.round(),
            "delivered_per_s": m.delivered_per_s.round(),
            "server_cpu_us_per_msg": m.server_cpu_us_per_msg.map(|c| (c * 100.0).round() / 100.0),
            "member_cpu_us_per_delivery": (m.member_cpu_us_per_delivery * 100.0).round() / 100.0,
            "server_rss_bytes": server_rss_bytes,
            "server_rss_bytes_each": rss,
            "expired": m.expired,
            "members": args.members,
            "messages": args.messages,
            "size": args.size,
            "window": args.window,
            "publishers": args.publishers,
            "rate": args.rate,
            "security": config.security.mode.name(),
            "signed_frames": config.security.sign_server_frames,
            "durability": config.storage.durability.name(),
        });
        for ((_, name), value) in PERCENTILES.iter().zip(m.percentiles_us) {
            report[*name] = json!(value);
        }
        println!("{report}");
    } else {
        let rate = args.rate.map_or_else(|| "as fast as the window allows".to_string(), |r| format!("{r} msgs/s"));
        println!(
            "{} messages of {} bytes, {} publisher{}, {} members, window {}, {rate}, security {}{}, durability {}",
            args.messages,
            args.size,
            args.publishers,
            if args.publishers == 1 { "" } else { "s" },
            args.members,
            args.window,
            config.security.mode,
            if config.security.sign_server_frames { " with signed frames" } else { "" },
            config.storage.durability.name()
        );
        println!("  committed   {:>10.0} msgs/s", m.committed_per_s);
        println!("  delivered   {:>10.0} msgs/s (messages × members)", m.delivered_per_s);
        let p: Vec<String> =
            PERCENTILES.iter().zip(m.percentiles_us).map(|((_, n), v)| format!("{} {v}", &n[..n.len() - 3])).collect();
        println!("  latency     {} µs (send to delivery)", p.join(", "));
        let not_measured = || "n/a (a running cluster's servers are not measured)".to_string();
        let server_cpu = m.server_cpu_us_per_msg.map_or_else(not_measured, |c| format!("{c:.1} µs"));
        println!("  server CPU  {server_cpu} per committed message (all servers, user + system)");
        println!(
            "  member CPU  {:.2} µs per delivery (this process: publisher and members)",
            m.member_cpu_us_per_delivery
        );
        let rss = server_rss_bytes.map_or_else(not_measured, |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64));
        println!("  server RSS  {rss} peak (largest server)");
        if m.expired > 0 {
            println!("  expired     {}", m.expired);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run(cluster: &ClusterConfig, args: &BenchArgs, server_pids: Option<&[u32]>) -> Result<Measured> {
    let mut members = Vec::new();
    for i in 0..args.members {
        members.push(Node::start(member_spec(cluster, rand::random::<u64>() ^ i as u64, false)?).await?);
    }
    // Publishers read only their sends' fates.
    let mut publishers = Vec::new();
    for _ in 0..args.publishers {
        let mut spec = member_spec(cluster, rand::random(), false)?;
        spec.deliveries = false;
        publishers.push(Node::start(spec).await?);
    }
    for node in members.iter().chain(&publishers) {
        wait_for_sequencer(node).await?;
    }
    let bar = progress_bar(args);
    let cpu_before = (server_pids.map(cpu_us_of), own_cpu_us());
    let start = Instant::now();
    let receivers: Vec<_> = members.into_iter().map(|m| tokio::spawn(receive(m, args.messages, start))).collect();
    let senders: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(i, node)| tokio::spawn(publish(node, Share::of(args, i), start, bar.clone())))
        .collect();
    let (mut commit_times, mut expired) = (Vec::with_capacity(args.messages), 0);
    for sender in senders {
        let (times, lost) = sender.await.context("a publisher task")??;
        commit_times.extend(times);
        expired += lost;
    }
    bar.finish_and_clear();
    commit_times.sort_unstable();
    let commit_time = commit_times.last().copied().unwrap_or_default();
    let mut latencies = Vec::with_capacity(args.messages * args.members);
    let mut last_delivery = Duration::ZERO;
    for receiver in receivers {
        let (done, samples) = receiver.await.context("a member task")??;
        last_delivery = last_delivery.max(done);
        latencies.extend(samples);
    }
    let cpu_after = (server_pids.map(cpu_us_of), own_cpu_us());
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0);
    let committed = (args.messages - expired) as f64;
    let per = |us: u64, n: f64| if n == 0.0 { 0.0 } else { us as f64 / n };
    let server_cpu_us = cpu_after.0.zip(cpu_before.0).map(|(after, before)| after.saturating_sub(before));
    // Nothing committed (every send expired) is a rate of 0, not 0/0.
    let rate = |n: f64, over: Duration| if n == 0.0 { 0.0 } else { n / over.as_secs_f64().max(1e-9) };
    Ok(Measured {
        committed_per_s: rate(committed, commit_time),
        delivered_per_s: rate(committed * args.members as f64, last_delivery),
        percentiles_us: PERCENTILES.map(|(p, _)| pct(p)),
        server_cpu_us_per_msg: server_cpu_us.map(|us| per(us, committed)),
        member_cpu_us_per_delivery: per(cpu_after.1.saturating_sub(cpu_before.1), committed * args.members as f64),
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
/// What one publisher sends.
struct Share {
    messages: usize,
    window: usize,
    rate: Option<f64>,
    size: usize,
}

impl Share {
    /// Publisher `i`'s share of the run: the messages and the rate split evenly.
    fn of(args: &BenchArgs, i: usize) -> Share {
        let messages = args.messages / args.publishers + usize::from(i < args.messages % args.publishers);
        let rate = args.rate.map(|r| r * messages as f64 / args.messages as f64);
        Share { messages, window: args.window, rate, size: args.size }
    }
}

/// The bar that shows messages committed (hidden with --json).
fn progress_bar(args: &BenchArgs) -> ProgressBar {
    let bar = ProgressBar::new(args.messages as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} committed {per_sec}")
            .unwrap_or(ProgressStyle::default_bar()),
    );
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// Sends a share of the messages (at its rate, or as fast as its window allows); stops the
/// node and returns when each message was committed and how many expired.
async fn publish(mut node: Node, share: Share, start: Instant, bar: ProgressBar) -> Result<(Vec<Duration>, usize)> {
    let Share { messages, window, rate, size } = share;
    let (mut sent, mut settled, mut expired) = (0, 0, 0);
    let mut events = Vec::with_capacity(EVENTS_PER_READ);
    let mut commit_times = Vec::with_capacity(messages);
    let mut progress_at = Instant::now();
    while settled < messages {
        // Fill the window (up to the schedule, with --rate): a batch at a time, so the node
        // packs each into few datagrams.
        loop {
            let due = rate.map_or(usize::MAX, |r| scheduled(r, start.elapsed())).saturating_sub(sent);
            let room = (window - (sent - settled)).min(messages - sent).min(SEND_BATCH).min(due);
            if room == 0 {
                break;
            }
            // Open loop: each message counts from when it was due, not from when it went.
            let at = |i: usize| rate.map(|r| Duration::from_secs_f64((sent + i) as f64 / r));
            node.send_batch((0..room).map(|i| payload(start, at(i), size))).await?;
            sent += room;
        }
        events.clear();
        let next_send = rate.filter(|_| sent < messages).map(|r| {
            Duration::from_secs_f64(sent as f64 / r).saturating_sub(start.elapsed()).max(Duration::from_micros(50))
        });
        let wait = next_send.unwrap_or(Duration::from_secs(10)).min(Duration::from_secs(10));
        match tokio::time::timeout(wait, node.next_events(&mut events, EVENTS_PER_READ)).await {
            Ok(0) => bail!("the publisher stopped"),
            Ok(_) => progress_at = Instant::now(),
            Err(_) if progress_at.elapsed() < Duration::from_secs(10) => continue,
            Err(_) => bail!("nothing was committed for 10 s ({settled} of {messages} settled)"),
        }
        let now = start.elapsed();
        let before = settled;
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
        bar.inc((settled - before) as u64);
    }
    node.stop().await?;
    Ok((commit_times, expired))
}

/// How many messages are due `elapsed` into a run at `rate` a second.
fn scheduled(rate: f64, elapsed: Duration) -> usize {
    (elapsed.as_secs_f64() * rate).ceil() as usize
}

/// The send time (µs since `start`: `at`, or now) followed by padding to `size` bytes.
fn payload(start: Instant, at: Option<Duration>, size: usize) -> Bytes {
    let mut bytes = vec![0u8; size];
    let at = at.unwrap_or_else(|| start.elapsed());
    bytes[..8].copy_from_slice(&(at.as_micros() as u64).to_le_bytes());
    Bytes::from(bytes)
}

/// CPU time (user and system) processes `pids` spent so far, in µs (`/proc/PID/stat`).
fn cpu_us_of(pids: &[u32]) -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks_per_s = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    let ticks = |pid: &u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at its closing parenthesis:
        // utime and stime are the 14th and 15th fields, the 12th and 13th after it.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        field(11) + field(12)
    };
    pids.iter().map(ticks).sum::<u64>() * 1_000_000 / ticks_per_s
}

/// CPU time (user and system) this process spent so far, in µs.
fn own_cpu_us() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
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
