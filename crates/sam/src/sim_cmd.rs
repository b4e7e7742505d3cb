//! `sam sim`: runs one seed or a range of seeds and reports, exiting non-zero on a violation.

use std::io::{IsTerminal, Write};
use std::ops::Range;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use clap::Args;
use sam_sim::{run, run_many, Report, SimConfig};

/// Flags of `sam sim`.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run every seed of a half-open range, e.g. `0..1000`.
    #[arg(long, value_parser = parse_range)]
    seeds: Option<Range<u64>>,
    /// Draw every parameter (sizes, workload, faults) from the seed; other shape flags are ignored.
    #[arg(long)]
    mixed: bool,
    /// Members (client processes; servers come in addition).
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// How many members send.
    #[arg(long, default_value_t = 2)]
    senders: usize,
    /// Messages sent in all.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Distinct keys the table updates touch (with --size, the size of every checkpoint).
    #[arg(long, default_value_t = 512)]
    keys: u64,
    /// Probability a datagram is lost, per recipient (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    loss: f64,
    /// Probability a datagram is duplicated, per recipient (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    dup: f64,
    /// Probability a datagram is held back and reordered, per recipient (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    reorder: f64,
    /// Make partitions (which heal).
    #[arg(long)]
    partitions: bool,
    /// Crash and restart data servers, commit servers (the first sequencer's process only with
    /// --crash-sequencer) and members.
    #[arg(long)]
    crashes: bool,
    /// Crash the sequencer (also during recovery) and cut it off as a zombie; with --mixed,
    /// add this to the drawn faults. Reports failover times.
    #[arg(long)]
    crash_sequencer: bool,
    /// Let a commit server's crash sometimes also lose its storage (it rejoins by the rule of
    /// DESIGN section 6); with --mixed, add this to the drawn faults.
    #[arg(long)]
    wipes: bool,
    /// Commit servers.
    #[arg(long, default_value_t = 3)]
    commit_servers: usize,
    /// Acceptances needed to commit.
    #[arg(long, default_value_t = 2)]
    k_commit: usize,
    /// Data servers.
    #[arg(long, default_value_t = 3)]
    data_servers: usize,
    /// Data servers that must hold a message before it is numbered.
    #[arg(long, default_value_t = 2)]
    k_data: usize,
    /// Maximum logical lifetime of a message, in numbers.
    #[arg(long, default_value_t = 100_000)]
    max_lifetime: u64,
    /// Messages per second offered by all senders together.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// A sender's window of uncommitted messages.
    #[arg(long, default_value_t = 4_096)]
    window: usize,
    /// The sequencer's window of assigned but uncommitted numbers.
    #[arg(long, default_value_t = 65_536)]
    sequencer_window: usize,
    /// Bytes of uncommitted data a member buffers.
    #[arg(long, default_value_t = 64 << 20)]
    member_buffer: usize,
    /// Pass every datagram through the wire codec.
    #[arg(long)]
    wire: bool,
    /// Like --mixed, with checkpoints every few dozen numbers, late joiners, a member cut off
    /// for long, and checkpoint servers crashing during transfers.
    #[arg(long, conflicts_with = "mixed")]
    checkpoints: bool,
    /// Checkpoint servers (members that snapshot the replicated table).
    #[arg(long, default_value_t = 3)]
    checkpoint_servers: usize,
    /// Checkpoint servers that must report a checkpoint alike before it is advertised.
    #[arg(long, default_value_t = 2)]
    k_checkpoint: usize,
    /// Checkpoints fall at the multiples of this number.
    #[arg(long, default_value_t = 50_000)]
    checkpoint_every: u64,
    /// Members that join after the workload started; they catch up from a checkpoint.
    #[arg(long, default_value_t = 0)]
    late_joiners: usize,
    /// Cut one member off for a long time, so that it falls behind by more than the log kept.
    #[arg(long)]
    laggard: bool,
    /// Sign frames: members deliver only what the sequencer's heartbeats vouched for (DESIGN
    /// section 12); with --mixed or --checkpoints, add this to the drawn run.
    #[arg(long)]
    signed: bool,
    /// Print what each process noticed (elections, step-downs, rejoins, checkpoints), in order,
    /// before the report (in JSON, as its `trace`).
    #[arg(long, conflicts_with = "seeds")]
    trace: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Parallel runs for --seeds (default: available cores).
    #[arg(long)]
    jobs: Option<usize>,
}

