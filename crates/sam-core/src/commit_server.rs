//! The commit server (DESIGN sections 2 and 4, step 4, and gap recovery).
//!
//! It durably stores `seq -> (epoch, entry)` and its promised epoch. It accepts an `Assign`
//! only if the epoch is at least its promise, replaces an entry only by one of a higher epoch,
//! and answers `Accepted{epoch, upto}` — `upto` being the end of the gap-free durable run from
//! the epoch's first number — only after the write is durable. Older epochs get `Rejected`.
//!
//! It learns what is committed from `Commit`s (or from peers' committed entries), never from
//! what it merely stored, and answers members' queries for committed numbers only. Like a
//! member it recovers the committed entries it missed, asking its peers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use rand_xoshiro::Xoshiro256PlusPlus;

use crate::action::{Dest, Outbox, Record, WriteId};
use crate::asker::Asker;
use crate::config::{Config, Mutation};
use crate::ids::{Epoch, Pid, Seq, SeqRange, Time};
use crate::message::{Accepted, Assign, Assigned, Commit, Entries, Heartbeat, Message, QueryEntries, Rejected, Slot};

/// The most `Accepted` replies waiting for their writes; the oldest is dropped beyond it (the
/// sequencer asks again).
pub const MAX_OWED_REPLIES: usize = 1 << 16;

/// One stored number.
#[derive(Clone, Copy, Debug)]
struct Stored {
    slot: Slot,
    /// The write that stored this slot; durable once the host confirms it.
    written_by: WriteId,
    /// A `Commit` (or a peer's committed entry) with this epoch and entry was seen.
    committed: bool,
}

/// The epoch whose `Assign`s this server currently acknowledges.
#[derive(Clone, Copy, Debug)]
struct Acceptance {
    epoch: Epoch,
    /// Every number from the epoch's first through `upto` is durably stored at `epoch`.
    upto: Seq,
}

/// A commit server.
#[derive(Debug)]
pub struct CommitServer {
    cfg: Arc<Config>,
    promised: Epoch,
    slots: VecDeque<Option<Stored>>,
    /// The number of `slots[0]`.
    base: Seq,
    durable: WriteId,
    acceptance: Option<Acceptance>,
    /// `Accepted` replies owed once the given write is durable.
    owed: VecDeque<(WriteId, Pid)>,
    /// Every number up to this one is known committed here.
    committed: Seq,
    /// The highest number heard to be committed.
    known_committed: Seq,
    /// Commits announced for numbers whose matching slot this server did not hold yet; the
    /// slot is marked committed when it arrives (the sequencer re-sends it).
    notices: BTreeMap<Seq, (Epoch, Assigned)>,
    committed_stored: Seq,
    next_committed_write: Time,
    sequencer: Option<Pid>,
    asker: Asker,
    rng: Xoshiro256PlusPlus,
}

impl CommitServer {
    /// A commit server with nothing stored.
    pub fn new(cfg: Arc<Config>, me: Pid, mut rng: Xoshiro256PlusPlus) -> CommitServer {
        let peers = cfg.commit_servers.iter().copied().filter(|p| *p != me).collect();
        let asker = Asker::new(peers, cfg.nack_delay_us, cfg.request_timeout_us, &mut rng);
        CommitServer {
            promised: Epoch::NONE,
            slots: VecDeque::new(),
            base: Seq(1),
            durable: WriteId(0),
            acceptance: None,
            owed: VecDeque::new(),
            committed: Seq::ZERO,
            known_committed: Seq::ZERO,
            notices: BTreeMap::new(),
            committed_stored: Seq::ZERO,
            next_committed_write: Time(0),
            sequencer: None,
            asker,
            rng,
            cfg,
        }
    }

    /// Rebuilds a commit server from its durable records, oldest first.
    pub fn recover<'a>(
        cfg: Arc<Config>,
        me: Pid,
        rng: Xoshiro256PlusPlus,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> CommitServer {
        let mut server = CommitServer::new(cfg, me, rng);
        for record in records {
            server.replay(record);
        }
        server.advance_committed();
        server.committed_stored = server.committed;
        server
    }

    fn replay(&mut self, record: &Record) {
        match record {
            Record::Promise(epoch) => self.promised = self.promised.max(*epoch),
            Record::Slots { first, slots } => {
                for (i, slot) in slots.iter().enumerate() {
                    self.promised = self.promised.max(slot.epoch);
                    let committed =
                        self.stored(first.plus(i as u64)).is_some_and(|s| s.committed && s.slot.entry == slot.entry);
                    self.put(first.plus(i as u64), Stored { slot: *slot, written_by: WriteId(0), committed });
                }
            }
            Record::Committed(upto) => {
                let mut s = self.committed.next();
                while s <= *upto {
                    if let Some(stored) = self.stored_mut(s) {
                        stored.committed = true;
                    }
                    s = s.next();
                }
                self.committed = self.committed.max(*upto);
                self.known_committed = self.known_committed.max(*upto);
            }
            Record::Data(_) => {}
        }
    }

