//! The client: a member that sends and delivers (DESIGN sections 2 and 4, steps 1 and 6).
//!
//! Receiving: it buffers data messages as they arrive, learns what each number holds from
//! `Commit`s (or, for what it missed, from a commit server), and delivers number `s` once it
//! knows `s`'s entry, holds its data, and has delivered `s - 1`; a `Noop` is skipped. Gaps are
//! recovered by NACK: after a random delay it asks one commit server for missing entries and
//! one data server for missing data, rotating on timeout.
//!
//! Sending: each message gets the next counter of this incarnation and the committed prefix
//! the client knows as its timestamp; it is retransmitted unchanged until committed, or
//! reported expired once the delivered prefix passes `ts + max_lifetime` without it. At most
//! `sender_window` messages are in flight.
//!
//! Replicated state (DESIGN section 5): a client may run a [`StateMachine`], applying each
//! delivery to it; a checkpoint server's client also snapshots it at every checkpoint number.
//! A client that is far behind, or whose missing log is gone (a commit server answers
//! `Forgotten`, or a data server answers `Dropped`), catches up from the advertised
//! checkpoint (`catch_up.rs`), then goes on from the next number with the ordinary NACK
//! recovery. Before it skips numbers it learns their entries where it can, so that its own
//! sends among them are reported committed; a send whose fate lies in a part of the log that
//! is gone is reported [`Action::OutcomeUnknown`].
//!
//! Integrity (DESIGN section 12): it extends the commit chain (`crate::chain`) over the entries
//! it learns, and checks each payload against its entry's digest before delivering it (a copy
//! that does not match is dropped and fetched again). With signed frames it delivers a number
//! only once a heartbeat — which the network layer checked was signed by the epoch's owner —
//! names a chain at or after it that its own chain matches; on a mismatch it forgets the
//! entries since the last match and asks for them again, and it catches up only from a
//! checkpoint a heartbeat advertised. Then no member can make another deliver what the
//! sequencer did not commit.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use rand_xoshiro::Xoshiro256PlusPlus;
use rustc_hash::FxHashMap;
use thiserror::Error;

use crate::action::{Action, Channel, Dest, Outbox};
use crate::asker::Asker;
use crate::catch_up::CatchUp;
use crate::chain::Chain;
use crate::config::{Config, Mutation};
use crate::ids::{Digest, Epoch, Mid, Pid, Seq, SeqRange, Source, Time};
use crate::message::{
    Block, CheckpointInfo, Commit, Data, Entries, Entry, Fetch, Forgotten, Heartbeat, Message, QueryEntries,
};
use crate::notice::Notice;
use crate::state_machine::StateMachine;

/// The buffer size below which expired data is never swept.
const MIN_SWEEP: usize = 1024;
/// What one buffered message costs beyond its payload, so that empty payloads are bounded too.
const ENTRY_OVERHEAD_BYTES: usize = 64;
/// The most delivered counters of one source remembered above its gap-free floor.
const MAX_COUNTERS_ABOVE: usize = 4096;
/// The most sources whose delivered counters a member remembers; beyond it the memory is
/// cleared (the cost: a late duplicate is buffered until its lifetime passes).
const MAX_TRACKED_SOURCES: usize = 1 << 16;
/// The most signed chain points waiting for the entries before them; the lowest are kept.
const MAX_VOUCHES: usize = 64;
/// With signed frames, the most numbers ahead of the delivered prefix the window grows to, to
/// reach a signed chain point (some 90 bytes each: ~23 MB). Beyond the default window
/// (`max_lifetime + sequencer_window`), a member this far behind catches up from a checkpoint
/// (`catch_up_after`) unless the group has none; only then may it stall, and a signed point
/// nearer would free it.
const VOUCH_WINDOW_MAX: u64 = 1 << 18;

/// The bytes a buffered payload is charged.
fn charge(payload: &Bytes) -> usize {
    payload.len() + ENTRY_OVERHEAD_BYTES
}

/// Why a message could not be sent.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum SendError {
    /// `sender_window` messages are uncommitted; wait for commits.
    #[error("the send window is full ({0} messages in flight)")]
    WindowFull(usize),
}

/// Where a new member's deliveries start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeliverFrom {
    /// At number 1, or at the advertised checkpoint when the log there is gone or the member
    /// is far behind.
    #[default]
    Start,
    /// At the advertised checkpoint (its state restored), or at number 1 while none is
    /// advertised or while no checkpoint server answers the fetch.
    Checkpoint,
    /// After the highest number committed when the member first hears the sequencer: only
    /// later numbers are delivered. A member with a state machine starts at the checkpoint
    /// instead, since its state cannot skip numbers.
    Now,
}

/// What the client knows a number holds.
#[derive(Clone, Copy, Debug)]
struct Known {
    entry: Entry,
    /// The commit chain after this number, once the chain reached it.
    chain: Option<Chain>,
}

/// The counters of one source that were delivered: all up to `floor`, and the ones in `above`.
#[derive(Clone, Debug, Default)]
struct DeliveredCounters {
    floor: u64,
    above: BTreeSet<u64>,
}

impl DeliveredCounters {
    /// Records `counter`. A counter that never comes (an expired send) holds the floor down,
    /// so at most [`MAX_COUNTERS_ABOVE`] are kept above it: forgetting a delivery is safe (a
    /// late duplicate is buffered until its lifetime passes), claiming one never is.
    fn insert(&mut self, counter: u64) {
        if counter == self.floor.saturating_add(1) {
            self.floor = counter;
            while self.above.remove(&self.floor.saturating_add(1)) {
                self.floor += 1;
            }
        } else if counter > self.floor && self.above.len() < MAX_COUNTERS_ABOVE {
            self.above.insert(counter);
        }
    }

    fn contains(&self, counter: u64) -> bool {
        counter <= self.floor || self.above.contains(&counter)
    }
}

/// A message this client sent that is not committed yet.
#[derive(Clone, Debug)]
struct Outgoing {
    /// The timestamp; `None` while the message waits for the first heartbeat (DESIGN section
    /// 3: a sender takes `ts` from what it heard, and a guess of 0 would expire at once in an
    /// old group).
    ts: Option<Seq>,
    payload: Bytes,
    sent_at: Time,
}

/// The member's state machine.
struct Replica(Box<dyn StateMachine + Send>);

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replica(applied {})", self.0.applied())
    }
}

