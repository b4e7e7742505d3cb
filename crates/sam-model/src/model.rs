//! The state machine that the checker explores: commit servers, candidates/sequencers and a
//! network that loses, reorders and duplicates. The crate documentation says what each piece
//! stands for in DESIGN sections 4 and 6, and why the abstractions are sound.

use std::fmt;

use stateright::{Model, Property};

use crate::{Bounds, Mutant};

/// Commit servers (`n_commit`).
pub(crate) const N: usize = 3;
/// Acceptances needed to commit (`k_commit`).
pub(crate) const K: usize = 2;
/// Servers `0..CANDIDATES` may stand for election; the rank of a candidate is its index.
pub(crate) const CANDIDATES: usize = 2;
/// Distinct mids the senders offer (`a` and `b`).
pub(crate) const MIDS: u8 = 2;
/// Capacity of the per-number arrays; `Bounds::numbers` is at most this.
pub(crate) const SEQ_CAP: usize = 4;
/// Promises a candidate needs (`n_commit - k_commit + 1`).
const PROMISE_QUORUM: usize = N - K + 1;
/// Peers a wiped server copies from (`n_commit - k_commit + 1`).
const COPY_QUORUM: usize = N - K + 1;

/// `round * CANDIDATES + rank`; 0 stands for "no epoch yet". Unique per candidate and totally
/// ordered, as DESIGN section 3 asks (round in the high bits, rank in the low bits).
pub(crate) type Epoch = u8;
/// A sequence number, from 1.
pub(crate) type Seq = u8;

fn owner(epoch: Epoch) -> usize {
    usize::from(epoch) % CANDIDATES
}

struct ShowEpoch(Epoch);

impl fmt::Display for ShowEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            write!(f, "none")
        } else {
            write!(f, "{}.{}", usize::from(self.0) / CANDIDATES, owner(self.0))
        }
    }
}

/// What a number holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Entry {
    /// The filler of a number nobody reported, or of a duplicate (DESIGN section 6).
    Noop,
    /// A message, by mid: 0 is `a`, 1 is `b`.
    Mid(u8),
}

impl Entry {
    /// This entry as one bit of a set of entries.
    fn bit(self) -> u8 {
        match self {
            Entry::Noop => 1,
            Entry::Mid(m) => 2 << m,
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Noop => write!(f, "noop"),
            Entry::Mid(m) => write!(f, "{}", char::from(b'a' + m)),
        }
    }
}

/// A stored entry with the epoch it was accepted at.
type Slot = Option<(Epoch, Entry)>;

/// Where a commit server stands after a wipe (DESIGN section 6, last rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Mode {
    /// Takes part in ballots and acceptances.
    Normal,
    /// Storage lost: copying promises and entries from peers (`from` is a bitset of peers).
    Copying { from: u8 },
    /// Copied; waits, taking no part, for a ballot above `above` to finish.
    Waiting { above: Epoch },
    /// A ballot at `epoch` has finished: copying the entries again (`from` as above).
    Recopying { epoch: Epoch, from: u8 },
}

/// One commit server: `promise` and `store` are durable. What it learnt is committed is not
/// kept per server: a candidate draws its committed prefix from the record of announcements
/// when it starts a ballot (see `Action::StartBallot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Server {
    promise: Epoch,
    store: [Slot; SEQ_CAP],
    mode: Mode,
}

impl Server {
    const EMPTY: Server = Server { promise: 0, store: [None; SEQ_CAP], mode: Mode::Normal };
}

/// The sequencer role of a candidate (volatile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    /// Neither running a ballot nor in office.
    Idle,
    /// Sent `Prepare{epoch, from_seq}`; `below` is the set of entries it knows committed below
    /// `from_seq`, `granted` the bitset of promisers and `merged` the entry kept so far at each
    /// number (the highest epoch reported).
    Preparing { epoch: Epoch, from_seq: Seq, below: u8, granted: u8, merged: [Slot; SEQ_CAP] },
    /// Has its promises: re-proposing the recovered range `from_seq..=range_end`; once every
    /// number of it is committed (`finished`) numbers new mids from `next` on.
    Leading {
        epoch: Epoch,
        from_seq: Seq,
        below: u8,
        first: Seq,
        range_end: Seq,
        next: Seq,
        assigned: [Option<Entry>; SEQ_CAP],
        acks: [Seq; N],
        announced: u8,
        finished: bool,
    },
}

impl Role {
    fn epoch(&self) -> Epoch {
        match *self {
            Role::Idle => 0,
            Role::Preparing { epoch, .. } | Role::Leading { epoch, .. } => epoch,
        }
    }
}

/// A request on the commit channel. The network is a set of these: once sent, a request stays
/// deliverable to every commit server any number of times (duplication), in any order
/// (reordering), or never (loss), until no delivery could change anything any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Msg {
    /// Broadcast by the candidate of `epoch`.
    Prepare { epoch: Epoch, from_seq: Seq },
    /// Broadcast by the sequencer of `epoch`: the entries at the numbers where `entries` is
    /// `Some` (one new number, or a whole recovered range); `first` is the first number of its
    /// epoch.
    Assign { epoch: Epoch, first: Seq, entries: [Option<Entry>; SEQ_CAP] },
}

impl Msg {
    fn epoch(&self) -> Epoch {
        match *self {
            Msg::Prepare { epoch, .. } | Msg::Assign { epoch, .. } => epoch,
        }
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Msg::Prepare { epoch, from_seq } => write!(f, "Prepare{{{}, from_seq {}}}", ShowEpoch(epoch), from_seq),
            Msg::Assign { epoch, first, entries } => {
                write!(f, "Assign{{{}, first {},", ShowEpoch(epoch), first)?;
                for (i, e) in entries.iter().enumerate() {
                    if let Some(e) = e {
                        write!(f, " #{}={}", i + 1, e)?;
                    }
                }
                write!(f, "}}")
            }
        }
    }
}

