//! Which faults a run injects, and for how long each holds. A quick run injects one of each
//! kind in a fixed order; a soak draws kinds and durations from its seed until its time is up.
//! Faults come one at a time, each ended (restarted, resumed, healed) before the next: the
//! group promises progress only while a majority of each kind of server runs.

use std::fmt;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// One fault; `server` is the index of its target in the configuration (the harness picks
/// it when the fault comes due).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the sequencer, restarted from its disk after `down`.
    KillSequencer { server: usize, down: Duration },
    /// `kill -9` of a commit and data server that is not the sequencer.
    KillServer { server: usize, down: Duration },
    /// `kill -9` of a checkpoint server.
    KillCheckpoint { server: usize, down: Duration },
    /// `SIGSTOP` of the sequencer, `SIGCONT` after `paused` (longer than the failure
    /// timeout: it must come back deposed and harmless).
    PauseSequencer { server: usize, paused: Duration },
    /// The sequencer and a checkpoint server (`with`) cut off from everyone else.
    IsolateSequencer { server: usize, with: usize, held: Duration },
    /// The link of a commit and data server that is not the sequencer set down.
    CutLink { server: usize, held: Duration },
    /// Nothing, for a while.
    Rest { held: Duration },
}

impl Fault {
    /// The kind's name in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillSequencer { .. } => "kill-sequencer",
            Fault::KillServer { .. } => "kill-commit-data-server",
            Fault::KillCheckpoint { .. } => "kill-checkpoint-server",
            Fault::PauseSequencer { .. } => "pause-sequencer",
            Fault::IsolateSequencer { .. } => "isolate-sequencer-with-minority",
            Fault::CutLink { .. } => "cut-link",
            Fault::Rest { .. } => "rest",
        }
    }

    /// The servers it targets, as configured (1-based ids).
    pub fn target(&self) -> String {
        match self {
            Fault::KillSequencer { server, .. }
            | Fault::KillServer { server, .. }
            | Fault::KillCheckpoint { server, .. }
            | Fault::PauseSequencer { server, .. }
            | Fault::CutLink { server, .. } => format!("server {}", server + 1),
            Fault::IsolateSequencer { server, with, .. } => format!("servers {} and {}", server + 1, with + 1),
            Fault::Rest { .. } => String::new(),
        }
    }

    /// How long the group runs undisturbed after it.
    pub fn rest_after(&self) -> Duration {
        match self {
            Fault::Rest { .. } => Duration::ZERO,
            _ => Duration::from_secs(2),
        }
    }

    /// Whether it takes the sequencer away (its target is the sequencer when it begins).
    pub fn takes_the_sequencer(&self) -> bool {
        matches!(self, Fault::KillSequencer { .. } | Fault::PauseSequencer { .. } | Fault::IsolateSequencer { .. })
    }

    /// How long it holds.
    pub fn length(&self) -> Duration {
        match self {
            Fault::KillSequencer { down, .. } | Fault::KillServer { down, .. } | Fault::KillCheckpoint { down, .. } => {
                *down
            }
            Fault::PauseSequencer { paused, .. } => *paused,
            Fault::IsolateSequencer { held, .. } | Fault::CutLink { held, .. } | Fault::Rest { held } => *held,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} for {:.1} s", self.kind(), self.target(), self.length().as_secs_f64())
    }
}

/// The faults of a run, in order.
pub struct Schedule {
    quick: std::vec::IntoIter<Fault>,
    soak: Option<(Xoshiro256PlusPlus, bool)>,
    duration: Duration,
}

const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

impl Schedule {
    /// A quick schedule (one fault of each kind; partitions with `netns`), or a soak of
    /// `duration` drawn from `seed`.
    pub fn new(quick: bool, duration: Duration, netns: bool, seed: u64) -> Schedule {
        if !quick {
            let rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            return Schedule { quick: Vec::new().into_iter(), soak: Some((rng, netns)), duration };
        }
        let mut faults = vec![
            Fault::KillSequencer { server: 0, down: millis(2_000) },
            Fault::KillServer { server: 0, down: millis(2_000) },
            Fault::PauseSequencer { server: 0, paused: millis(2_500) },
            Fault::KillCheckpoint { server: 0, down: millis(1_500) },
        ];
        if netns {
            faults.insert(2, Fault::IsolateSequencer { server: 0, with: 0, held: millis(4_000) });
            faults.push(Fault::CutLink { server: 0, held: millis(2_000) });
        }
        // The quick run ends when its faults do.
        Schedule { quick: faults.into_iter(), soak: None, duration: Duration::from_secs(3_600) }
    }

    /// How long faults may be injected.
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

impl Iterator for Schedule {
    type Item = Fault;

    fn next(&mut self) -> Option<Fault> {
        let Some((rng, netns)) = &mut self.soak else { return self.quick.next() };
        let kinds = if *netns { 7 } else { 5 };
        let ms = |rng: &mut Xoshiro256PlusPlus, lo: u64, hi: u64| millis(rng.random_range(lo..=hi));
        Some(match rng.random_range(0..kinds) {
            0 => Fault::KillSequencer { server: 0, down: ms(rng, 500, 4_000) },
            1 => Fault::KillServer { server: 0, down: ms(rng, 500, 4_000) },
            2 => Fault::KillCheckpoint { server: 0, down: ms(rng, 500, 4_000) },
            3 => Fault::PauseSequencer { server: 0, paused: ms(rng, 1_000, 4_000) },
            4 => Fault::Rest { held: ms(rng, 500, 3_000) },
            5 => Fault::IsolateSequencer { server: 0, with: 0, held: ms(rng, 1_000, 5_000) },
            _ => Fault::CutLink { server: 0, held: ms(rng, 1_000, 4_000) },
        })
    }
}