/// A member of the group that sends and delivers.
#[derive(Debug)]
pub struct Client {
    cfg: Arc<Config>,
    source: Source,
    rng: Xoshiro256PlusPlus,
    delivered: Seq,
    known_committed: Seq,
    /// What numbers `delivered + 1 ..` hold, as far as known.
    window: VecDeque<Option<Known>>,
    /// Data not yet delivered, with its timestamp.
    buffer: FxHashMap<Mid, (Seq, Bytes)>,
    buffer_bytes: usize,
    /// The buffer size that triggers the next sweep of expired data.
    sweep_at: usize,
    /// The data asked of data servers and not received yet.
    fetching: Fetching,
    delivered_mids: FxHashMap<Source, DeliveredCounters>,
    entry_asker: Asker,
    data_asker: Asker,
    sequencer: Option<Pid>,
    epoch: Epoch,
    counter: u64,
    outstanding: BTreeMap<u64, Outgoing>,
    next_retransmit: Option<Time>,
    replica: Option<Replica>,
    /// Whether this client snapshots its state machine at checkpoint numbers.
    takes_checkpoints: bool,
    /// Snapshots taken and not yet collected by the checkpoint server role.
    snapshots: Vec<(Seq, Chain, Bytes)>,
    /// The highest advertised checkpoint heard of.
    checkpoint: Option<CheckpointInfo>,
    /// The highest number a commit server said it forgot: the log up to it is gone.
    forgotten: Seq,
    /// The highest number up to which a data server said it dropped the data: a reason to
    /// catch up, but the entries (and so the fate of this client's sends) may still be known.
    dropped: Seq,
    catch_up: Option<CatchUp>,
    /// Whether the catch-up under way restores an earlier state than delivered (this client's
    /// own state diverged).
    rewind: bool,
    /// How many entries at the front of `window` are known (a hint that saves rescanning).
    known_prefix: usize,
    /// The commit chain after `delivered`.
    delivered_chain: Chain,
    /// How many entries at the front of `window` the chain has reached.
    chained: usize,
    /// With signed frames: every number up to this one holds an entry a signed chain vouched
    /// for (or was delivered).
    vouched: Seq,
    /// With signed frames: chain points from heartbeats above `vouched`, waiting for the
    /// entries before them.
    vouches: BTreeMap<Seq, Chain>,
    /// Blocks fetched over every catch-up, and catch-ups completed.
    caught_up: (u64, u64),
    /// Where deliveries start; back to `Start` once they have started.
    deliver_from: DeliverFrom,
}

impl Client {
    /// A client of incarnation `source` that starts delivering at number 1.
    pub fn new(cfg: Arc<Config>, source: Source, mut rng: Xoshiro256PlusPlus) -> Client {
        let entry_asker = Asker::new(cfg.commit_servers.clone(), cfg.nack_delay_us, cfg.request_timeout_us, &mut rng);
        let data_asker = Asker::new(cfg.data_servers.clone(), cfg.nack_delay_us, cfg.request_timeout_us, &mut rng);
        Client {
            cfg,
            source,
            rng,
            delivered: Seq::ZERO,
            known_committed: Seq::ZERO,
            window: VecDeque::new(),
            buffer: FxHashMap::default(),
            buffer_bytes: 0,
            sweep_at: MIN_SWEEP,
            fetching: Fetching::default(),
            delivered_mids: FxHashMap::default(),
            entry_asker,
            data_asker,
            sequencer: None,
            epoch: Epoch::NONE,
            counter: 0,
            outstanding: BTreeMap::new(),
            next_retransmit: None,
            replica: None,
            takes_checkpoints: false,
            snapshots: Vec::new(),
            checkpoint: None,
            forgotten: Seq::ZERO,
            dropped: Seq::ZERO,
            catch_up: None,
            rewind: false,
            known_prefix: 0,
            delivered_chain: Chain::GENESIS,
            chained: 0,
            vouched: Seq::ZERO,
            vouches: BTreeMap::new(),
            caught_up: (0, 0),
            deliver_from: DeliverFrom::Start,
        }
    }

    /// Sets where deliveries start; called before the client hears anything.
    pub fn deliver_from(&mut self, from: DeliverFrom) {
        self.deliver_from = from;
    }

    /// Whether deliveries wait for where they start to be known: the first heartbeat (which
    /// tells the committed head and the checkpoint), then the catch-up it started, unless
    /// that fetch found no server to answer it (then they start at number 1, as the log
    /// allows, rather than never).
    fn holding_deliveries(&mut self) -> bool {
        match self.deliver_from {
            DeliverFrom::Start => false,
            _ if self.sequencer.is_none() => true,
            DeliverFrom::Checkpoint if self.catch_up.as_ref().is_some_and(|c| !c.abandoned()) => true,
            _ => {
                self.deliver_from = DeliverFrom::Start;
                false
            }
        }
    }

    /// Runs `machine` on this client's deliveries; with `takes_checkpoints`, snapshots it at
    /// every checkpoint number (a checkpoint server's member).
    pub fn attach(&mut self, machine: Box<dyn StateMachine + Send>, takes_checkpoints: bool) {
        self.replica = Some(Replica(machine));
        self.takes_checkpoints = takes_checkpoints;
    }

    /// The state machine this client runs, if any.
    pub fn state_machine(&self) -> Option<&dyn StateMachine> {
        self.replica.as_ref().map(|r| &*r.0 as &dyn StateMachine)
    }

    /// Takes the snapshots made at checkpoint numbers since the last call, each with the
    /// commit chain at its number.
    pub fn take_snapshots(&mut self) -> Vec<(Seq, Chain, Bytes)> {
        std::mem::take(&mut self.snapshots)
    }

    /// Blocks fetched over every catch-up so far, and how many catch-ups completed.
    pub fn caught_up(&self) -> (u64, u64) {
        self.caught_up
    }

    /// Whether a catch-up from a checkpoint is under way.
    pub fn is_catching_up(&self) -> bool {
        self.catch_up.is_some()
    }

    /// The highest number delivered (every number up to it was delivered or skipped).
    pub fn delivered(&self) -> Seq {
        self.delivered
    }

    /// The sequencer this client follows, once it heard a heartbeat.
    pub fn sequencer(&self) -> Option<Pid> {
        self.sequencer
    }

    /// The highest epoch this client heard of.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The highest advertised checkpoint this client heard of.
    pub fn checkpoint(&self) -> Option<CheckpointInfo> {
        self.checkpoint
    }

    /// The highest number this client heard to be committed.
    pub fn known_committed(&self) -> Seq {
        self.known_committed
    }

    /// How many sent messages are neither committed nor expired.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    /// Sends `payload` to the group. Before the first heartbeat the message is held, and goes
    /// out when the heartbeat gives it a timestamp.
    pub fn send(&mut self, now: Time, payload: Bytes, out: &mut Outbox) -> Result<Mid, SendError> {
        if self.outstanding.len() >= self.cfg.sender_window {
            return Err(SendError::WindowFull(self.outstanding.len()));
        }
        self.counter += 1;
        let mid = Mid { source: self.source, counter: self.counter };
        self.outstanding.insert(self.counter, Outgoing { ts: None, payload, sent_at: now });
        if self.epoch != Epoch::NONE {
            self.transmit_first(now, self.counter, out);
        }
        Ok(mid)
    }

    /// Gives a held message its timestamp and sends it for the first time.
    fn transmit_first(&mut self, now: Time, counter: u64, out: &mut Outbox) {
        let ts = self.known_committed;
        let Some(o) = self.outstanding.get_mut(&counter) else { return };
        o.ts = Some(ts);
        o.sent_at = now;
        let payload = o.payload.clone();
        let mid = Mid { source: self.source, counter };
        self.buffer_data(now, mid, ts, payload.clone(), false);
        out.send(Dest::Channel(Channel::Global), Message::Data(Data { mid, ts, payload }));
        let due = now.plus_us(self.cfg.retransmit_us);
        self.next_retransmit = Some(self.next_retransmit.map_or(due, |t| t.min(due)));
    }

    /// Buffers a data message until its number is known and due (`from` tells a data server's
    /// answer from a sender's multicast).
    pub fn handle_data(&mut self, now: Time, from: Pid, data: Data, out: &mut Outbox) {
        let stale = self.cfg.lifetime_end(data.ts) <= self.delivered;
        if stale || self.was_delivered(&data.mid) {
            return;
        }
        let answer = self.cfg.data_rank(from).is_some();
        // Only an answer to a question lets the next question go at once: a sender's
        // multicast says nothing of whether the data server asked is alive.
        let answered = answer && self.fetching.contains(&data.mid);
        if self.buffer_data(now, data.mid, data.ts, data.payload, answer) {
            if answered {
                self.data_asker.progress(now);
            }
            self.deliver(out);
        }
    }

