//! A candidate's ballot: how a commit server takes office as sequencer (DESIGN section 6).
//!
//! The candidate multicasts `Prepare{epoch, from_seq}` and collects `Promise`s (each a durable
//! promise, with the slots the promiser stores from `from_seq` on, possibly in several parts).
//! A ballot starts with a pre-vote that changes nothing durable: only when `n_commit -
//! k_commit + 1` servers (itself included) answer that they, too, miss the sequencer does the
//! candidate promise its own epoch — so a candidate cut off on its own never raises a promise
//! and cannot depose a healthy sequencer when it returns. Its own promise comes before any
//! other: its `Prepare` goes out only once that promise is durable, so a server that lost its storage and copies promises sees the
//! candidate's epoch (the model check finds a counterexample otherwise). With
//! `n_commit - k_commit + 1` complete promises — a set that intersects every set of
//! `k_commit` acceptances — its own among them, it builds the recovered range: for each number the entry of the
//! highest epoch; a mid already committed below `from_seq`, or appearing at several numbers
//! except its highest-epoch occurrence, becomes `Noop`; numbers nobody reported become `Noop`.
//! The new [`Sequencer`](crate::Sequencer) then re-proposes that range under its epoch.
//!
//! A promiser that garbage-collected (DESIGN section 5) reports its floor: every number up to
//! it is committed and covered by a checkpoint. The range then starts after the highest floor
//! of the promises used, since nothing below it may be proposed again.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::action::{Channel, Dest, Outbox};
use crate::config::{Config, Mutation, MAX_SERVERS_PER_KIND};
use crate::ids::{Epoch, Mid, Seq, SeqRange, Time};
use crate::message::{CheckpointInfo, Entry, Message, PreVote, PreVoteGranted, Prepare, Promise, Rejected, Slot};

/// What one commit server promised so far.
#[derive(Clone, Debug, Default)]
struct Promised {
    highest: Seq,
    /// Every number up to this one is committed and forgotten by the promiser.
    floor: Seq,
    /// The parts received, `first -> last`.
    parts: BTreeMap<Seq, Seq>,
    slots: BTreeMap<Seq, Slot>,
}

impl Promised {
    /// Whether the parts cover every number from `from_seq` (or the floor) through `highest`.
    fn complete(&self, from_seq: Seq) -> bool {
        let mut covered = from_seq.minus(1).max(self.floor);
        for (&first, &last) in &self.parts {
            if first > covered.next() {
                break;
            }
            covered = covered.max(last);
        }
        covered >= self.highest
    }
}

/// How a ballot ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still collecting promises.
    Open,
    /// A commit server has promised a higher epoch, or time ran out.
    Lost,
}

/// One candidacy for one epoch.
#[derive(Debug)]
pub struct Ballot {
    cfg: Arc<Config>,
    epoch: Epoch,
    from_seq: Seq,
    started: Time,
    deadline: Time,
    next_prepare: Time,
    /// Per commit-server rank.
    promises: Vec<Option<Promised>>,
    lost: bool,
    phase: Phase,
    /// The ranks that granted the pre-vote.
    pre_votes: u64,
    /// The highest advertised checkpoint a promise reported.
    checkpoint: Option<CheckpointInfo>,
}

/// Where a ballot stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Asking whether enough servers miss the sequencer too.
    PreVoting,
    /// The candidate's own promise is being written.
    Promising,
    /// The `Prepare` went out; collecting promises.
    Announced,
}

impl Ballot {
    /// Starts a ballot for `epoch`; its `Prepare` waits for [`Ballot::announce`].
    pub fn start(cfg: Arc<Config>, epoch: Epoch, from_seq: Seq, now: Time) -> Ballot {
        let n = cfg.commit_servers.len();
        Ballot {
            epoch,
            from_seq,
            started: now,
            deadline: now.plus_us(cfg.failure_timeout_us),
            next_prepare: now.plus_us(cfg.request_timeout_us),
            promises: vec![None; n],
            lost: false,
            phase: Phase::PreVoting,
            pre_votes: 0,
            checkpoint: None,
            cfg,
        }
    }

    /// The pre-vote question of this ballot.
    pub fn pre_vote(&self) -> Message {
        Message::PreVote(PreVote { epoch: self.epoch })
    }

    /// A commit server granted the pre-vote; returns whether the candidate should now promise
    /// its own epoch (once: the pre-vote has just passed, counting itself).
    pub fn handle_pre_vote_granted(&mut self, rank: usize, granted: &PreVoteGranted, own_rank: usize) -> bool {
        if granted.epoch != self.epoch || rank >= MAX_SERVERS_PER_KIND || self.phase != Phase::PreVoting {
            return false;
        }
        self.pre_votes |= 1 << rank | 1 << own_rank.min(MAX_SERVERS_PER_KIND - 1);
        if (self.pre_votes.count_ones() as usize) < self.quorum().max(1) {
            return false;
        }
        self.phase = Phase::Promising;
        true
    }

    /// The `Prepare` of this ballot.
    pub fn prepare(&self) -> Prepare {
        Prepare { epoch: self.epoch, from_seq: self.from_seq }
    }