fn parse_range(s: &str) -> Result<Range<u64>, String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("expected A..B, got {s:?}"))?;
    let a: u64 = a.trim().parse().map_err(|e| format!("bad start {a:?}: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("bad end {b:?}: {e}"))?;
    if a >= b {
        return Err(format!("empty range {a}..{b}"));
    }
    Ok(a..b)
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("{p} is not a probability between 0 and 1"));
    }
    Ok(p)
}

impl SimArgs {
    fn config(&self, seed: u64) -> SimConfig {
        let drawn = if self.mixed {
            Some(SimConfig::mixed(seed))
        } else if self.checkpoints {
            Some(SimConfig::checkpoints(seed))
        } else {
            None
        };
        if let Some(drawn) = drawn {
            return SimConfig {
                crash_sequencer: self.crash_sequencer,
                wipes: self.wipes,
                signed: self.signed,
                trace: self.trace,
                ..drawn
            };
        }
        SimConfig {
            members: self.members,
            senders: self.senders,
            messages: self.messages,
            payload_bytes: self.size,
            keys: self.keys,
            loss: self.loss,
            dup: self.dup,
            reorder: self.reorder,
            partitions: self.partitions,
            crashes: self.crashes,
            crash_sequencer: self.crash_sequencer,
            wipes: self.wipes,
            n_commit: self.commit_servers,
            k_commit: self.k_commit,
            n_data: self.data_servers,
            k_data: self.k_data,
            max_lifetime: self.max_lifetime,
            rate_per_s: self.rate,
            sender_window: self.window,
            sequencer_window: self.sequencer_window,
            member_buffer_bytes: self.member_buffer,
            wire: self.wire,
            n_checkpoint: self.checkpoint_servers,
            k_checkpoint: self.k_checkpoint,
            checkpoint_every: self.checkpoint_every,
            late_joiners: self.late_joiners,
            laggard: self.laggard,
            signed: self.signed,
            trace: self.trace,
            ..SimConfig::new(seed)
        }
    }

    fn validate(&self) -> Result<()> {
        if self.mixed || self.checkpoints {
            return Ok(());
        }
        if self.checkpoint_servers > 0 && (self.k_checkpoint == 0 || self.k_checkpoint > self.checkpoint_servers) {
            bail!(
                "--k-checkpoint {} must be between 1 and --checkpoint-servers {}",
                self.k_checkpoint,
                self.checkpoint_servers
            );
        }
        let kinds = [
            ("commit-servers", self.commit_servers, "k-commit", self.k_commit),
            ("data-servers", self.data_servers, "k-data", self.k_data),
        ];
        for (n_name, n, k_name, k) in kinds {
            if k == 0 || k > n || n > 64 {
                bail!("--{k_name} {k} must be between 1 and --{n_name} {n} (at most 64)");
            }
        }
        if self.members == 0 {
            bail!("--members must be at least 1");
        }
        if self.senders > self.members {
            bail!("--senders {} exceeds --members {}", self.senders, self.members);
        }
        let positive = [("rate", self.rate), ("max-lifetime", self.max_lifetime), ("keys", self.keys)];
        let positive = positive
            .into_iter()
            .chain([("window", self.window as u64), ("sequencer-window", self.sequencer_window as u64)])
            .chain([("member-buffer", self.member_buffer as u64)])
            .chain([("checkpoint-every", self.checkpoint_every)]);
        if let Some((name, _)) = positive.into_iter().find(|(_, v)| *v == 0) {
            bail!("--{name} must be positive");
        }
        Ok(())
    }

    fn replay(&self, report: &Report) -> String {
        if self.mixed || self.checkpoints {
            let mode = if self.mixed { "--mixed" } else { "--checkpoints" };
            let flag = if self.crash_sequencer { " --crash-sequencer" } else { "" };
            let wipes = if self.wipes { " --wipes" } else { "" };
            let signed = if self.signed { " --signed" } else { "" };
            format!("sam sim {mode}{flag}{wipes}{signed} --seed {}", report.config.seed)
        } else {
            format!("sam sim {}", report.config.replay_flags())
        }
    }
}

/// Runs `sam sim`.
pub fn execute(args: SimArgs) -> Result<ExitCode> {
    args.validate()?;
    match args.seeds.clone() {
        Some(range) => run_range(&args, range),
        None => run_one(&args, args.seed.unwrap_or(0)),
    }
}