    fn was_delivered(&self, mid: &Mid) -> bool {
        self.delivered_mids.get(&mid.source).is_some_and(|d| d.contains(mid.counter))
    }

    /// Buffers a payload within the byte cap; returns whether it was new.
    /// Data this member asked a data server for is admitted even over the cap (a `Fetch` asks
    /// for at most `nack_batch` messages), so a full buffer can never stall delivery.
    fn buffer_data(&mut self, now: Time, mid: Mid, ts: Seq, payload: Bytes, answer: bool) -> bool {
        let fetched = self.fetching.received(now, &mid, answer);
        let full = self.buffer_bytes + charge(&payload) > self.cfg.member_buffer_bytes;
        if self.buffer.contains_key(&mid) || (full && !fetched) {
            return false;
        }
        self.buffer_bytes += charge(&payload);
        self.buffer.insert(mid, (ts, payload));
        true
    }

    /// Learns the numbers a `Commit` announces.
    pub fn handle_commit(&mut self, now: Time, commit: &Commit, out: &mut Outbox) {
        let Some(range) = commit.range() else { return };
        self.note_committed(range.last);
        for (i, entry) in commit.entries.iter().enumerate() {
            self.learn(commit.first.plus(i as u64), *entry, out);
        }
        self.deliver(out);
        self.note_gap(now);
    }

    /// Learns committed entries a commit server sent in answer to a query.
    /// Returns false, having taken nothing, unless that server was asked lately.
    pub fn handle_entries(&mut self, now: Time, from: Pid, entries: &Entries, out: &mut Outbox) -> bool {
        if !self.entry_asker.awaits(from, now) {
            return false;
        }
        let mut news = false;
        for (i, slot) in entries.slots.iter().enumerate() {
            let seq = entries.first.plus(i as u64);
            self.note_committed(seq);
            news |= self.learn(seq, slot.entry, out);
        }
        if news {
            self.entry_asker.progress(now);
        }
        self.deliver(out);
        self.note_gap(now);
        true
    }

    /// Follows the sequencer: its epoch, its pid, how far it committed. The first heartbeat
    /// releases the messages held for a timestamp.
    pub fn handle_heartbeat(&mut self, now: Time, hb: &Heartbeat, out: &mut Outbox) {
        let first = self.epoch == Epoch::NONE;
        if hb.epoch >= self.epoch {
            self.epoch = hb.epoch;
            self.sequencer = Some(hb.sequencer);
        }
        self.known_committed = self.known_committed.max(hb.committed);
        self.note_checkpoint(hb.checkpoint);
        if first && self.deliver_from == DeliverFrom::Now {
            if self.replica.is_some() {
                self.deliver_from = DeliverFrom::Checkpoint;
            } else if hb.committed > self.delivered {
                self.advance_to(hb.committed, hb.chain);
            }
        }
        self.note_vouch(hb.committed, hb.chain);
        self.maybe_catch_up(now, out);
        if first {
            let held: Vec<u64> = self.outstanding.iter().filter(|(_, o)| o.ts.is_none()).map(|(c, _)| *c).collect();
            for counter in held {
                self.transmit_first(now, counter, out);
            }
        }
        if self.signed() {
            self.deliver(out);
        }
        self.note_gap(now);
    }

    /// Records what `seq` holds; returns whether it was news. Reports this client's own
    /// messages as committed.
    fn learn(&mut self, seq: Seq, entry: Entry, out: &mut Outbox) -> bool {
        if !self.signed() {
            self.report_committed(seq, &entry, out);
        }
        let Some(offset) = seq.0.checked_sub(self.delivered.0 + 1) else { return false };
        if offset >= self.window_limit() {
            return false;
        }
        let offset = offset as usize;
        if self.window.len() <= offset {
            self.window.resize(offset + 1, None);
        }
        match &mut self.window[offset] {
            Some(_) => false,
            empty => {
                *empty = Some(Known { entry, chain: None });
                true
            }
        }
    }

    /// Notes that a `Commit` or a commit server's answer says `seq` is committed. With signed
    /// frames only a heartbeat says how far the group committed: a forged `Commit` naming a
    /// far number would otherwise stamp this member's sends with a timestamp no data server
    /// takes, and send it asking for numbers that do not exist.
    fn note_committed(&mut self, seq: Seq) {
        if !self.signed() {
            self.known_committed = self.known_committed.max(seq);
        }
    }

    /// Whether frames are signed: entries count only once a signed chain vouches for them.
    fn signed(&self) -> bool {
        self.cfg.signs_frames()
    }

    /// Tells the application that its own message `entry` committed at `seq`.
    fn report_committed(&mut self, seq: Seq, entry: &Entry, out: &mut Outbox) {
        if let Entry::Msg { mid, .. } = *entry {
            if mid.source == self.source && self.outstanding.remove(&mid.counter).is_some() {
                out.push(Action::Committed { mid, seq });
            }
        }
    }

    /// Extends the chain over the entries known after the ones it reached.
    fn extend_chain(&mut self) {
        let mut prev = match self.chained.checked_sub(1) {
            None => self.delivered_chain,
            Some(last) => self.window[last].and_then(|k| k.chain).expect("chained entries have a chain"),
        };
        while let Some(Some(known)) = self.window.get_mut(self.chained) {
            let seq = self.delivered.plus(self.chained as u64 + 1);
            prev = prev.then(seq, &known.entry);
            known.chain = Some(prev);
            self.chained += 1;
        }
    }

    /// With signed frames, notes a heartbeat's chain point (the network layer checked its
    /// signature), to be matched once the chain reaches it.
    fn note_vouch(&mut self, seq: Seq, chain: Chain) {
        if !self.signed() || seq <= self.vouched {
            return;
        }
        if self.vouches.len() >= MAX_VOUCHES && self.vouches.last_key_value().is_some_and(|(last, _)| *last < seq) {
            return;
        }
        self.vouches.insert(seq, chain);
        if self.vouches.len() > MAX_VOUCHES {
            self.vouches.pop_last();
        }
    }

    /// Matches the chain against the signed points it reached: a match vouches for every
    /// entry up to it (and only then are this member's own messages among them reported
    /// committed); a mismatch means some entry since the last match was forged, and they are
    /// all forgotten and asked for again.
    fn check_vouches(&mut self, out: &mut Outbox) {
        while let Some((&seq, &signed)) = self.vouches.first_key_value() {
            if seq <= self.vouched {
                self.vouches.pop_first();
                continue;
            }
            let offset = (seq.0 - self.delivered.0 - 1) as usize;
            if offset >= self.chained {
                break;
            }
            let from = (self.vouched.0 - self.delivered.0) as usize;
            if self.window[offset].and_then(|k| k.chain) == Some(signed) {
                for i in from..=offset {
                    let entry = self.window[i].map(|k| k.entry).expect("chained entries are known");
                    self.report_committed(self.delivered.plus(i as u64 + 1), &entry, out);
                }
                self.vouched = seq;
                continue;
            }
            for slot in self.window.range_mut(from..=offset) {
                *slot = None;
            }
            for known in self.window.range_mut(offset..).flatten() {
                known.chain = None;
            }
            self.chained = from;
            self.known_prefix = self.known_prefix.min(from);
            break;
        }
    }