    /// The epoch this server has promised.
    pub fn promised(&self) -> Epoch {
        self.promised
    }

    /// Every number up to this one is known committed here.
    pub fn committed(&self) -> Seq {
        self.committed
    }

    /// The committed entry at `seq`, if this server knows it.
    pub fn committed_entry(&self, seq: Seq) -> Option<Slot> {
        self.stored(seq).filter(|s| s.committed).map(|s| s.slot)
    }

    /// The most numbers ahead of the committed prefix this server stores (a bound on memory
    /// that a correct sequencer never reaches: its window is smaller).
    fn slot_limit(&self) -> u64 {
        self.cfg.max_lifetime + self.cfg.sequencer_window as u64
    }

    fn index(&self, seq: Seq) -> Option<usize> {
        seq.0.checked_sub(self.base.0).map(|i| i as usize)
    }

    fn stored(&self, seq: Seq) -> Option<&Stored> {
        self.index(seq).and_then(|i| self.slots.get(i)).and_then(Option::as_ref)
    }

    fn stored_mut(&mut self, seq: Seq) -> Option<&mut Stored> {
        self.index(seq).and_then(|i| self.slots.get_mut(i)).and_then(Option::as_mut)
    }

    fn put(&mut self, seq: Seq, stored: Stored) {
        let Some(i) = self.index(seq) else { return };
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = Some(stored);
    }

    fn is_durable(&self, stored: &Stored) -> bool {
        stored.written_by <= self.durable
    }

    /// Stores an `Assign` of an epoch at least the promise; acknowledges once durable.
    pub fn handle_assign(&mut self, from: Pid, assign: &Assign, out: &mut Outbox) {
        if assign.epoch < self.promised {
            out.send(Dest::Pid(from), Message::Rejected(Rejected { promised: self.promised }));
            return;
        }
        if self.acceptance.is_none_or(|a| a.epoch != assign.epoch) {
            self.acceptance = Some(Acceptance { epoch: assign.epoch, upto: assign.epoch_first.minus(1) });
            self.advance_accepted();
        }
        let raised = assign.epoch > self.promised;
        self.promised = self.promised.max(assign.epoch);
        let written =
            self.store(assign.first, assign.entries.iter().map(|&entry| Slot { epoch: assign.epoch, entry }), out);
        let write = match written {
            None if raised => Some(out.persist(Record::Promise(assign.epoch))),
            other => other,
        };
        match write {
            Some(id) if !self.cfg.mutated(Mutation::AcceptBeforeDurable) => {
                if self.owed.len() >= MAX_OWED_REPLIES {
                    self.owed.pop_front();
                }
                self.owed.push_back((id, from));
            }
            Some(id) => {
                self.durable = self.durable.max(id);
                self.advance_accepted();
                self.reply_accepted(from, out);
            }
            None => self.reply_accepted(from, out),
        }
    }

    /// Stores the slots that change something (an empty number, a lower epoch) and returns the
    /// id of the last write, if any.
    fn store(&mut self, first: Seq, slots: impl Iterator<Item = Slot>, out: &mut Outbox) -> Option<WriteId> {
        let limit = self.committed.plus(self.slot_limit());
        let mut run: Vec<Slot> = Vec::new();
        let mut run_first = first;
        let mut last_write = None;
        for (i, slot) in slots.enumerate() {
            let seq = first.plus(i as u64);
            // An entry is replaced only by one of a higher epoch: a sequencer numbers each
            // number once per epoch, so a same-epoch difference is refused, never adopted. A
            // committed entry is final: a higher epoch can only propose it again.
            let keep = seq < self.base
                || seq > limit
                || self
                    .stored(seq)
                    .is_some_and(|s| s.slot.epoch >= slot.epoch || (s.committed && s.slot.entry != slot.entry));
            if keep {
                last_write = self.write_run(run_first, &mut run, out).or(last_write);
                run_first = seq.next();
            } else {
                run.push(slot);
            }
        }
        self.write_run(run_first, &mut run, out).or(last_write)
    }

