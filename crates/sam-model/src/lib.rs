//! Exhaustive model check of SAM's sequencer failover: the ballot rules of DESIGN section 6,
//! together with the commit-server rules of section 4 (step 4) and the normal numbering path
//! they protect.
//!
//! [`check`] explores, breadth first with the [`stateright`] checker, every state that a small
//! system can reach, and checks in each one that
//!
//! - no two different mids are ever committed at one number,
//! - no mid is ever committed at two numbers,
//! - no number is committed both as a mid and as `Noop`,
//!
//! where "committed" means announced by some sequencer after `k_commit` acceptances at its
//! epoch. It also checks that the interesting things can happen at all (a new sequencer
//! commits a mid it recovered, a `Noop` is committed, both mids are committed, another mid is
//! committed where a server still holds an older uncommitted one, a wiped server rejoins and
//! accepts again), so that a model which silently stopped doing anything would fail too.
//! Each [`Mutant`] breaks one rule; the test suite shows that each one breaks safety, which is
//! what makes "the correct rules hold" mean something.
//!
//! # The system
//!
//! Three commit servers `S0`, `S1`, `S2` (`n_commit = 3`), `k_commit = 2`. `S0` and `S1` are
//! candidates of ranks 0 and 1: an epoch is `round.rank`, ordered by round then rank, so epochs
//! are unique per candidate (DESIGN section 3). Two mids, `a` and `b`. With the default
//! [`Bounds`]: numbers 1 to 3, at most 3 ballots in all (the start-up one included), rounds 1
//! and 2, and one crash that wipes a server's storage.
//!
//! - **Commit server** (durable: promised epoch, `seq -> (epoch, entry)` with `entry` a mid or
//!   `Noop`). It grants a `Prepare` only if its epoch is above its promise, answering with its
//!   entries at `from_seq` and above. It accepts an `Assign` only if the epoch is at least its
//!   promise, raising the promise; an entry is replaced only by one of a higher epoch; it
//!   answers `Accepted{epoch, upto}` with `upto` the highest number such that every number
//!   from the epoch's first number through `upto` is stored at this epoch (gaps are never
//!   skipped).
//! - **Candidate** (any time: a timeout, or start-up). It picks an epoch above its promise and
//!   its current ballot's, makes its own promise durable, and broadcasts
//!   `Prepare{epoch, from_seq}` with `from_seq` its committed prefix + 1. With
//!   `n_commit - k_commit + 1` promises (its own included) it builds the recovered range
//!   `from_seq..=highest reported`: at each number the entry of the highest epoch; a mid
//!   committed below `from_seq` (as far as it knows) becomes `Noop`; a mid at several numbers
//!   keeps only its highest-epoch occurrence; unreported numbers become `Noop`. It re-proposes
//!   the range under its epoch and announces each number after `k_commit` acceptances at that
//!   epoch. Once the whole range is committed its ballot has finished (heartbeats start), and it
//!   numbers mids it does not know to be numbered (committed below `from_seq`, or assigned by
//!   itself, the range included) from `max(from_seq, highest reported + 1)` on, each announced
//!   after `k_commit` acceptances. The sequencer's own server is one of the acceptors: its own
//!   write of what it assigned becomes durable at a step of its own, after which it counts its
//!   own acceptance.
//! - **Wiped server** (the crash, which may strike any server at any moment, a candidate or
//!   the sequencer included, whose volatile state goes with it). It loses everything, copies promises and entries from both
//!   peers (`n_commit - k_commit + 1 = 2` of them), takes no part in ballots or acceptances
//!   until it hears the heartbeat of a finished ballot above every promise it copied, then
//!   copies the entries again and takes that epoch as its promise.
//! - **Network.** `Prepare`s and `Assign`s are broadcasts that stay deliverable to every server
//!   any number of times, in any order, or never: loss, reordering and duplication. A reply
//!   (`Promise`, `Accepted`) either reaches its candidate in the step that produces it or is
//!   lost. `Commit`s and heartbeats: see below.
//!
//! # What is abstracted away, and why that is sound
//!
//! - **Late replies.** A reply carries a snapshot of its sender taken when it was sent, and its
//!   receiver only folds it into its own volatile knowledge (promises, acceptances). Taking it
//!   in at once rather than later only lets its receiver act earlier, which it may always
//!   postpone; and a reply that arrives after its ballot was abandoned is a lost one. So
//!   "delivered at once or lost" covers every delivery time, crashes of the sender in between
//!   included.
//! - **`Rejected`** only tells a sequencer to stop. Any sequencer in the model may stop at any
//!   moment (nothing forces it to act), so leaving `Rejected` out only adds behaviours.
//! - **Pre-vote** is always satisfied: it only ever refuses, which a lost `Prepare` covers.
//! - **Commits and heartbeats.** Every announcement goes into a record that the properties read.
//!   What a candidate knows is committed (from `Commit`s, or peers' committed entries, any of
//!   which may be lost or late) is any prefix of that record, chosen when it starts a ballot.
//!   Heartbeats of finished ballots may reach a waiting wiped server at any time after.
//! - **Crashes that keep storage.** A crash that loses only volatile state makes a sequencer
//!   stop and forget what it learnt is committed; both are already among the behaviours above.
//!   So the one crash modelled is the harder one, which also wipes storage.
//! - **The data path.** `Order`s are always available (senders and data servers retransmit);
//!   timestamps and `max_lifetime` play no part (the sequencer keeps its whole history);
//!   checkpoints, payloads and digests are left out.
//! - **Batching.** A recovered range is re-proposed in one `Assign` (it fits one datagram
//!   here); each new mid gets an `Assign` of its own, so gaps still arise.
//!
//! The explorer also merges states that differ only in things no step can use any more:
//! requests that no server would act on again (promises only grow, and a wiped server rejoins
//! with a promise at least that of every peer), acceptances below the lowest number still to
//! announce, heartbeats no waiting server could take, and a candidate or sequencer that no
//! server will ever answer again (it becomes idle). While no mid has been numbered anywhere,
//! numbering `a` stands for numbering either mid (they are interchangeable).
//!
//! # Readings of DESIGN that the model fixes
//!
//! - A candidate makes its own promise durable before its `Prepare` goes out (so it never
//!   reuses an epoch it still knows, and the wiped-server rule holds: see
//!   [`Mutant::OwnPromiseAfterPrepare`]).
//! - "Highest reported" is the highest number among the entries the promises carry (those at
//!   `from_seq` and above), 0 when they carry none; hence resuming at
//!   `max(from_seq, highest reported + 1)`.
//! - A `Prepare` at the epoch a server already promised (a duplicate) is ignored, not
//!   answered `Rejected`.
//! - A wiped server copies from both peers twice (before waiting, and after the ballot), and
//!   after the second copy takes the finished ballot's epoch as its promise, as written.
//!
//! # Results
//!
//! With the default bounds the correct rules hold over about 3.9 million distinct states
//! (20 million generated, paths up to 28 steps), in 15 to 20 seconds on one core of the
//! project's 2-core machines. Every mutant breaks them; the shortest counterexamples have 8 to
//! 14 steps (18 for [`Mutant::OwnPromiseAfterPrepare`]). DESIGN section 6 reports the same
//! check (3 commit servers, `k_commit = 2`, 2 mids, 3 numbers, 3 ballots). With three rounds
//! the rules still hold, over about 17 million states (an ignored test, about a minute); a
//! fourth number changes nothing, since with two mids and three ballots no run reaches it.
#![deny(missing_docs)]