    /// Delivers every number that is due, in order.
    fn deliver(&mut self, out: &mut Outbox) {
        if self.holding_deliveries() {
            return;
        }
        self.extend_chain();
        let signed = self.signed();
        if signed {
            self.check_vouches(out);
        }
        while let Some(Some(known)) = self.window.front().copied() {
            let next = self.delivered.next();
            let Some(chain) = known.chain.filter(|_| !signed || next <= self.vouched) else { break };
            if let Entry::Msg { mid, digest } = known.entry {
                let Some(payload) = self.take_verified(mid, digest) else { break };
                self.remember_delivered(mid);
                if let Some(r) = &mut self.replica {
                    r.0.apply(next, &payload);
                }
                out.push(Action::Deliver { seq: next, mid, payload });
            }
            self.window.pop_front();
            self.known_prefix = self.known_prefix.saturating_sub(1);
            self.chained -= 1;
            self.delivered = next;
            self.delivered_chain = chain;
            self.vouched = self.vouched.max(next);
            self.snapshot_if_due(next);
        }
        self.expire_buffer();
    }

    fn snapshot_if_due(&mut self, seq: Seq) {
        if !self.takes_checkpoints || !self.cfg.is_checkpoint(seq) {
            return;
        }
        if let Some(r) = &self.replica {
            self.snapshots.push((seq, self.delivered_chain, r.0.snapshot()));
        }
    }

    fn note_checkpoint(&mut self, checkpoint: Option<CheckpointInfo>) {
        if checkpoint.is_some_and(|c| self.checkpoint.is_none_or(|known| c.seq > known.seq)) {
            self.checkpoint = checkpoint;
        }
    }

    /// A commit server forgot numbers this client asked for: the log there is gone, and the
    /// client catches up from the checkpoint that covers it.
    pub fn handle_forgotten(&mut self, now: Time, from: Pid, forgotten: &Forgotten, out: &mut Outbox) {
        if self.cfg.commit_rank(from).is_some() {
            self.note_floor(now, forgotten, Gone::Log, out);
        }
    }

    /// A data server lacks the data delivery waits for: ask the next one at once; and if the
    /// server dropped it under a checkpoint, catch up from that checkpoint.
    pub fn handle_dropped(&mut self, now: Time, from: Pid, dropped: &Forgotten, out: &mut Outbox) {
        if self.cfg.data_rank(from).is_none() {
            return;
        }
        if let Some(Some(Known { entry: Entry::Msg { mid, .. }, .. })) = self.window.front() {
            self.fetching.forget(mid);
        }
        self.data_asker.refused(now);
        self.note_floor(now, dropped, Gone::Data, out);
    }

    /// Notes a server's floor (what the log or the data no longer holds up to) and the
    /// checkpoint that covers it; a floor above what is known committed is bogus.
    fn note_floor(&mut self, now: Time, floor: &Forgotten, gone: Gone, out: &mut Outbox) {
        if floor.floor > self.known_committed {
            return;
        }
        // With signed frames a floor comes unsigned: no honest server forgets above the
        // checkpoint a signed heartbeat advertised, so nothing above it is believed gone.
        let believed = if self.signed() { self.checkpoint.map_or(Seq::ZERO, |c| c.seq) } else { floor.floor };
        let known = match gone {
            Gone::Log => &mut self.forgotten,
            Gone::Data => &mut self.dropped,
        };
        *known = (*known).max(floor.floor.min(believed));
        if !self.signed() {
            self.note_checkpoint(floor.checkpoint);
        }
        self.maybe_catch_up(now, out);
    }

    /// Starts catching up from the advertised checkpoint when this client is more than
    /// `catch_up_after` numbers behind, or the log it needs is gone.
    fn maybe_catch_up(&mut self, now: Time, out: &mut Outbox) {
        let Some(c) = self.checkpoint.filter(|c| c.seq > self.delivered) else { return };
        if let Some(fetch) = &self.catch_up {
            // Servers keep two checkpoints: a fetch that stalls while a newer one is
            // advertised moves to the newer one.
            if fetch.checkpoint().seq >= c.seq || !fetch.stalled() {
                return;
            }
            self.caught_up.0 += fetch.fetched();
        }
        let behind = self.known_committed.0.saturating_sub(self.delivered.0);
        let asked = self.deliver_from == DeliverFrom::Checkpoint;
        if asked || behind > self.cfg.catch_up_after || self.forgotten.max(self.dropped) > self.delivered {
            self.start_catch_up(now, c, out);
        }
    }

    fn start_catch_up(&mut self, now: Time, checkpoint: CheckpointInfo, out: &mut Outbox) {
        let servers = self.cfg.checkpoint_servers.clone();
        self.catch_up = CatchUp::start(checkpoint, servers, now, self.cfg.request_timeout_us);
        if self.catch_up.is_some() {
            out.push(Action::Notice(Notice::CatchingUp { checkpoint: checkpoint.seq, delivered: self.delivered }));
        }
    }

    /// Restores the state from `checkpoint` whatever this client delivered (its own state
    /// diverged from the agreed one): deliveries start again after it.
    pub fn restore_from(&mut self, now: Time, checkpoint: CheckpointInfo, out: &mut Outbox) {
        self.note_checkpoint(Some(checkpoint));
        self.rewind = true;
        self.start_catch_up(now, checkpoint, out);
    }

    /// Restores a snapshot this process holds itself (a checkpoint server's own checkpoint,
    /// at restart), with the commit chain at its number: deliveries continue after `seq`.
    pub fn restore_local(&mut self, now: Time, seq: Seq, chain: Chain, snapshot: Bytes, out: &mut Outbox) {
        if let Some(r) = &mut self.replica {
            if r.0.restore(&snapshot).is_err() {
                return;
            }
        }
        self.jump(now, seq, chain, snapshot, out);
    }

    /// Takes a block of the checkpoint being fetched.
    pub fn handle_block(&mut self, now: Time, from: Pid, block: &Block, out: &mut Outbox) {
        if self.cfg.checkpoint_rank(from).is_none() {
            return;
        }
        if let Some(c) = &mut self.catch_up {
            c.handle_block(now, from, block);
        }
        self.finish_catch_up(now, out);
    }

    /// Once the snapshot is complete and this client's own sends in the numbers it skips are
    /// resolved (or their log is gone), restores it and goes on from the next number.
    fn finish_catch_up(&mut self, now: Time, out: &mut Outbox) {
        let Some(c) = &self.catch_up else { return };
        if c.checkpoint().seq <= self.delivered && !self.rewind {
            // Delivery went past the checkpoint meanwhile: nothing to restore.
            self.caught_up.0 += c.fetched();
            self.catch_up = None;
            return;
        }
        let (Some(snapshot), checkpoint, fetched) = (c.ready().cloned(), c.checkpoint(), c.fetched()) else { return };
        let skipped_known = self.skipped_entries_known(&checkpoint, out);
        let log_gone = self.forgotten > self.delivered
            || checkpoint.seq.0 - self.delivered.0.min(checkpoint.seq.0) > self.window_limit();
        if !skipped_known && !log_gone && self.sends_before(checkpoint.seq).next().is_some() {
            return;
        }
        if let Some(r) = &mut self.replica {
            if r.0.restore(&snapshot).is_err() {
                self.catch_up = None;
                return;
            }
        }
        self.caught_up = (self.caught_up.0 + fetched, self.caught_up.1 + 1);
        self.catch_up = None;
        self.rewind = false;
        if !skipped_known {
            self.report_unknown(checkpoint.seq, out);
        }
        out.push(Action::Notice(Notice::CaughtUp { checkpoint: checkpoint.seq, bytes: fetched }));
        self.jump(now, checkpoint.seq, checkpoint.chain, snapshot, out);
    }