    /// Multicasts the `Prepare`, once the candidate's own promise is durable.
    pub fn announce(&mut self, now: Time, out: &mut Outbox) {
        if self.phase == Phase::Promising {
            self.phase = Phase::Announced;
            self.next_prepare = now.plus_us(self.cfg.request_timeout_us);
            out.send(Dest::Channel(Channel::Commit), Message::Prepare(self.prepare()));
        }
    }

    /// Whether the candidate's own promise is being written (the `Prepare` waits for it).
    pub fn awaits_own_promise(&self) -> bool {
        self.phase == Phase::Promising
    }

    /// The epoch this ballot is for.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// When the ballot started.
    pub fn started(&self) -> Time {
        self.started
    }

    /// The highest advertised checkpoint the promises reported.
    pub fn checkpoint(&self) -> Option<CheckpointInfo> {
        self.checkpoint
    }

    /// The first number the ballot asks about: the candidate's committed prefix plus one.
    pub fn from_seq(&self) -> Seq {
        self.from_seq
    }

    /// The first number the recovered range starts at: `from_seq`, or above the highest floor
    /// of the complete promises.
    pub fn recovery_start(&self) -> Seq {
        self.complete().iter().map(|p| p.floor.next()).fold(self.from_seq, Seq::max)
    }

    /// Takes one part of a commit server's promise.
    pub fn handle_promise(&mut self, rank: usize, promise: &Promise) {
        if promise.epoch != self.epoch || promise.last < promise.first {
            return;
        }
        let Some(slot) = self.promises.get_mut(rank) else { return };
        let p = slot.get_or_insert_with(Promised::default);
        p.highest = p.highest.max(promise.highest);
        p.floor = p.floor.max(promise.floor);
        if promise.checkpoint.is_some_and(|c| self.checkpoint.is_none_or(|known| c.seq > known.seq)) {
            self.checkpoint = promise.checkpoint;
        }
        p.parts.insert(promise.first, promise.last);
        let from_seq = self.from_seq;
        let range = SeqRange { first: promise.first, last: promise.last };
        let reported =
            promise.slots.iter().filter(|s| s.seq >= from_seq && s.seq >= range.first && s.seq <= range.last);
        p.slots.extend(reported.map(|s| (s.seq, s.slot)));
    }

    /// A commit server refused: if it promised a higher epoch, this ballot is lost.
    pub fn handle_rejected(&mut self, rejected: &Rejected) {
        if rejected.promised > self.epoch {
            self.lost = true;
        }
    }

    /// Asks again the servers whose promise is incomplete; gives up at the deadline.
    pub fn handle_tick(&mut self, now: Time, out: &mut Outbox) -> Verdict {
        if self.lost || now >= self.deadline {
            self.lost = true;
            return Verdict::Lost;
        }
        if now < self.next_prepare {
            return Verdict::Open;
        }
        self.next_prepare = now.plus_us(self.cfg.request_timeout_us);
        match self.phase {
            Phase::PreVoting => out.send(Dest::Channel(Channel::Commit), self.pre_vote()),
            Phase::Promising => {}
            Phase::Announced => {
                for (rank, pid) in self.cfg.commit_servers.iter().enumerate() {
                    if !self.promises[rank].as_ref().is_some_and(|p| p.complete(self.from_seq)) {
                        out.send(Dest::Pid(*pid), Message::Prepare(self.prepare()));
                    }
                }
            }
        }
        Verdict::Open
    }

    /// When the ballot next needs a tick.
    pub fn poll_timeout(&self) -> Time {
        self.next_prepare.min(self.deadline)
    }

    /// Whether the ballot is lost.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// The promises needed: `n_commit - k_commit + 1`.
    fn quorum(&self) -> usize {
        let quorum = self.cfg.commit_servers.len() - self.cfg.k_commit + 1;
        if self.cfg.mutated(Mutation::PromiseTooFew) {
            quorum - 1
        } else {
            quorum
        }
    }

    fn complete(&self) -> Vec<&Promised> {
        self.promises.iter().flatten().filter(|p| p.complete(self.from_seq)).collect()
    }

    /// Whether enough complete promises arrived, the candidate's own among them. Its own
    /// promise is durable before it arrives, so a candidate that took office with an epoch
    /// can never stand with that epoch again after a restart (the round it recovers from its
    /// promise is at least as high).
    pub fn has_quorum(&self, own_rank: usize) -> bool {
        let own = self.promises.get(own_rank).and_then(Option::as_ref).is_some_and(|p| p.complete(self.from_seq));
        own && self.complete().len() >= self.quorum().max(1)
    }