mod model;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use stateright::{Checker, HasDiscoveries, Model};

use model::FailoverModel;

/// A deliberately broken rule. Each one must make the check find a counterexample; that the
/// correct rules hold only means something because each of these does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutant {
    /// The candidate proceeds with `n_commit - k_commit` promises instead of one more.
    OnePromiseTooFew,
    /// The recovered range keeps, at each number, the entry of the lowest epoch reported.
    KeepLowestEpoch,
    /// A mid reported at several numbers of the recovered range keeps all its occurrences.
    NoRangeDedup,
    /// A mid committed below `from_seq` is not turned into `Noop` in the recovered range.
    DedupIgnoresCommittedBelow,
    /// `Accepted{upto}` reports the highest number stored at the epoch, skipping gaps.
    AcceptedSkipsGaps,
    /// The new sequencer resumes at `highest reported + 1`, ignoring `from_seq`.
    ResumeAfterHighestOnly,
    /// A candidate counts its committed prefix (and de-duplication history) from the entries
    /// it stored, not only from `Commit`s.
    PrefixFromStoredEntries,
    /// A wiped server copies from its peers and takes part again at once.
    WipedServerOnlyCopies,
    /// A candidate's own promise is not durable before its `Prepare` goes out: it travels
    /// like any other, late or never. (Not in DESIGN's list: it shows that the wiped-server
    /// rule relies on the candidate promising itself first.)
    OwnPromiseAfterPrepare,
}