/// Most requests live at once: a `Prepare`, a recovered range and one `Assign` per mid for
/// each ballot.
pub(crate) const NET_CAP: usize = 16;

/// The requests still deliverable: a sorted set, kept inline so that states copy cheaply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Net {
    len: u8,
    msgs: [Msg; NET_CAP],
}

impl Net {
    const EMPTY: Net = Net { len: 0, msgs: [Msg::Prepare { epoch: 0, from_seq: 0 }; NET_CAP] };

    fn iter(&self) -> impl Iterator<Item = &Msg> {
        self.msgs[..usize::from(self.len)].iter()
    }

    fn insert(&mut self, msg: Msg) {
        let len = usize::from(self.len);
        if let Err(at) = self.msgs[..len].binary_search(&msg) {
            assert!(len < NET_CAP, "more live requests than NET_CAP");
            self.msgs.copy_within(at..len, at + 1);
            self.msgs[at] = msg;
            self.len += 1;
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&Msg) -> bool) {
        let mut kept = 0;
        for i in 0..usize::from(self.len) {
            if keep(&self.msgs[i]) {
                self.msgs[kept] = self.msgs[i];
                kept += 1;
            }
        }
        self.msgs[kept..].fill(Net::EMPTY.msgs[0]);
        self.len = kept as u8;
    }
}

/// The whole system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct State {
    servers: [Server; N],
    roles: [Role; CANDIDATES],
    /// Requests still deliverable.
    net: Net,
    /// Per number, the set of entries ever announced committed there, by any sequencer: what
    /// the safety properties judge, and what candidates may have learnt.
    committed: [u8; SEQ_CAP],
    /// Epochs whose ballot finished (their heartbeats), kept while a wiped server may wait.
    finished: u32,
    ballots: u8,
    /// The server that crashed, once it has.
    crash: Option<u8>,
}

/// States are hashed (fingerprinted) packed into a few words: hashing is most of the checker's
/// work, and the packing is one-to-one (epochs below 16, at most 4 numbers, 2 mids), so equal
/// hashes still come only from equal states, up to hash collisions.
impl std::hash::Hash for State {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        fn entry(e: Option<Entry>) -> u64 {
            match e {
                None => 0,
                Some(Entry::Noop) => 1,
                Some(Entry::Mid(m)) => 2 + u64::from(m),
            }
        }
        fn slots(slots: &[Slot; SEQ_CAP]) -> u64 {
            slots.iter().fold(0, |w, s| w << 6 | s.map_or(0, |(e, x)| u64::from(e) << 2 | entry(Some(x))))
        }
        fn entries(entries: &[Option<Entry>; SEQ_CAP]) -> u64 {
            entries.iter().fold(0, |w, e| w << 2 | entry(*e))
        }
        for srv in &self.servers {
            let mode = match srv.mode {
                Mode::Normal => 0,
                Mode::Copying { from } => 1 | u64::from(from) << 2,
                Mode::Waiting { above } => 2 | u64::from(above) << 2,
                Mode::Recopying { epoch, from } => 3 | u64::from(epoch) << 2 | u64::from(from) << 6,
            };
            h.write_u64(u64::from(srv.promise) | slots(&srv.store) << 4 | mode << 28);
        }
        for role in &self.roles {
            let w = match *role {
                Role::Idle => 0,
                Role::Preparing { epoch, from_seq, below, granted, merged } => {
                    1 | u64::from(epoch) << 2
                        | u64::from(from_seq) << 6
                        | u64::from(below) << 9
                        | u64::from(granted) << 12
                        | slots(&merged) << 15
                }
                Role::Leading {
                    epoch,
                    from_seq,
                    below,
                    first,
                    range_end,
                    next,
                    assigned,
                    acks,
                    announced,
                    finished,
                } => {
                    2 | u64::from(epoch) << 2
                        | u64::from(from_seq) << 6
                        | u64::from(below) << 9
                        | u64::from(first) << 12
                        | u64::from(range_end) << 15
                        | u64::from(next) << 18
                        | entries(&assigned) << 21
                        | acks.iter().fold(0, |w, a| w << 3 | u64::from(*a)) << 29
                        | u64::from(announced) << 38
                        | u64::from(finished) << 42
                }
            };
            h.write_u64(w);
        }
        for msg in self.net.iter() {
            h.write_u32(match *msg {
                Msg::Prepare { epoch, from_seq } => u32::from(epoch) << 1 | u32::from(from_seq) << 5,
                Msg::Assign { epoch, first, entries: e } => {
                    1 | u32::from(epoch) << 1 | u32::from(first) << 5 | (entries(&e) as u32) << 8
                }
            });
        }
        let committed = self.committed.iter().fold(0, |w, c| w << 3 | u64::from(*c));
        let crash = self.crash.map_or(0, |c| u64::from(c) + 1);
        h.write_u64(committed | u64::from(self.net.len) << 12 | u64::from(self.ballots) << 17 | crash << 21);
        h.write_u32(self.finished);
    }
}

impl State {
    fn send(&mut self, msg: Msg) {
        self.net.insert(msg);
    }

    /// The server that was wiped and has not rejoined yet.
    fn recovering(&self) -> Option<usize> {
        self.crash.map(usize::from).filter(|&w| self.servers[w].mode != Mode::Normal)
    }
}