    /// Whether the entries of every number a restore of `checkpoint` skips are known. With
    /// signed frames they must also be vouched for, by the checkpoint's signed chain (which
    /// reports this member's own messages among them committed).
    fn skipped_entries_known(&mut self, checkpoint: &CheckpointInfo, out: &mut Outbox) -> bool {
        if !self.entries_known_through(checkpoint.seq) {
            return false;
        }
        if !self.signed() {
            return true;
        }
        self.note_vouch(checkpoint.seq, checkpoint.chain);
        self.extend_chain();
        self.check_vouches(out);
        self.vouched >= checkpoint.seq
    }

    /// Whether the entries of every number from the next to deliver through `seq` are known.
    fn entries_known_through(&self, seq: Seq) -> bool {
        let n = seq.0.saturating_sub(self.delivered.0) as usize;
        self.window.len() >= n && self.window.iter().take(n).all(Option::is_some)
    }

    /// The most numbers ahead of the delivered prefix whose entries this client keeps. With
    /// signed frames, at least through the lowest signed chain point waiting, up to
    /// [`VOUCH_WINDOW_MAX`]: nothing before the point can be delivered until the chain
    /// reaches it, and a member that restarted behind a quiet group hears only the chain at
    /// the committed head.
    fn window_limit(&self) -> u64 {
        let vouch = self.vouches.first_key_value().map_or(0, |(seq, _)| seq.0.saturating_sub(self.delivered.0));
        (self.cfg.max_lifetime + self.cfg.sequencer_window as u64).max(vouch.min(VOUCH_WINDOW_MAX))
    }

    /// The counters of this client's sends in flight that may have been numbered at or below
    /// `seq` (their timestamp is below it).
    fn sends_before(&self, seq: Seq) -> impl Iterator<Item = u64> + '_ {
        self.outstanding.iter().filter(move |(_, o)| o.ts.is_some_and(|ts| ts < seq)).map(|(c, _)| *c)
    }

    /// Reports the sends whose fate lies in skipped numbers nobody can tell any more.
    fn report_unknown(&mut self, seq: Seq, out: &mut Outbox) {
        let unknown: Vec<u64> = self.sends_before(seq).collect();
        for counter in unknown {
            self.outstanding.remove(&counter);
            out.push(Action::OutcomeUnknown { mid: Mid { source: self.source, counter } });
        }
    }

    /// Moves the delivered prefix to `seq`, the number of the state just restored.
    fn jump(&mut self, now: Time, seq: Seq, chain: Chain, snapshot: Bytes, out: &mut Outbox) {
        self.advance_to(seq, chain);
        out.push(Action::Restored { seq, chain, snapshot });
        self.deliver(out);
        self.note_gap(now);
    }

    /// Moves the delivered prefix to `seq`, after which the chain is `chain`, without
    /// delivering what lies before it.
    fn advance_to(&mut self, seq: Seq, chain: Chain) {
        self.known_prefix = 0;
        self.chained = 0;
        self.delivered_chain = chain;
        self.vouched = if seq >= self.delivered { self.vouched.max(seq) } else { seq };
        self.fetching.clear();
        if seq >= self.delivered {
            let skip = (seq.0 - self.delivered.0) as usize;
            if skip >= self.window.len() {
                self.window.clear();
            } else {
                self.window.drain(..skip);
            }
        } else {
            self.window.clear();
            self.delivered_mids.clear();
        }
        self.delivered = seq;
        self.known_committed = self.known_committed.max(seq);
    }

    fn remember_delivered(&mut self, mid: Mid) {
        if self.delivered_mids.len() >= MAX_TRACKED_SOURCES && !self.delivered_mids.contains_key(&mid.source) {
            self.delivered_mids.clear();
        }
        self.delivered_mids.entry(mid.source).or_default().insert(mid.counter);
    }

    /// Takes `mid`'s payload from the buffer if it matches the digest; a payload that does
    /// not match is dropped and fetched again (the first copy to arrive does not win).
    fn take_verified(&mut self, mid: Mid, digest: Digest) -> Option<Bytes> {
        let (_, payload) = self.buffer.remove(&mid)?;
        self.buffer_bytes = self.buffer_bytes.saturating_sub(charge(&payload));
        (Digest::of(&payload) == digest).then_some(payload)
    }

    /// Drops buffered data that can no longer be committed after the delivered prefix (a
    /// message is numbered at most `max_lifetime` after its timestamp). Sweeps only when the
    /// buffer has doubled since the last sweep, so the cost per message stays constant.
    fn expire_buffer(&mut self) {
        if self.buffer.len() < self.sweep_at {
            return;
        }
        let delivered = self.delivered;
        let cfg = &self.cfg;
        let mut bytes = 0;
        self.buffer.retain(|_, (ts, payload)| {
            let alive = cfg.lifetime_end(*ts) > delivered;
            bytes += if alive { charge(payload) } else { 0 };
            alive
        });
        self.buffer_bytes = bytes;
        self.sweep_at = (2 * self.buffer.len()).max(MIN_SWEEP);
    }

    fn note_gap(&mut self, now: Time) {
        if self.delivered < self.known_committed {
            self.entry_asker.missing(now, &mut self.rng);
            self.data_asker.missing(now, &mut self.rng);
        }
    }

    /// Asks for what is missing, retransmits what is not committed, reports what expired.
    pub fn handle_tick(&mut self, now: Time, out: &mut Outbox) {
        if let Some(c) = &mut self.catch_up {
            c.handle_tick(now, out);
            self.maybe_catch_up(now, out);
            self.finish_catch_up(now, out);
        }
        if self.deliver_from == DeliverFrom::Checkpoint {
            // The fetch that holds deliveries may have been abandoned: no message need come
            // for them to start.
            self.deliver(out);
        }
        if !self.cfg.mutated(Mutation::NoGapRecovery) {
            self.ask_entries(now, out);
            // Data a checkpoint will skip is not worth fetching, unless the fetch is stuck:
            // then the log may still get this client on.
            if self.catch_up.as_ref().is_none_or(CatchUp::stalled) {
                self.ask_data(now, out);
            }
        }
        if self.next_retransmit.is_some_and(|t| now >= t) {
            self.retransmit(now, out);
        }
    }

    fn ask_entries(&mut self, now: Time, out: &mut Outbox) {
        while self.window.get(self.known_prefix).is_some_and(Option::is_some) {
            self.known_prefix += 1;
        }
        let last = self.known_committed.0.saturating_sub(self.delivered.0).min(self.window_limit());
        if self.known_prefix as u64 >= last {
            self.entry_asker.settled();
            return;
        }
        if let Some(server) = self.entry_asker.due(now, self.sequencer) {
            let ranges = self.missing_entries(last);
            out.send(Dest::Pid(server), Message::QueryEntries(QueryEntries { ranges }));
        }
    }

    /// Ranges of committed numbers whose entries are unknown, up to `last` numbers ahead of the
    /// delivered prefix and at most `nack_batch` of them.
    fn missing_entries(&self, last: u64) -> Vec<SeqRange> {
        let mut ranges: Vec<SeqRange> = Vec::new();
        let mut budget = self.cfg.nack_batch as u64;
        for offset in self.known_prefix as u64..last {
            if budget == 0 {
                break;
            }
            if self.window.get(offset as usize).is_some_and(Option::is_some) {
                continue;
            }
            let seq = self.delivered.plus(offset + 1);
            budget -= 1;
            match ranges.last_mut() {
                Some(r) if r.last.next() == seq => r.last = seq,
                _ => ranges.push(SeqRange { first: seq, last: seq }),
            }
        }
        ranges
    }

    /// Asks a data server for missing data when delivery waits for it (the front's entry is
    /// known and its data is not), with the other missing data after it in the same batch.
    /// Answers arrive one message at a time: each lets the next question go at once, for
    /// what is missing and not on its way (see [`Fetching`]).
    fn ask_data(&mut self, now: Time, out: &mut Outbox) {
        let blocked = match self.window.front() {
            Some(Some(Known { entry: Entry::Msg { mid, .. }, .. })) => !self.buffer.contains_key(mid),
            _ => false,
        };
        if !blocked {
            self.data_asker.settled();
            return;
        }
        self.data_asker.missing(now, &mut self.rng);
        let timed_out = self.data_asker.timed_out(now);
        let Some(server) = self.data_asker.due(now, None) else { return };
        if timed_out {
            self.fetching.clear();
        }
        let (margin_us, timeout_us) = (self.cfg.nack_delay_us, self.cfg.request_timeout_us);
        let mids: Vec<Mid> = self
            .window
            .iter()
            .take(self.cfg.nack_batch * FETCH_SCAN_BATCHES)
            .filter_map(|k| match k {
                Some(Known { entry: Entry::Msg { mid, .. }, .. })
                    if !self.buffer.contains_key(mid) && self.fetching.wants(now, mid, margin_us, timeout_us) =>
                {
                    Some(*mid)
                }
                _ => None,
            })
            .take(self.cfg.nack_batch)
            .collect();
        // The question times out as soon as its answer is overdue, not after the fixed
        // request timeout: one lost answer must not hold delivery up for long.
        if let Some(overdue_us) = self.fetching.overdue_us(margin_us) {
            self.data_asker.expect_by(now.plus_us(overdue_us));
        }
        if mids.is_empty() {
            return;
        }
        mids.iter().for_each(|mid| self.fetching.ask(now, *mid));
        out.send(Dest::Pid(server), Message::Fetch(Fetch { mids }));
    }

    fn retransmit(&mut self, now: Time, out: &mut Outbox) {
        let rto = self.cfg.retransmit_us;
        let horizon = self.delivered;
        let cfg = &self.cfg;
        let resend = !self.cfg.mutated(Mutation::NoRetransmission);
        let mut expired = Vec::new();
        for (&counter, o) in self.outstanding.iter_mut() {
            let Some(ts) = o.ts else { continue };
            if cfg.lifetime_end(ts) <= horizon {
                expired.push(counter);
            } else if resend && now.since_us(o.sent_at) >= rto {
                o.sent_at = now;
                let mid = Mid { source: self.source, counter };
                out.send(Dest::Channel(Channel::Global), Message::Data(Data { mid, ts, payload: o.payload.clone() }));
            }
        }
        for counter in expired {
            self.outstanding.remove(&counter);
            out.push(Action::Expired { mid: Mid { source: self.source, counter } });
        }
        self.next_retransmit =
            self.outstanding.values().filter(|o| o.ts.is_some()).map(|o| o.sent_at.plus_us(rto)).min();
    }

    /// What holds up the next delivery, for diagnostics.
    pub fn stalled_on(&self) -> String {
        match self.window.front() {
            None => format!("entry of {} unknown", self.delivered.next()),
            Some(None) => format!("entry of {} unknown ({} known after it)", self.delivered.next(), self.window.len()),
            Some(Some(k)) => format!(
                "{:?} known, data held: {}, vouched through {}",
                k.entry,
                match k.entry {
                    Entry::Msg { mid, .. } => self.buffer.contains_key(&mid),
                    Entry::Noop => true,
                },
                self.vouched,
            ),
        }
    }

    /// When this client next needs a tick.
    pub fn poll_timeout(&self) -> Option<Time> {
        let catch_up = self.catch_up.as_ref().and_then(CatchUp::deadline);
        [self.entry_asker.deadline(), self.data_asker.deadline(), self.next_retransmit, catch_up]
            .into_iter()
            .flatten()
            .min()
    }

    /// Checks the client's invariants (debug builds and the simulator).
    pub fn check_invariants(&self) {
        debug_assert!(self.outstanding.len() <= self.cfg.sender_window);
        debug_assert!(self.delivered <= self.known_committed);
    }
}