    fn write_run(&mut self, first: Seq, run: &mut Vec<Slot>, out: &mut Outbox) -> Option<WriteId> {
        if run.is_empty() {
            return None;
        }
        let slots = std::mem::take(run);
        let id = out.persist(Record::Slots { first, slots: slots.clone() });
        for (i, slot) in slots.into_iter().enumerate() {
            let seq = first.plus(i as u64);
            let was_committed = self.stored(seq).is_some_and(|s| s.committed && s.slot.entry == slot.entry);
            let noticed = self.notices.get(&seq) == Some(&(slot.epoch, slot.entry.assigned()));
            self.put(seq, Stored { slot, written_by: id, committed: was_committed || noticed });
        }
        Some(id)
    }

    fn advance_accepted(&mut self) {
        let Some(mut acc) = self.acceptance else { return };
        loop {
            let seq = acc.upto.next();
            let ok =
                seq < self.base || self.stored(seq).is_some_and(|s| s.slot.epoch == acc.epoch && self.is_durable(s));
            if !ok {
                break;
            }
            acc.upto = seq;
        }
        self.acceptance = Some(acc);
    }

    fn reply_accepted(&self, to: Pid, out: &mut Outbox) {
        if let Some(acc) = self.acceptance {
            out.send(Dest::Pid(to), Message::Accepted(Accepted { epoch: acc.epoch, upto: acc.upto }));
        }
    }

    /// The host made every write up to `upto` durable: acknowledge what waited for it.
    pub fn handle_durable(&mut self, upto: WriteId, out: &mut Outbox) {
        self.durable = self.durable.max(upto);
        self.advance_accepted();
        let mut to: Vec<Pid> = Vec::new();
        while let Some(&(id, pid)) = self.owed.front() {
            if id > upto {
                break;
            }
            self.owed.pop_front();
            if !to.contains(&pid) {
                to.push(pid);
            }
        }
        for pid in to {
            self.reply_accepted(pid, out);
        }
    }

    /// Marks the numbers a `Commit` announces as committed where this server holds the same
    /// epoch and entry; the others are refilled from peers.
    pub fn handle_commit(&mut self, now: Time, commit: &Commit) {
        let Some(range) = commit.range() else { return };
        self.known_committed = self.known_committed.max(range.last);
        let committed = self.committed;
        let notice_limit = committed.plus(self.slot_limit());
        for (i, assigned) in commit.entries.iter().enumerate() {
            let seq = commit.first.plus(i as u64);
            match self.stored_mut(seq) {
                Some(s) if s.slot.epoch == commit.epoch && s.slot.entry.assigned() == *assigned => s.committed = true,
                Some(s) if s.committed => {}
                _ if seq > committed && seq <= notice_limit => {
                    self.notices.insert(seq, (commit.epoch, *assigned));
                }
                _ => {}
            }
        }
        self.advance_committed();
        self.note_gap(now);
    }

    /// Follows the sequencer's heartbeat: who sequences, how far it committed.
    pub fn handle_heartbeat(&mut self, now: Time, hb: &Heartbeat) {
        if hb.epoch >= self.promised {
            self.sequencer = Some(hb.sequencer);
        }
        self.known_committed = self.known_committed.max(hb.committed);
        self.note_gap(now);
    }

    fn advance_committed(&mut self) {
        while self.stored(self.committed.next()).is_some_and(|s| s.committed) {
            self.committed = self.committed.next();
        }
        while self.notices.first_key_value().is_some_and(|(s, _)| *s <= self.committed) {
            self.notices.pop_first();
        }
        self.known_committed = self.known_committed.max(self.committed);
    }

    fn note_gap(&mut self, now: Time) {
        if self.committed < self.known_committed {
            self.asker.missing(now, &mut self.rng);
        } else {
            self.asker.settled();
        }
    }

    /// Answers a query with the committed entries it covers, in runs of consecutive numbers.
    /// For numbers it knows committed from a `Commit` but holds no slot for, it repeats what
    /// the `Commit` said: a peer that holds the slot but missed the `Commit` can then mark it.
    pub fn handle_query(&self, from: Pid, query: &QueryEntries, out: &mut Outbox) {
        let mut budget = self.cfg.nack_batch;
        for range in query.ranges.iter().filter(|r| !r.is_empty()) {
            let range = SeqRange { first: range.first, last: range.last.min(range.first.plus(budget as u64 - 1)) };
            budget -= range.len() as usize;
            self.answer_entries(from, range, out);
            self.answer_notices(from, range, out);
            if budget == 0 {
                break;
            }
        }
    }