/// A step of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Action {
    /// Candidate `cand` starts a ballot at `epoch` (a timeout, or start-up) with `from_seq` =
    /// its committed prefix + 1: any prefix of what has been announced committed, since the
    /// `Commit`s (or peers' committed entries) that would tell it may be lost or late.
    StartBallot { cand: u8, epoch: Epoch, from_seq: Seq },
    /// The sequencer on `cand` numbers a mid (its `Order`s are always available: senders and
    /// data servers retransmit).
    Number { cand: u8, mid: u8 },
    /// Server `to` handles `msg`; its reply (`Promise` or `Accepted`) reaches the candidate at
    /// once if `reply`, or is lost.
    Deliver { msg: Msg, to: u8, reply: bool },
    /// The one crash: `server` loses its volatile state and its storage.
    Crash { server: u8 },
    /// The sequencer's own write of everything it assigned so far becomes durable, and it
    /// counts its own acceptance (DESIGN section 2).
    OwnWrite { cand: u8 },
    /// Wiped `server` copies the promise and the entries of peer `from`.
    Copy { server: u8, from: u8 },
    /// A heartbeat of the finished ballot `epoch` reaches the waiting `server`.
    Hear { server: u8, epoch: Epoch },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Action::StartBallot { cand, epoch, from_seq } => {
                write!(f, "S{} starts a ballot at epoch {}, from_seq {}", cand, ShowEpoch(epoch), from_seq)
            }
            Action::Number { cand, mid } => write!(f, "sequencer S{} numbers {}", cand, Entry::Mid(mid)),
            Action::Deliver { msg, to, reply } => {
                let fate = if reply { "reply delivered" } else { "reply lost" };
                write!(f, "S{to} handles {msg} ({fate})")
            }
            Action::Crash { server } => write!(f, "S{server} crashes and restarts with its storage wiped"),
            Action::OwnWrite { cand } => write!(f, "sequencer S{cand}'s own write is durable"),
            Action::Copy { server, from } => write!(f, "wiped S{} copies promise and entries from S{}", server, from),
            Action::Hear { server, epoch } => {
                write!(f, "waiting S{} hears a heartbeat of {}", server, ShowEpoch(epoch))
            }
        }
    }
}

/// The model: bounds plus the rule to break, if any.
pub(crate) struct FailoverModel {
    pub(crate) bounds: Bounds,
    pub(crate) mutant: Option<Mutant>,
}

fn bit(i: usize) -> u8 {
    1 << i
}

fn count(bits: u8) -> usize {
    bits.count_ones() as usize
}

fn idx(seq: Seq) -> usize {
    usize::from(seq) - 1
}

/// What handling a request does at one server, before it touches anything.
struct Effect {
    server: Server,
    /// The reply a candidate or sequencer could still use.
    useful_reply: bool,
    /// `Accepted.upto` for an `Assign`.
    upto: Seq,
}

impl FailoverModel {
    fn is(&self, mutant: Mutant) -> bool {
        self.mutant == Some(mutant)
    }

    fn numbers(&self) -> Seq {
        self.bounds.numbers
    }

    fn wipes(&self) -> bool {
        self.bounds.wipe
    }

    /// What a candidate may know is committed at each number: the announcements, or, in the
    /// mutant, also whatever it merely stored.
    fn committed_view(&self, st: &State, cand: usize) -> [u8; SEQ_CAP] {
        let mut view = st.committed;
        if self.is(Mutant::PrefixFromStoredEntries) {
            for (v, slot) in view.iter_mut().zip(st.servers[cand].store.iter()) {
                if let (0, Some((_, e))) = (*v, slot) {
                    *v = e.bit();
                }
            }
        }
        view
    }

    /// The longest committed prefix the candidate may know.
    fn committed_prefix(&self, st: &State, cand: usize) -> Seq {
        let view = self.committed_view(st, cand);
        view[..usize::from(self.numbers())].iter().take_while(|v| **v != 0).count() as Seq
    }

    fn report(&self, srv: &Server, from_seq: Seq) -> [Slot; SEQ_CAP] {
        let mut report = [None; SEQ_CAP];
        for s in from_seq..=self.numbers() {
            report[idx(s)] = srv.store[idx(s)];
        }
        report
    }

    fn promise_quorum(&self) -> usize {
        if self.is(Mutant::OnePromiseTooFew) {
            PROMISE_QUORUM - 1
        } else {
            PROMISE_QUORUM
        }
    }

    /// Folds a promise's report into what the candidate has so far: the highest epoch wins
    /// (the mutant keeps the lowest).
    fn merge(&self, merged: &mut [Slot; SEQ_CAP], report: &[Slot; SEQ_CAP]) {
        for (m, r) in merged.iter_mut().zip(report.iter()) {
            if let Some((re, _)) = r {
                let take = match m {
                    None => true,
                    Some((me, _)) if self.is(Mutant::KeepLowestEpoch) => re < me,
                    Some((me, _)) => re > me,
                };
                if take {
                    *m = *r;
                }
            }
        }
    }

    /// The highest epoch a candidate knows it (or its ballot) has used: it picks above it.
    fn seen_epoch(&self, st: &State, cand: usize) -> Epoch {
        st.servers[cand].promise.max(st.roles[cand].epoch())
    }

    fn start_ballot(&self, st: &mut State, cand: usize, epoch: Epoch, from_seq: Seq) {
        let below = self.committed_view(st, cand)[..idx(from_seq)].iter().fold(0, |b, v| b | v);
        st.ballots += 1;
        let (granted, merged) = if self.is(Mutant::OwnPromiseAfterPrepare) {
            // The candidate's own promise travels like any other, and may come late or never.
            (0, [None; SEQ_CAP])
        } else {
            // The candidate makes its own promise durable before its Prepare goes out.
            st.servers[cand].promise = epoch;
            (bit(cand), self.report(&st.servers[cand], from_seq))
        };
        st.roles[cand] = Role::Preparing { epoch, from_seq, below, granted, merged };
        st.send(Msg::Prepare { epoch, from_seq });
        self.maybe_lead(st, cand);
    }