/// What a server's floor says is gone.
#[derive(Clone, Copy, Debug)]
enum Gone {
    /// A commit server forgot the entries: the numbers' fate can no longer be learned.
    Log,
    /// A data server dropped the data: a reason to catch up, nothing more.
    Data,
}

/// How far ahead of the delivered prefix a question for data looks, in `nack_batch`es: data
/// far ahead is not what delivery waits for, and the scan must stay short.
const FETCH_SCAN_BATCHES: usize = 4;

/// The data asked of data servers and not received yet, with when it was asked. Asked data
/// is admitted to the buffer even when it is full, and is not asked again while it may still
/// be on its way: until a question times out, or until it is overdue by far more than data
/// servers take to answer (a lost answer is asked again without waiting for the timeout).
#[derive(Clone, Debug, Default)]
struct Fetching {
    asked: FxHashMap<Mid, Time>,
    /// The smoothed time data servers took to answer, in microseconds (0: not measured yet).
    answer_us: u64,
}

impl Fetching {
    /// Notes that `mid` arrived, as a data server's `answer` or otherwise (a sender's
    /// multicast says nothing of how long answers take); returns whether it was asked for.
    fn received(&mut self, now: Time, mid: &Mid, answer: bool) -> bool {
        let Some(asked_at) = self.asked.remove(mid) else { return false };
        if answer {
            let sample = now.since_us(asked_at);
            self.answer_us = if self.answer_us == 0 { sample.max(1) } else { (7 * self.answer_us + sample) / 8 };
        }
        true
    }

    /// Whether `mid` was asked for and has not arrived.
    fn contains(&self, mid: &Mid) -> bool {
        self.asked.contains_key(mid)
    }

    /// Whether `mid` should be asked for: it was not, or its answer is overdue by more than
    /// twice the usual answer time plus `margin_us` (or by `timeout_us`, before any answer
    /// was timed).
    fn wants(&self, now: Time, mid: &Mid, margin_us: u64, timeout_us: u64) -> bool {
        let overdue_us = self.overdue_us(margin_us).unwrap_or(timeout_us);
        self.asked.get(mid).is_none_or(|asked_at| now.since_us(*asked_at) > overdue_us)
    }

    /// How long after asking an answer is overdue, once answers were timed.
    fn overdue_us(&self, margin_us: u64) -> Option<u64> {
        (self.answer_us > 0).then(|| 2 * self.answer_us + margin_us)
    }

    /// Forgets that `mid` was asked for (the server asked does not hold it).
    fn forget(&mut self, mid: &Mid) {
        self.asked.remove(mid);
    }

    fn ask(&mut self, now: Time, mid: Mid) {
        self.asked.insert(mid, now);
    }

    /// Forgets what was asked (a question timed out, or the numbers were skipped).
    fn clear(&mut self) {
        self.asked.clear();
    }
}

