//! What a simulation run is made of. Every parameter not given here is drawn from the seed,
//! so `(SimConfig, seed)` replays a run exactly.

use rand::Rng;
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use sam_core::Mutation;
use serde::Serialize;

/// The shape of one run: group size, workload, faults.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimConfig {
    /// The seed every other random choice derives from.
    pub seed: u64,
    /// Members (client processes; servers are extra).
    pub members: usize,
    /// How many of the members send.
    pub senders: usize,
    /// Messages sent in all, spread over the senders.
    pub messages: usize,
    /// Payload size in bytes (the value of a table update).
    pub payload_bytes: usize,
    /// How many distinct keys the table updates touch: with the value size, the size of the
    /// replicated table and so of every checkpoint.
    pub keys: u64,
    /// Probability that a datagram is lost, per recipient.
    pub loss: f64,
    /// Probability that a datagram is delivered twice, per recipient.
    pub dup: f64,
    /// Probability that a datagram is held back (reordered), per recipient.
    pub reorder: f64,
    /// Whether partitions are made (and healed).
    pub partitions: bool,
    /// Whether data servers, commit servers (the first sequencer's process only with
    /// `crash_sequencer`) and members crash and restart.
    pub crashes: bool,
    /// Whether the sequencer is crashed (also during recovery) and isolated by partitions.
    pub crash_sequencer: bool,
    /// Whether a commit server's crash sometimes also loses its storage (it then rejoins by
    /// the rule of DESIGN section 6).
    pub wipes: bool,
    /// Commit servers.
    pub n_commit: usize,
    /// Acceptances needed to commit.
    pub k_commit: usize,
    /// Data servers.
    pub n_data: usize,
    /// Data servers that must hold a message before it is numbered.
    pub k_data: usize,
    /// The maximum logical lifetime.
    pub max_lifetime: u64,
    /// Messages per second offered by all senders together.
    pub rate_per_s: u64,
    /// A sender's window of uncommitted messages.
    pub sender_window: usize,
    /// The sequencer's window of assigned but uncommitted numbers.
    pub sequencer_window: usize,
    /// The bytes of uncommitted data a member buffers.
    pub member_buffer_bytes: usize,
    /// The longest partition, in microseconds.
    pub partition_max_us: u64,
    /// Give up (a liveness violation) if the run is not quiescent by this simulated time.
    pub max_time_us: u64,
    /// Pass every datagram through the wire codec (encode and decode).
    pub wire: bool,
    /// Checkpoint servers (members that snapshot the replicated table).
    pub n_checkpoint: usize,
    /// Checkpoint servers that must report a checkpoint alike before it is advertised.
    pub k_checkpoint: usize,
    /// Checkpoints fall at the multiples of this number.
    pub checkpoint_every: u64,
    /// Members that join after the workload started (at a random time, some after it ended).
    pub late_joiners: usize,
    /// Whether one member is cut off for a long time, so that it falls behind by more than the
    /// log kept and must catch up from a checkpoint.
    pub laggard: bool,
    /// Frames are signed (DESIGN section 12): members deliver only what a heartbeat's commit
    /// chain vouched for, and catch up only from a checkpoint a heartbeat advertised.
    pub signed: bool,
    /// Keep what each process noticed (elections, step-downs, rejoins, checkpoints) in the
    /// report's trace.
    #[serde(skip)]
    pub trace: bool,
    /// Test only: checkpoint servers run a state machine that is not deterministic.
    #[serde(skip)]
    pub nondeterministic: bool,
    /// A deliberately broken protocol variant (checker tests only).
    #[serde(skip)]
    pub mutation: Option<Mutation>,
}