    /// With enough promises: build the recovered range, re-propose it, and take office.
    fn maybe_lead(&self, st: &mut State, cand: usize) {
        let Role::Preparing { epoch, from_seq, below, granted, merged } = st.roles[cand] else { return };
        if count(granted) < self.promise_quorum() {
            return;
        }
        // The highest number reported (0 when no promise reported anything at from_seq or above).
        let highest = (1..=self.numbers()).rev().find(|&s| merged[idx(s)].is_some()).unwrap_or(0);
        let reported = |s: Seq| merged[idx(s)].unwrap_or((0, Entry::Noop));
        let mut assigned = [None; SEQ_CAP];
        for s in from_seq..=highest {
            let (ep, entry) = reported(s);
            let mut keep = entry;
            if entry != Entry::Noop {
                if below & entry.bit() != 0 && !self.is(Mutant::DedupIgnoresCommittedBelow) {
                    keep = Entry::Noop;
                }
                let beaten = (from_seq..=highest).any(|t| {
                    let (te, tentry) = reported(t);
                    t != s && tentry == entry && (te > ep || (te == ep && t > s))
                });
                if beaten && !self.is(Mutant::NoRangeDedup) {
                    keep = Entry::Noop;
                }
            }
            assigned[idx(s)] = Some(keep);
        }
        let resume = if self.is(Mutant::ResumeAfterHighestOnly) { highest + 1 } else { from_seq.max(highest + 1) };
        let first = from_seq.min(resume);
        st.roles[cand] = Role::Leading {
            epoch,
            from_seq,
            below,
            first,
            range_end: highest,
            next: resume,
            assigned,
            acks: [0; N],
            announced: 0,
            finished: false,
        };
        if highest >= from_seq {
            self.assign(st, cand, Msg::Assign { epoch, first, entries: assigned });
        } else {
            self.announce(st, cand);
        }
    }

    /// The sequencer sends an `Assign` to the other commit servers; its own server writes it
    /// later (`Action::OwnWrite`).
    fn assign(&self, st: &mut State, cand: usize, msg: Msg) {
        st.send(msg);
        self.announce(st, cand);
    }

    /// Announce every number with `k_commit` acceptances at this epoch; once the recovered
    /// range is all committed the ballot has finished (heartbeats start).
    fn announce(&self, st: &mut State, cand: usize) {
        let Role::Leading {
            epoch,
            from_seq,
            below,
            first,
            range_end,
            next,
            assigned,
            acks,
            mut announced,
            mut finished,
        } = st.roles[cand]
        else {
            return;
        };
        for s in first..next {
            let Some(entry) = assigned[idx(s)] else { continue };
            if announced & bit(idx(s)) == 0 && acks.iter().filter(|&&upto| upto >= s).count() >= K {
                announced |= bit(idx(s));
                st.committed[idx(s)] |= entry.bit();
            }
        }
        // An acceptance below the lowest number still to announce can no longer count: forget it,
        // so that states that differ only in such stale knowledge are one state.
        let pending = (first..next).find(|&s| announced & bit(idx(s)) == 0).unwrap_or(next);
        let mut acks = acks;
        for upto in acks.iter_mut() {
            if *upto < pending {
                *upto = 0;
            }
        }
        if !finished && (from_seq..=range_end).all(|s| announced & bit(idx(s)) != 0) {
            finished = true;
            if self.wipes() && (st.crash.is_none() || st.recovering().is_some()) {
                st.finished |= 1 << epoch;
            }
        }
        st.roles[cand] =
            Role::Leading { epoch, from_seq, below, first, range_end, next, assigned, acks, announced, finished };
    }

    /// The mids the sequencer knows are numbered: committed below `from_seq`, and everything
    /// it assigned (the recovered range included).
    fn known_entries(&self, st: &State, cand: usize) -> u8 {
        let Role::Leading { below, assigned, .. } = st.roles[cand] else { return 0 };
        assigned.iter().flatten().fold(below, |known, e| known | e.bit())
    }

    /// What handling `msg` at server `to` would do, or `None` if it would do nothing.
    fn effect(&self, st: &State, msg: &Msg, to: usize, own: bool) -> Option<Effect> {
        let mut srv = st.servers[to];
        if srv.mode != Mode::Normal {
            return None; // a wiped server takes no part until it has rejoined
        }
        let cand = owner(msg.epoch());
        match *msg {
            Msg::Prepare { epoch, .. } => {
                if epoch <= srv.promise || (to == cand && !self.is(Mutant::OwnPromiseAfterPrepare)) {
                    return None;
                }
                srv.promise = epoch;
                let useful_reply = matches!(st.roles[cand], Role::Preparing { epoch: e, granted, .. }
                    if e == epoch && granted & bit(to) == 0);
                Some(Effect { server: srv, useful_reply, upto: 0 })
            }
            Msg::Assign { epoch, first, entries } => {
                if epoch < srv.promise || (to == cand && !own) {
                    return None; // answered Rejected, which only tells the sequencer to stop
                }
                srv.promise = epoch;
                for (slot, entry) in srv.store.iter_mut().zip(entries.iter()) {
                    if let Some(entry) = entry {
                        if slot.is_none_or(|(e, _)| e < epoch) {
                            *slot = Some((epoch, *entry));
                        }
                    }
                }
                let at_epoch = |s: Seq| matches!(srv.store[idx(s)], Some((e, _)) if e == epoch);
                let upto = if self.is(Mutant::AcceptedSkipsGaps) {
                    (first..=self.numbers()).rev().find(|&s| at_epoch(s)).unwrap_or(0)
                } else {
                    (first..=self.numbers()).take_while(|&s| at_epoch(s)).last().unwrap_or(0)
                };
                let useful_reply = matches!(st.roles[cand], Role::Leading { epoch: e, acks, first, next, announced, .. }
                    if e == epoch && upto > acks[to]
                        && (first..=upto).any(|s| announced & bit(idx(s)) == 0) && upto < next);
                if srv == st.servers[to] && !useful_reply {
                    return None;
                }
                Some(Effect { server: srv, useful_reply, upto })
            }
        }
    }