    /// The recovered range from `from_seq`, once enough complete promises arrived (see
    /// [`Ballot::has_quorum`]). `committed_below` holds the mids committed in the history below
    /// `from_seq`.
    pub fn recovered(&self, own_rank: usize, committed_below: &FxHashSet<Mid>) -> Option<Vec<Entry>> {
        if !self.has_quorum(own_rank) {
            return None;
        }
        let complete = self.complete();
        let highest = complete.iter().map(|p| p.highest).max().unwrap_or(Seq::ZERO);
        let mut entries: Vec<Slot> = Vec::new();
        let mut seq = self.recovery_start();
        while seq <= highest {
            let reported = complete.iter().filter_map(|p| p.slots.get(&seq));
            let best = if self.cfg.mutated(Mutation::KeepLowestEpoch) {
                reported.min_by_key(|s| s.epoch)
            } else {
                reported.max_by_key(|s| s.epoch)
            };
            entries.push(best.copied().unwrap_or(Slot { epoch: Epoch::NONE, entry: Entry::Noop }));
            seq = seq.next();
        }
        Some(deduplicate(entries, committed_below))
    }
}

/// Turns into `Noop` every occurrence of a mid committed below the range, and every occurrence
/// of a mid but its highest-epoch one (DESIGN section 6, safety).
fn deduplicate(slots: Vec<Slot>, committed_below: &FxHashSet<Mid>) -> Vec<Entry> {
    let mut keep: FxHashMap<Mid, (Epoch, usize)> = FxHashMap::default();
    for (i, slot) in slots.iter().enumerate() {
        if let Entry::Msg { mid, .. } = slot.entry {
            let best = keep.entry(mid).or_insert((slot.epoch, i));
            if slot.epoch > best.0 {
                *best = (slot.epoch, i);
            }
        }
    }
    slots
        .iter()
        .enumerate()
        .map(|(i, slot)| match slot.entry {
            Entry::Msg { mid, .. } if committed_below.contains(&mid) || keep.get(&mid).is_some_and(|k| k.1 != i) => {
                Entry::Noop
            }
            entry => entry,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Digest, Incarnation, Pid, Source};
    use crate::message::PromisedSlot;

    fn cfg() -> Arc<Config> {
        Arc::new(Config::new(vec![Pid(1), Pid(2), Pid(3)], vec![Pid(11)], vec![]))
    }

    fn msg(counter: u64) -> Entry {
        let mid = Mid { source: Source { pid: Pid(9), incarnation: Incarnation(1) }, counter };
        Entry::Msg { mid, digest: Digest::of(&counter.to_le_bytes()) }
    }

    fn promise(epoch: Epoch, highest: u64, slots: &[(u64, u64, Entry)]) -> Promise {
        let slots = slots
            .iter()
            .map(|&(s, e, entry)| PromisedSlot { seq: Seq(s), slot: Slot { epoch: Epoch(e), entry } })
            .collect();
        let (first, last, highest) = (Seq(5), Seq(highest.max(5)), Seq(highest));
        Promise { epoch, first, last, highest, floor: Seq::ZERO, checkpoint: None, slots }
    }

    #[test]
    fn takes_the_highest_epoch_fills_noops_and_needs_n_minus_k_plus_1_promises() {
        let epoch = Epoch::new(3, 1);
        let mut b = Ballot::start(cfg(), epoch, Seq(5), Time(0));
        b.handle_promise(2, &promise(epoch, 6, &[(5, 2, msg(2))]));
        assert_eq!(b.recovered(0, &FxHashSet::default()), None, "one promise of the two needed");
        b.handle_promise(1, &promise(epoch, 7, &[(5, 1, msg(1)), (7, 1, msg(3))]));
        assert_eq!(b.recovered(0, &FxHashSet::default()), None, "two, but not the candidate's own");
        b.handle_promise(0, &promise(epoch, 5, &[]));
        let got = b.recovered(0, &FxHashSet::default()).expect("three promises, its own among them");
        assert_eq!(got, vec![msg(2), Entry::Noop, msg(3)]);
    }

    #[test]
    fn a_mid_committed_below_or_repeated_becomes_noop() {
        let slots = vec![
            Slot { epoch: Epoch(1), entry: msg(1) },
            Slot { epoch: Epoch(1), entry: msg(2) },
            Slot { epoch: Epoch(2), entry: msg(2) },
        ];
        let committed: FxHashSet<Mid> = [match msg(1) {
            Entry::Msg { mid, .. } => mid,
            Entry::Noop => unreachable!(),
        }]
        .into_iter()
        .collect();
        assert_eq!(deduplicate(slots, &committed), vec![Entry::Noop, Entry::Noop, msg(2)]);
    }

    #[test]
    fn an_incomplete_promise_does_not_count_and_a_higher_promise_loses_the_ballot() {
        let epoch = Epoch::new(3, 1);
        let mut b = Ballot::start(cfg(), epoch, Seq(5), Time(0));
        let mut part = promise(epoch, 900, &[]);
        part.last = Seq(10);
        b.handle_promise(0, &part);
        b.handle_promise(1, &promise(epoch, 4, &[]));
        assert_eq!(b.recovered(0, &FxHashSet::default()), None, "rank 0 covered only 5..=10 of 5..=900");
        b.handle_rejected(&Rejected { promised: Epoch::new(4, 0) });
        assert_eq!(b.handle_tick(Time(1), &mut Outbox::new()), Verdict::Lost);
    }
}
