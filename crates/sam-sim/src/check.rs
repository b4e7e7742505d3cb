//! The checkers of DESIGN section 1, fed as the run goes (total order, integrity) and at
//! commit time (durability) and at quiescence (atomicity, validity). They keep one reference entry per committed
//! number and one cursor per member, never a member's whole history, so a run of thousands of
//! members stays small.
//!
//! Persistence: the checker applies the whole committed log, in order, to a reference
//! key-value table; every checkpoint a member restores must equal the reference at its number,
//! and at quiescence every member's table must equal the reference.

use std::fmt;

use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};
use sam_core::{Assigned, Chain, Digest, KvTable, Mid, Seq, Slot, StateMachine, Time};
use serde::Serialize;

/// Which promise a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Promise {
    /// All members deliver the same message at each number, in number order.
    TotalOrder,
    /// Delivered at most once, byte-identical, and only if someone sent it.
    Integrity,
    /// At quiescence every live member delivered every committed number.
    Atomicity,
    /// Every message of a sender that stayed alive is committed or reported expired.
    Validity,
    /// Every committed number is held by `k` servers of each kind.
    Durability,
    /// A deposed sequencer never gathers `k_commit` acceptances after the promises that
    /// deposed it.
    Fencing,
    /// The run reached quiescence in time.
    Liveness,
    /// A member's table, or a checkpoint it restored, equals the table of the committed log.
    Persistence,
    /// The messages and entries a server holds stay below the bound.
    BoundedResources,
}

/// One broken promise, with what was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The promise broken.
    pub promise: Promise,
    /// Simulated time, in microseconds.
    pub at_us: u64,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at {}: {}", self.promise, Time(self.at_us), self.detail)
    }
}

/// Who sent a message: a process and the life (restart count) it was in.
pub type Life = (usize, u32);

/// What a sender was told about its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed at this number.
    Committed(Seq),
    /// Can never be committed.
    Expired,
    /// Its fate lies in a part of the log the sender skipped by catching up.
    Unknown,
}

/// The most violations kept per run (the first ones are the interesting ones).
const MAX_VIOLATIONS: usize = 32;

/// The reference history of a run and the violations found against it.
#[derive(Debug, Default)]
pub struct Checker {
    sent: FxHashMap<Mid, (Digest, Life)>,
    /// `committed[s - 1]`: what number `s` was committed to, with the payload digest.
    committed: Vec<Option<(Assigned, Option<Digest>)>>,
    numbered_at: FxHashMap<Mid, Seq>,
    /// The last number each member life delivered.
    cursors: FxHashMap<Life, Seq>,
    outcomes: FxHashMap<Mid, Outcome>,
    deliveries: u64,
    violations: Vec<Violation>,
    /// Payloads of sent messages not yet applied to the reference table.
    payloads: FxHashMap<Mid, Bytes>,
    /// The whole committed log applied in order, through `reference.applied()`.
    reference: KvTable,
    /// Through this number the committed log is applied to the reference.
    applied: Seq,
    checkpoint_every: u64,
    /// The reference digest at each checkpoint number.
    checkpoint_digests: FxHashMap<Seq, Digest>,
    /// Restored checkpoints not yet compared (the reference has not reached them).
    restores: Vec<(Life, Seq, Digest)>,
    /// Member lives whose own checkpoint disagreed with the advertised one.
    diverged: FxHashSet<Life>,
    /// The commit chain each heartbeat named, by number: every sequencer must name the same.
    chains: FxHashMap<Seq, Chain>,
}

impl Checker {
    /// An empty history.
    pub fn new() -> Checker {
        Checker::default()
    }

