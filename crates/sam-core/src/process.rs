//! One process: the roles it holds, fed by one host (DESIGN section 2: "one process may hold
//! several"). It routes each input to the roles that handle it and collects their actions in
//! one [`Outbox`], so that write ids are ordered per process as a host's log orders them.
//!
//! It also runs the commit server's path to office (DESIGN section 6): when the commit server
//! misses heartbeats it stands, the process runs the [`Ballot`], and with enough promises it
//! starts a [`Sequencer`] on the recovered range; a sequencer that learns of a higher epoch
//! steps down.

use std::sync::Arc;

use bytes::Bytes;
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use rustc_hash::FxHashSet;

use crate::action::{Action, Channel, Dest, Outbox, Record, WriteId};
use crate::ballot::{Ballot, Verdict};
use crate::checkpoint_server::{CheckpointServer, Verdict as CheckpointVerdict};
use crate::client::{Client, DeliverFrom, SendError};
use crate::commit_server::CommitServer;
use crate::config::Config;
use crate::data_server::DataServer;
use crate::ids::{Epoch, Incarnation, Mid, Pid, Seq, Source, Time};
use crate::message::{Alarms, Data, Entry, Heartbeat, Message, Pong, PreVoteGranted};
use crate::notice::Notice;
use crate::senders::Senders;
use crate::sequencer::{Sequencer, Takeover};
use crate::state_machine::{KvTable, StateMachine};

/// Which roles a process holds. The sequencer is not chosen: commit servers elect it (at a
/// fresh group's start, the commit server of rank 0 stands first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    /// A commit server (its pid must be in `Config::commit_servers`).
    pub commit: bool,
    /// A data server (its pid must be in `Config::data_servers`).
    pub data: bool,
    /// A checkpoint server: its member snapshots its state machine at checkpoint numbers
    /// (requires `client`).
    pub checkpoint: bool,
    /// A member that sends and delivers, with this incarnation.
    pub client: Option<Incarnation>,
}

/// A process of the group: its roles and their pending actions.
#[derive(Debug)]
pub struct Process {
    pid: Pid,
    cfg: Arc<Config>,
    sequencer: Option<Sequencer>,
    ballot: Option<Ballot>,
    commit: Option<CommitServer>,
    data: Option<DataServer>,
    checkpoint: Option<CheckpointServer>,
    client: Option<Client>,
    out: Outbox,
    /// Who may say what, and the messages not believed.
    senders: Senders,
    unbelieved: u64,
    /// The host's storage is full (reported in pongs).
    alarms: Alarms,
}

impl Process {
    /// Starts a process from its durable `records` (empty on first start). `seed` seeds the
    /// roles' random choices (NACK jitter, server rotation), so a run replays exactly.
    /// A checkpoint server runs the built-in [`KvTable`] until
    /// [`Process::attach_state_machine`] gives it another, restored from its latest checkpoint.
    pub fn start(cfg: Arc<Config>, pid: Pid, roles: Roles, seed: u64, now: Time, records: &[Record]) -> Process {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut fork = || Xoshiro256PlusPlus::from_rng(&mut rng);
        let mut process = Process {
            pid,
            sequencer: None,
            ballot: None,
            commit: roles.commit.then(|| CommitServer::recover(cfg.clone(), pid, fork(), records, now)),
            data: roles.data.then(|| DataServer::recover(cfg.clone(), records)),
            checkpoint: roles.checkpoint.then(|| CheckpointServer::recover(records)),
            client: roles.client.map(|incarnation| Client::new(cfg.clone(), Source { pid, incarnation }, fork())),
            out: Outbox::new(),
            senders: Senders::default(),
            unbelieved: 0,
            alarms: Alarms::NONE,
            cfg,
        };
        let promised = process.commit.as_ref().map_or(Epoch::NONE, CommitServer::promised);
        process.senders = Senders::new(promised);
        if roles.checkpoint {
            process.attach_state_machine(now, Box::new(KvTable::new()));
        }
        process
    }

    /// Runs `machine` on this process's deliveries (it needs the client role). A checkpoint
    /// server snapshots it at checkpoint numbers, and restores it now from its latest
    /// checkpoint, from which deliveries continue.
    pub fn attach_state_machine(&mut self, now: Time, machine: Box<dyn StateMachine + Send>) {
        let Some(client) = &mut self.client else { return };
        client.attach(machine, self.checkpoint.is_some());
        if let Some(latest) = self.checkpoint.as_ref().and_then(CheckpointServer::latest) {
            let snapshot: Bytes = latest.blocks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            client.restore_local(now, latest.seq, latest.chain, snapshot, &mut self.out);
        }
    }

