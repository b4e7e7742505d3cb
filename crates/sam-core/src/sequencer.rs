//! The sequencer (DESIGN sections 2 and 4, steps 3 and 5).
//!
//! It counts the data servers' `Order`s per message; once `k_data` agree on a digest it numbers
//! the message — unless it is already numbered, outside its lifetime, or older than the
//! de-duplication history covers — and multicasts `Assign`s to the commit servers. Each commit
//! server answers `Accepted{upto}` for the gap-free durable prefix of the epoch; when the
//! `k_commit`-th highest `upto` moves, the sequencer announces `Commit` to the whole group.
//! Its heartbeats carry the epoch, its pid, the committed prefix, and repeat the latest
//! commits so that one lost `Commit` does not start a storm of queries.
//!
//! It also advertises the latest checkpoint (DESIGN section 5): once `k_checkpoint` checkpoint
//! servers report the same number and digest, heartbeats carry it; reports that disagree are
//! raised as [`Action::CheckpointMismatch`] and never advertised.
//!
//! It keeps the commit chain (`crate::chain`) through its committed prefix, from the point its
//! commit server knew at takeover, and every heartbeat carries it. With signed frames
//! (`signed_heartbeat_us`) it also sends a heartbeat soon after each commit, at most one per
//! interval, since members deliver only what a heartbeat's chain covers.
//!
//! Its work per message is constant in the number of members: members never talk to it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::action::{Action, Channel, Dest, Outbox};
use crate::chain::{Chain, ChainPoint};
use crate::config::{Config, Mutation, MAX_SERVERS_PER_KIND};
use crate::ids::{Digest, Epoch, Mid, Pid, Seq, Time};
use crate::message::{Accepted, Assign, CheckpointInfo, Commit, Entry, Heartbeat, Message, Order, OrderItem, Rejected};
use crate::notice::Notice;

/// The most messages waiting for enough `Order`s or for room in the window; beyond it new
/// ones are ignored until data servers ask again (their senders retransmit).
pub const MAX_PENDING_ORDERS: usize = 1 << 20;
/// The most entries re-sent to one lagging commit server in one go.
pub const MAX_RESEND_ENTRIES: usize = 8192;
/// The most checkpoint numbers whose reports are collected at once; older ones are dropped.
pub const MAX_REPORTED_CHECKPOINTS: usize = 8;

/// What a new sequencer starts from (DESIGN section 6).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Takeover {
    /// The first number of the epoch: every number below it is committed.
    pub from_seq: Seq,
    /// The number of `history[0]`.
    pub history_first: Seq,
    /// Committed entries just below `from_seq` (the last `max_lifetime` of them, or fewer).
    pub history: Vec<Entry>,
    /// The entries to re-propose from `from_seq` on.
    pub recovered: Vec<Entry>,
    /// The highest checkpoint advertised before, as far as the candidate knows: the
    /// advertised checkpoint never goes back.
    pub checkpoint: Option<CheckpointInfo>,
    /// The latest point of the commit chain the candidate's commit server knows.
    pub chain: ChainPoint,
}

/// Votes for one message not yet numbered.
#[derive(Clone, Copy, Debug)]
struct Pending {
    ts: Seq,
    /// Up to two distinct digests with the set of data-server ranks that reported each; a third
    /// distinct digest is ignored (it can only come from a broken sender).
    votes: [(Digest, u64); 2],
}

