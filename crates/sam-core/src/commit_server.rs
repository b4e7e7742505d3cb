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
//!
//! It keeps the commit chain (`crate::chain`) through its committed prefix, starting over
//! from an advertised checkpoint's chain when it skips to one: a candidate's sequencer goes on
//! from it.
//!
//! Garbage collection (DESIGN section 5): it forgets the entries at or below the advertised
//! checkpoint but keeps the last `max_lifetime` committed ones, the de-duplication history a
//! next sequencer needs. Asked for a forgotten number it answers `Forgotten`, so a member
//! catches up from the checkpoint and a lagging peer skips ahead.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use rand_xoshiro::Xoshiro256PlusPlus;

use crate::action::{Action, Dest, Outbox, Record, WriteId};
use crate::asker::Asker;
use crate::chain::ChainPoint;
use crate::config::{Config, Mutation};
use crate::ids::{Epoch, Pid, Seq, SeqRange, Time};
use crate::message::{
    Accepted, Assign, CheckpointInfo, Commit, Entries, Entry, Forgotten, Heartbeat, Message, PreVote, PreVoteGranted,
    Prepare, Promise, PromisedSlot, QueryEntries, Rejected, Slot,
};
use crate::notice::Notice;

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

/// A commit server whose storage was lost, on its way back (DESIGN section 6, safety): it
/// copies its peers' promises, then takes no part in ballots or acceptances until a ballot of
/// an epoch above every promise it copied has finished, and takes that epoch as its promise.
/// Copying alone is not enough: a vote it cast and forgot may still be in flight.
#[derive(Clone, Debug)]
struct Rejoining {
    /// The promises copied so far, per commit-server rank.
    copied: Vec<Option<Epoch>>,
    /// When to ask the peers that have not answered again.
    next_ask: Time,
    /// When to ask the sequencer again for a ballot above the copied promises.
    next_nudge: Time,
    /// The committed prefix of the first heartbeat of an epoch above every copied promise:
    /// the entries this server copies again before it votes.
    fence: Option<Seq>,
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
    notices: BTreeMap<Seq, (Epoch, Entry)>,
    committed_stored: Seq,
    next_committed_write: Time,
    sequencer: Option<Pid>,
    /// This server's rank among the commit servers.
    rank: usize,
    /// When a heartbeat of an epoch at least the promise last arrived, or when this server
    /// started or restarted.
    quiet_since: Time,
    /// Whether a sequencer was ever heard, or the server restarted with records: a fresh
    /// group's servers stand at once by rank, a running group's wait `failure_timeout` first.
    heard_any: bool,
    /// The highest round seen in any epoch.
    round_seen: u64,
    /// After a lost ballot, no new candidacy before this time.
    backoff_until: Time,
    /// Set while this server rejoins after losing its storage.
    rejoining: Option<Rejoining>,
    /// The write of the current promise.
    promise_write: WriteId,
    /// `Promise`s owed once the promise write is durable: write, candidate, `from_seq`.
    owed_promises: VecDeque<(WriteId, Pid, Seq)>,
    /// The highest checkpoint advertised, as far as this server heard.
    checkpoint: Option<CheckpointInfo>,
    /// The latest point of the commit chain known: at the committed prefix, or at a
    /// checkpoint above it that this server skips to.
    chain: ChainPoint,
    asker: Asker,
    rng: Xoshiro256PlusPlus,
}