impl Mutant {
    /// Every mutant.
    pub const ALL: [Mutant; 9] = [
        Mutant::OnePromiseTooFew,
        Mutant::KeepLowestEpoch,
        Mutant::NoRangeDedup,
        Mutant::DedupIgnoresCommittedBelow,
        Mutant::AcceptedSkipsGaps,
        Mutant::ResumeAfterHighestOnly,
        Mutant::PrefixFromStoredEntries,
        Mutant::WipedServerOnlyCopies,
        Mutant::OwnPromiseAfterPrepare,
    ];

    /// A short name, as given on a command line (`one-promise-too-few`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Mutant::OnePromiseTooFew => "one-promise-too-few",
            Mutant::KeepLowestEpoch => "keep-lowest-epoch",
            Mutant::NoRangeDedup => "no-range-dedup",
            Mutant::DedupIgnoresCommittedBelow => "dedup-ignores-committed-below",
            Mutant::AcceptedSkipsGaps => "accepted-skips-gaps",
            Mutant::ResumeAfterHighestOnly => "resume-after-highest-only",
            Mutant::PrefixFromStoredEntries => "prefix-from-stored-entries",
            Mutant::WipedServerOnlyCopies => "wiped-server-only-copies",
            Mutant::OwnPromiseAfterPrepare => "own-promise-after-prepare",
        }
    }
}

impl fmt::Display for Mutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mutant {
    type Err = String;

    fn from_str(s: &str) -> Result<Mutant, String> {
        Mutant::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Mutant::ALL.iter().map(|m| m.name()).collect();
            format!("unknown mutant {s:?}; one of: {}", names.join(", "))
        })
    }
}

/// The bounds that keep the state space finite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bounds {
    /// Sequence numbers available: `1..=numbers`, at most 4.
    pub numbers: u8,
    /// Ballots started in all, the start-up ballot included; at most 4.
    pub ballots: u8,
    /// Rounds an epoch may use (an epoch is `round.rank`); at most 7.
    pub rounds: u8,
    /// Whether one commit server may crash and lose its storage (the one crash modelled).
    pub wipe: bool,
    /// Checker threads. One is the fastest on a 2-core machine, and the only way to get the
    /// shortest counterexample.
    pub threads: usize,
    /// Stop after generating about this many states; the outcome then says it is incomplete.
    pub max_states: Option<usize>,
}

impl Default for Bounds {
    /// The bounds of the test suite: 3 numbers, 3 ballots, 2 rounds, one wipe, one thread.
    fn default() -> Bounds {
        Bounds { numbers: 3, ballots: 3, rounds: 2, wipe: true, threads: 1, max_states: None }
    }
}