    /// Starts a process whose storage was lost or found corrupt: its commit server rejoins by
    /// the rule of DESIGN section 6 (copy the peers' promises, vote again only after a ballot
    /// above them all has finished), its other roles start empty.
    pub fn start_after_storage_loss(cfg: Arc<Config>, pid: Pid, roles: Roles, seed: u64, now: Time) -> Process {
        let mut process = Process::start(cfg.clone(), pid, roles, seed, now, &[]);
        let rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x1057);
        let out = &mut process.out;
        process.commit = roles.commit.then(|| CommitServer::after_storage_loss(cfg, pid, rng, now, out));
        process
    }

    /// This process's id.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The sequencer role, if this process runs the current epoch.
    pub fn sequencer(&self) -> Option<&Sequencer> {
        self.sequencer.as_ref()
    }

    /// The commit server role.
    pub fn commit_server(&self) -> Option<&CommitServer> {
        self.commit.as_ref()
    }

    /// The data server role.
    pub fn data_server(&self) -> Option<&DataServer> {
        self.data.as_ref()
    }

    /// The checkpoint server role.
    pub fn checkpoint_server(&self) -> Option<&CheckpointServer> {
        self.checkpoint.as_ref()
    }

    /// The client role.
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// Whether a record in this process's log still says something a restart needs (DESIGN
    /// section 5: what a checkpoint covers is garbage). A host may drop the records that are
    /// not needed and copy the others forward, in any order, once every write made before it
    /// asked is durable: replay does not depend on the order of the records kept.
    pub fn needs(&self, record: &Record) -> bool {
        let commit = self.commit.as_ref();
        match record {
            Record::Data(d) => self.data.as_ref().is_some_and(|ds| ds.holds(&d.mid)),
            Record::Slots { first, slots } => commit.is_some_and(|c| first.plus(slots.len() as u64) > c.floor().next()),
            Record::Promise(epoch) => commit.is_some_and(|c| *epoch == c.promised()),
            Record::StorageLost => commit.is_some_and(CommitServer::is_rejoining),
            Record::Floor { floor, .. } => commit.is_some_and(|c| *floor == c.floor()),
            Record::Checkpoint { seq, .. } => {
                self.checkpoint.as_ref().is_some_and(|cp| cp.kept().any(|k| k.seq == *seq))
            }
            // Losing it costs a refill from the peers; and a later one is written as commits go on.
            Record::Committed(_) => false,
            // It voids checkpoints written before it, which a host drops with it (retirement
            // takes the oldest records first), and none kept after it.
            Record::Diverged(_) => false,
        }
    }

    /// Sets where the client role's deliveries start (before the process hears anything).
    pub fn deliver_from(&mut self, from: DeliverFrom) {
        if let Some(c) = &mut self.client {
            c.deliver_from(from);
        }
    }

    /// Sends `payload` to the group from this process's client role.
    pub fn send(&mut self, now: Time, payload: Bytes) -> Result<Mid, SendError> {
        let client = self.client.as_mut().expect("send needs the client role");
        let result = client.send(now, payload, &mut self.out);
        self.check_invariants();
        result
    }

    /// Routes a message from `from` to the roles that handle its kind.
    pub fn handle(&mut self, now: Time, from: Pid, msg: &Message) {
        if !self.believes(now, from, msg) {
            return;
        }
        let mark = self.out.len();
        self.route(now, from, msg);
        self.after_input(mark);
    }

    /// Raises (`on`) or clears `alarm`, which `Pong`s carry to `sam status` (DESIGN section
    /// 12: a full disk stops acceptance and raises an alarm; so do a full replay table and the
    /// others the host watches).
    pub fn set_alarm(&mut self, alarm: Alarms, on: bool) {
        self.alarms = self.alarms.with(alarm, on);
    }

    /// The alarms raised.
    pub fn alarms(&self) -> Alarms {
        self.alarms
    }

    /// Messages not believed: from a sender whose role does not send them, out of bounds, or
    /// `Entries` no role here asked that server for (DESIGN section 12). Each is dropped.
    pub fn unbelieved(&self) -> u64 {
        self.unbelieved
    }

    fn believes(&mut self, now: Time, from: Pid, msg: &Message) -> bool {
        let believed = self.senders.believes(&self.cfg, now, from, msg).is_ok();
        self.unbelieved += u64::from(!believed);
        believed
    }

    /// [`Process::handle`] taking the message: a data message's payload moves into the
    /// member's buffer instead of being shared, which spares a reference count per message on
    /// the node's hot path.
    pub fn handle_owned(&mut self, now: Time, from: Pid, msg: Message) {
        if !self.believes(now, from, &msg) {
            return;
        }
        let mark = self.out.len();
        match msg {
            Message::Data(data) => self.route_data(now, from, data),
            other => self.route(now, from, &other),
        }
        self.after_input(mark);
    }

    fn route_data(&mut self, now: Time, from: Pid, data: Data) {
        if let Some(d) = &mut self.data {
            d.handle_data(&data, &mut self.out);
        }
        if let Some(c) = &mut self.client {
            c.handle_data(now, from, data, &mut self.out);
        }
    }

    /// What every input ends with: the checkpoints kept, a deposed sequencer stepped down,
    /// the invariants checked.
    fn after_input(&mut self, mark: usize) {
        self.keep_checkpoints(mark);
        self.step_down_if_deposed();
        self.check_invariants();
    }

    fn route(&mut self, now: Time, from: Pid, msg: &Message) {
        let out = &mut self.out;
        match msg {
            Message::Data(m) => self.route_data(now, from, m.clone()),
            Message::Order(m) => {
                if let Some(s) = &mut self.sequencer {
                    s.handle_order(from, m, out);
                }
            }
            Message::Assign(m) => {
                if let Some(c) = &mut self.commit {
                    c.handle_assign(from, m, out);
                }
            }
            Message::Accepted(m) => {
                if let Some(s) = &mut self.sequencer {
                    let mark = out.len();
                    s.handle_accepted(now, from, m, out);
                    self.tell_own_commit_server(now, mark);
                }
            }
            Message::Rejected(m) => {
                if let Some(c) = &mut self.commit {
                    c.handle_rejected(from, m);
                }
                if let Some(s) = &mut self.sequencer {
                    s.handle_rejected(m);
                }
                if let Some(b) = &mut self.ballot {
                    b.handle_rejected(m);
                }
            }
            Message::Prepare(m) => {
                if let Some(c) = &mut self.commit {
                    c.handle_prepare(now, from, m, out);
                }
                // A Prepare of no epoch comes from a commit server rejoining after it lost its
                // storage (DESIGN section 6): it needs a ballot.
                if let Some(s) = self.sequencer.as_mut().filter(|_| m.epoch == Epoch::NONE) {
                    s.note_rejoining_peer(now);
                }
            }
            Message::PreVote(m) => {
                if let Some(c) = &mut self.commit {
                    c.handle_pre_vote(now, from, m, out);
                }
            }
            Message::PreVoteGranted(m) => self.handle_pre_vote_granted(now, from, m),
            Message::Promise(m) => {
                if let (Some(b), Some(rank)) = (&mut self.ballot, self.cfg.commit_rank(from)) {
                    b.handle_promise(rank, m);
                }
                self.try_take_office(now);
            }
            Message::Commit(m) => {
                if let Some(c) = &mut self.commit {
                    c.handle_commit(now, m);
                }
                if let Some(d) = &mut self.data {
                    d.handle_commit(m);
                }
                if let Some(c) = &mut self.client {
                    c.handle_commit(now, m, out);
                }
            }
            Message::Heartbeat(m) => {
                if self.sequencer.as_ref().is_some_and(|s| m.epoch > s.epoch()) {
                    self.sequencer = None;
                }
                if let Some(c) = &mut self.commit {
                    c.handle_heartbeat(now, m, out);
                }
                if let Some(d) = &mut self.data {
                    d.handle_heartbeat(m, out);
                }
                if let Some(c) = &mut self.client {
                    c.handle_heartbeat(now, m, out);
                }
                self.check_checkpoint(now, m);
            }
            Message::QueryEntries(m) => {
                if let Some(c) = &self.commit {
                    c.handle_query(from, m, out);
                }
            }
            Message::Entries(m) => {
                let by_commit = self.commit.as_mut().is_some_and(|c| c.handle_entries(now, from, m, out));
                let by_client = self.client.as_mut().is_some_and(|c| c.handle_entries(now, from, m, out));
                // Entries nobody here asked that server for are dropped like any unbelieved.
                self.unbelieved += u64::from(!by_commit && !by_client);
            }
            Message::Fetch(m) => {
                if let Some(d) = &self.data {
                    d.handle_fetch(from, m, out);
                }
            }
            Message::FetchBlocks(m) => {
                if let Some(c) = &self.checkpoint {
                    c.handle_fetch_blocks(from, m, out);
                }
            }
            Message::Block(m) => {
                if let Some(c) = &mut self.client {
                    c.handle_block(now, from, m, out);
                }
            }
            Message::CheckpointReport(m) => {
                if let Some(s) = &mut self.sequencer {
                    s.handle_checkpoint_report(from, m, out);
                }
            }
            Message::Forgotten(m) => {
                if let Some(c) = &mut self.commit {
                    c.handle_forgotten(from, m, out);
                }
                if let Some(c) = &mut self.client {
                    c.handle_forgotten(now, from, m, out);
                }
            }
            Message::Ping(ping) => {
                let commit = self.commit.as_ref().map(CommitServer::committed);
                let committed = commit.or_else(|| self.client.as_ref().map(Client::delivered)).unwrap_or(Seq::ZERO);
                let pong = Pong { nonce: ping.nonce, committed, alarms: self.alarms };
                out.send(Dest::Pid(from), Message::Pong(pong));
            }
            Message::Pong(pong) => out.push(Action::Pong { from, pong: *pong }),
            Message::Dropped(m) => {
                if let Some(c) = &mut self.client {
                    c.handle_dropped(now, from, m, out);
                }
            }
        }
    }

    /// A checkpoint server checks its checkpoint against the advertised one; its member
    /// restores from the advertised one when its own state diverged.
    fn check_checkpoint(&mut self, now: Time, hb: &Heartbeat) {
        let Some(cp) = &mut self.checkpoint else { return };
        if let CheckpointVerdict::Diverged(agreed) = cp.handle_heartbeat(now, self.pid, hb, &mut self.out) {
            if let Some(c) = &mut self.client {
                c.restore_from(now, agreed, &mut self.out);
            }
        }
    }

    /// Hands the checkpoint server the snapshots its member took, and the checkpoints it
    /// restored since `mark` (which it then serves too).
    fn keep_checkpoints(&mut self, mark: usize) {
        let (Some(cp), Some(client)) = (&mut self.checkpoint, &mut self.client) else { return };
        let restored: Vec<(crate::ids::Seq, crate::chain::Chain, Bytes)> = self
            .out
            .since(mark)
            .iter()
            .filter_map(|a| match a {
                Action::Restored { seq, chain, snapshot } => Some((*seq, *chain, snapshot.clone())),
                _ => None,
            })
            .collect();
        for (seq, chain, snapshot) in client.take_snapshots().into_iter().chain(restored) {
            cp.take(seq, chain, snapshot, &mut self.out);
        }
    }

    /// Shows the co-located commit server the `Commit`s and heartbeats its sequencer just
    /// sent: the global channel may lose them, and when every commit server has missed a
    /// `Commit`, the sequencer's own is where the others refill it from; a commit server that
    /// missed its own sequencer's heartbeats would grant a rival's `Prepare`.
    fn tell_own_commit_server(&mut self, now: Time, mark: usize) {
        let Some(c) = &mut self.commit else { return };
        let mut heartbeat = None;
        for action in self.out.since(mark) {
            match action {
                Action::Send { msg: Message::Commit(commit), .. } => c.handle_commit(now, commit),
                Action::Send { msg: Message::Heartbeat(hb), .. } => heartbeat = Some(*hb),
                _ => {}
            }
        }
        if let Some(hb) = heartbeat {
            c.handle_heartbeat(now, &hb, &mut self.out);
        }
    }

    /// Lets every role act on its timers, and runs the path to office.
    pub fn handle_tick(&mut self, now: Time) {
        let mark = self.out.len();
        if let Some(s) = &mut self.sequencer {
            s.handle_tick(now, &mut self.out);
        }
        self.tell_own_commit_server(now, mark);
        let out = &mut self.out;
        if let Some(c) = &mut self.commit {
            c.handle_tick(now, out);
        }
        if let Some(c) = &mut self.client {
            c.handle_tick(now, out);
        }
        self.keep_checkpoints(mark);
        self.run_ballot(now);
        self.check_invariants();
    }

    /// Starts a ballot when the commit server stands; ends a lost one.
    fn run_ballot(&mut self, now: Time) {
        if let Some(b) = &mut self.ballot {
            if b.handle_tick(now, &mut self.out) == Verdict::Lost {
                self.out.push(Action::Notice(Notice::BallotLost { epoch: b.epoch() }));
                self.ballot = None;
                if let Some(c) = &mut self.commit {
                    c.ballot_lost(now);
                }
            }
            return;
        }
        let stands_again = self.sequencer.as_mut().is_some_and(|s| s.stands_again(now));
        if self.sequencer.is_some() && !stands_again {
            return;
        }
        let Some(c) = &mut self.commit else { return };
        let epoch = if stands_again { Some(c.next_epoch()) } else { c.candidacy(now) };
        if let Some(epoch) = epoch {
            let from_seq = c.committed().next();
            self.out.push(Action::Notice(Notice::BallotStarted { epoch, from_seq, again: stands_again }));
            let ballot = Ballot::start(self.cfg.clone(), epoch, from_seq, now);
            self.out.send(Dest::Channel(Channel::Commit), ballot.pre_vote());
            self.ballot = Some(ballot);
        }
    }

    /// A pre-vote grant: once enough servers miss the sequencer, the candidate promises its
    /// own epoch (its `Prepare` follows when that promise is durable).
    fn handle_pre_vote_granted(&mut self, now: Time, from: Pid, granted: &PreVoteGranted) {
        let (Some(b), Some(c), Some(rank)) = (&mut self.ballot, &mut self.commit, self.cfg.commit_rank(from)) else {
            return;
        };
        let own_rank = self.cfg.commit_rank(self.pid).unwrap_or(0);
        if b.handle_pre_vote_granted(rank, granted, own_rank) {
            c.promise_own(now, self.pid, &b.prepare(), &mut self.out);
            self.announce_ballot(now);
        }
    }

    /// Sends the ballot's `Prepare` once the candidate's own promise is durable.
    fn announce_ballot(&mut self, now: Time) {
        let (Some(b), Some(c)) = (&mut self.ballot, &self.commit) else { return };
        if b.awaits_own_promise() && c.promised() == b.epoch() && c.promised_durably() {
            b.announce(now, &mut self.out);
        }
    }

    /// With enough promises, takes office: a sequencer for the ballot's epoch that re-proposes
    /// the recovered range.
    fn try_take_office(&mut self, now: Time) {
        let (Some(b), Some(c)) = (&self.ballot, &mut self.commit) else { return };
        let epoch = b.epoch();
        if c.promised() > epoch {
            self.ballot = None;
            c.ballot_lost(now);
            return;
        }
        let own_rank = self.cfg.commit_rank(self.pid).unwrap_or(0);
        if !b.has_quorum(own_rank) {
            return;
        }
        let from_seq = b.recovery_start();
        let (history_first, history) = c.takeover_history(from_seq);
        let committed_below: FxHashSet<Mid> = history
            .iter()
            .filter_map(|e| match e {
                Entry::Msg { mid, .. } => Some(*mid),
                Entry::Noop => None,
            })
            .collect();
        let Some(recovered) = b.recovered(own_rank, &committed_below) else { return };
        let checkpoint = [c.checkpoint(), b.checkpoint()].into_iter().flatten().max_by_key(|c| c.seq);
        let (recovered_len, took_us) = (recovered.len() as u64, now.since_us(b.started()));
        let takeover = Takeover { from_seq, history_first, history, recovered, checkpoint, chain: c.chain() };
        let mut sequencer = Sequencer::take_office(self.cfg.clone(), self.pid, b.epoch(), takeover, now);
        sequencer.flush(&mut self.out);
        let took = Notice::TookOffice { epoch: sequencer.epoch(), from_seq, recovered: recovered_len, took_us };
        self.out.push(Action::Notice(took));
        self.sequencer = Some(sequencer);
        self.ballot = None;
    }

    /// A sequencer whose commit server promised a higher epoch, or that was told it is
    /// deposed, stops at once: it can no longer commit anything.
    fn step_down_if_deposed(&mut self) {
        let Some(s) = &self.sequencer else { return };
        let promised = self.commit.as_ref().map_or(Epoch::NONE, CommitServer::promised);
        if s.deposed().is_some() || promised > s.epoch() {
            self.out.push(Action::Notice(Notice::SteppedDown { epoch: s.epoch() }));
            self.sequencer = None;
        }
    }

    /// The host made every write up to `upto` durable.
    pub fn handle_durable(&mut self, now: Time, upto: WriteId) {
        let out = &mut self.out;
        if let Some(c) = &mut self.commit {
            c.handle_durable(upto, out);
        }
        if let Some(d) = &mut self.data {
            d.handle_durable(upto, out);
        }
        if let Some(c) = &mut self.checkpoint {
            c.handle_durable(now, upto, out);
        }
        self.announce_ballot(now);
        self.check_invariants();
    }

    /// When the process next needs [`Process::handle_tick`] (`None`: only inputs wake it).
    pub fn poll_timeout(&self) -> Option<Time> {
        let idle = self.sequencer.is_none() && self.ballot.is_none();
        let timers = [
            self.sequencer.as_ref().map(Sequencer::poll_timeout),
            self.ballot.as_ref().map(Ballot::poll_timeout),
            self.commit.as_ref().and_then(CommitServer::poll_timeout),
            self.commit.as_ref().filter(|_| idle).map(CommitServer::candidacy_at),
            self.client.as_ref().and_then(Client::poll_timeout),
        ];
        timers.into_iter().flatten().min()
    }

    /// Takes the actions the last inputs produced, oldest first.
    pub fn drain_actions(&mut self) -> std::vec::Drain<'_, Action> {
        self.out.drain()
    }

    fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            if let Some(s) = &self.sequencer {
                s.check_invariants();
            }
            if let Some(c) = &self.commit {
                c.check_invariants();
            }
            if let Some(c) = &self.client {
                c.check_invariants();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Chain;

    fn prepares(p: &mut Process) -> Vec<Message> {
        p.drain_actions()
            .filter_map(|a| match a {
                Action::Send { msg: msg @ Message::Prepare(_), .. } => Some(msg),
                _ => None,
            })
            .collect()
    }

    fn group() -> Arc<Config> {
        Arc::new(Config::new(vec![Pid(1), Pid(2), Pid(3)], vec![Pid(4)], vec![]))
    }

    /// DESIGN section 6 as model-checked: after a pre-vote passes, a candidate's `Prepare`
    /// goes out only once its own promise of that epoch is durable, so a server that lost its
    /// storage and copies the promises sees the candidate's epoch.
    #[test]
    fn a_candidates_prepare_waits_for_a_pre_vote_and_its_own_durable_promise() {
        let mut p = Process::start(group(), Pid(1), Roles { commit: true, ..Roles::default() }, 1, Time(0), &[]);
        p.handle_tick(Time(0));
        let asked = p.drain_actions().any(|a| matches!(a, Action::Send { msg: Message::PreVote(_), .. }));
        assert!(asked, "a fresh rank 0 stands at once, with a pre-vote");
        let granted = Message::PreVoteGranted(PreVoteGranted { epoch: Epoch::initial() });
        p.handle(Time(1), Pid(2), &granted);
        let actions: Vec<Action> = p.drain_actions().collect();
        assert!(actions.iter().any(|a| matches!(a, Action::Persist { record: Record::Promise(_), .. })));
        assert!(!actions.iter().any(|a| matches!(a, Action::Send { msg: Message::Prepare(_), .. })));
        p.handle_durable(Time(2), WriteId(1));
        assert_eq!(prepares(&mut p).len(), 1, "the Prepare goes out once the promise is durable");
    }

    /// DESIGN section 6, pre-vote: a commit server cut off on its own stands for election, but
    /// never raises its promise, so it cannot depose a healthy sequencer when it returns.
    #[test]
    fn a_candidate_cut_off_on_its_own_never_raises_its_promise() {
        let mut p = Process::start(group(), Pid(2), Roles { commit: true, ..Roles::default() }, 1, Time(0), &[]);
        let hb = Heartbeat {
            epoch: Epoch::initial(),
            sequencer: Pid(1),
            committed: crate::ids::Seq::ZERO,
            checkpoint: None,
            chain: Chain::GENESIS,
            signature: None,
        };
        p.handle(Time(0), Pid(1), &Message::Heartbeat(hb));
        let mut asked = 0;
        let mut now = Time(0);
        for _ in 0..100 {
            now = now.plus_us(50_000);
            p.handle_tick(now);
            let own: Vec<Message> = p
                .drain_actions()
                .filter_map(|a| match a {
                    Action::Send { msg: msg @ Message::PreVote(_), .. } => Some(msg),
                    _ => None,
                })
                .collect();
            for msg in own {
                asked += 1;
                p.handle(now, Pid(2), &msg);
            }
            p.handle_durable(now, WriteId(u64::MAX));
            p.drain_actions().count();
        }
        assert!(asked > 0, "it stood for election");
        assert_eq!(p.commit_server().map(CommitServer::promised), Some(Epoch::NONE));
    }
}
