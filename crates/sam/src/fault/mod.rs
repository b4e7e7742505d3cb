//! `sam fault`: fault tests of the real program. A run starts a cluster of `sam server`
//! processes (on loopback, or each in a network namespace of its own), senders and tails as
//! `sam fault member` processes, and injects faults while they run: `kill -9` of the sequencer,
//! of a commit and data server, of a checkpoint server (each restarted from its disk), pauses
//! of the sequencer longer than the failure timeout, partitions that isolate the sequencer
//! with a minority, cut links, and (through the configuration's `[testing]` switch) loss and
//! duplication in every process's network driver. Every send, outcome and delivery goes into
//! a history file, which the simulator's checkers judge at the end (see [`history`]).

mod fleet;
pub mod history;
mod hosts;
mod member;
mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use sam_node::config::{ClusterConfig, Transport};
use serde_json::json;

use fleet::{Fleet, Line, State};
use history::{Fate, MidRecord, Record, Verdict};
use hosts::Hosts;
use schedule::{Fault, Schedule};

/// Fault tests on real processes.
#[derive(Subcommand, Debug)]
pub enum FaultCommand {
    /// Run a cluster under faults and check its history.
    Run(Box<RunArgs>),
    /// One member of a run (the harness starts these).
    Member(member::MemberArgs),
}

/// Where the processes of a run live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HostsArg {
    /// All on this host's loopback (no partitions).
    Loopback,
    /// Each server, and the members, in a network namespace of its own (needs root).
    Netns,
}

/// How datagrams travel in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// IP multicast.
    Multicast,
    /// Unicast fan-out and relays.
    Unicast,
}

/// What a run does.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// One fault of each kind, in a fixed order (a minute or so), instead of random faults.
    #[arg(long)]
    quick: bool,
    /// How long random faults are injected, in seconds (a soak).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seeds the choice of faults (random by default; the report gives it).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the processes live.
    #[arg(long, value_enum, default_value_t = HostsArg::Loopback)]
    hosts: HostsArg,
    /// How datagrams travel.
    #[arg(long, value_enum, default_value_t = TransportArg::Multicast)]
    transport: TransportArg,
    /// The run's number (1-200): names its namespaces and picks its addresses and ports, so
    /// that runs side by side do not meet.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=200))]
    run: u8,
    /// Received datagrams every process drops, per thousand.
    #[arg(long, default_value_t = 10)]
    drop_per_mille: u16,
    /// Received datagrams every process takes twice, per thousand.
    #[arg(long, default_value_t = 10)]
    duplicate_per_mille: u16,
    /// A deliberately broken protocol variant (such as `no-deduplication`), to show the run
    /// catches it; needs a build with the `mutations` feature.
    #[arg(long)]
    mutation: Option<String>,
    /// Senders.
    #[arg(long, default_value_t = 2)]
    senders: usize,
    /// Messages per second each sender sends.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Tails (members that deliver).
    #[arg(long, default_value_t = 3)]
    tails: usize,
    /// The run's directory (configuration, storage, logs, history); a new temporary one by
    /// default, kept when the run finds a violation.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// How long the tails may take, once the senders are done, to deliver everything
    /// committed, in seconds.
    #[arg(long, default_value_t = 60)]
    quiescence: u64,
    /// Sign frames: tails deliver only what the sequencer's signed heartbeats vouch for
    /// (DESIGN section 12).
    #[arg(long)]
    sign_server_frames: bool,
    /// Print one JSON object at the end instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs a fault subcommand.
pub fn execute(command: FaultCommand) -> Result<std::process::ExitCode> {
    match command {
        FaultCommand::Run(args) => run(&args),
        FaultCommand::Member(args) => member::execute(args),
    }
}

/// Microseconds of the host's clock, which every process of a run shares.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Commit and data servers of a run; then two checkpoint servers.
const SERVERS: usize = 3;
const CHECKPOINT_SERVERS: usize = 2;
/// How long the group may take to elect its first sequencer.
const FIRST_SEQUENCER: Duration = Duration::from_secs(30);

/// Set once Ctrl-C or SIGTERM asked the run to stop: it then stops its processes and removes
/// its namespaces before it exits.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn watch_for_interrupts() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::spawn(move || {
        runtime.block_on(crate::stop_signal());
        INTERRUPTED.store(true, Ordering::Relaxed);
    });
    Ok(())
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

