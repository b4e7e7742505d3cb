//! The simulated network and fault schedule: per-recipient loss, duplication and reordering,
//! a base delay with jitter, and partitions that cut the processes into two sides until they
//! heal. Every choice comes from the run's seeded generator.

use rand::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use sam_core::Time;

use crate::config::SimConfig;

/// What the network does to one datagram on its way to one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Lost.
    Lost,
    /// Arrives after this many microseconds, `copies` times (2 when duplicated).
    Arrives {
        /// Delay in microseconds.
        delay_us: u64,
        /// How many copies arrive.
        copies: u8,
    },
}

/// Link behaviour drawn once per run.
#[derive(Clone, Debug)]
pub struct Network {
    loss: f64,
    dup: f64,
    reorder: f64,
    /// One-way delay.
    pub base_delay_us: u64,
    jitter_us: u64,
    /// Which side of the current partition each process is on (`None`: no partition).
    sides: Option<Vec<bool>>,
    /// A process cut off from everyone, besides any partition.
    cut_off: Option<usize>,
}

impl Network {
    /// The links of one run.
    pub fn new(cfg: &SimConfig, rng: &mut Xoshiro256PlusPlus) -> Network {
        let base_delay_us = rng.random_range(20..=200);
        Network {
            loss: cfg.loss,
            dup: cfg.dup,
            reorder: cfg.reorder,
            base_delay_us,
            jitter_us: rng.random_range(1..=base_delay_us),
            sides: None,
            cut_off: None,
        }
    }

    /// Cuts `proc` off from everyone (`None` reconnects it).
    pub fn cut_off(&mut self, proc: Option<usize>) {
        self.cut_off = proc;
    }

    /// Whether `a` and `b` can talk.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.sides.as_ref().is_none_or(|s| s[a] == s[b]) && self.cut_off.is_none_or(|c| c != a && c != b)
    }

    /// Cuts the processes into the two sides given.
    pub fn partition(&mut self, sides: Vec<bool>) {
        self.sides = Some(sides);
    }

    /// Heals the partition.
    pub fn heal(&mut self) {
        self.sides = None;
    }

    /// Whether a partition or a cut-off is in force.
    pub fn partitioned(&self) -> bool {
        self.sides.is_some() || self.cut_off.is_some()
    }

    /// The common delay of a multicast datagram (recipients differ only by reordering).
    pub fn multicast_delay(&self, rng: &mut Xoshiro256PlusPlus) -> u64 {
        self.base_delay_us + rng.random_range(0..=self.jitter_us)
    }

    /// What happens to one copy of a datagram from `from` to `to`; `common_delay_us` is the
    /// multicast's delay (or a fresh one for unicast).
    pub fn fate(&self, from: usize, to: usize, common_delay_us: u64, rng: &mut Xoshiro256PlusPlus) -> Fate {
        if !self.connected(from, to) || (self.loss > 0.0 && rng.random_bool(self.loss)) {
            return Fate::Lost;
        }
        let mut delay_us = common_delay_us;
        if self.reorder > 0.0 && rng.random_bool(self.reorder) {
            delay_us += rng.random_range(1..=self.base_delay_us * 8);
        }
        let copies = if self.dup > 0.0 && rng.random_bool(self.dup) { 2 } else { 1 };
        Fate::Arrives { delay_us, copies }
    }
}

/// One planned fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Crash process `proc` (its unsynced writes are lost) and restart it `down_us` later.
    Crash {
        /// The process index.
        proc: usize,
        /// How long it stays down.
        down_us: u64,
    },
    /// Crash whichever process runs the sequencer now, and restart it `down_us` later.
    CrashSequencer {
        /// How long it stays down.
        down_us: u64,
    },
    /// Cut the sequencer's process off, with the processes marked in `minority` (never
    /// enough commit servers to elect or accept), for `for_us`: the rest elect a new one
    /// while the old one keeps running as a zombie.
    IsolateSequencer {
        /// Processes that go with the sequencer (if it is one of them, it simply stays).
        minority: Vec<bool>,
        /// How long the partition lasts.
        for_us: u64,
    },
    /// Cut one member off from everyone for `for_us`, long enough that it falls behind by more
    /// than the log kept.
    CutOff {
        /// The process index.
        proc: usize,
        /// How long it stays cut off.
        for_us: u64,
    },
    /// Cut the group into two sides for `for_us`.
    Partition {
        /// Side of each process.
        sides: Vec<bool>,
        /// How long the partition lasts.
        for_us: u64,
    },
}

/// Which processes may crash, grouped by server kind with how many of each may be down at
/// once (`min(k - 1, n - k)`: durability and progress both survive).
#[derive(Clone, Debug, Default)]
pub struct Crashable {
    /// Groups of process indexes and how many of each may be down together.
    pub groups: Vec<(Vec<usize>, usize)>,
}

/// Plans faults over `[start, end)`: crashes that never take down more of a kind than it can
/// lose, and partitions one at a time.
pub fn plan(
    cfg: &SimConfig,
    processes: usize,
    crashable: &Crashable,
    start: Time,
    end: Time,
    rng: &mut Xoshiro256PlusPlus,
) -> Vec<(Time, Fault)> {
    let mut faults = Vec::new();
    let span = end.0.saturating_sub(start.0).max(1);
    if cfg.crashes {
        for (group, max_down) in &crashable.groups {
            plan_crashes(group, *max_down, start, span, rng, &mut faults);
        }
    }
    if cfg.crash_sequencer {
        let mut t = start.0 + rng.random_range(0..span / 3 + 1);
        while t < end.0 {
            let fault = if rng.random_bool(0.5) {
                Fault::CrashSequencer { down_us: rng.random_range(2_000..=1_500_000) }
            } else {
                let minority = (0..processes).map(|_| rng.random_bool(0.3)).collect();
                Fault::IsolateSequencer { minority, for_us: rng.random_range(100_000..=2_000_000) }
            };
            faults.push((Time(t), fault));
            // Now and then a second fault hits during the recovery from the first.
            t += if rng.random_bool(0.2) {
                rng.random_range(1_000..=600_000)
            } else {
                rng.random_range(600_000..=3_000_000)
            };
        }
    }
    if cfg.partitions {
        let mut t = start.0 + rng.random_range(0..span / 2 + 1);
        while t < end.0 {
            let for_us = rng.random_range(5_000..=cfg.partition_max_us.max(5_000));
            let sides = (0..processes).map(|_| rng.random_bool(0.5)).collect();
            faults.push((Time(t), Fault::Partition { sides, for_us }));
            t += for_us + rng.random_range(10_000..=200_000);
        }
    }
    faults.sort_by_key(|(t, _)| *t);
    faults
}

fn plan_crashes(
    group: &[usize],
    max_down: usize,
    start: Time,
    span: u64,
    rng: &mut Xoshiro256PlusPlus,
    faults: &mut Vec<(Time, Fault)>,
) {
    if max_down == 0 || group.is_empty() {
        return;
    }
    // Crashes of one group are planned back to back, at most `max_down` overlapping: each
    // "lane" holds one down process at a time.
    for _lane in 0..max_down {
        let mut t = start.0 + rng.random_range(0..span / 2 + 1);
        while t < start.0 + span {
            let proc = group[rng.random_range(0..group.len())];
            let down_us = rng.random_range(2_000..=200_000);
            faults.push((Time(t), Fault::Crash { proc, down_us }));
            t += down_us + rng.random_range(5_000..=300_000);
        }
    }
}