/// The sequencer of one epoch.
#[derive(Debug)]
pub struct Sequencer {
    cfg: Arc<Config>,
    me: Pid,
    epoch: Epoch,
    /// The first number of this epoch.
    epoch_first: Seq,
    /// The last number of the range recovered at takeover (which may exceed the window).
    recovered_last: Seq,
    /// The next number to assign.
    next: Seq,
    /// Every number up to this one is committed.
    committed: Seq,
    /// Entries of the numbers `log_base..next`: the de-duplication history (the last
    /// `max_lifetime` numbers), the uncommitted window, and the recent commits heartbeats repeat.
    log: VecDeque<Entry>,
    log_base: Seq,
    /// Where each message in `log` was numbered.
    numbered: FxHashMap<Mid, Seq>,
    pending: FxHashMap<Mid, Pending>,
    /// Messages with `k_data` agreeing orders, waiting for room in the window.
    ready: VecDeque<OrderItem>,
    /// The mids in `ready`, so that repeated orders do not queue a message twice.
    queued: FxHashSet<Mid>,
    /// Per commit-server rank: the highest `upto` it accepted in this epoch.
    acked: Vec<Seq>,
    /// Per commit-server rank: when it last made progress or was sent entries again.
    progress_at: Vec<Time>,
    /// Entries numbered while handling the current input, multicast at its end.
    unsent_from: Seq,
    next_heartbeat: Time,
    /// The higher epoch a commit server promised, once one said so (this sequencer is deposed).
    deposed: Option<Epoch>,
    /// The advertised checkpoint.
    checkpoint: Option<CheckpointInfo>,
    /// Checkpoint reports above the advertised one: per number, each reporting rank's report.
    reports: BTreeMap<Seq, Vec<(usize, CheckpointInfo)>>,
    /// The commit chain at the committed prefix, once known (it may lie ahead of it just
    /// after a takeover, or behind the log when the takeover knew no better).
    chain: ChainPoint,
    /// With signed frames: no heartbeat vouches for new commits before this time.
    next_vouch: Time,
    /// With signed frames: commits made since the last heartbeat.
    unvouched: bool,
    /// When this sequencer took office.
    office_since: Time,
    /// A commit server that lost its storage asked for a ballot above the promises it copied
    /// (DESIGN section 6): this sequencer stands again at this time.
    stand_again_at: Option<Time>,
}

impl Sequencer {
    /// A sequencer for `epoch` whose first number is `epoch_first`, with every number below it
    /// committed and no history (a group's very first epoch starts so at `Seq(1)`).
    pub fn new(cfg: Arc<Config>, me: Pid, epoch: Epoch, epoch_first: Seq, now: Time) -> Sequencer {
        let takeover = Takeover { from_seq: epoch_first, history_first: epoch_first, ..Takeover::default() };
        Sequencer::take_office(cfg, me, epoch, takeover, now)
    }