    fn deliver(&self, st: &State, msg: Msg, to: usize, reply: bool) -> Option<State> {
        let effect = self.effect(st, &msg, to, false)?;
        if (reply && !effect.useful_reply) || (!reply && effect.server == st.servers[to]) {
            return None;
        }
        let mut next = st.clone();
        self.apply(&mut next, msg, to, reply, false);
        Some(next)
    }

    /// Server `to` handles `msg`; with `reply`, its answer reaches the candidate or sequencer,
    /// if that can use it. Returns whether the answer was used.
    fn apply(&self, st: &mut State, msg: Msg, to: usize, reply: bool, own: bool) -> bool {
        let Some(effect) = self.effect(st, &msg, to, own) else { return false };
        st.servers[to] = effect.server;
        if !reply || !effect.useful_reply {
            return false;
        }
        let cand = owner(msg.epoch());
        match msg {
            Msg::Prepare { from_seq, .. } => {
                let report = self.report(&effect.server, from_seq);
                if let Role::Preparing { granted, merged, .. } = &mut st.roles[cand] {
                    *granted |= bit(to);
                    self.merge(merged, &report);
                }
                self.maybe_lead(st, cand);
            }
            Msg::Assign { .. } => {
                if let Role::Leading { acks, .. } = &mut st.roles[cand] {
                    acks[to] = effect.upto;
                }
                self.announce(st, cand);
            }
        }
        true
    }

    /// The write the sequencer on `cand` still owes its own server, as an `Assign`.
    fn own_write(&self, st: &State, cand: usize) -> Option<Msg> {
        let Role::Leading { epoch, first, assigned, .. } = st.roles[cand] else { return None };
        let msg = Msg::Assign { epoch, first, entries: assigned };
        let effect = self.effect(st, &msg, cand, true)?;
        (effect.server != st.servers[cand]).then_some(msg)
    }

    fn copy(&self, st: &State, server: usize, from: usize) -> Option<State> {
        let mut next = st.clone();
        let peer = st.servers[from];
        let srv = &mut next.servers[server];
        for (mine, theirs) in srv.store.iter_mut().zip(peer.store.iter()) {
            if let Some((te, _)) = theirs {
                if mine.is_none_or(|(me, _)| me < *te) {
                    *mine = *theirs;
                }
            }
        }
        match srv.mode {
            Mode::Copying { from: copied } => {
                let copied = copied | bit(from);
                srv.promise = srv.promise.max(peer.promise);
                srv.mode = if count(copied) < COPY_QUORUM {
                    Mode::Copying { from: copied }
                } else if self.is(Mutant::WipedServerOnlyCopies) {
                    Mode::Normal
                } else {
                    Mode::Waiting { above: srv.promise }
                };
            }
            Mode::Recopying { epoch, from: copied } => {
                let copied = copied | bit(from);
                if count(copied) < COPY_QUORUM {
                    srv.mode = Mode::Recopying { epoch, from: copied };
                } else {
                    srv.mode = Mode::Normal;
                    srv.promise = epoch;
                }
            }
            Mode::Normal | Mode::Waiting { .. } => return None,
        }
        if srv.mode == Mode::Normal {
            next.finished = 0;
        }
        Some(next)
    }

    fn crash(&self, st: &State, server: usize) -> State {
        let mut next = st.clone();
        next.crash = Some(server as u8);
        if server < CANDIDATES {
            next.roles[server] = Role::Idle;
        }
        next.servers[server] = Server { mode: Mode::Copying { from: 0 }, ..Server::EMPTY };
        next
    }

    /// A floor under server `j`'s promise from now on. Promises only grow, except through a
    /// wipe; a wiped server rejoins with a promise at least that of every peer it copied (with
    /// `n_commit = 3` it copies both), above it after waiting for a ballot.
    fn promise_floor(&self, st: &State, j: usize) -> Epoch {
        let srv = &st.servers[j];
        let peers = || (0..N).filter(move |&i| i != j);
        let floor = match srv.mode {
            Mode::Normal => srv.promise,
            Mode::Copying { from } => {
                peers().filter(|&i| from & bit(i) == 0).map(|i| st.servers[i].promise).fold(srv.promise, Epoch::max)
            }
            Mode::Waiting { above } => above + 1,
            Mode::Recopying { epoch, .. } => epoch,
        };
        if st.crash.is_none() && self.wipes() {
            floor.min(peers().map(|i| st.servers[i].promise).max().unwrap_or(0))
        } else {
            floor
        }
    }