    fn answer_entries(&self, to: Pid, range: SeqRange, out: &mut Outbox) {
        let mut run = Entries { first: range.first, slots: Vec::new() };
        for seq in range.iter() {
            let slot = self.committed_entry(seq);
            if slot.is_none() || run.slots.len() == self.cfg.batch_entries {
                let next_first = if slot.is_some() { seq } else { seq.next() };
                let full = std::mem::replace(&mut run, Entries { first: next_first, slots: Vec::new() });
                if !full.slots.is_empty() {
                    out.send(Dest::Pid(to), Message::Entries(full));
                }
            }
            run.slots.extend(slot);
        }
        if !run.slots.is_empty() {
            out.send(Dest::Pid(to), Message::Entries(run));
        }
    }

    fn answer_notices(&self, to: Pid, range: SeqRange, out: &mut Outbox) {
        let mut run: Option<Commit> = None;
        for (&seq, &(epoch, assigned)) in self.notices.range(range.first..=range.last) {
            if let Some(c) = &mut run {
                let follows = c.epoch == epoch && c.first.plus(c.entries.len() as u64) == seq;
                if follows && c.entries.len() < self.cfg.batch_entries {
                    c.entries.push(assigned);
                    continue;
                }
                out.send(Dest::Pid(to), Message::Commit(run.take().expect("checked above")));
            }
            run = Some(Commit { epoch, first: seq, entries: vec![assigned] });
        }
        if let Some(c) = run {
            out.send(Dest::Pid(to), Message::Commit(c));
        }
    }

    /// Takes committed entries a peer sent in answer to a refill query.
    pub fn handle_entries(&mut self, now: Time, entries: &Entries, out: &mut Outbox) {
        let before = self.committed;
        let mut run: Vec<Slot> = Vec::new();
        let mut run_first = entries.first;
        for (i, slot) in entries.slots.iter().enumerate() {
            let seq = entries.first.plus(i as u64);
            if !self.refill(seq, slot) {
                self.write_committed_run(run_first, &mut run, out);
                continue;
            }
            if run.is_empty() {
                run_first = seq;
            }
            run.push(*slot);
        }
        self.write_committed_run(run_first, &mut run, out);
        self.advance_committed();
        self.advance_accepted();
        if self.committed > before {
            self.asker.progress(now);
        }
        self.note_gap(now);
    }

    /// Marks `seq` committed if this server holds the peer's entry; returns whether the peer's
    /// slot must be stored instead (nothing here, or an older epoch).
    fn refill(&mut self, seq: Seq, slot: &Slot) -> bool {
        if seq < self.base || seq <= self.committed || seq > self.committed.plus(self.slot_limit()) {
            return false;
        }
        match self.stored_mut(seq) {
            Some(s) if s.slot.epoch < slot.epoch => true,
            Some(s) if s.slot.entry == slot.entry => {
                s.committed = true;
                false
            }
            Some(_) => false,
            None => true,
        }
    }

    fn write_committed_run(&mut self, first: Seq, run: &mut Vec<Slot>, out: &mut Outbox) {
        let n = run.len() as u64;
        self.write_run(first, run, out);
        for seq in (0..n).map(|i| first.plus(i)) {
            if let Some(s) = self.stored_mut(seq) {
                s.committed = true;
            }
        }
    }

    /// Asks a peer for missed committed entries, and records the committed prefix now and then.
    pub fn handle_tick(&mut self, now: Time, out: &mut Outbox) {
        self.note_gap(now);
        if let Some(peer) = self.asker.due(now, self.sequencer) {
            let first = self.committed.next();
            let last = self.known_committed.min(self.committed.plus(self.cfg.nack_batch as u64));
            out.send(Dest::Pid(peer), Message::QueryEntries(QueryEntries { ranges: vec![SeqRange { first, last }] }));
        }
        if self.committed > self.committed_stored && now >= self.next_committed_write {
            out.persist(Record::Committed(self.committed));
            self.committed_stored = self.committed;
            self.next_committed_write = now.plus_us(self.cfg.heartbeat_interval_us);
        }
    }

    /// When this server next needs a tick.
    pub fn poll_timeout(&self) -> Option<Time> {
        let record = (self.committed > self.committed_stored).then_some(self.next_committed_write);
        [self.asker.deadline(), record].into_iter().flatten().min()
    }

    /// Checks the commit server's invariants (debug builds and the simulator).
    pub fn check_invariants(&self) {
        debug_assert!(self.committed <= self.known_committed);
        debug_assert!(self.committed < self.base || self.stored(self.committed).is_some_and(|s| s.committed));
        if let Some(acc) = self.acceptance {
            debug_assert!(acc.epoch <= self.promised);
        }
    }
}