fn run_one(args: &SimArgs, seed: u64) -> Result<ExitCode> {
    let report = run(args.config(seed));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("encoding the report")?);
    } else {
        for line in &report.trace {
            println!("{line}");
        }
        println!("{report}");
    }
    if report.passed() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("FAILED seed {}: replay with: {}", seed, args.replay(&report));
    Ok(ExitCode::FAILURE)
}

fn run_range(args: &SimArgs, range: Range<u64>) -> Result<ExitCode> {
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let total = range.end - range.start;
    let finished = AtomicU64::new(0);
    let reports = run_many(
        range,
        jobs,
        |seed| args.config(seed),
        |report| {
            if !report.passed() {
                eprintln!("\nFAILED seed {}: replay with: {}", report.config.seed, args.replay(report));
            }
            progress(finished.fetch_add(1, Ordering::Relaxed) + 1, total);
        },
    );
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let failed: Vec<u64> = reports.iter().filter(|r| !r.passed()).map(|r| r.config.seed).collect();
    let summary = Summary::of(&reports);
    if args.json {
        let json =
            serde_json::json!({ "seeds": total, "failed": failed, "summary": summary.to_json(), "reports": reports });
        println!("{}", serde_json::to_string_pretty(&json).context("encoding the reports")?);
    } else {
        let shown: Vec<String> = failed.iter().take(20).map(u64::to_string).collect();
        let more = if failed.len() > 20 { format!(" and {} more", failed.len() - 20) } else { String::new() };
        let list = if failed.is_empty() { String::new() } else { format!(": {}{more}", shown.join(", ")) };
        println!("{} seeds, {} failed{list}", total, failed.len());
        println!("{summary}");
    }
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Shows how many seeds are done: a rewritten line on a terminal, a line per tenth otherwise.
fn progress(done: u64, total: u64) {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r{done}/{total} seeds");
        let _ = err.flush();
    } else if done.is_multiple_of((total / 10).max(1)) || done == total {
        let _ = writeln!(err, "{done}/{total} seeds");
    }
}

/// Totals over many runs.
struct Summary {
    sent: u64,
    committed: u64,
    expired: u64,
    deliveries: u64,
    crashes: u64,
    partitions: u64,
    sim_s: f64,
    wall_s: f64,
    /// Failover times over all runs, sorted, in microseconds.
    failovers_us: Vec<u64>,
}

impl Summary {
    fn of(reports: &[Report]) -> Summary {
        Summary {
            sent: reports.iter().map(|r| r.sent).sum(),
            committed: reports.iter().map(|r| r.committed).sum(),
            expired: reports.iter().map(|r| r.expired).sum(),
            deliveries: reports.iter().map(|r| r.deliveries).sum(),
            crashes: reports.iter().map(|r| r.faults.crashes).sum(),
            partitions: reports.iter().map(|r| r.faults.partitions).sum(),
            sim_s: reports.iter().map(|r| r.sim_time_us as f64 / 1e6).sum(),
            wall_s: reports.iter().map(|r| r.wall_ms as f64 / 1e3).sum(),
            failovers_us: {
                let mut all: Vec<u64> = reports.iter().flat_map(|r| r.failovers_us.iter().copied()).collect();
                all.sort_unstable();
                all
            },
        }
    }

    /// The `q`-quantile of the failover times in milliseconds (nearest rank).
    fn failover_ms(&self, q: f64) -> Option<f64> {
        let n = self.failovers_us.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1)) - 1;
        self.failovers_us.get(rank).map(|us| *us as f64 / 1e3)
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "sent": self.sent, "committed": self.committed, "expired": self.expired,
            "deliveries": self.deliveries, "crashes": self.crashes, "partitions": self.partitions,
            "simulated_s": self.sim_s, "wall_s": self.wall_s,
            "failovers": self.failovers_us.len(), "failover_p50_ms": self.failover_ms(0.5),
            "failover_p99_ms": self.failover_ms(0.99), "failover_max_ms": self.failover_ms(1.0),
        })
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, committed {}, expired {}, deliveries {}, crashes {}, partitions {}, simulated {:.1} s, wall {:.1} s (summed over runs)",
            self.sent, self.committed, self.expired, self.deliveries, self.crashes, self.partitions, self.sim_s, self.wall_s
        )?;
        if let (Some(p50), Some(p99), Some(max)) =
            (self.failover_ms(0.5), self.failover_ms(0.99), self.failover_ms(1.0))
        {
            let n = self.failovers_us.len();
            write!(f, "\nfailover (fault to first commit of a new epoch, simulated): {n} failovers, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms")?;
        }
        Ok(())
    }
}