fn run(args: &RunArgs) -> Result<std::process::ExitCode> {
    watch_for_interrupts()?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let (dir, temp) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new().prefix("sam-fault-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let hosts = match args.hosts {
        HostsArg::Netns => Some(Hosts::create(args.run, SERVERS + CHECKPOINT_SERVERS)?),
        HostsArg::Loopback => None,
    };
    let cluster = cluster_config(args, &dir, hosts.as_ref())?;
    let config = dir.join("sam.toml");
    fs::write(&config, cluster.to_toml_string()?).with_context(|| format!("writing {}", config.display()))?;
    let ids: Vec<u64> = cluster.servers.iter().map(|s| s.id.0).collect();
    let (tx, rx) = mpsc::channel();
    let fleet = Fleet::new(&config, &dir, &ids, tx, hosts)?;
    let history = fs::File::create(dir.join("history.jsonl"))?;
    let schedule = Schedule::new(args.quick, Duration::from_secs(args.duration), args.hosts == HostsArg::Netns, seed);
    let mut harness = Harness {
        fleet,
        lines: rx,
        file: std::io::BufWriter::new(history),
        records: Vec::new(),
        sequencer: None,
        cursors: tails_of(args).map(|t| (t, 0)).collect(),
        delivered: 0,
        broken: None,
        committed: 0,
        deposed: (0, 0),
        garbled: 0,
        start: Instant::now(),
        rng: Xoshiro256PlusPlus::seed_from_u64(seed),
    };
    let outcome = harness.run(args, schedule);
    harness.fleet.stop();
    harness.pump();
    let _ = harness.file.flush();
    let faults = match outcome {
        Ok(faults) => faults,
        Err(e) => {
            let kept = temp.map_or(dir, tempfile::TempDir::keep);
            return Err(e.context(format!("the run stopped; its history and logs are in {}", kept.display())));
        }
    };
    let tails: Vec<usize> = tails_of(args).collect();
    let senders: Vec<usize> = (args.tails..args.tails + args.senders).collect();
    let verdict = history::check(&harness.records, &tails, &senders);
    let failovers = failover_times(&harness.records);
    let kept = match (&temp, verdict.violations.is_empty()) {
        (Some(_), true) => None,
        _ => Some(temp.map_or(dir.clone(), tempfile::TempDir::keep)),
    };
    let run = Summary { seed, faults, failovers, deposed: harness.deposed, garbled: harness.garbled, kept };
    report(args, &run, &verdict);
    Ok(std::process::ExitCode::from(u8::from(!verdict.violations.is_empty())))
}

/// The member number of the tail that joins once the faults are over (after the senders).
fn late_tail(args: &RunArgs) -> usize {
    args.tails + args.senders
}

/// The member numbers of every tail: those that run throughout, and the late one.
fn tails_of(args: &RunArgs) -> impl Iterator<Item = usize> {
    (0..args.tails).chain([late_tail(args)])
}

/// The run's configuration: the local cluster's layout, on the run's own addresses, with
/// checkpoints and segments small enough to be exercised, and the faults to inject.
fn cluster_config(args: &RunArgs, dir: &Path, hosts: Option<&Hosts>) -> Result<ClusterConfig> {
    let base_port = 23_000 + u16::from(args.run) * 20;
    let mut cluster = ClusterConfig::local(SERVERS, CHECKPOINT_SERVERS, base_port, dir);
    cluster.with_local_keys(dir).context("writing the cluster's keys")?;
    cluster.security.sign_server_frames = args.sign_server_frames;
    if let Some(h) = hosts {
        for (i, s) in cluster.servers.iter_mut().enumerate() {
            s.address = SocketAddrV4::new(h.address(Some(i + 1)), s.address.port());
        }
        if let Some(c) = cluster.channels.as_mut() {
            // Each process joins on the interface its namespace routes multicast to.
            for channel in [&mut c.global, &mut c.data, &mut c.commit, &mut c.checkpoint] {
                channel.interface = Ipv4Addr::UNSPECIFIED;
            }
        }
    }
    if args.transport == TransportArg::Unicast {
        cluster.transport = Transport::Unicast;
        cluster.channels = None;
    }
    // Unicast members leave a lost relay after half a lease: about a failure timeout here.
    cluster.network.relay_lease_ms = 1_000;
    cluster.protocol.checkpoint_every = 2_000;
    cluster.protocol.catch_up_after = 4_000;
    cluster.storage.segment_bytes = 1 << 20;
    cluster.testing.drop_per_mille = args.drop_per_mille;
    cluster.testing.duplicate_per_mille = args.duplicate_per_mille;
    cluster.testing.mutation.clone_from(&args.mutation);
    cluster.validate()?;
    Ok(cluster)
}