    /// Drops what no step can ever use again, so that states that differ only in such dead
    /// history are one state: requests no server would act on any more, and heartbeats no
    /// waiting server could take.
    fn collect_garbage(&self, st: &mut State) {
        let floors: [Epoch; N] = std::array::from_fn(|j| self.promise_floor(st, j));
        let settled = st.crash.is_some() || !self.wipes();
        let servers = st.servers;
        let roles = st.roles;
        let own_prepare = self.is(Mutant::OwnPromiseAfterPrepare);
        st.net.retain(|msg| {
            let epoch = msg.epoch();
            let cand = owner(epoch);
            match *msg {
                Msg::Prepare { .. } => (0..N).any(|j| (j != cand || own_prepare) && floors[j] < epoch),
                Msg::Assign { entries, .. } => {
                    // Could the sequencer of `epoch` (perhaps reusing it) still count a reply?
                    let reply_possible = roles[cand].epoch() == epoch || floors[cand] < epoch;
                    (0..N).filter(|&j| j != cand).any(|j| {
                        let srv = &servers[j];
                        let inert = settled
                            && srv.mode == Mode::Normal
                            && srv.promise == epoch
                            && !reply_possible
                            && srv
                                .store
                                .iter()
                                .zip(entries.iter())
                                .all(|(slot, entry)| entry.is_none() || slot.is_some_and(|(e, _)| e >= epoch));
                        floors[j] <= epoch && !inert
                    })
                }
            }
        });
        // A sequencer or candidate that no server will ever answer again can do nothing more
        // that matters: it is as good as idle (its own promise keeps its epoch from reuse).
        for cand in 0..CANDIDATES {
            let epoch = st.roles[cand].epoch();
            if epoch == 0 || st.servers[cand].promise < epoch {
                continue;
            }
            let others_done = |margin: Epoch| (0..N).filter(|&j| j != cand).all(|j| floors[j] >= epoch + margin);
            let inert = match st.roles[cand] {
                Role::Idle => false,
                Role::Preparing { .. } => others_done(0) && (!own_prepare || floors[cand] >= epoch),
                Role::Leading { .. } => others_done(1) && (floors[cand] > epoch || self.own_write(st, cand).is_none()),
            };
            if inert {
                st.roles[cand] = Role::Idle;
            }
        }
        // A waiting server only takes a heartbeat above every promise it copied.
        let above_floor = match st.crash {
            None => {
                let mut promises = st.servers.map(|s| s.promise);
                promises.sort_unstable();
                promises[N - 2]
            }
            Some(server) => match st.servers[usize::from(server)].mode {
                Mode::Waiting { above } => above,
                Mode::Copying { .. } => self.promise_floor(st, usize::from(server)),
                Mode::Normal | Mode::Recopying { .. } => Epoch::MAX,
            },
        };
        st.finished &= !((2u32 << above_floor.min(30)) - 1);
    }
}

impl Model for FailoverModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            servers: [Server::EMPTY; N],
            roles: [Role::Idle; CANDIDATES],
            net: Net::EMPTY,
            committed: [0; SEQ_CAP],
            finished: 0,
            ballots: 0,
            crash: None,
        }]
    }

    fn actions(&self, st: &State, actions: &mut Vec<Action>) {
        for cand in 0..CANDIDATES {
            if st.servers[cand].mode == Mode::Normal && st.ballots < self.bounds.ballots {
                let seen = self.seen_epoch(st, cand);
                let prefix = self.committed_prefix(st, cand);
                for round in 1..=self.bounds.rounds {
                    let epoch = round * CANDIDATES as u8 + cand as u8;
                    if epoch > seen {
                        for from_seq in 1..=prefix + 1 {
                            actions.push(Action::StartBallot { cand: cand as u8, epoch, from_seq });
                        }
                    }
                }
            }
            if self.own_write(st, cand).is_some() {
                actions.push(Action::OwnWrite { cand: cand as u8 });
            }
            if let Role::Leading { finished: true, next, .. } = st.roles[cand] {
                if next <= self.numbers() {
                    let known = self.known_entries(st, cand);
                    // Mids are interchangeable: while no mid appears anywhere, numbering `a` stands
                    // for numbering either.
                    let mids = if any_mid(st) { MIDS } else { 1 };
                    for mid in 0..mids {
                        if known & Entry::Mid(mid).bit() == 0 {
                            actions.push(Action::Number { cand: cand as u8, mid });
                        }
                    }
                }
            }
        }
        for msg in st.net.iter() {
            for to in 0..N {
                if let Some(effect) = self.effect(st, msg, to, false) {
                    if effect.server != st.servers[to] {
                        actions.push(Action::Deliver { msg: *msg, to: to as u8, reply: false });
                    }
                    if effect.useful_reply {
                        actions.push(Action::Deliver { msg: *msg, to: to as u8, reply: true });
                    }
                }
            }
        }
        if st.crash.is_none() && self.wipes() {
            for server in 0..N {
                actions.push(Action::Crash { server: server as u8 });
            }
        }
        for server in 0..N {
            match st.servers[server].mode {
                Mode::Copying { from } | Mode::Recopying { from, .. } => {
                    for peer in 0..N {
                        if peer != server && from & bit(peer) == 0 {
                            actions.push(Action::Copy { server: server as u8, from: peer as u8 });
                        }
                    }
                }
                Mode::Waiting { above } => {
                    for epoch in above + 1..16 {
                        if st.finished & (1 << epoch) != 0 {
                            actions.push(Action::Hear { server: server as u8, epoch });
                        }
                    }
                }
                Mode::Normal => {}
            }
        }
    }

    fn next_state(&self, st: &State, action: Action) -> Option<State> {
        let mut next = match action {
            Action::StartBallot { cand, epoch, from_seq } => {
                let mut next = st.clone();
                self.start_ballot(&mut next, usize::from(cand), epoch, from_seq);
                next
            }
            Action::Number { cand, mid } => {
                let mut next = st.clone();
                let Role::Leading { epoch, first, next: seq, assigned, .. } = &mut next.roles[usize::from(cand)] else {
                    return None;
                };
                let (epoch, first, at) = (*epoch, *first, *seq);
                assigned[idx(at)] = Some(Entry::Mid(mid));
                *seq += 1;
                let mut entries = [None; SEQ_CAP];
                entries[idx(at)] = Some(Entry::Mid(mid));
                self.assign(&mut next, usize::from(cand), Msg::Assign { epoch, first, entries });
                next
            }
            Action::Deliver { msg, to, reply } => self.deliver(st, msg, usize::from(to), reply)?,
            Action::Crash { server } => self.crash(st, usize::from(server)),
            Action::OwnWrite { cand } => {
                let cand = usize::from(cand);
                let msg = self.own_write(st, cand)?;
                let mut next = st.clone();
                self.apply(&mut next, msg, cand, true, true);
                next
            }
            Action::Copy { server, from } => self.copy(st, usize::from(server), usize::from(from))?,
            Action::Hear { server, epoch } => {
                let mut next = st.clone();
                next.servers[usize::from(server)].mode = Mode::Recopying { epoch, from: 0 };
                next
            }
        };
        self.collect_garbage(&mut next);
        Some(next)
    }

    fn format_action(&self, action: &Action) -> String {
        action.to_string()
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            // One property for the three rules (each property costs the checker a look-up per
            // state); `broken_rule` tells which one a counterexample breaks.
            Property::always(SAFETY, |_, st| broken_rule(st).is_none()),
            Property::sometimes(EX_RECOVERED_COMMIT, recovered_commit),
            Property::sometimes(EX_NOOP_COMMITTED, noop_committed),
            Property::sometimes(EX_BOTH_MIDS_COMMITTED, both_mids_committed),
            Property::sometimes(EX_OVERWRITTEN, overwritten),
            Property::sometimes(EX_WIPED_REJOINS, wiped_rejoins),
        ]
    }
}