    fn violate(&mut self, promise: Promise, at: Time, detail: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(Violation { promise, at_us: at.0, detail });
        }
    }

    /// The violations found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// How many deliveries were checked.
    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }

    /// How many numbers were committed.
    pub fn committed(&self) -> u64 {
        self.committed.len() as u64
    }

    /// How many sends were reported committed.
    pub fn outcomes_committed(&self) -> u64 {
        self.outcomes.values().filter(|o| matches!(o, Outcome::Committed(_))).count() as u64
    }

    /// How many sends were reported expired.
    pub fn expired(&self) -> u64 {
        self.outcomes.values().filter(|o| **o == Outcome::Expired).count() as u64
    }

    /// How many sends were reported of unknown outcome.
    pub fn unknown(&self) -> u64 {
        self.outcomes.values().filter(|o| **o == Outcome::Unknown).count() as u64
    }

    /// A sender sent `mid` with a payload of this digest.
    pub fn on_sent(&mut self, mid: Mid, digest: Digest, sender: Life) {
        self.sent.insert(mid, (digest, sender));
    }

    /// Keeps the payload of `mid` for the reference table; checkpoints fall at the multiples of
    /// `checkpoint_every`.
    pub fn keep_payload(&mut self, mid: Mid, payload: Bytes, checkpoint_every: u64) {
        self.payloads.insert(mid, payload);
        self.checkpoint_every = checkpoint_every;
    }

    /// Applies the committed log to the reference table as far as it is gap-free.
    fn advance_reference(&mut self, at: Time) {
        while let Some((assigned, _)) = self.reference(self.applied.next()) {
            let seq = self.applied.next();
            if let Assigned::Mid(mid) = assigned {
                if let Some(payload) = self.payloads.remove(&mid) {
                    self.reference.apply(seq, &payload);
                }
            }
            self.applied = seq;
            if self.checkpoint_every > 0 && seq.0.is_multiple_of(self.checkpoint_every) {
                self.checkpoint_digests.insert(seq, self.reference.digest());
                self.compare_restores(at);
            }
        }
    }

    /// A member life restored the checkpoint at `seq` whose snapshot has `digest`.
    pub fn on_restored(&mut self, at: Time, life: Life, seq: Seq, digest: Digest) {
        self.on_caught_up(at, life, seq);
        self.restores.push((life, seq, digest));
        self.compare_restores(at);
    }

    /// A member life skipped to the checkpoint at `seq`: its deliveries go on after it (a
    /// member without a state machine, whose snapshot there is nothing to compare).
    pub fn on_caught_up(&mut self, at: Time, life: Life, seq: Seq) {
        let cursor = self.cursors.get(&life).copied().unwrap_or(Seq::ZERO);
        if seq < cursor && !self.diverged.contains(&life) {
            self.violate(Promise::Integrity, at, format!("member {life:?} went back from {cursor} to {seq}"));
        }
        self.cursors.insert(life, seq);
    }

    /// A checkpoint server's own checkpoint disagreed with the advertised one: it may restore
    /// from an earlier number than it delivered.
    pub fn on_diverged(&mut self, life: Life) {
        self.diverged.insert(life);
    }

    fn compare_restores(&mut self, at: Time) {
        let mut wrong = Vec::new();
        self.restores.retain(|(life, seq, digest)| match self.checkpoint_digests.get(seq) {
            Some(d) if d == digest => false,
            Some(_) => {
                wrong.push(format!("member {life:?} restored a checkpoint at {seq} that differs from the log's table"));
                false
            }
            None => true,
        });
        for w in wrong {
            self.violate(Promise::Persistence, at, w);
        }
    }

    /// At quiescence: every live member's table (its number and digest) equals the table of
    /// the whole committed log, and every restored checkpoint was compared.
    pub fn check_tables(&mut self, at: Time, tables: &[(Life, Seq, Digest)]) {
        let reference = self.reference.digest();
        for (life, seq, digest) in tables {
            if *seq == self.applied && *digest != reference {
                self.violate(Promise::Persistence, at, format!("member {life:?} holds another table at {seq}"));
            }
        }
        let unchecked: Vec<String> = self
            .restores
            .iter()
            .map(|(life, seq, _)| format!("member {life:?} restored {seq}, never compared"))
            .collect();
        for u in unchecked {
            self.violate(Promise::Persistence, at, u);
        }
    }

    /// A server held `peak` messages or entries, against the bound.
    pub fn check_bound(&mut self, at: Time, what: &str, peak: usize, bound: u64) {
        if peak as u64 >= bound {
            self.violate(Promise::BoundedResources, at, format!("{what} held {peak}, bound {bound}"));
        }
    }

    /// A sequencer's heartbeat named `chain` after `committed`: the commit chain, like the
    /// committed log it sums up, is one for the whole group.
    pub fn on_heartbeat(&mut self, at: Time, committed: Seq, chain: Chain) {
        match self.chains.insert(committed, chain) {
            Some(before) if before != chain => self.violate(
                Promise::TotalOrder,
                at,
                format!("the commit chain after {committed} was named {before:?} and {chain:?}"),
            ),
            _ => {}
        }
    }

    /// A sequencer announced that `first..` are committed to `entries`; returns the messages
    /// this announcement committed for the first time.
    pub fn on_commit(&mut self, at: Time, first: Seq, entries: &[Assigned]) -> Vec<(Seq, Mid)> {
        let mut fresh = Vec::new();
        for (i, assigned) in entries.iter().enumerate() {
            let seq = first.plus(i as u64);
            let new = self.commit_one(at, seq, *assigned);
            if let (true, Assigned::Mid(mid)) = (new, assigned) {
                fresh.push((seq, *mid));
            }
        }
        fresh
    }

    /// Records one committed number; returns whether it was new.
    fn commit_one(&mut self, at: Time, seq: Seq, assigned: Assigned) -> bool {
        let index = (seq.0 - 1) as usize;
        if self.committed.len() <= index {
            self.committed.resize(index + 1, None);
        }
        if let Some((known, _)) = self.committed[index] {
            if known != assigned {
                self.violate(
                    Promise::TotalOrder,
                    at,
                    format!("number {seq} committed to {known:?} and to {assigned:?}"),
                );
            }
            return false;
        }
        let digest = match assigned {
            Assigned::Noop => None,
            Assigned::Mid(mid) => self.note_numbered(at, seq, mid),
        };
        self.committed[index] = Some((assigned, digest));
        self.advance_reference(at);
        true
    }

    fn note_numbered(&mut self, at: Time, seq: Seq, mid: Mid) -> Option<Digest> {
        if let Some(other) = self.numbered_at.insert(mid, seq) {
            self.violate(Promise::Integrity, at, format!("message {mid} committed at {other} and at {seq}"));
        }
        match self.sent.get(&mid) {
            Some((digest, _)) => Some(*digest),
            None => {
                self.violate(Promise::Integrity, at, format!("number {seq} committed to {mid}, which nobody sent"));
                None
            }
        }
    }

    /// A commit server answered a query with these committed slots: each must be what the
    /// number was committed to.
    pub fn on_entries_served(&mut self, at: Time, first: Seq, slots: &[Slot]) {
        for (i, slot) in slots.iter().enumerate() {
            let seq = first.plus(i as u64);
            let assigned = slot.entry.assigned();
            match self.reference(seq) {
                Some((known, _)) if known == assigned => {}
                other => {
                    let detail = format!("a commit server served {assigned:?} at {seq}, committed to {other:?}");
                    self.violate(Promise::TotalOrder, at, detail);
                }
            }
        }
    }

    /// Member `life` delivered `mid` at `seq` with a payload of `digest`.
    pub fn on_deliver(&mut self, at: Time, life: Life, seq: Seq, mid: Mid, digest: Digest) {
        self.deliveries += 1;
        let last = self.cursors.get(&life).copied().unwrap_or(Seq::ZERO);
        if seq <= last {
            self.violate(Promise::Integrity, at, format!("member {life:?} delivered {seq} after {last}"));
            return;
        }
        self.cursors.insert(life, seq);
        match self.reference(seq) {
            Some((Assigned::Mid(m), d)) if m == mid => {
                if d != Some(digest) {
                    self.violate(
                        Promise::Integrity,
                        at,
                        format!("member {life:?} delivered {mid} at {seq} with other bytes"),
                    );
                }
            }
            other => {
                let detail = format!("member {life:?} delivered {mid} at {seq}, committed to {other:?}");
                self.violate(Promise::TotalOrder, at, detail);
            }
        }
        if let Some(skipped) =
            (last.0 + 1..seq.0).map(Seq).find(|s| !matches!(self.reference(*s), Some((Assigned::Noop, _))))
        {
            self.violate(Promise::TotalOrder, at, format!("member {life:?} delivered {seq} but not {skipped}"));
        }
    }

    fn reference(&self, seq: Seq) -> Option<(Assigned, Option<Digest>)> {
        self.committed.get((seq.0.checked_sub(1)?) as usize).copied().flatten()
    }

    /// A sender was told the outcome of its message.
    pub fn on_outcome(&mut self, at: Time, mid: Mid, outcome: Outcome) {
        if let Some(previous) = self.outcomes.insert(mid, outcome) {
            self.violate(Promise::Validity, at, format!("{mid} reported {previous:?}, then {outcome:?}"));
        }
    }

    /// Atomicity at quiescence: each live member life delivered every committed number.
    pub fn check_atomicity(&mut self, at: Time, live_members: &[Life]) {
        let last_message = (1..=self.committed.len() as u64)
            .rev()
            .map(Seq)
            .find(|s| matches!(self.reference(*s), Some((Assigned::Mid(_), _))))
            .unwrap_or(Seq::ZERO);
        if (1..=self.committed.len() as u64).any(|s| self.reference(Seq(s)).is_none()) {
            self.violate(Promise::Atomicity, at, "the committed numbers have a hole".into());
        }
        for life in live_members {
            let cursor = self.cursors.get(life).copied().unwrap_or(Seq::ZERO);
            if cursor < last_message {
                self.violate(
                    Promise::Atomicity,
                    at,
                    format!("member {life:?} delivered up to {cursor} of {last_message}"),
                );
            }
        }
    }

    /// Validity at quiescence: every message a live sender life sent has an outcome that
    /// agrees with the history.
    pub fn check_validity(&mut self, at: Time, live_senders: &FxHashSet<Life>) {
        let mut problems = Vec::new();
        for (mid, (_, sender)) in &self.sent {
            let numbered = self.numbered_at.get(mid).copied();
            match (self.outcomes.get(mid), numbered) {
                (Some(Outcome::Committed(s)), Some(n)) if *s == n => {}
                (Some(Outcome::Expired), None) => {}
                (Some(Outcome::Unknown), _) => {}
                (None, _) if !live_senders.contains(sender) => {}
                (outcome, numbered) => problems.push(format!("{mid}: told {outcome:?}, numbered at {numbered:?}")),
            }
        }
        problems.sort();
        for p in problems {
            self.violate(Promise::Validity, at, p);
        }
    }

    /// Durability when a number is announced committed: its entry must already be durable on
    /// `k.0` commit servers and its data on `k.1` data servers ("durable means fsync'd before
    /// anyone is told"). Disks never lose durable writes, so this holds ever after.
    pub fn on_durable_copies(&mut self, at: Time, seq: Seq, mid: Mid, copies: (usize, usize), k: (usize, usize)) {
        if copies.0 < k.0 || copies.1 < k.1 {
            let detail =
                format!("{mid} committed at {seq} while durable on {} commit and {} data servers", copies.0, copies.1);
            self.violate(Promise::Durability, at, detail);
        }
    }

    /// A deposed sequencer gathered acceptances after the promises that deposed it.
    pub fn fencing(&mut self, at: Time, detail: String) {
        self.violate(Promise::Fencing, at, detail);
    }

    /// The run did not reach quiescence.
    pub fn liveness(&mut self, at: Time, why: String) {
        self.violate(Promise::Liveness, at, why);
    }
}