impl SimConfig {
    /// A fault-free run with the given seed and sizes, at DESIGN section 10's defaults.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            members: 5,
            senders: 2,
            messages: 200,
            payload_bytes: 32,
            keys: 512,
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            partitions: false,
            crashes: false,
            crash_sequencer: false,
            wipes: false,
            n_commit: 3,
            k_commit: 2,
            n_data: 3,
            k_data: 2,
            max_lifetime: 100_000,
            rate_per_s: 20_000,
            sender_window: 4_096,
            sequencer_window: 65_536,
            member_buffer_bytes: 64 << 20,
            partition_max_us: 600_000,
            max_time_us: 120_000_000,
            wire: false,
            n_checkpoint: 3,
            k_checkpoint: 2,
            checkpoint_every: 50_000,
            late_joiners: 0,
            laggard: false,
            signed: false,
            trace: false,
            nondeterministic: false,
            mutation: None,
        }
    }

    /// A run whose every parameter is drawn from the seed: group size, workload, loss up to
    /// 20%, duplication, reordering, partitions, crash/restart of servers and members, and now
    /// and then a short lifetime so that messages expire.
    pub fn mixed(seed: u64) -> SimConfig {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed_5eed_5eed_5eed);
        let n_commit = rng.random_range(3..=5);
        let n_data = rng.random_range(2..=4);
        SimConfig {
            members: rng.random_range(2..=8),
            senders: rng.random_range(1..=3),
            messages: rng.random_range(20..=300),
            payload_bytes: rng.random_range(1..=200),
            loss: rng.random_range(0.0..0.2),
            dup: if rng.random_bool(0.5) { rng.random_range(0.0..0.1) } else { 0.0 },
            reorder: if rng.random_bool(0.5) { rng.random_range(0.0..0.3) } else { 0.0 },
            partitions: rng.random_bool(0.6),
            crashes: rng.random_bool(0.6),
            crash_sequencer: false,
            wipes: false,
            n_commit,
            k_commit: rng.random_range(2..=n_commit.div_ceil(2).max(2)),
            n_data,
            k_data: rng.random_range(1..n_data),
            max_lifetime: if rng.random_bool(0.2) { rng.random_range(30..=200) } else { 100_000 },
            rate_per_s: rng.random_range(2_000..=40_000),
            sender_window: if rng.random_bool(0.2) { rng.random_range(1..=16) } else { 4_096 },
            sequencer_window: if rng.random_bool(0.2) { rng.random_range(1..=32) } else { 65_536 },
            member_buffer_bytes: if rng.random_bool(0.2) { rng.random_range(1..=8_192) } else { 64 << 20 },
            wire: true,
            ..SimConfig::new(seed)
        }
    }

    /// A mixed run (see [`SimConfig::mixed`]) in which the sequencer also crashes, also during
    /// recovery, and is cut off as a zombie while the rest elect a new one.
    pub fn failover(seed: u64) -> SimConfig {
        SimConfig { crash_sequencer: true, wipes: true, ..SimConfig::mixed(seed) }
    }

    /// A mixed run (see [`SimConfig::mixed`]) that takes checkpoints often and garbage-collects
    /// under them: late joiners, a member cut off for long, checkpoint servers crashing (also
    /// while members fetch from them).
    pub fn checkpoints(seed: u64) -> SimConfig {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xc4ec_c4ec_c4ec_c4ec);
        let n_checkpoint = rng.random_range(2..=3);
        let base = SimConfig::mixed(seed);
        SimConfig {
            messages: rng.random_range(200..=800),
            n_checkpoint,
            k_checkpoint: rng.random_range(1..=n_checkpoint.min(2)),
            checkpoint_every: rng.random_range(20..=120),
            late_joiners: rng.random_range(1..=3),
            laggard: rng.random_bool(0.7),
            max_lifetime: if rng.random_bool(0.5) { rng.random_range(30..=300) } else { base.max_lifetime },
            ..base
        }
    }

    /// The flags of `sam sim` that replay this run.
    pub fn replay_flags(&self) -> String {
        let mut flags = format!(
            "--seed {} --members {} --senders {} --messages {}",
            self.seed, self.members, self.senders, self.messages
        );
        let defaults = SimConfig::new(self.seed);
        let mut add = |cond: bool, s: String| {
            if cond {
                flags.push(' ');
                flags.push_str(&s);
            }
        };
        add(self.payload_bytes != defaults.payload_bytes, format!("--size {}", self.payload_bytes));
        add(self.keys != defaults.keys, format!("--keys {}", self.keys));
        add(self.loss > 0.0, format!("--loss {}", self.loss));
        add(self.dup > 0.0, format!("--dup {}", self.dup));
        add(self.reorder > 0.0, format!("--reorder {}", self.reorder));
        add(self.partitions, "--partitions".into());
        add(self.crashes, "--crashes".into());
        add(self.crash_sequencer, "--crash-sequencer".into());
        add(self.wipes, "--wipes".into());
        add(self.n_commit != defaults.n_commit, format!("--commit-servers {}", self.n_commit));
        add(self.k_commit != defaults.k_commit, format!("--k-commit {}", self.k_commit));
        add(self.n_data != defaults.n_data, format!("--data-servers {}", self.n_data));
        add(self.k_data != defaults.k_data, format!("--k-data {}", self.k_data));
        add(self.max_lifetime != defaults.max_lifetime, format!("--max-lifetime {}", self.max_lifetime));
        add(self.rate_per_s != defaults.rate_per_s, format!("--rate {}", self.rate_per_s));
        add(self.sender_window != defaults.sender_window, format!("--window {}", self.sender_window));
        add(
            self.sequencer_window != defaults.sequencer_window,
            format!("--sequencer-window {}", self.sequencer_window),
        );
        add(
            self.member_buffer_bytes != defaults.member_buffer_bytes,
            format!("--member-buffer {}", self.member_buffer_bytes),
        );
        add(self.wire, "--wire".into());
        add(self.n_checkpoint != defaults.n_checkpoint, format!("--checkpoint-servers {}", self.n_checkpoint));
        add(self.k_checkpoint != defaults.k_checkpoint, format!("--k-checkpoint {}", self.k_checkpoint));
        add(
            self.checkpoint_every != defaults.checkpoint_every,
            format!("--checkpoint-every {}", self.checkpoint_every),
        );
        add(self.late_joiners > 0, format!("--late-joiners {}", self.late_joiners));
        add(self.laggard, "--laggard".into());
        add(self.signed, "--signed".into());
        flags
    }
}