const MID_BITS: u8 = ((1 << MIDS) - 1) << 1;

/// Whether any mid appears anywhere in the state.
fn any_mid(st: &State) -> bool {
    let is_mid = |e: &Entry| *e != Entry::Noop;
    st.committed.iter().any(|set| set & MID_BITS != 0)
        || st.servers.iter().any(|s| s.store.iter().flatten().any(|(_, e)| is_mid(e)))
        || st.net.iter().any(|m| matches!(m, Msg::Assign { entries, .. } if entries.iter().flatten().any(is_mid)))
        || st.roles.iter().any(|r| match r {
            Role::Idle => false,
            Role::Preparing { below, merged, .. } => {
                below & MID_BITS != 0 || merged.iter().flatten().any(|(_, e)| is_mid(e))
            }
            Role::Leading { below, assigned, .. } => below & MID_BITS != 0 || assigned.iter().flatten().any(is_mid),
        })
}

/// The first safety rule that the state's record of commits breaks, if any.
pub(crate) fn broken_rule(st: &State) -> Option<&'static str> {
    if st.committed.iter().any(|set| count(set & MID_BITS) > 1) {
        Some(NO_TWO_MIDS_AT_ONE_NUMBER)
    } else if (0..MIDS).any(|m| st.committed.iter().filter(|set| *set & Entry::Mid(m).bit() != 0).count() > 1) {
        Some(NO_MID_AT_TWO_NUMBERS)
    } else if st.committed.iter().any(|set| set & Entry::Noop.bit() != 0 && set & MID_BITS != 0) {
        Some(NO_MID_AND_NOOP_AT_ONE_NUMBER)
    } else {
        None
    }
}

/// A sequencer committed a mid of its recovered range (which it can only have from a promise).
fn recovered_commit(_: &FailoverModel, st: &State) -> bool {
    st.roles.iter().any(|r| match *r {
        Role::Leading { from_seq, range_end, assigned, announced, .. } => (from_seq..=range_end)
            .any(|s| announced & bit(idx(s)) != 0 && matches!(assigned[idx(s)], Some(Entry::Mid(_)))),
        _ => false,
    })
}

fn noop_committed(_: &FailoverModel, st: &State) -> bool {
    st.committed.iter().any(|set| set & Entry::Noop.bit() != 0)
}

fn both_mids_committed(_: &FailoverModel, st: &State) -> bool {
    (0..MIDS).all(|m| st.committed.iter().any(|set| set & Entry::Mid(m).bit() != 0))
}

/// A server still holds, at a committed number, a different mid that an older epoch assigned.
fn overwritten(_: &FailoverModel, st: &State) -> bool {
    st.servers.iter().any(|srv| {
        srv.store.iter().zip(st.committed.iter()).any(|(slot, set)| {
            matches!(slot, Some((_, Entry::Mid(m))) if *set != 0 && set & Entry::Mid(*m).bit() == 0 && set & MID_BITS != 0)
        })
    })
}

/// The wiped server rejoined, and a sequencer at or above its new promise (so in office since
/// it rejoined) has its acceptance.
fn wiped_rejoins(_: &FailoverModel, st: &State) -> bool {
    match st.crash.map(usize::from) {
        Some(w) if st.servers[w].mode == Mode::Normal => st.roles.iter().any(|r| {
            matches!(*r, Role::Leading { epoch, first, acks, .. } if epoch >= st.servers[w].promise && acks[w] >= first)
        }),
        _ => false,
    }
}