/// The run in progress.
struct Harness {
    fleet: Fleet,
    lines: mpsc::Receiver<Line>,
    file: std::io::BufWriter<fs::File>,
    records: Vec<Record>,
    /// The newest sequencer a tail heard of: its epoch and pid.
    sequencer: Option<(u64, u64)>,
    /// The last number each tail delivered.
    cursors: BTreeMap<usize, u64>,
    /// The highest number any tail delivered.
    delivered: u64,
    /// A process that exited by itself, which ends the run.
    broken: Option<String>,
    /// The highest number a sender was told its message is committed at.
    committed: u64,
    /// Faults that took the sequencer away and, of those, the ones after which the tails
    /// followed a newer sequencer before the old one came back.
    deposed: (u64, u64),
    garbled: u64,
    start: Instant,
    rng: Xoshiro256PlusPlus,
}

impl Harness {
    fn run(&mut self, args: &RunArgs, schedule: Schedule) -> Result<Vec<Fault>> {
        for i in 0..SERVERS + CHECKPOINT_SERVERS {
            self.fleet.start_server(i, true)?;
        }
        for tail in 0..args.tails {
            self.fleet.start_member(tail, &[])?;
        }
        if !self.wait_until(FIRST_SEQUENCER, |h| h.sequencer.is_some()) {
            bail!("no tail heard a sequencer within {FIRST_SEQUENCER:?}: see the logs");
        }
        let rate = ["--rate".to_string(), args.rate.to_string()];
        for sender in args.tails..args.tails + args.senders {
            self.fleet.start_member(sender, &rate)?;
        }
        self.wait(Duration::from_secs(2));
        let mut injected = Vec::new();
        let faults_end = Instant::now() + schedule.duration();
        for step in schedule {
            if interrupted() {
                bail!("interrupted");
            }
            if let Some(why) = self.broken.take() {
                bail!(why);
            }
            if Instant::now() >= faults_end {
                break;
            }
            if let Some(fault) = self.inject(step)? {
                self.progress(&format!("{fault}"));
                injected.push(fault);
            }
        }
        self.heal()?;
        self.progress("faults over; senders finish");
        let senders = args.tails..args.tails + args.senders;
        self.fleet.stop_members(senders.clone());
        self.pump();
        self.progress("waiting for the tails to deliver everything committed");
        let quiescence = Duration::from_secs(args.quiescence);
        let caught_up = |h: &Harness| h.cursors.values().all(|c| *c >= h.committed.max(h.delivered));
        // A tail that joins after every fault reads back what the restarted servers kept.
        self.fleet.start_member(late_tail(args), &[])?;
        if !self.wait_until(quiescence, caught_up) {
            self.progress("the tails did not reach the highest committed number: the check will say what is missing");
        }
        // Whatever arrives meanwhile is delivered too: a moment more, then the tails stop.
        self.wait(Duration::from_secs(1));
        self.fleet.stop_members(0..late_tail(args) + 1);
        self.pump();
        if let Some(why) = self.broken.take() {
            bail!(why);
        }
        if interrupted() {
            bail!("interrupted");
        }
        Ok(injected)
    }

    /// Carries out one step of the schedule; `None` if it could not apply (say, the
    /// sequencer is unknown).
    fn inject(&mut self, fault: Fault) -> Result<Option<Fault>> {
        let Some(fault) = self.target(fault) else {
            self.wait(Duration::from_secs(1));
            return Ok(None);
        };
        self.note(&fault, "start");
        let epoch = self.sequencer.map(|(epoch, _)| epoch);
        self.begin(&fault)?;
        self.wait(fault.length());
        if fault.takes_the_sequencer() {
            // Before it comes back, the group must have moved on to a new sequencer.
            self.deposed.1 += 1;
            self.deposed.0 += u64::from(self.sequencer.map(|(e, _)| e) > epoch);
        }
        self.end(&fault)?;
        self.note(&fault, "end");
        // Each fault ends before the next begins: the group needs a majority to go on.
        self.wait(fault.rest_after());
        Ok(Some(fault))
    }

    fn begin(&mut self, fault: &Fault) -> Result<()> {
        match *fault {
            Fault::KillSequencer { server, .. }
            | Fault::KillServer { server, .. }
            | Fault::KillCheckpoint { server, .. } => {
                self.fleet.kill(server);
            }
            Fault::PauseSequencer { server, .. } => self.fleet.pause(server, true),
            Fault::IsolateSequencer { server, with, .. } => {
                self.fleet.hosts().context("partitions need --hosts netns")?.partition(&[server + 1, with + 1])?;
            }
            Fault::CutLink { server, .. } => {
                self.fleet.hosts().context("cut links need --hosts netns")?.cut(server + 1, false)?
            }
            Fault::Rest { .. } => {}
        }
        Ok(())
    }