    /// The sequencer of `epoch` after its ballot (DESIGN section 6): it knows the committed
    /// `history` below `from_seq` for de-duplication, and re-proposes the `recovered` range
    /// from `from_seq` under its epoch before numbering anything new. Call
    /// [`Sequencer::flush`] to send the re-proposals.
    pub fn take_office(cfg: Arc<Config>, me: Pid, epoch: Epoch, takeover: Takeover, now: Time) -> Sequencer {
        let n = cfg.commit_servers.len();
        let from_seq = takeover.from_seq;
        debug_assert_eq!(takeover.history_first.plus(takeover.history.len() as u64), from_seq);
        let committed = from_seq.minus(1);
        let log: VecDeque<Entry> = takeover.history.into_iter().chain(takeover.recovered).collect();
        let numbered = log
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Msg { mid, .. } => Some((*mid, takeover.history_first.plus(i as u64))),
                Entry::Noop => None,
            })
            .collect();
        Sequencer {
            me,
            epoch,
            epoch_first: from_seq,
            recovered_last: takeover.history_first.plus(log.len() as u64).minus(1),
            next: takeover.history_first.plus(log.len() as u64),
            committed,
            log,
            log_base: takeover.history_first,
            numbered,
            pending: FxHashMap::default(),
            ready: VecDeque::new(),
            queued: FxHashSet::default(),
            acked: vec![committed; n],
            progress_at: vec![now; n],
            unsent_from: from_seq,
            next_heartbeat: now,
            deposed: None,
            checkpoint: takeover.checkpoint,
            reports: BTreeMap::new(),
            chain: takeover.chain,
            next_vouch: now,
            unvouched: false,
            office_since: now,
            stand_again_at: None,
            cfg,
        }
        .with_chain_rolled()
    }

    fn with_chain_rolled(mut self) -> Sequencer {
        self.roll_chain();
        self
    }

    /// Moves the chain up to the committed prefix over the log. When the log does not reach
    /// back to it, the advertised checkpoint's chain is the starting point (it lies at or
    /// above the log's start once the takeover's recovered range is committed).
    fn roll_chain(&mut self) {
        let behind_log = self.chain.seq.next() < self.log_base;
        if let Some(c) = self.checkpoint.filter(|c| behind_log && c.seq > self.chain.seq) {
            self.chain = c.chain_point();
        }
        while self.chain.seq < self.committed && self.chain.seq.next() >= self.log_base {
            let entry = self.log[(self.chain.seq.next().0 - self.log_base.0) as usize];
            self.chain = self.chain.then(&entry);
        }
    }

    /// The chain at the committed prefix, when known.
    fn committed_chain(&self) -> Option<Chain> {
        (self.chain.seq == self.committed).then_some(self.chain.chain)
    }

    /// Sends the `Assign`s of numbers not sent yet (the recovered range after a takeover).
    pub fn flush(&mut self, out: &mut Outbox) {
        self.flush_assigns(out);
    }

    /// The epoch this sequencer runs.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Every number up to this one is committed.
    pub fn committed(&self) -> Seq {
        self.committed
    }

    /// The highest number assigned so far.
    pub fn max_assigned(&self) -> Seq {
        self.next.minus(1)
    }

    /// The advertised checkpoint.
    pub fn checkpoint(&self) -> Option<CheckpointInfo> {
        self.checkpoint
    }

    /// The higher epoch a commit server reported, if this sequencer has been deposed.
    pub fn deposed(&self) -> Option<Epoch> {
        self.deposed
    }

    /// Counts a data server's orders and numbers what has enough of them.
    pub fn handle_order(&mut self, from: Pid, order: &Order, out: &mut Outbox) {
        let Some(rank) = self.cfg.data_rank(from) else { return };
        for item in &order.items {
            self.vote(rank, item);
        }
        self.assign_ready(out);
    }

    fn vote(&mut self, rank: usize, item: &OrderItem) {
        let known = self.numbered.contains_key(&item.mid) || self.queued.contains(&item.mid);
        if known && !self.cfg.mutated(Mutation::NoDeduplication) {
            return;
        }
        if !self.pending.contains_key(&item.mid) && self.pending.len() + self.ready.len() >= MAX_PENDING_ORDERS {
            return;
        }
        let bit = 1u64 << rank;
        let pending = self
            .pending
            .entry(item.mid)
            .or_insert(Pending { ts: item.ts, votes: [(item.digest, 0), (Digest::default(), 0)] });
        let Some(vote) = pending.votes.iter_mut().find(|(d, set)| *d == item.digest || *set == 0) else {
            return;
        };
        vote.0 = item.digest;
        vote.1 |= bit;
        if vote.1.count_ones() as usize >= self.cfg.k_data {
            let digest = vote.0;
            let ts = pending.ts;
            self.pending.remove(&item.mid);
            self.queued.insert(item.mid);
            self.ready.push_back(OrderItem { mid: item.mid, ts, digest });
        }
    }

    /// Numbers ready messages while the window has room, then multicasts the new `Assign`s.
    fn assign_ready(&mut self, out: &mut Outbox) {
        while self.window_has_room() {
            let Some(item) = self.ready.pop_front() else { break };
            self.queued.remove(&item.mid);
            if self.admissible(&item) {
                self.number(Entry::Msg { mid: item.mid, digest: item.digest });
            }
        }
        self.flush_assigns(out);
    }

    fn window_has_room(&self) -> bool {
        self.max_assigned().0 - self.committed.0 < self.cfg.sequencer_window as u64
    }

    /// The rules of DESIGN section 4, step 3: (a) not yet numbered, (b) inside its lifetime,
    /// (c) the history covers every number after its timestamp.
    fn admissible(&self, item: &OrderItem) -> bool {
        let max_assigned = self.max_assigned();
        let fresh = !self.numbered.contains_key(&item.mid) || self.cfg.mutated(Mutation::NoDeduplication);
        let alive = self.cfg.lifetime_end(item.ts) > max_assigned && item.ts <= max_assigned;
        let covered = item.ts.next() >= self.log_base;
        fresh && alive && covered
    }

    fn number(&mut self, entry: Entry) {
        let seq = self.next;
        if let Entry::Msg { mid, .. } = entry {
            self.numbered.insert(mid, seq);
        }
        self.log.push_back(entry);
        self.next = seq.next();
    }

    fn flush_assigns(&mut self, out: &mut Outbox) {
        while self.unsent_from < self.next {
            let assign = self.assign_from(self.unsent_from, self.cfg.batch_entries);
            self.unsent_from = self.unsent_from.plus(assign.entries.len() as u64);
            out.send(Dest::Channel(Channel::Commit), Message::Assign(assign));
        }
    }

    /// An `Assign` of at most `limit` logged entries from `first`.
    fn assign_from(&self, first: Seq, limit: usize) -> Assign {
        let start = (first.0 - self.log_base.0) as usize;
        let end = self.log.len().min(start + limit);
        Assign {
            epoch: self.epoch,
            epoch_first: self.epoch_first,
            first,
            entries: self.log.range(start..end).copied().collect(),
        }
    }

    /// Records a commit server's acceptance; commits what `k_commit` servers hold.
    pub fn handle_accepted(&mut self, now: Time, from: Pid, accepted: &Accepted, out: &mut Outbox) {
        let Some(rank) = self.cfg.commit_rank(from) else { return };
        if accepted.epoch != self.epoch {
            return;
        }
        let upto = accepted.upto.min(self.max_assigned());
        if upto > self.acked[rank] {
            self.acked[rank] = upto;
            self.progress_at[rank] = now;
        }
        self.advance_commit(out);
        self.vouch(now, out);
        if self.acked[rank] < self.max_assigned() && now.since_us(self.progress_at[rank]) >= self.cfg.assign_resend_us {
            self.resend(now, rank, out);
        }
    }

    /// A commit server has promised a higher epoch: this sequencer must stop.
    pub fn handle_rejected(&mut self, rejected: &Rejected) {
        if rejected.promised > self.epoch {
            self.deposed = Some(self.deposed.map_or(rejected.promised, |e| e.max(rejected.promised)));
        }
    }

    fn advance_commit(&mut self, out: &mut Outbox) {
        let quorum = kth_highest(&self.acked, self.cfg.k_commit);
        if quorum <= self.committed {
            return;
        }
        let first = self.committed.next();
        self.committed = quorum;
        self.announce(first, quorum, out);
        self.roll_chain();
        self.unvouched = self.cfg.signs_frames();
        self.trim_log();
        self.assign_ready(out);
    }

    /// Multicasts `Commit`s for the numbers `first..=last`.
    fn announce(&self, first: Seq, last: Seq, out: &mut Outbox) {
        let mut from = first;
        while from <= last {
            let n = (last.0 - from.0 + 1).min(self.cfg.batch_entries as u64) as usize;
            out.send(Dest::Channel(Channel::Global), Message::Commit(self.commit_from(from, n)));
            from = from.plus(n as u64);
        }
    }

    fn commit_from(&self, first: Seq, n: usize) -> Commit {
        let start = (first.0 - self.log_base.0) as usize;
        Commit { epoch: self.epoch, first, entries: self.log.range(start..start + n).copied().collect() }
    }

    /// Forgets entries older than both the de-duplication history and the recent commits.
    fn trim_log(&mut self) {
        let keep_from = self
            .next
            .minus(self.cfg.max_lifetime)
            .min(self.committed.minus(self.cfg.heartbeat_recent as u64).next())
            .max(Seq(1));
        while self.log_base < keep_from {
            if let Some(Entry::Msg { mid, .. }) = self.log.pop_front() {
                if self.numbered.get(&mid) == Some(&self.log_base) {
                    self.numbered.remove(&mid);
                }
            }
            self.log_base = self.log_base.next();
        }
    }

    /// Sends a lagging commit server the entries after its `upto` again.
    fn resend(&mut self, now: Time, rank: usize, out: &mut Outbox) {
        self.progress_at[rank] = now;
        let mut from = self.acked[rank].next().max(self.log_base);
        let mut budget = MAX_RESEND_ENTRIES;
        while from < self.next && budget > 0 {
            let assign = self.assign_from(from, self.cfg.batch_entries.min(budget));
            let n = assign.entries.len();
            out.send(Dest::Pid(self.cfg.commit_servers[rank]), Message::Assign(assign));
            from = from.plus(n as u64);
            budget -= n;
        }
    }

    /// A checkpoint server reports a checkpoint it holds durably: advertised once
    /// `k_checkpoint` servers agree; a digest that differs from another report for the same
    /// number, or from the advertised one, is raised. Reports of a number that is not a
    /// checkpoint number, or is not committed yet, are ignored (servers report again).
    pub fn handle_checkpoint_report(&mut self, from: Pid, info: &CheckpointInfo, out: &mut Outbox) {
        let Some(rank) = self.cfg.checkpoint_rank(from) else { return };
        if !self.cfg.is_checkpoint(info.seq) || info.seq > self.committed {
            return;
        }
        if let Some(adv) = self.checkpoint.filter(|c| c.seq >= info.seq) {
            if adv.seq == info.seq && adv.digest != info.digest {
                out.push(mismatch(from, info, adv.digest));
            }
            return;
        }
        let reports = self.reports.entry(info.seq).or_default();
        if reports.iter().any(|(r, i)| *r == rank && i == info) {
            return;
        }
        if let Some((_, other)) = reports.iter().find(|(r, i)| *r != rank && i.digest != info.digest) {
            out.push(mismatch(from, info, other.digest));
        }
        reports.retain(|(r, _)| *r != rank);
        reports.push((rank, *info));
        let agreeing = reports.iter().filter(|(_, i)| i == info).count();
        if agreeing >= self.cfg.k_checkpoint {
            out.push(Action::Notice(Notice::CheckpointAdvertised { seq: info.seq }));
            self.checkpoint = Some(*info);
            self.reports = self.reports.split_off(&info.seq.next());
            self.roll_chain();
        }
        while self.reports.len() > MAX_REPORTED_CHECKPOINTS {
            self.reports.pop_first();
        }
    }

    /// Heartbeats, re-sends to silent commit servers, and forgets orders that can never be
    /// numbered.
    pub fn handle_tick(&mut self, now: Time, out: &mut Outbox) {
        if now >= self.next_heartbeat {
            self.heartbeat(now, out);
            self.next_heartbeat = now.plus_us(self.cfg.heartbeat_interval_us);
            self.forget_expired_orders();
        }
        self.vouch(now, out);
        for rank in 0..self.acked.len() {
            if self.acked[rank] < self.max_assigned()
                && now.since_us(self.progress_at[rank]) >= self.cfg.assign_resend_us
            {
                self.resend(now, rank, out);
            }
        }
    }

    /// Heartbeats start only once the recovered range is committed: a heartbeat of a new
    /// epoch tells a server that lost its storage that the ballot it sat out has finished,
    /// so every number it may have accepted and lost is held by `k_commit` others again.
    fn heartbeat(&mut self, now: Time, out: &mut Outbox) {
        if !self.send_heartbeat(now, out) {
            return;
        }
        // Only this epoch's own commits are repeated: the history below `epoch_first` serves
        // de-duplication and was announced by earlier sequencers.
        let recent_first = self.committed.minus(self.cfg.heartbeat_recent as u64).next().max(self.epoch_first);
        if recent_first <= self.committed {
            self.announce(recent_first, self.committed, out);
        }
    }

    /// With signed frames, sends a heartbeat for commits made since the last one, unless one
    /// went out less than `signed_heartbeat_us` ago (then the next tick does).
    fn vouch(&mut self, now: Time, out: &mut Outbox) {
        if self.unvouched && now >= self.next_vouch {
            // Until the chain is known only the periodic heartbeats try again.
            self.unvouched = false;
            self.send_heartbeat(now, out);
        }
    }

    /// Sends a heartbeat, once the recovered range is committed and the chain at the
    /// committed prefix is known; returns whether it did.
    fn send_heartbeat(&mut self, now: Time, out: &mut Outbox) -> bool {
        let Some(chain) = self.committed_chain().filter(|_| self.committed >= self.recovered_last) else {
            return false;
        };
        let hb = Heartbeat {
            epoch: self.epoch,
            sequencer: self.me,
            committed: self.committed,
            chain,
            checkpoint: self.checkpoint,
            signature: None,
        };
        out.send(Dest::Channel(Channel::Global), Message::Heartbeat(hb));
        self.unvouched = false;
        self.next_vouch = now.plus_us(self.cfg.signed_heartbeat_us.unwrap_or(0));
        true
    }

    fn forget_expired_orders(&mut self) {
        let max_assigned = self.max_assigned();
        let cfg = &self.cfg;
        self.pending.retain(|_, p| cfg.lifetime_end(p.ts) > max_assigned);
    }

    /// A commit server rejoining after losing its storage asks for a ballot above the
    /// promises it copied: in a healthy group nothing else would start one. This sequencer
    /// stands again once the rejoining server has had time to copy them all, and at most once
    /// per `failure_timeout` in office, so that rejoining servers cannot keep the group in
    /// ballots.
    pub fn note_rejoining_peer(&mut self, now: Time) {
        if self.stand_again_at.is_none() {
            let copied = now.plus_us(self.cfg.request_timeout_us);
            self.stand_again_at = Some(copied.max(self.office_since.plus_us(self.cfg.failure_timeout_us)));
        }
    }

    /// Whether this sequencer should stand again now (see [`Sequencer::note_rejoining_peer`]);
    /// once told, it is not told again until another peer asks.
    pub fn stands_again(&mut self, now: Time) -> bool {
        let due = self.stand_again_at.is_some_and(|at| now >= at);
        if due {
            self.stand_again_at = None;
        }
        due
    }

    /// When this sequencer next needs a tick.
    pub fn poll_timeout(&self) -> Time {
        let lagging = (0..self.acked.len())
            .filter(|&r| self.acked[r] < self.max_assigned())
            .map(|r| self.progress_at[r].plus_us(self.cfg.assign_resend_us))
            .min();
        let next = if self.unvouched { self.next_heartbeat.min(self.next_vouch) } else { self.next_heartbeat };
        let next = self.stand_again_at.map_or(next, |t| t.min(next));
        lagging.map_or(next, |t| t.min(next))
    }

    /// Checks the sequencer's invariants (debug builds and the simulator).
    pub fn check_invariants(&self) {
        debug_assert!(self.committed <= self.max_assigned());
        debug_assert_eq!(self.log_base.0 + self.log.len() as u64, self.next.0);
        debug_assert!(self.log_base <= self.committed.next().max(self.epoch_first));
        let window = self.max_assigned().0 - self.committed.0 <= self.cfg.sequencer_window as u64;
        debug_assert!(
            window || self.max_assigned() <= self.recovered_last,
            "only a recovered range exceeds the window"
        );
    }
}