/// The safety property: the three rules below.
pub(crate) const SAFETY: &str = "one entry per number, one number per mid";
/// Safety: two different mids are never committed at one number.
pub(crate) const NO_TWO_MIDS_AT_ONE_NUMBER: &str = "no two different mids are committed at one number";
/// Safety: a mid is never committed at two numbers.
pub(crate) const NO_MID_AT_TWO_NUMBERS: &str = "no mid is committed at two numbers";
/// Safety: a number is never committed both as a mid and as Noop.
pub(crate) const NO_MID_AND_NOOP_AT_ONE_NUMBER: &str = "no number is committed both as a mid and as Noop";
/// Reachability: a new sequencer commits a mid of its recovered range.
pub(crate) const EX_RECOVERED_COMMIT: &str = "a new sequencer commits a mid it recovered";
/// Reachability: a Noop gets committed.
pub(crate) const EX_NOOP_COMMITTED: &str = "a Noop is committed";
/// Reachability: both mids get committed.
pub(crate) const EX_BOTH_MIDS_COMMITTED: &str = "both mids are committed";
/// Reachability: a mid assigned but never committed is replaced by another one.
pub(crate) const EX_OVERWRITTEN: &str = "another mid is committed where a server holds an uncommitted one";
/// Reachability: a wiped server takes part again.
pub(crate) const EX_WIPED_REJOINS: &str = "a wiped server rejoins and accepts again";

/// What the state's record says was committed, number by number, e.g. `#1: a, b; #2: noop`.
pub(crate) fn describe_commits(st: &State) -> String {
    let mut parts = Vec::new();
    for (i, set) in st.committed.iter().enumerate() {
        let entries: Vec<String> = std::iter::once(Entry::Noop)
            .chain((0..MIDS).map(Entry::Mid))
            .filter(|e| set & e.bit() != 0)
            .map(|e| e.to_string())
            .collect();
        if !entries.is_empty() {
            parts.push(format!("#{}: {}", i + 1, entries.join(", ")));
        }
    }
    if parts.is_empty() {
        "nothing committed".to_string()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> FailoverModel {
        FailoverModel { bounds: Bounds::default(), mutant: None }
    }

    fn initial() -> State {
        model().init_states().remove(0)
    }

    fn slot(epoch: Epoch, entry: Entry) -> Slot {
        Some((epoch, entry))
    }

    const A: Entry = Entry::Mid(0);
    const B: Entry = Entry::Mid(1);

    /// Leads with the given merged reports and returns what it assigned and where it resumes.
    fn lead(from_seq: Seq, below: u8, merged: [Slot; SEQ_CAP]) -> ([Option<Entry>; SEQ_CAP], Seq) {
        let m = model();
        let mut st = initial();
        st.servers[0].promise = 4;
        st.roles[0] = Role::Preparing { epoch: 4, from_seq, below, granted: 0b011, merged };
        m.maybe_lead(&mut st, 0);
        match st.roles[0] {
            Role::Leading { assigned, next, .. } => (assigned, next),
            r => panic!("did not lead: {r:?}"),
        }
    }

    #[test]
    fn recovered_range_keeps_the_highest_epoch_and_fills_gaps_with_noop() {
        let (assigned, next) = lead(1, 0, [None, slot(2, A), slot(3, B), None]);
        assert_eq!(assigned, [Some(Entry::Noop), Some(A), Some(B), None]);
        assert_eq!(next, 4);
    }

    #[test]
    fn recovered_range_drops_duplicates_and_what_is_committed_below() {
        // `a` at #2 (epoch 2) and #3 (epoch 3): only the epoch-3 one stays.
        let (assigned, _) = lead(1, 0, [None, slot(2, A), slot(3, A), None]);
        assert_eq!(assigned, [Some(Entry::Noop), Some(Entry::Noop), Some(A), None]);
        // `b` is committed below from_seq 2: its occurrence at #3 becomes Noop.
        let (assigned, next) = lead(2, B.bit(), [None, slot(2, A), slot(3, B), None]);
        assert_eq!(assigned, [None, Some(A), Some(Entry::Noop), None]);
        assert_eq!(next, 4);
    }

    #[test]
    fn resumes_at_from_seq_when_nothing_is_reported_above_it() {
        let (assigned, next) = lead(3, A.bit() | B.bit(), [None; SEQ_CAP]);
        assert_eq!(assigned, [None; SEQ_CAP]);
        assert_eq!(next, 3);
    }

    #[test]
    fn accepted_never_skips_a_gap() {
        let m = model();
        let mut st = initial();
        st.roles[0] = Role::Leading {
            epoch: 2,
            from_seq: 1,
            below: 0,
            first: 1,
            range_end: 0,
            next: 3,
            assigned: [Some(A), Some(B), None, None],
            acks: [0; N],
            announced: 0,
            finished: true,
        };
        let second = Msg::Assign { epoch: 2, first: 1, entries: [None, Some(B), None, None] };
        let effect = m.effect(&st, &second, 2, false).expect("accepted");
        assert_eq!(effect.upto, 0, "#1 is missing, so nothing is acknowledged");
        assert!(!effect.useful_reply);
        st.servers[2] = effect.server;
        let first = Msg::Assign { epoch: 2, first: 1, entries: [Some(A), None, None, None] };
        assert_eq!(m.effect(&st, &first, 2, false).expect("accepted").upto, 2);
    }

    #[test]
    fn an_older_epoch_is_refused_and_entries_only_grow_in_epoch() {
        let m = model();
        let mut st = initial();
        st.servers[2].promise = 4;
        st.servers[2].store[0] = slot(4, B);
        let old = Msg::Assign { epoch: 2, first: 1, entries: [Some(A), None, None, None] };
        assert!(m.effect(&st, &old, 2, false).is_none());
        assert!(m.effect(&st, &Msg::Prepare { epoch: 4, from_seq: 1 }, 2, false).is_none());
        let newer = Msg::Assign { epoch: 5, first: 1, entries: [Some(A), None, None, None] };
        assert_eq!(m.effect(&st, &newer, 2, false).expect("accepted").server.store[0], slot(5, A));
    }
}