#[cfg(test)]
mod tests {
    use rand_xoshiro::rand_core::SeedableRng;

    use super::*;
    use crate::chain::Chain;
    use crate::ids::{Epoch, Incarnation};
    use crate::message::Slot;

    fn client() -> Client {
        client_with(|_| {})
    }

    /// A client of a group whose configuration `tune` changed.
    fn client_with(tune: impl FnOnce(&mut Config)) -> Client {
        let mut cfg = Config::new(vec![Pid(1)], vec![Pid(11), Pid(12)], vec![Pid(21)]);
        tune(&mut cfg);
        let source = Source { pid: Pid(50), incarnation: Incarnation(1) };
        Client::new(Arc::new(cfg), source, Xoshiro256PlusPlus::seed_from_u64(3))
    }

    fn mid(counter: u64) -> Mid {
        Mid { source: Source { pid: Pid(9), incarnation: Incarnation(2) }, counter }
    }

    fn fetches(out: &mut Outbox) -> Vec<(Pid, Vec<Mid>)> {
        out.drain()
            .filter_map(|a| match a {
                Action::Send { to: Dest::Pid(p), msg: Message::Fetch(f) } => Some((p, f.mids)),
                _ => None,
            })
            .collect()
    }

    /// A client that missed the data of numbers 1..=4 and asked for them.
    fn asked() -> (Client, Pid, Outbox) {
        let mut c = client();
        let mut out = Outbox::new();
        let entries = (1..=4).map(|i| Entry::Msg { mid: mid(i), digest: Digest::of(b"x") }).collect();
        c.handle_commit(Time(0), &Commit { epoch: Epoch::initial(), first: Seq(1), entries }, &mut out);
        c.handle_tick(Time(10_000), &mut out);
        let asked = fetches(&mut out);
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].1, (1..=4).map(mid).collect::<Vec<_>>(), "the front first");
        (c, asked[0].0, out)
    }

    fn data(counter: u64) -> Data {
        Data { mid: mid(counter), ts: Seq::ZERO, payload: Bytes::from_static(b"x") }
    }

    /// DESIGN section 4, gap recovery: answers arrive one at a time; each lets the next
    /// question go, but what is still on its way is not asked again until it is overdue.
    #[test]
    fn data_on_its_way_is_not_asked_again() {
        let (mut c, server, mut out) = asked();
        c.handle_data(Time(10_200), server, data(1), &mut out);
        c.handle_tick(Time(10_200), &mut out);
        assert!(fetches(&mut out).is_empty(), "2..=4 are on their way");
        assert_eq!(c.delivered(), Seq(1));
        c.handle_data(Time(10_300), server, data(3), &mut out);
        c.handle_tick(Time(10_300 + 2 * 250 + c.cfg.nack_delay_us + 1), &mut out);
        let again = fetches(&mut out);
        assert_eq!(again.iter().flat_map(|(_, m)| m.clone()).collect::<Vec<_>>(), vec![mid(2), mid(4)], "overdue");
    }

    /// Other senders' multicasts are no answer: they neither let a question go early nor
    /// keep a lost one from timing out, and once answers were timed a question times out
    /// after twice the answer time (plus the NACK delay), not the fixed request timeout.
    #[test]
    fn only_answers_pace_questions_and_an_overdue_answer_is_asked_of_the_next_server() {
        let (mut c, server, mut out) = asked();
        c.handle_data(Time(10_200), server, data(2), &mut out);
        c.handle_data(Time(10_300), Pid(9), data(3), &mut out);
        c.handle_tick(Time(10_300), &mut out);
        assert!(fetches(&mut out).is_empty(), "1 and 4 are on their way");
        let overdue = 10_300 + 2 * 200 + c.cfg.nack_delay_us + 1;
        assert!(overdue < 10_000 + c.cfg.request_timeout_us);
        c.handle_tick(Time(overdue), &mut out);
        let again = fetches(&mut out);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].0, server, "the next server");
        assert_eq!(again[0].1, vec![mid(1), mid(4)]);
    }

    /// A data server that lacks what delivery waits for says so, and the next server is asked
    /// at once, without waiting for the request timeout.
    #[test]
    fn a_data_server_that_lacks_the_front_sends_the_client_to_the_next_at_once() {
        let (mut c, server, mut out) = asked();
        c.handle_dropped(Time(10_100), server, &Forgotten { floor: Seq::ZERO, checkpoint: None }, &mut out);
        c.handle_tick(Time(10_100), &mut out);
        let next = fetches(&mut out);
        assert_eq!(next.len(), 1);
        assert_ne!(next[0].0, server);
        assert_eq!(next[0].1, vec![mid(1)], "only the front: the rest may be on its way");
        let stranger = Forgotten { floor: Seq(1), checkpoint: None };
        c.handle_forgotten(Time(10_200), Pid(11), &stranger, &mut out);
        assert_eq!(c.forgotten, Seq::ZERO, "Forgotten is heeded from commit servers only");
    }

    fn heartbeat(committed: u64, checkpoint: Option<CheckpointInfo>) -> Heartbeat {
        Heartbeat {
            epoch: Epoch::initial(),
            sequencer: Pid(1),
            committed: Seq(committed),
            checkpoint,
            chain: Chain::GENESIS,
            signature: None,
        }
    }

    /// Numbers 1..=`last` committed, each with its data at hand.
    fn committed_with_data(c: &mut Client, first: u64, last: u64, out: &mut Outbox) {
        for i in first..=last {
            c.handle_data(Time(0), Pid(9), data(i), out);
        }
        let entries = (first..=last).map(|i| Entry::Msg { mid: mid(i), digest: Digest::of(b"x") }).collect();
        c.handle_commit(Time(0), &Commit { epoch: Epoch::initial(), first: Seq(first), entries }, out);
    }

    fn delivered_seqs(out: &mut Outbox) -> Vec<u64> {
        out.drain()
            .filter_map(|a| match a {
                Action::Deliver { seq, .. } => Some(seq.0),
                _ => None,
            })
            .collect()
    }

    /// `sam tail --from-now`: nothing at or below the head of the first heartbeat is
    /// delivered, even what arrived before it; later numbers are.
    #[test]
    fn a_member_that_starts_now_delivers_only_what_follows_the_first_heartbeat() {
        let mut c = client();
        c.deliver_from(DeliverFrom::Now);
        let mut out = Outbox::new();
        committed_with_data(&mut c, 1, 3, &mut out);
        assert!(delivered_seqs(&mut out).is_empty(), "held until the sequencer is heard");
        c.handle_heartbeat(Time(1), &heartbeat(5, None), &mut out);
        committed_with_data(&mut c, 6, 7, &mut out);
        assert_eq!(delivered_seqs(&mut out), vec![6, 7]);
        c.handle_tick(Time(100_000), &mut out);
        assert!(fetches(&mut out).is_empty(), "nothing before the start is missing");
    }

    /// By default a member delivers from number 1 whatever it heard first.
    #[test]
    fn a_member_that_starts_at_the_start_delivers_from_one() {
        let mut c = client();
        let mut out = Outbox::new();
        committed_with_data(&mut c, 1, 3, &mut out);
        c.handle_heartbeat(Time(1), &heartbeat(3, None), &mut out);
        assert_eq!(delivered_seqs(&mut out), vec![1, 2, 3]);
    }

    /// A `--from-checkpoint` member that knows 1..=3 committed and hears the checkpoint at 2.
    fn starting_at_the_checkpoint() -> (Client, Outbox) {
        let mut c = client();
        c.deliver_from(DeliverFrom::Checkpoint);
        let mut out = Outbox::new();
        committed_with_data(&mut c, 1, 3, &mut out);
        let checkpoint =
            CheckpointInfo { seq: Seq(2), size: 1, blocks: 1, digest: Digest::of(b"s"), chain: Chain::GENESIS };
        c.handle_heartbeat(Time(1), &heartbeat(3, Some(checkpoint)), &mut out);
        (c, out)
    }

    /// `--from-checkpoint`: with one advertised the member fetches it at once, though far
    /// less than `catch_up_after` behind, and delivers nothing before it; without one it
    /// starts at number 1.
    #[test]
    fn a_member_that_starts_at_the_checkpoint_fetches_it_before_delivering() {
        let (mut c, mut out) = starting_at_the_checkpoint();
        assert!(c.is_catching_up());
        c.handle_data(Time(2), Pid(9), data(4), &mut out);
        assert!(delivered_seqs(&mut out).is_empty(), "held while the checkpoint is fetched");

        let mut plain = client();
        plain.deliver_from(DeliverFrom::Checkpoint);
        committed_with_data(&mut plain, 1, 2, &mut out);
        plain.handle_heartbeat(Time(1), &heartbeat(2, None), &mut out);
        committed_with_data(&mut plain, 3, 3, &mut out);
        assert_eq!(delivered_seqs(&mut out), vec![1, 2, 3]);
    }

    /// `--from-checkpoint` while no checkpoint server answers: deliveries start at number 1
    /// once every server failed twice, instead of never (its own sends would never resolve).
    #[test]
    fn a_member_that_starts_at_an_unreachable_checkpoint_falls_back_to_the_log() {
        let (mut c, mut out) = starting_at_the_checkpoint();
        let timeout = c.cfg.request_timeout_us;
        let servers = c.cfg.checkpoint_servers.len() as u64;
        let mut now = 1;
        for round in 0..2 * servers {
            c.handle_tick(Time(now), &mut out);
            committed_with_data(&mut c, 4 + round, 4 + round, &mut out);
            assert!(delivered_seqs(&mut out).is_empty(), "held while a server may still answer");
            now += timeout;
        }
        // The last silent round ends the wait by itself, with no message arriving.
        c.handle_tick(Time(now), &mut out);
        assert_eq!(delivered_seqs(&mut out), (1..=3 + 2 * servers).collect::<Vec<_>>());
    }

    /// With signed frames a member delivers only what a heartbeat's chain vouched for: a
    /// forged `Commit` (from a member claiming the sequencer) and a forged payload under a
    /// real entry are learned first, are not delivered, and give way to the real ones.
    #[test]
    fn with_signed_frames_only_what_the_chain_vouches_for_is_delivered() {
        let mut c = client_with(|cfg| cfg.signed_heartbeat_us = Some(1_000));
        let mut out = Outbox::new();
        let entry = |m: Mid, payload: &[u8]| Entry::Msg { mid: m, digest: Digest::of(payload) };
        let real = [entry(mid(1), b"x"), entry(mid(2), b"x")];
        let chain = real.iter().zip(1..).fold(Chain::GENESIS, |c, (e, s)| c.then(Seq(s), e));

        // The forger's entry at 1 and its data, then the real data of 2 and a forged payload
        // under 1's real id.
        let forged = Data { mid: mid(99), ts: Seq::ZERO, payload: Bytes::from_static(b"forged") };
        c.handle_data(Time(0), Pid(9), forged.clone(), &mut out);
        let forged_commit = vec![entry(mid(99), b"forged"), real[1]];
        c.handle_commit(Time(0), &Commit { epoch: Epoch::initial(), first: Seq(1), entries: forged_commit }, &mut out);
        c.handle_data(Time(0), Pid(9), data(2), &mut out);
        assert!(delivered_seqs(&mut out).is_empty(), "nothing is delivered before a heartbeat vouches");

        // The sequencer's heartbeat: the chain does not match, so 1..=2 are asked again.
        c.handle_heartbeat(Time(1), &Heartbeat { chain, ..heartbeat(2, None) }, &mut out);
        assert!(delivered_seqs(&mut out).is_empty(), "the forged entry is not delivered");
        c.handle_tick(Time(100_000), &mut out);
        let asked = out.drain().find_map(|a| match a {
            Action::Send { to: Dest::Pid(p), msg: Message::QueryEntries(q) } => Some((p, q.ranges)),
            _ => None,
        });
        let (server, ranges) = asked.expect("the entries are asked again");
        assert_eq!(ranges, vec![SeqRange { first: Seq(1), last: Seq(2) }]);

        // The commit server answers; a forged payload under 1's id came first, and is dropped
        // for the real one.
        let slots = real.iter().map(|e| Slot { epoch: Epoch::initial(), entry: *e }).collect();
        c.handle_data(Time(2), Pid(9), Data { payload: Bytes::from_static(b"forged"), ..data(1) }, &mut out);
        assert!(c.handle_entries(Time(100_001), server, &Entries { first: Seq(1), slots }, &mut out));
        assert!(delivered_seqs(&mut out).is_empty(), "a payload that does not match its digest is not delivered");
        c.handle_data(Time(3), Pid(11), data(1), &mut out);
        let delivered: Vec<(u64, Bytes)> = out
            .drain()
            .filter_map(|a| match a {
                Action::Deliver { seq, payload, .. } => Some((seq.0, payload)),
                _ => None,
            })
            .collect();
        assert_eq!(delivered, vec![(1, Bytes::from_static(b"x")), (2, Bytes::from_static(b"x"))]);
    }

    /// With signed frames a forged `Commit` of this member's own message neither tells the
    /// application it committed nor moves how far the member believes the group committed;
    /// the entry a signed chain vouches for does.
    #[test]
    fn with_signed_frames_only_a_vouched_entry_reports_a_send_committed() {
        let mut c = client_with(|cfg| cfg.signed_heartbeat_us = Some(1_000));
        let mut out = Outbox::new();
        c.handle_heartbeat(Time(0), &heartbeat(0, None), &mut out);
        let payload = Bytes::from_static(b"mine");
        let mid = c.send(Time(1), payload.clone(), &mut out).expect("room to send");
        let own = Entry::Msg { mid, digest: Digest::of(&payload) };
        let committed = |out: &mut Outbox| -> Vec<(Mid, Seq)> {
            out.drain()
                .filter_map(|a| match a {
                    Action::Committed { mid, seq } => Some((mid, seq)),
                    _ => None,
                })
                .collect()
        };
        let forged = Commit { epoch: Epoch::initial(), first: Seq(1 << 40), entries: vec![own] };
        c.handle_commit(Time(2), &forged, &mut out);
        assert!(committed(&mut out).is_empty(), "a forged Commit reports nothing");
        assert_eq!(c.known_committed(), Seq::ZERO, "nor does it move the committed head");
        c.handle_commit(Time(3), &Commit { epoch: Epoch::initial(), first: Seq(1), entries: vec![own] }, &mut out);
        assert!(committed(&mut out).is_empty(), "not before a signed chain vouches for it");
        let chain = Chain::GENESIS.then(Seq(1), &own);
        c.handle_heartbeat(Time(4), &Heartbeat { chain, ..heartbeat(1, None) }, &mut out);
        assert_eq!(committed(&mut out), vec![(mid, Seq(1))]);
    }
}