/// The error raised when `from` reports `info` but `expected` is the digest another server
/// reported (or the advertised one).
fn mismatch(from: Pid, info: &CheckpointInfo, expected: Digest) -> Action {
    Action::CheckpointMismatch { seq: info.seq, server: from, digest: info.digest, expected }
}

/// The `k`-th highest of `values` (1-based): the number that `k` servers have all accepted.
fn kth_highest(values: &[Seq], k: usize) -> Seq {
    let mut sorted = [Seq::ZERO; MAX_SERVERS_PER_KIND];
    let sorted = &mut sorted[..values.len()];
    sorted.copy_from_slice(values);
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted[k - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::chain::Chain;
    use crate::ids::{Incarnation, Source};

    fn cfg() -> Arc<Config> {
        Arc::new(Config::new(vec![Pid(1), Pid(2), Pid(3)], vec![Pid(11), Pid(12), Pid(13)], vec![]))
    }

    fn mid(counter: u64) -> Mid {
        Mid { source: Source { pid: Pid(100), incarnation: Incarnation(7) }, counter }
    }

    fn order(counters: std::ops::Range<u64>) -> Order {
        Order {
            items: counters
                .map(|c| OrderItem { mid: mid(c), ts: Seq(0), digest: Digest::of(&c.to_le_bytes()) })
                .collect(),
        }
    }

    fn sends(out: &mut Outbox) -> Vec<(Dest, Message)> {
        out.drain()
            .filter_map(|a| match a {
                Action::Send { to, msg } => Some((to, msg)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn numbers_a_message_once_k_data_servers_ordered_it() {
        let mut s = Sequencer::new(cfg(), Pid(1), Epoch::initial(), Seq(1), Time(0));
        let mut out = Outbox::new();
        s.handle_order(Pid(11), &order(1..4), &mut out);
        assert!(sends(&mut out).is_empty(), "one data server is not enough");
        s.handle_order(Pid(11), &order(1..4), &mut out);
        assert!(sends(&mut out).is_empty(), "the same data server twice is still one");
        s.handle_order(Pid(12), &order(1..4), &mut out);
        let sent = sends(&mut out);
        assert_eq!(sent.len(), 1, "one batched Assign for three messages");
        let Message::Assign(a) = &sent[0].1 else { panic!("expected Assign") };
        assert_eq!((a.first, a.entries.len()), (Seq(1), 3));
        s.handle_order(Pid(13), &order(1..4), &mut out);
        assert!(sends(&mut out).is_empty(), "a late third order does not number again");
    }

    #[test]
    fn commits_after_k_commit_acceptances_as_one_range() {
        let mut s = Sequencer::new(cfg(), Pid(1), Epoch::initial(), Seq(1), Time(0));
        let mut out = Outbox::new();
        s.handle_order(Pid(11), &order(1..6), &mut out);
        s.handle_order(Pid(12), &order(1..6), &mut out);
        sends(&mut out);
        let acc = |upto| Accepted { epoch: Epoch::initial(), upto: Seq(upto) };
        s.handle_accepted(Time(1), Pid(1), &acc(5), &mut out);
        assert!(sends(&mut out).is_empty());
        s.handle_accepted(Time(1), Pid(2), &acc(3), &mut out);
        let sent = sends(&mut out);
        let Message::Commit(c) = &sent[0].1 else { panic!("expected Commit") };
        assert_eq!((c.first, c.entries.len()), (Seq(1), 3));
        assert_eq!(s.committed(), Seq(3));
    }

    #[test]
    fn refuses_a_message_outside_its_lifetime() {
        let mut c = (*cfg()).clone();
        c.max_lifetime = 2;
        let mut s = Sequencer::new(Arc::new(c), Pid(1), Epoch::initial(), Seq(1), Time(0));
        let mut out = Outbox::new();
        s.handle_order(Pid(11), &order(1..4), &mut out);
        s.handle_order(Pid(12), &order(1..4), &mut out);
        assert_eq!(s.max_assigned(), Seq(2), "ts 0 + lifetime 2 admits numbers 1 and 2 only");
    }

    #[test]
    fn window_holds_back_numbering_until_commits() {
        let mut c = (*cfg()).clone();
        c.sequencer_window = 2;
        let mut s = Sequencer::new(Arc::new(c), Pid(1), Epoch::initial(), Seq(1), Time(0));
        let mut out = Outbox::new();
        s.handle_order(Pid(11), &order(1..5), &mut out);
        s.handle_order(Pid(12), &order(1..5), &mut out);
        assert_eq!(s.max_assigned(), Seq(2));
        for p in [Pid(1), Pid(2)] {
            s.handle_accepted(Time(1), p, &Accepted { epoch: Epoch::initial(), upto: Seq(2) }, &mut out);
        }
        assert_eq!(s.max_assigned(), Seq(4));
    }

    /// DESIGN section 5: a checkpoint is advertised once `k_checkpoint` servers reported the
    /// same number and digest; a differing digest is raised and never advertised.
    #[test]
    fn advertises_a_checkpoint_k_servers_agree_on_and_raises_a_mismatch() {
        let mut c = Config::new(vec![Pid(1)], vec![Pid(11)], vec![Pid(21), Pid(22), Pid(23)]);
        c.k_commit = 1;
        c.k_data = 1;
        c.checkpoint_every = 2;
        let mut s = Sequencer::new(Arc::new(c), Pid(1), Epoch::initial(), Seq(1), Time(0));
        let mut out = Outbox::new();
        s.handle_order(Pid(11), &order(1..3), &mut out);
        s.handle_accepted(Time(1), Pid(1), &Accepted { epoch: Epoch::initial(), upto: Seq(2) }, &mut out);
        out.drain().count();
        let info =
            |d| CheckpointInfo { seq: Seq(2), size: 10, blocks: 1, digest: Digest([d; 32]), chain: Chain::GENESIS };
        s.handle_checkpoint_report(Pid(21), &info(7), &mut out);
        s.handle_checkpoint_report(Pid(21), &info(7), &mut out);
        assert_eq!(s.checkpoint(), None, "one server, however often, is not enough");
        s.handle_checkpoint_report(Pid(22), &info(8), &mut out);
        let raised = out.drain().filter(|a| matches!(a, Action::CheckpointMismatch { seq: Seq(2), .. })).count();
        assert_eq!((raised, s.checkpoint()), (1, None));
        s.handle_checkpoint_report(Pid(23), &info(7), &mut out);
        assert_eq!(s.checkpoint(), Some(info(7)));
        let uncommitted = CheckpointInfo { seq: Seq(4), ..info(7) };
        s.handle_checkpoint_report(Pid(21), &uncommitted, &mut out);
        s.handle_checkpoint_report(Pid(22), &uncommitted, &mut out);
        assert_eq!(s.checkpoint(), Some(info(7)), "a checkpoint above the committed prefix is not advertised");
    }

    #[test]
    fn a_higher_promise_deposes() {
        let mut s = Sequencer::new(cfg(), Pid(1), Epoch::initial(), Seq(1), Time(0));
        s.handle_rejected(&Rejected { promised: Epoch::new(2, 1) });
        assert_eq!(s.deposed(), Some(Epoch::new(2, 1)));
    }

    /// With signed frames each commit is vouched for by a heartbeat that carries the chain
    /// over the committed entries, at most one per `signed_heartbeat_us`; the next one waits
    /// for a tick.
    #[test]
    fn with_signed_frames_a_heartbeat_vouches_for_commits_at_most_once_an_interval() {
        let mut cfg = Config::new(vec![Pid(1), Pid(2), Pid(3)], vec![Pid(11), Pid(12), Pid(13)], vec![]);
        cfg.signed_heartbeat_us = Some(1_000);
        let mut s = Sequencer::new(Arc::new(cfg), Pid(1), Epoch::initial(), Seq(1), Time(0));
        let mut out = Outbox::new();
        s.handle_order(Pid(11), &order(1..6), &mut out);
        s.handle_order(Pid(12), &order(1..6), &mut out);
        let Message::Assign(assign) = sends(&mut out).remove(0).1 else { panic!("expected Assign") };
        let chain_at =
            |n: usize| assign.entries[..n].iter().zip(1..).fold(Chain::GENESIS, |c, (e, s)| c.then(Seq(s), e));
        let heartbeats = |out: &mut Outbox| -> Vec<(Seq, Chain)> {
            sends(out)
                .into_iter()
                .filter_map(|(_, m)| match m {
                    Message::Heartbeat(hb) => Some((hb.committed, hb.chain)),
                    _ => None,
                })
                .collect()
        };
        s.handle_tick(Time(0), &mut out);
        assert_eq!(heartbeats(&mut out), vec![(Seq(0), Chain::GENESIS)], "the periodic heartbeat");
        let acc = |upto| Accepted { epoch: Epoch::initial(), upto: Seq(upto) };
        for pid in [1, 2] {
            s.handle_accepted(Time(1_000), Pid(pid), &acc(3), &mut out);
        }
        assert_eq!(heartbeats(&mut out), vec![(Seq(3), chain_at(3))], "the commit of 1..=3 is vouched for at once");
        for pid in [1, 2] {
            s.handle_accepted(Time(1_500), Pid(pid), &acc(5), &mut out);
        }
        assert!(heartbeats(&mut out).is_empty(), "not twice within the interval");
        assert_eq!(s.poll_timeout(), Time(2_000), "the next tick is due when the interval ends");
        s.handle_tick(Time(2_000), &mut out);
        assert_eq!(heartbeats(&mut out), vec![(Seq(5), chain_at(5))]);
    }

    /// A peer rejoining after lost storage gets a ballot: the sequencer stands again once the
    /// peer had time to copy the promises, not sooner than `failure_timeout` into its office,
    /// and once per request.
    #[test]
    fn a_rejoining_peer_makes_the_sequencer_stand_again_once_and_not_at_once() {
        let cfg = cfg();
        let (office, timeout) = (Time(1_000), cfg.failure_timeout_us);
        let mut s = Sequencer::new(cfg.clone(), Pid(1), Epoch::initial(), Seq(1), office);
        assert!(!s.stands_again(office.plus_us(10 * timeout)), "nobody asked");
        s.note_rejoining_peer(office);
        assert_eq!(s.poll_timeout(), office, "the first heartbeat is due first");
        assert!(!s.stands_again(office.plus_us(timeout - 1)), "not within failure_timeout of taking office");
        assert!(s.stands_again(office.plus_us(timeout)));
        assert!(!s.stands_again(office.plus_us(timeout + 1)), "once per request");
        let late = office.plus_us(10 * timeout);
        s.note_rejoining_peer(late);
        assert!(!s.stands_again(late) && s.stands_again(late.plus_us(cfg.request_timeout_us)), "after the copies");
    }
}