impl CommitServer {
    /// A commit server with nothing stored, started at `now`.
    pub fn new(cfg: Arc<Config>, me: Pid, mut rng: Xoshiro256PlusPlus, now: Time) -> CommitServer {
        let peers = cfg.commit_servers.iter().copied().filter(|p| *p != me).collect();
        let rank = cfg.commit_rank(me).unwrap_or(0);
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
            rank,
            quiet_since: now,
            heard_any: false,
            round_seen: 0,
            backoff_until: now,
            rejoining: None,
            promise_write: WriteId(0),
            owed_promises: VecDeque::new(),
            checkpoint: None,
            chain: ChainPoint::GENESIS,
            asker,
            rng,
            cfg,
        }
    }

    /// Rebuilds a commit server from its durable records, oldest first. A server that had
    /// records waits a whole `failure_timeout` before it stands, so that a restart does not
    /// challenge a healthy sequencer.
    pub fn recover<'a>(
        cfg: Arc<Config>,
        me: Pid,
        rng: Xoshiro256PlusPlus,
        records: impl IntoIterator<Item = &'a Record>,
        now: Time,
    ) -> CommitServer {
        let mut server = CommitServer::new(cfg, me, rng, now);
        for record in records {
            server.heard_any = true;
            server.replay(record);
        }
        server.round_seen = server.promised.round();
        server.advance_committed();
        server.committed_stored = server.committed;
        server
    }

    fn replay(&mut self, record: &Record) {
        match record {
            Record::Promise(epoch) => {
                self.promised = self.promised.max(*epoch);
                self.rejoining = None;
            }
            Record::StorageLost => self.start_rejoining(self.quiet_since),
            Record::Slots { first, slots } => {
                for (i, slot) in slots.iter().enumerate() {
                    self.promised = self.promised.max(slot.epoch);
                    let seq = first.plus(i as u64);
                    // Replaced only by a higher epoch, as when it was accepted: a log whose
                    // records were copied forward replays them out of order.
                    if self.stored(seq).is_some_and(|s| s.slot.epoch > slot.epoch) {
                        continue;
                    }
                    // At or below a `Committed` record replayed before it, a slot of the
                    // highest epoch holds the committed entry.
                    let committed = seq <= self.committed
                        || self.stored(seq).is_some_and(|s| s.committed && s.slot.entry == slot.entry);
                    self.put(seq, Stored { slot: *slot, written_by: WriteId(0), committed });
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
            Record::Floor { floor, checkpoint } => {
                self.note_checkpoint(*checkpoint);
                self.forget_through(*floor);
            }
            Record::Data(_) | Record::Checkpoint { .. } | Record::Diverged(_) => {}
        }
    }

    /// A commit server that lost its storage: it rejoins by the rule of DESIGN section 6 before
    /// it votes again (see [`CommitServer::is_rejoining`]).
    /// It records that it is rejoining, so that a crash before it rejoins cannot make it look
    /// like a fresh server.
    pub fn after_storage_loss(
        cfg: Arc<Config>,
        me: Pid,
        rng: Xoshiro256PlusPlus,
        now: Time,
        out: &mut Outbox,
    ) -> CommitServer {
        let mut server = CommitServer::new(cfg, me, rng, now);
        server.start_rejoining(now);
        out.persist(Record::StorageLost);
        server
    }

    fn start_rejoining(&mut self, now: Time) {
        self.heard_any = true;
        let n = self.cfg.commit_servers.len();
        self.rejoining = Some(Rejoining { copied: vec![None; n], next_ask: now, next_nudge: now, fence: None });
    }

    /// Whether this server is still rejoining after losing its storage (it does not vote).
    pub fn is_rejoining(&self) -> bool {
        self.rejoining.is_some()
    }

    /// Asks the peers that have not told their promise yet: a `Prepare` of no epoch is
    /// answered `Rejected{promised}` by every server and changes nothing.
    fn ask_promises(&mut self, now: Time, out: &mut Outbox) {
        let Some(r) = &mut self.rejoining else { return };
        if now < r.next_ask {
            return;
        }
        r.next_ask = now.plus_us(self.cfg.request_timeout_us);
        let ask = rejoin_ask();
        for (rank, pid) in self.cfg.commit_servers.iter().enumerate() {
            if rank != self.rank && r.copied[rank].is_none() {
                out.send(Dest::Pid(*pid), ask.clone());
            }
        }
    }

    /// A peer told its promise (a `Rejected`): a rejoining server copies it.
    pub fn handle_rejected(&mut self, from: Pid, rejected: &Rejected) {
        self.note_epoch(rejected.promised);
        let rank = self.cfg.commit_rank(from);
        if let (Some(r), Some(rank)) = (&mut self.rejoining, rank) {
            r.copied[rank] = Some(r.copied[rank].map_or(rejected.promised, |e| e.max(rejected.promised)));
        }
    }

    /// A rejoining server that copied `n_commit - k_commit + 1` promises and now hears the
    /// sequencer of a higher epoch — a ballot it took no part in has finished — and has copied
    /// the committed entries up to the first such heartbeat's prefix again (refilled from its
    /// peers) takes the epoch as its durable promise and votes again. Without the copies,
    /// losing another server's storage could lose entries that only the two of them held; the
    /// first heartbeat's prefix is enough (a new sequencer's heartbeats start once its
    /// recovered range is committed), where a later one would run ahead under load for ever.
    /// While the sequencer's epoch is not above the copies, it is asked for a ballot: in a
    /// healthy group nothing else would start one.
    fn rejoin(&mut self, now: Time, hb: &Heartbeat, out: &mut Outbox) {
        let needed = self.cfg.commit_servers.len() - self.cfg.k_commit + 1;
        let others = needed.min(self.cfg.commit_servers.len() - 1);
        let Some(r) = &mut self.rejoining else { return };
        let copied: Vec<Epoch> = r.copied.iter().flatten().copied().collect();
        if copied.len() < others {
            return;
        }
        if copied.iter().any(|e| *e >= hb.epoch) {
            if now >= r.next_nudge {
                r.next_nudge = now.plus_us(self.cfg.failure_timeout_us);
                out.send(Dest::Pid(hb.sequencer), rejoin_ask());
            }
            return;
        }
        let fence = *r.fence.get_or_insert(hb.committed);
        if self.committed < fence {
            return;
        }
        self.rejoining = None;
        self.promised = hb.epoch;
        self.promise_write = out.persist(Record::Promise(hb.epoch));
        out.push(Action::Notice(Notice::Rejoined { epoch: hb.epoch }));
    }

    /// The answer to anything of an epoch this server will not serve: its promise.
    fn rejection(&self) -> Message {
        Message::Rejected(Rejected { promised: self.promised })
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
        self.note_epoch(assign.epoch);
        if self.rejoining.is_some() {
            return;
        }
        if assign.epoch < self.promised && !self.cfg.mutated(Mutation::AcceptOldEpoch) {
            out.send(Dest::Pid(from), self.rejection());
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
            let noticed = self.notices.get(&seq) == Some(&(slot.epoch, slot.entry));
            self.put(seq, Stored { slot, written_by: id, committed: was_committed || noticed });
        }
        Some(id)
    }

    fn advance_accepted(&mut self) {
        let Some(mut acc) = self.acceptance else { return };
        // Numbers below the base are committed and forgotten: a re-proposal can only repeat them.
        acc.upto = acc.upto.max(self.floor());
        while acc.upto < Seq(u64::MAX) {
            let seq = acc.upto.next();
            let ok = self.stored(seq).is_some_and(|s| s.slot.epoch == acc.epoch && self.is_durable(s));
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
        while self.owed_promises.front().is_some_and(|(id, _, _)| *id <= upto) {
            if let Some((_, candidate, from_seq)) = self.owed_promises.pop_front() {
                self.send_promise(candidate, from_seq, out);
            }
        }
    }

    /// Marks the numbers a `Commit` announces as committed where this server holds the same
    /// epoch and entry; the others are refilled from peers.
    pub fn handle_commit(&mut self, now: Time, commit: &Commit) {
        let Some(range) = commit.range() else { return };
        self.known_committed = self.known_committed.max(range.last);
        let committed = self.committed;
        let notice_limit = committed.plus(self.slot_limit());
        for (i, entry) in commit.entries.iter().enumerate() {
            let seq = commit.first.plus(i as u64);
            match self.stored_mut(seq) {
                Some(s) if s.slot.epoch == commit.epoch && s.slot.entry == *entry => s.committed = true,
                Some(s) if s.committed => {}
                _ if seq > committed && seq <= notice_limit => {
                    self.notices.insert(seq, (commit.epoch, *entry));
                }
                _ => {}
            }
        }
        self.advance_committed();
        self.note_gap(now);
    }

    /// Follows the sequencer's heartbeat: who sequences, how far it committed.
    /// Heartbeats of epochs below the promise are ignored (DESIGN section 6): a deposed
    /// sequencer must not look alive. Its sender is told `Rejected{promised}`, so that a
    /// sequencer with nothing to assign, which would never hear `Rejected` for an `Assign`,
    /// still steps down and lets a ballot finish.
    pub fn handle_heartbeat(&mut self, now: Time, hb: &Heartbeat, out: &mut Outbox) {
        self.round_seen = self.round_seen.max(hb.epoch.round());
        if hb.epoch < self.promised {
            out.send(Dest::Pid(hb.sequencer), self.rejection());
            return;
        }
        self.known_committed = self.known_committed.max(hb.committed);
        self.note_checkpoint(hb.checkpoint);
        self.rejoin(now, hb, out);
        self.sequencer = Some(hb.sequencer);
        self.quiet_since = now;
        self.heard_any = true;
        self.known_committed = self.known_committed.max(hb.committed);
        self.note_gap(now);
    }

    /// Whether this server has missed the sequencer's heartbeats for `failure_timeout` (or
    /// never heard one): the pre-vote condition for granting a `Prepare`.
    fn misses_sequencer(&self, now: Time) -> bool {
        !self.heard_any || now.since_us(self.quiet_since) >= self.cfg.failure_timeout_us
    }

    /// Whether this server would help `candidate` take office: it misses the sequencer, or the
    /// candidate is the sequencer it follows, standing again for a server that rejoins after
    /// losing its storage. Granting is always safe; this rule only keeps a server that was cut
    /// off from deposing a healthy sequencer.
    fn may_elect(&self, now: Time, candidate: Pid) -> bool {
        self.misses_sequencer(now) || self.sequencer == Some(candidate)
    }

    /// Grants a `Prepare` of an epoch above the promise when this server, too, misses the
    /// sequencer: a durable promise, then `Promise` with what it stores from `from_seq` on.
    /// Anything else is answered `Rejected{promised}`. A candidate asking again for the epoch
    /// already promised gets the promise again. This server's own candidate promised through
    /// [`CommitServer::promise_own`] before its `Prepare` went out.
    pub fn handle_prepare(&mut self, now: Time, from: Pid, prepare: &Prepare, out: &mut Outbox) {
        self.note_epoch(prepare.epoch);
        if self.rejoining.is_some() {
            return;
        }
        let candidate = self.cfg.commit_rank(from) == Some(usize::from(prepare.epoch.rank()));
        if prepare.epoch == self.promised && candidate {
            if !self.owed_promises.iter().any(|(_, pid, _)| *pid == from) {
                self.send_promise(from, prepare.from_seq, out);
            }
            return;
        }
        if prepare.epoch <= self.promised || !candidate || !self.may_elect(now, from) {
            out.send(Dest::Pid(from), self.rejection());
            return;
        }
        self.grant(from, prepare, out);
    }

    /// Promises this server's own candidate's epoch, first of all: the candidate's `Prepare`
    /// goes out only once this promise is durable ([`CommitServer::promised_durably`]).
    pub fn promise_own(&mut self, now: Time, me: Pid, prepare: &Prepare, out: &mut Outbox) {
        if prepare.epoch > self.promised && self.may_elect(now, me) && self.rejoining.is_none() {
            self.grant(me, prepare, out);
        }
    }

    /// Whether the current promise is durable.
    pub fn promised_durably(&self) -> bool {
        self.promise_write <= self.durable
    }

    /// Answers a pre-vote: granted when the epoch is above the promise and this server, too,
    /// misses the sequencer. Nothing durable changes either way.
    pub fn handle_pre_vote(&mut self, now: Time, from: Pid, pre_vote: &PreVote, out: &mut Outbox) {
        self.note_epoch(pre_vote.epoch);
        if self.rejoining.is_some() {
            return;
        }
        let candidate = self.cfg.commit_rank(from) == Some(usize::from(pre_vote.epoch.rank()));
        let reply = if candidate && pre_vote.epoch > self.promised && self.may_elect(now, from) {
            Message::PreVoteGranted(PreVoteGranted { epoch: pre_vote.epoch })
        } else {
            self.rejection()
        };
        out.send(Dest::Pid(from), reply);
    }

    /// Raises the promise durably; the `Promise` goes out once the write is durable.
    fn grant(&mut self, from: Pid, prepare: &Prepare, out: &mut Outbox) {
        self.promised = prepare.epoch;
        self.sequencer = None;
        let id = out.persist(Record::Promise(prepare.epoch));
        self.promise_write = id;
        self.owed_promises.retain(|(_, pid, _)| *pid != from);
        self.owed_promises.push_back((id, from, prepare.from_seq));
    }

    /// Sends the promise of the current epoch: every stored slot from `from_seq` on, in parts
    /// of at most `batch_entries` numbers.
    fn send_promise(&self, to: Pid, from_seq: Seq, out: &mut Outbox) {
        let highest = self.highest_stored();
        let mut first = from_seq.max(self.base);
        loop {
            let last = first.plus(self.cfg.batch_entries as u64 - 1).min(highest.max(first));
            let slots = SeqRange { first, last }
                .iter()
                .filter_map(|seq| Some(PromisedSlot { seq, slot: self.stored(seq)?.slot }))
                .collect();
            let (floor, checkpoint) = (self.floor(), self.checkpoint);
            let part = Promise { epoch: self.promised, first, last, highest, floor, checkpoint, slots };
            out.send(Dest::Pid(to), Message::Promise(part));
            if last >= highest {
                break;
            }
            first = last.next();
        }
    }

    /// The highest number with a stored slot (below `base` when none).
    fn highest_stored(&self) -> Seq {
        let stored = self.slots.iter().rposition(Option::is_some);
        stored.map_or(self.base.minus(1), |i| self.base.plus(i as u64))
    }

    /// When this server will stand for election if it hears no heartbeat before.
    pub fn candidacy_at(&self) -> Time {
        let patience = if self.heard_any { self.cfg.failure_timeout_us } else { 0 };
        self.quiet_since.plus_us(patience + self.stagger_us()).max(self.backoff_until)
    }

    /// The delay by rank that keeps candidates from colliding.
    fn stagger_us(&self) -> u64 {
        self.rank as u64 * self.cfg.heartbeat_interval_us * 5
    }

    /// This server's ballot was lost (a higher epoch, or no quorum in time): it waits before
    /// standing again, longer by rank, so that duelling candidates settle.
    pub fn ballot_lost(&mut self, now: Time) {
        self.backoff_until = now.plus_us(self.cfg.failure_timeout_us / 2 + self.stagger_us());
    }

    /// Whether this server should stand for election now, and for which epoch: it has missed
    /// heartbeats for `failure_timeout` (at a fresh group's start, at once), plus a delay by
    /// rank so that candidates rarely collide (when they do, the higher epoch wins).
    pub fn candidacy(&mut self, now: Time) -> Option<Epoch> {
        if now < self.candidacy_at() || self.rejoining.is_some() {
            return None;
        }
        Some(self.next_epoch())
    }

    /// An epoch of this server's above every epoch it has seen.
    pub fn next_epoch(&mut self) -> Epoch {
        self.round_seen = self.round_seen.max(self.promised.round()) + 1;
        Epoch::new(self.round_seen, self.rank as u16)
    }

    /// Notes an epoch seen anywhere (a `Prepare`, an `Assign`, a `Rejected`), so that this
    /// server's next candidacy picks a higher one.
    pub fn note_epoch(&mut self, epoch: Epoch) {
        self.round_seen = self.round_seen.max(epoch.round());
    }

    /// What a new sequencer needs from this server's committed entries below `from_seq`: the
    /// last `max_lifetime` of them, or the shorter run of them it knows that ends at
    /// `from_seq - 1` (none when its committed prefix ends lower: a ballot may start above it
    /// when the promisers forgot what lies between). A shorter history is safe: the sequencer
    /// refuses messages older than its history covers.
    pub fn takeover_history(&self, from_seq: Seq) -> (Seq, Vec<Entry>) {
        let lowest = from_seq.minus(self.cfg.max_lifetime).max(Seq(1));
        let mut first = from_seq;
        while first > lowest {
            match self.committed_entry(first.minus(1)) {
                Some(_) if first.minus(1) <= self.committed => first = first.minus(1),
                _ => break,
            }
        }
        let entries = SeqRange { first, last: from_seq.minus(1) }
            .iter()
            .filter_map(|seq| self.committed_entry(seq).map(|s| s.entry))
            .collect();
        (first, entries)
    }

    /// The advertised checkpoint this server knows.
    pub fn checkpoint(&self) -> Option<CheckpointInfo> {
        self.checkpoint
    }

    /// The latest point of the commit chain this server knows (a candidate's sequencer goes
    /// on from it).
    pub fn chain(&self) -> ChainPoint {
        self.chain
    }

    fn note_checkpoint(&mut self, checkpoint: Option<CheckpointInfo>) {
        if checkpoint.is_some_and(|c| self.checkpoint.is_none_or(|known| c.seq > known.seq)) {
            self.checkpoint = checkpoint;
        }
        if let Some(c) = checkpoint.filter(|c| c.seq > self.chain.seq) {
            self.chain = c.chain_point();
            self.roll_chain();
        }
    }

    /// Moves the chain up to the committed prefix over the committed slots.
    fn roll_chain(&mut self) {
        while self.chain.seq < self.committed {
            match self.stored(self.chain.seq.next()) {
                Some(s) if s.committed => self.chain = self.chain.then(&s.slot.entry),
                _ => break,
            }
        }
    }

    /// Every number up to this one is committed and forgotten here.
    pub fn floor(&self) -> Seq {
        self.base.minus(1)
    }

    /// How many numbers this server holds slots for (for resource checks).
    pub fn held(&self) -> usize {
        self.slots.len()
    }

    /// Forgets the entries that the advertised checkpoint covers and that are older than the
    /// de-duplication history (DESIGN section 5).
    fn collect_garbage(&mut self, out: &mut Outbox) {
        let Some(checkpoint) = self.checkpoint else { return };
        let floor = checkpoint.seq.min(self.committed.minus(self.cfg.max_lifetime));
        if floor >= self.base {
            self.forget_through(floor);
            out.persist(Record::Floor { floor, checkpoint: self.checkpoint });
        }
    }

    /// Drops every slot up to `floor`, which is committed: the committed prefix reaches it.
    fn forget_through(&mut self, floor: Seq) {
        if floor < self.base {
            return;
        }
        let dropped = (floor.0 - self.base.0).saturating_add(1).min(self.slots.len() as u64);
        self.slots.drain(..dropped as usize);
        self.base = floor.next();
        self.committed = self.committed.max(floor);
        self.known_committed = self.known_committed.max(floor);
        self.committed_stored = self.committed_stored.max(floor);
        self.notices = self.notices.split_off(&floor.next());
        self.advance_committed();
    }

    /// A peer forgot numbers this server has not refilled yet: they are committed and covered
    /// by a checkpoint, so it skips them (after a heartbeat showed the group that far, so that a
    /// stray message cannot move it).
    pub fn handle_forgotten(&mut self, from: Pid, forgotten: &Forgotten, out: &mut Outbox) {
        let bogus = forgotten.floor > self.known_committed || forgotten.floor == Seq(u64::MAX);
        if self.cfg.commit_rank(from).is_none() || bogus {
            return;
        }
        self.note_checkpoint(forgotten.checkpoint);
        if forgotten.floor > self.committed {
            self.forget_through(forgotten.floor);
            out.persist(Record::Floor { floor: forgotten.floor, checkpoint: self.checkpoint });
            self.advance_accepted();
        }
    }

    fn advance_committed(&mut self) {
        while self.committed < Seq(u64::MAX) && self.stored(self.committed.next()).is_some_and(|s| s.committed) {
            self.committed = self.committed.next();
        }
        while self.notices.first_key_value().is_some_and(|(s, _)| *s <= self.committed) {
            self.notices.pop_first();
        }
        self.known_committed = self.known_committed.max(self.committed);
        self.roll_chain();
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
    /// Numbers this server forgot are answered once with `Forgotten`.
    pub fn handle_query(&self, from: Pid, query: &QueryEntries, out: &mut Outbox) {
        if query.ranges.iter().any(|r| !r.is_empty() && r.first < self.base) {
            let forgotten = Forgotten { floor: self.floor(), checkpoint: self.checkpoint };
            out.send(Dest::Pid(from), Message::Forgotten(forgotten));
        }
        let mut budget = self.cfg.nack_batch;
        for range in query.ranges.iter().filter(|r| !r.is_empty() && r.last >= self.base) {
            let first = range.first.max(self.base);
            let range = SeqRange { first, last: range.last.min(first.plus(budget as u64 - 1)) };
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
        for (&seq, &(epoch, entry)) in self.notices.range(range.first..=range.last) {
            if let Some(c) = &mut run {
                let follows = c.epoch == epoch && c.first.plus(c.entries.len() as u64) == seq;
                if follows && c.entries.len() < self.cfg.batch_entries {
                    c.entries.push(entry);
                    continue;
                }
                out.send(Dest::Pid(to), Message::Commit(run.take().expect("checked above")));
            }
            run = Some(Commit { epoch, first: seq, entries: vec![entry] });
        }
        if let Some(c) = run {
            out.send(Dest::Pid(to), Message::Commit(c));
        }
    }

    /// Takes committed entries a peer sent in answer to a refill query.
    /// Returns false, having taken nothing, unless that server was asked lately.
    pub fn handle_entries(&mut self, now: Time, from: Pid, entries: &Entries, out: &mut Outbox) -> bool {
        if !self.asker.awaits(from, now) {
            return false;
        }
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
        true
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
        self.ask_promises(now, out);
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
            self.collect_garbage(out);
        }
    }

    /// When this server next needs a tick.
    pub fn poll_timeout(&self) -> Option<Time> {
        let record = (self.committed > self.committed_stored).then_some(self.next_committed_write);
        let rejoin = self.rejoining.as_ref().map(|r| r.next_ask);
        [self.asker.deadline(), record, rejoin].into_iter().flatten().min()
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

/// What a rejoining server sends: a `Prepare` of no epoch, which changes nothing, is answered
/// `Rejected{promised}` by every commit server (a promise to copy), and tells a sequencer a
/// peer needs a ballot.
fn rejoin_ask() -> Message {
    Message::Prepare(Prepare { epoch: Epoch::NONE, from_seq: Seq::ZERO })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::chain::Chain;
    use rand_xoshiro::rand_core::SeedableRng;

    fn cfg() -> Arc<Config> {
        Arc::new(Config::new(vec![Pid(1), Pid(2), Pid(3)], vec![Pid(4)], vec![]))
    }

    fn rng() -> Xoshiro256PlusPlus {
        Xoshiro256PlusPlus::seed_from_u64(1)
    }

    fn hb(epoch: Epoch, sequencer: u64) -> Heartbeat {
        Heartbeat {
            epoch,
            sequencer: Pid(sequencer),
            committed: Seq::ZERO,
            checkpoint: None,
            chain: Chain::GENESIS,
            signature: None,
        }
    }

    fn votes(out: &mut Outbox) -> usize {
        out.drain()
            .filter(|a| matches!(a, Action::Send { msg: Message::Accepted(_) | Message::Promise(_), .. }))
            .count()
    }

    /// DESIGN section 6 (safety): a server whose storage is lost copies its peers' promises and
    /// takes no part in ballots or acceptances until a ballot above all of them has finished,
    /// asking the sequencer for one, and it has the committed entries up to that ballot's first
    /// heartbeat again (not a later one's, which would run ahead under load); a crash before
    /// that keeps it rejoining.
    #[test]
    fn a_server_that_lost_its_storage_votes_only_after_a_ballot_above_every_promise_it_copied() {
        let mut out = Outbox::new();
        let mut s = CommitServer::after_storage_loss(cfg(), Pid(2), rng(), Time(0), &mut out);
        assert!(out.drain().any(|a| matches!(a, Action::Persist { record: Record::StorageLost, .. })));
        let old = Epoch::initial();
        let assign = Assign { epoch: old, epoch_first: Seq(1), first: Seq(1), entries: vec![Entry::Noop] };
        s.handle_assign(Pid(1), &assign, &mut out);
        s.handle_prepare(Time(1), Pid(3), &Prepare { epoch: Epoch::new(2, 2), from_seq: Seq(1) }, &mut out);
        s.handle_durable(WriteId(u64::MAX), &mut out);
        assert_eq!(votes(&mut out), 0, "no vote while rejoining");
        s.handle_rejected(Pid(1), &Rejected { promised: old });
        s.handle_rejected(Pid(3), &Rejected { promised: old });
        s.handle_heartbeat(Time(2), &hb(old, 1), &mut out);
        assert!(s.is_rejoining(), "a ballot at a copied promise is not enough");
        let asked = out.drain().any(
            |a| matches!(a, Action::Send { to: Dest::Pid(Pid(1)), msg: Message::Prepare(p) } if p.epoch == Epoch::NONE),
        );
        assert!(asked, "the sequencer is asked for a ballot");
        let fencing = Heartbeat { committed: Seq(5), ..hb(Epoch::new(2, 2), 3) };
        s.handle_heartbeat(Time(3), &fencing, &mut out);
        assert!(s.is_rejoining(), "not before it copied the committed entries again");
        let checkpoint = CheckpointInfo::at(Seq(5));
        s.handle_forgotten(Pid(3), &Forgotten { floor: Seq(5), checkpoint: Some(checkpoint) }, &mut out);
        s.handle_heartbeat(Time(4), &Heartbeat { committed: Seq(9), ..fencing }, &mut out);
        assert!(!s.is_rejoining(), "the first fencing heartbeat's prefix is enough");
        assert_eq!(s.promised(), Epoch::new(2, 2));
        let lost = [Record::StorageLost];
        assert!(CommitServer::recover(cfg(), Pid(2), rng(), &lost, Time(4)).is_rejoining());
        let rejoined = [Record::StorageLost, Record::Promise(Epoch::new(2, 2))];
        assert!(!CommitServer::recover(cfg(), Pid(2), rng(), &rejoined, Time(4)).is_rejoining());
    }

    /// DESIGN section 5: entries covered by the checkpoint and older than `max_lifetime` are
    /// forgotten; a query for them is answered `Forgotten`, and a lagging peer skips to it.
    #[test]
    fn forgets_under_the_checkpoint_keeps_the_lifetime_and_a_peer_skips_ahead() {
        let mut c = (*cfg()).clone();
        c.max_lifetime = 4;
        let cfg = Arc::new(c);
        let mut out = Outbox::new();
        let mut s = CommitServer::new(cfg.clone(), Pid(2), rng(), Time(0));
        let e = Epoch::initial();
        let entries = vec![Entry::Noop; 10];
        s.handle_assign(Pid(1), &Assign { epoch: e, epoch_first: Seq(1), first: Seq(1), entries }, &mut out);
        s.handle_commit(Time(1), &Commit { epoch: e, first: Seq(1), entries: vec![Entry::Noop; 10] });
        let checkpoint = CheckpointInfo::at(Seq(8));
        s.handle_heartbeat(Time(2), &Heartbeat { checkpoint: Some(checkpoint), ..hb(e, 1) }, &mut out);
        s.handle_tick(Time(3), &mut out);
        assert_eq!(s.floor(), Seq(6), "the last max_lifetime entries stay: 10 - 4");
        assert!(out.drain().any(|a| matches!(a, Action::Persist { record: Record::Floor { floor: Seq(6), .. }, .. })));
        s.handle_query(Pid(9), &QueryEntries { ranges: vec![SeqRange { first: Seq(3), last: Seq(8) }] }, &mut out);
        let answers: Vec<Message> = out
            .drain()
            .filter_map(|a| match a {
                Action::Send { msg, .. } => Some(msg),
                _ => None,
            })
            .collect();
        assert!(matches!(answers[0], Message::Forgotten(Forgotten { floor: Seq(6), .. })), "{answers:?}");
        assert!(matches!(&answers[1], Message::Entries(e) if e.first == Seq(7) && e.slots.len() == 2));
        let mut peer = CommitServer::new(cfg, Pid(3), rng(), Time(0));
        peer.handle_heartbeat(Time(2), &Heartbeat { committed: Seq(10), ..hb(e, 1) }, &mut out);
        peer.handle_forgotten(Pid(2), &Forgotten { floor: Seq(6), checkpoint: Some(checkpoint) }, &mut out);
        assert_eq!((peer.committed(), peer.floor()), (Seq(6), Seq(6)));
    }

    /// DESIGN section 12: `Entries` are taken only as the answer to a query this server has
    /// outstanding, from the peer asked.
    #[test]
    fn entries_are_taken_only_from_the_peer_asked() {
        let mut out = Outbox::new();
        let mut s = CommitServer::new(cfg(), Pid(2), rng(), Time(0));
        let e = Epoch::initial();
        s.handle_heartbeat(Time(1), &Heartbeat { committed: Seq(3), ..hb(e, 1) }, &mut out);
        let entries = Entries { first: Seq(1), slots: vec![Slot { epoch: e, entry: Entry::Noop }; 3] };
        assert!(!s.handle_entries(Time(2), Pid(3), &entries, &mut out), "nobody was asked yet");
        assert_eq!(s.committed(), Seq::ZERO);
        let asked = (2..1_000_000).step_by(1_000).find_map(|t| {
            s.handle_tick(Time(t), &mut out);
            out.drain().find_map(|a| match a {
                Action::Send { to: Dest::Pid(p), msg: Message::QueryEntries(_) } => Some((Time(t), p)),
                _ => None,
            })
        });
        let (at, peer) = asked.expect("the gap is asked about");
        let other = if peer == Pid(1) { Pid(3) } else { Pid(1) };
        assert!(!s.handle_entries(at, other, &entries, &mut out), "not from a peer not asked");
        assert!(s.handle_entries(at, peer, &entries, &mut out));
        assert_eq!(s.committed(), Seq(3));
    }

    /// DESIGN section 4, step 4: an entry is replaced only by one of a higher epoch.
    #[test]
    fn an_assign_of_an_older_epoch_is_rejected_and_a_same_epoch_change_refused() {
        let mut out = Outbox::new();
        let mut s = CommitServer::new(cfg(), Pid(2), rng(), Time(0));
        let e2 = Epoch::new(2, 0);
        let mid = |c| Entry::Msg {
            mid: crate::ids::Mid { source: crate::ids::Source::default(), counter: c },
            digest: crate::ids::Digest([0; 32]),
        };
        s.handle_assign(
            Pid(1),
            &Assign { epoch: e2, epoch_first: Seq(1), first: Seq(1), entries: vec![mid(1)] },
            &mut out,
        );
        s.handle_assign(
            Pid(1),
            &Assign { epoch: e2, epoch_first: Seq(1), first: Seq(1), entries: vec![mid(2)] },
            &mut out,
        );
        let old = Assign { epoch: Epoch::initial(), epoch_first: Seq(1), first: Seq(1), entries: vec![mid(3)] };
        s.handle_assign(Pid(1), &old, &mut out);
        assert!(out.drain().any(
            |a| matches!(a, Action::Send { msg: Message::Rejected(Rejected { promised }), .. } if promised == e2)
        ));
        assert_eq!(s.stored(Seq(1)).map(|st| st.slot.entry), Some(mid(1)));
    }
}