    fn end(&mut self, fault: &Fault) -> Result<()> {
        match *fault {
            Fault::KillSequencer { server, .. }
            | Fault::KillServer { server, .. }
            | Fault::KillCheckpoint { server, .. } => self.fleet.start_server(server, false),
            Fault::PauseSequencer { server, .. } => {
                self.fleet.pause(server, false);
                Ok(())
            }
            Fault::IsolateSequencer { .. } | Fault::CutLink { .. } => self.heal(),
            Fault::Rest { .. } => Ok(()),
        }
    }

    /// Picks the fault's target among the running servers.
    fn target(&mut self, fault: Fault) -> Option<Fault> {
        let sequencer = self.sequencer_index();
        let up = |h: &Harness, i: usize| h.fleet.state(i) == State::Up;
        let others: Vec<usize> = (0..SERVERS).filter(|i| Some(*i) != sequencer && up(self, *i)).collect();
        let checkpoints: Vec<usize> = (SERVERS..SERVERS + CHECKPOINT_SERVERS).filter(|i| up(self, *i)).collect();
        let pick = |rng: &mut Xoshiro256PlusPlus, from: &[usize]| {
            (!from.is_empty()).then(|| from[rng.random_range(0..from.len())])
        };
        match fault {
            Fault::KillSequencer { down, .. } => Some(Fault::KillSequencer { server: sequencer?, down }),
            Fault::PauseSequencer { paused, .. } => Some(Fault::PauseSequencer { server: sequencer?, paused }),
            Fault::IsolateSequencer { held, .. } => {
                Some(Fault::IsolateSequencer { server: sequencer?, with: pick(&mut self.rng, &checkpoints)?, held })
            }
            Fault::KillServer { down, .. } => Some(Fault::KillServer { server: pick(&mut self.rng, &others)?, down }),
            Fault::CutLink { held, .. } => Some(Fault::CutLink { server: pick(&mut self.rng, &others)?, held }),
            Fault::KillCheckpoint { down, .. } => {
                Some(Fault::KillCheckpoint { server: pick(&mut self.rng, &checkpoints)?, down })
            }
            rest @ Fault::Rest { .. } => Some(rest),
        }
    }

    /// The running server that the newest sequencer a tail heard of is.
    fn sequencer_index(&self) -> Option<usize> {
        let (_, pid) = self.sequencer?;
        self.fleet.index_of(pid).filter(|i| self.fleet.state(*i) == State::Up)
    }

    /// Ends every partition and pause, and restarts every server that is down.
    fn heal(&mut self) -> Result<()> {
        if let Some(h) = self.fleet.hosts() {
            h.heal()?;
        }
        for i in 0..SERVERS + CHECKPOINT_SERVERS {
            match self.fleet.state(i) {
                State::Paused => self.fleet.pause(i, false),
                State::Down => self.fleet.start_server(i, false)?,
                State::Up => {}
            }
        }
        Ok(())
    }

    fn note(&mut self, fault: &Fault, phase: &str) {
        let record = Record::Fault { t: now_us(), kind: format!("{}:{phase}", fault.kind()), target: fault.target() };
        self.keep(record);
    }

    fn progress(&self, what: &str) {
        let c = &self.cursors;
        eprintln!(
            "[{:>6.1} s] {what} (committed {}, tails at {:?}, {} records)",
            self.start.elapsed().as_secs_f64(),
            self.committed,
            c,
            self.records.len()
        );
    }