/// What a check found.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The bounds checked.
    pub bounds: Bounds,
    /// The mutant checked, or `None` for the rules of DESIGN section 6.
    pub mutant: Option<Mutant>,
    /// Distinct states explored.
    pub states: usize,
    /// States generated, repeats included.
    pub generated: usize,
    /// The longest path explored, in steps.
    pub max_depth: usize,
    /// Whether every reachable state was explored (no `max_states` cut, no early stop).
    pub complete: bool,
    /// The safety rule broken, if any: "no two different mids are committed at one number",
    /// "no mid is committed at two numbers" or "no number is committed both as a mid and as
    /// Noop".
    pub violated: Option<&'static str>,
    /// The steps from the initial state to the violation (the shortest with one thread).
    pub counterexample: Option<Vec<String>>,
    /// What was committed at the end of the counterexample, e.g. `#1: a, b`.
    pub witness: Option<String>,
    /// The reachability checks that no explored state met (meaningful for a complete check).
    pub unreached: Vec<&'static str>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Outcome {
    /// Whether the rules held over every reachable state and every reachability check was met.
    pub fn holds(&self) -> bool {
        self.complete && self.violated.is_none() && self.unreached.is_empty()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = self.mutant.map_or("the failover rules".to_string(), |m| format!("mutant {m}"));
        let b = &self.bounds;
        writeln!(
            f,
            "{what} (3 commit servers, k_commit 2, 2 candidates, 2 mids, {} numbers, {} ballots, {} rounds, {}): \
             {} states ({} generated, depth {}) in {:.1?}",
            b.numbers,
            b.ballots,
            b.rounds,
            if b.wipe { "one wipe" } else { "no crash" },
            self.states,
            self.generated,
            self.max_depth,
            self.elapsed,
        )?;
        match (&self.violated, &self.counterexample) {
            (Some(p), Some(steps)) => {
                writeln!(f, "VIOLATED: {p}, after {} steps:", steps.len())?;
                for (i, s) in steps.iter().enumerate() {
                    writeln!(f, "  {:2}. {s}", i + 1)?;
                }
                if let Some(w) = &self.witness {
                    writeln!(f, "  committed: {w}")?;
                }
            }
            _ if !self.complete => writeln!(f, "incomplete: no violation among the states explored")?,
            _ => writeln!(f, "holds")?,
        }
        if self.violated.is_none() {
            for u in &self.unreached {
                writeln!(f, "never reached: {u}")?;
            }
        }
        Ok(())
    }
}

/// Checks the failover rules (`None`) or a mutant of them with the default [`Bounds`]. The
/// correct rules take 15 to 20 seconds; a mutant stops at its first counterexample.
pub fn check(mutant: Option<Mutant>) -> Outcome {
    check_with(Bounds::default(), mutant)
}

/// Checks the failover rules (`None`) or a mutant of them within `bounds`, stopping at the
/// first violation.
///
/// # Panics
///
/// If a bound is out of its range.
pub fn check_with(bounds: Bounds, mutant: Option<Mutant>) -> Outcome {
    assert!((1..=model::SEQ_CAP as u8).contains(&bounds.numbers), "numbers must be 1..=4");
    assert!((1..=4).contains(&bounds.ballots), "ballots must be 1..=4");
    assert!((1..=7).contains(&bounds.rounds), "rounds must be 1..=7");
    let start = Instant::now();
    let model = FailoverModel { bounds, mutant };
    let properties = model.properties();
    let mut builder = model.checker().threads(bounds.threads.max(1)).finish_when(HasDiscoveries::AnyFailures);
    if let Some(n) = bounds.max_states {
        builder = builder.target_state_count(n);
    }
    let checker = builder.spawn_bfs().join();
    let discoveries = checker.discoveries();
    let mut outcome = Outcome {
        bounds,
        mutant,
        states: checker.unique_state_count(),
        generated: checker.state_count(),
        max_depth: checker.max_depth(),
        complete: false,
        violated: None,
        counterexample: None,
        witness: None,
        unreached: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for p in &properties {
        match (p.expectation.discovery_is_failure(), discoveries.get(p.name)) {
            (true, Some(path)) => {
                outcome.violated = Some(model::broken_rule(path.last_state()).unwrap_or(p.name));
                outcome.witness = Some(model::describe_commits(path.last_state()));
                let m = checker.model();
                outcome.counterexample = Some(path.clone().into_actions().iter().map(|a| m.format_action(a)).collect());
            }
            (false, None) => outcome.unreached.push(p.name),
            _ => {}
        }
    }
    outcome.complete = outcome.violated.is_none() && bounds.max_states.is_none_or(|n| outcome.generated < n);
    outcome.elapsed = start.elapsed();
    outcome
}
