//! Counters and the summary of one run.

use std::fmt;

use serde::Serialize;

use crate::check::Violation;
use crate::config::SimConfig;

/// The kinds of process a run counts separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ProcKind {
    /// The process running the sequencer (and a commit server).
    Sequencer,
    /// A commit server.
    Commit,
    /// A data server.
    Data,
    /// A checkpoint server (a member that snapshots the table).
    Checkpoint,
    /// A member (client).
    Member,
}

impl ProcKind {
    /// Every kind, in report order.
    pub const ALL: [ProcKind; 5] =
        [ProcKind::Sequencer, ProcKind::Commit, ProcKind::Data, ProcKind::Checkpoint, ProcKind::Member];
}

/// What checkpoints and garbage collection did in one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CheckpointStats {
    /// The highest checkpoint number any heartbeat advertised.
    pub advertised: Option<u64>,
    /// Checkpoint digests raised as differing.
    pub mismatches: u64,
    /// Catch-ups from a checkpoint completed by members.
    pub catch_ups: u64,
    /// Blocks members fetched in those catch-ups.
    pub blocks_fetched: u64,
    /// Late joiners: simulated time from joining to restoring a checkpoint, in microseconds.
    pub join_catch_up_us: Vec<u64>,
    /// Late joiners: simulated time from joining to delivering everything committed when they
    /// joined, in microseconds.
    pub join_live_us: Vec<u64>,
    /// Sends reported of unknown outcome (their log was gone when the sender caught up).
    pub unknown: u64,
    /// The most messages any data server held at once.
    pub peak_data_held: usize,
    /// The most entries any commit server held at once.
    pub peak_commit_held: usize,
    /// The most numbers committed above the checkpoint a data or commit server knew advertised.
    pub peak_unadvertised: u64,
    /// The most messages all senders had uncommitted at once.
    pub peak_in_flight: usize,
    /// The most checkpoints any checkpoint server kept at once.
    pub peak_checkpoints_kept: usize,
    /// The most snapshot bytes any checkpoint server kept at once.
    pub peak_checkpoint_bytes: u64,
}

/// Messages and datagrams one kind of process sent and received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Traffic {
    /// Protocol messages sent.
    pub msgs_sent: u64,
    /// Protocol messages received.
    pub msgs_received: u64,
    /// Datagrams sent (a multicast counts once).
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
}

/// Traffic of one kind of process per committed message, averaged over its processes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rate {
    /// The kind of process.
    pub kind: ProcKind,
    /// How many processes of the kind.
    pub processes: usize,
    /// Messages sent per committed message, per process.
    pub sent_per_msg: f64,
    /// Messages received per committed message, per process.
    pub received_per_msg: f64,
}

/// The faults a run injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Process crashes (each followed by a restart).
    pub crashes: u64,
    /// Partitions (each healed).
    pub partitions: u64,
    /// Crashes of commit servers that also lost their storage.
    pub wipes: u64,
}

/// What one run did and whether every promise held.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The run's configuration (with its seed).
    pub config: SimConfig,
    /// Messages the senders sent.
    pub sent: u64,
    /// Numbers committed.
    pub committed: u64,
    /// Deliveries, over all members.
    pub deliveries: u64,
    /// Sends reported expired.
    pub expired: u64,
    /// Per process kind: traffic per committed message.
    pub rates: Vec<Rate>,
    /// The faults injected.
    pub faults: FaultCounts,
    /// Simulated time, in microseconds.
    pub sim_time_us: u64,
    /// Wall-clock time, in milliseconds.
    pub wall_ms: u64,
    /// Broken promises (empty when the run passed).
    pub violations: Vec<Violation>,
    /// Failover times in microseconds: sequencer crash or isolation to the first commit of a
    /// new epoch.
    pub failovers_us: Vec<u64>,
    /// Checkpoints, catch-ups and garbage collection.
    pub checkpoints: CheckpointStats,
    /// With `--trace`: what each process noticed (elections, step-downs, rejoins, checkpoints),
    /// in order, each with its time and pid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<String>,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The rate of one kind.
    pub fn rate(&self, kind: ProcKind) -> Option<&Rate> {
        self.rates.iter().find(|r| r.kind == kind)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "seed {}: {} members ({} senders), {} sent, {} committed, {} expired, {} deliveries",
            c.seed, c.members, c.senders, self.sent, self.committed, self.expired, self.deliveries
        )?;
        writeln!(
            f,
            "  faults: loss {:.3}, dup {:.3}, reorder {:.3}, {} crashes ({} with storage lost), {} partitions",
            c.loss, c.dup, c.reorder, self.faults.crashes, self.faults.wipes, self.faults.partitions
        )?;
        writeln!(f, "  per committed message, per process:")?;
        for r in &self.rates {
            writeln!(
                f,
                "    {:<9} x{:<6} sent {:>8.3}  received {:>8.3}",
                format!("{:?}", r.kind).to_lowercase(),
                r.processes,
                r.sent_per_msg,
                r.received_per_msg
            )?;
        }
        if !self.failovers_us.is_empty() {
            let ms: Vec<String> = self.failovers_us.iter().map(|us| format!("{:.1}", *us as f64 / 1e3)).collect();
            writeln!(f, "  failovers (ms, fault to first commit of a new epoch): {}", ms.join(", "))?;
        }
        let cp = &self.checkpoints;
        if c.n_checkpoint > 0 {
            writeln!(
                f,
                "  checkpoints: advertised up to {}, {} catch-ups ({} blocks), {} digest mismatches, {} unknown outcomes; peak held: data {} messages, commit {} entries, checkpoint {} snapshots ({} bytes)",
                cp.advertised.map_or("none".into(), |s| s.to_string()),
                cp.catch_ups,
                cp.blocks_fetched,
                cp.mismatches,
                cp.unknown,
                cp.peak_data_held,
                cp.peak_commit_held,
                cp.peak_checkpoints_kept,
                cp.peak_checkpoint_bytes
            )?;
        }
        if !cp.join_catch_up_us.is_empty() {
            writeln!(f, "  late joiners restored a checkpoint in (ms): {}", ms_list(&cp.join_catch_up_us))?;
        }
        if !cp.join_live_us.is_empty() {
            writeln!(
                f,
                "  late joiners delivered up to the head they joined at in (ms): {}",
                ms_list(&cp.join_live_us)
            )?;
        }
        write!(f, "  simulated {:.3} s, wall {:.3} s", self.sim_time_us as f64 / 1e6, self.wall_ms as f64 / 1e3)?;
        for v in &self.violations {
            write!(f, "\n  VIOLATION {v}")?;
        }
        Ok(())
    }
}

/// Durations in microseconds as a list of milliseconds.
fn ms_list(us: &[u64]) -> String {
    us.iter().map(|us| format!("{:.1}", *us as f64 / 1e3)).collect::<Vec<_>>().join(", ")
}