    /// Takes every record the members sent so far.
    fn pump(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            match line {
                Line::Record(r) => self.keep(r),
                Line::Garbled(text) => {
                    self.garbled += 1;
                    eprintln!("a member wrote a line that is no record: {text}");
                }
            }
        }
    }

    fn keep(&mut self, r: Record) {
        match &r {
            Record::Sequencer { epoch, pid, .. } if self.sequencer.is_none_or(|(known, _)| *epoch > known) => {
                self.sequencer = Some((*epoch, *pid));
            }
            Record::Deliver { member, seq, .. } | Record::Restored { member, seq, .. } => {
                if let Some(c) = self.cursors.get_mut(member) {
                    *c = (*c).max(*seq);
                }
                self.delivered = self.delivered.max(*seq);
            }
            Record::Outcome { fate: Fate::Committed, seq: Some(seq), .. } => self.committed = self.committed.max(*seq),
            _ => {}
        }
        if let Ok(line) = serde_json::to_string(&r) {
            let _ = writeln!(self.file, "{line}");
        }
        self.records.push(r);
    }

    fn wait(&mut self, d: Duration) {
        let _ = self.wait_until(d, |_| false);
    }

    /// Takes records until `done` holds (`true`) or `timeout` passed (`false`).
    fn wait_until(&mut self, timeout: Duration, done: impl Fn(&Harness) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            self.pump();
            if done(self) {
                return true;
            }
            if self.broken.is_none() {
                self.broken = self.fleet.unexpected_exit();
            }
            if Instant::now() >= end || interrupted() || self.broken.is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// For each fault that took the sequencer away: the time from the fault until a message sent
/// after it was committed (only a sequencer in office can commit it), in milliseconds.
fn failover_times(records: &[Record]) -> Vec<f64> {
    let sent: HashMap<MidRecord, u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::Sent { t, mid, .. } => Some((*mid, *t)),
            _ => None,
        })
        .collect();
    // When each message was told committed, by when it was sent.
    let mut commits: Vec<(u64, u64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Outcome { t, mid, fate: Fate::Committed, .. } => Some((*sent.get(mid)?, *t)),
            _ => None,
        })
        .collect();
    commits.sort_unstable();
    let mut times = Vec::new();
    for r in records {
        let Record::Fault { t, kind, .. } = r else { continue };
        if !(kind.ends_with(":start") && kind.contains("sequencer")) {
            continue;
        }
        let later = commits.partition_point(|(sent_at, _)| sent_at <= t);
        if let Some(committed_at) = commits[later..].iter().map(|(_, at)| *at).min() {
            times.push(committed_at.saturating_sub(*t) as f64 / 1_000.0);
        }
    }
    times
}

/// What a run did, besides what its history says.
struct Summary {
    seed: u64,
    faults: Vec<Fault>,
    failovers: Vec<f64>,
    deposed: (u64, u64),
    garbled: u64,
    kept: Option<PathBuf>,
}

fn report(args: &RunArgs, run: &Summary, verdict: &Verdict) {
    let (seed, faults, kept) = (run.seed, &run.faults, run.kept.as_deref());
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for f in faults {
        *by_kind.entry(f.kind()).or_default() += 1;
    }
    let mut sorted = run.failovers.clone();
    sorted.sort_by(f64::total_cmp);
    // The nearest-rank median.
    let p50 = sorted.get(sorted.len().saturating_sub(1) / 2).copied();
    let max = sorted.last().copied();
    let violations: Vec<String> = verdict.violations.iter().map(ToString::to_string).collect();
    let value = json!({
        "seed": seed,
        "quick": args.quick,
        "hosts": format!("{:?}", args.hosts).to_lowercase(),
        "transport": format!("{:?}", args.transport).to_lowercase(),
        "drop_per_mille": args.drop_per_mille,
        "duplicate_per_mille": args.duplicate_per_mille,
        "mutation": args.mutation,
        "faults": by_kind,
        "sent": verdict.sent,
        "committed": verdict.committed,
        "expired": verdict.expired,
        "unknown": verdict.unknown,
        "deliveries_checked": verdict.deliveries,
        "highest_seq": verdict.highest,
        "failover_ms": { "count": sorted.len(), "p50": p50, "max": max },
        "sequencer_faults": run.deposed.1,
        "sequencer_deposed": run.deposed.0,
        "garbled_lines": run.garbled,
        "violations": violations,
        "kept_dir": kept.map(|d| d.display().to_string()),
    });
    if args.json {
        println!("{value}");
        return;
    }
    println!("fault run, seed {seed}: {} faults {by_kind:?}", faults.len());
    println!(
        "  sent {}, committed {}, expired {}, unknown {}; {} deliveries checked up to number {}",
        verdict.sent, verdict.committed, verdict.expired, verdict.unknown, verdict.deliveries, verdict.highest
    );
    if let (Some(p50), Some(max)) = (p50, max) {
        println!("  failover: {} times, p50 {p50:.0} ms, max {max:.0} ms", sorted.len());
    }
    println!("  sequencer deposed before it came back: {} of {} faults", run.deposed.0, run.deposed.1);
    if violations.is_empty() {
        println!("  no violations");
    } else {
        println!("  {} VIOLATIONS:", violations.len());
        for v in &violations {
            println!("    {v}");
        }
    }
    if let Some(d) = kept {
        println!("  history and logs kept in {}", d.display());
    }
}
