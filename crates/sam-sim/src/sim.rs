//! The event loop: processes running the protocol core, a seeded network between them, disks
//! that lose unsynced writes on a crash, a workload, a fault schedule, and the checkers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rand::{Rng, RngCore};
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rustc_hash::{FxHashMap, FxHashSet};
use sam_core::wire::{decode_frame, FramePacker};
use sam_core::{
    Action, Assigned, Channel, CommitServer, Config, DataServer, Dest, Digest, Entry, Epoch, Incarnation, KvOp,
    KvTable, Message, Mid, Pid, Process, Record, RestoreError, Roles, Seq, Sequencer, StateMachine, Time, WriteId,
};

use crate::check::{Checker, Life, Outcome};
use crate::config::SimConfig;
use crate::network::{plan, Crashable, Fate, Fault, Network};
use crate::report::{CheckpointStats, FaultCounts, ProcKind, Rate, Report, Traffic};

/// The most protocol messages in one simulated datagram.
const MAX_MSGS_PER_DATAGRAM: usize = 32;
/// The datagram size used when datagrams pass through the wire codec.
const WIRE_DATAGRAM_BYTES: usize = 64 * 1024;
/// How often the run checks whether it is quiescent.
const CHECK_EVERY_US: u64 = 5_000;
/// How many messages a sender sends per workload tick at most.
const BURST: u64 = 8;
/// How often the disks drop what the servers garbage-collected, as a real store retires
/// segments.
const COMPACT_EVERY_US: u64 = 1_000_000;

type Datagram = Rc<Vec<Message>>;

#[derive(Debug)]
enum Event {
    Packet { to: usize, from: usize, msgs: Datagram },
    Multicast { from: usize, channel: Channel, msgs: Datagram },
    Wake { proc: usize, life: u32 },
    Durable { proc: usize, life: u32, upto: WriteId },
    SendTick { proc: usize, life: u32 },
    Fault(Fault),
    Restart { proc: usize },
    Heal,
    Reconnect,
    Check,
    Compact,
}

struct Scheduled {
    at: Time,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// A process's disk: durable records, and writes waiting for the next sync (lost on a crash).
/// It indexes what is durable for the durability checker.
#[derive(Debug, Default)]
struct Disk {
    durable: Vec<Record>,
    pending: Vec<(WriteId, Record)>,
    syncing: bool,
    /// A compaction under way: the oldest durable records to drop once the copies of the
    /// needed ones, written with the pending write of this id, are durable.
    retiring: Option<(usize, WriteId)>,
    entries: FxHashMap<Seq, Assigned>,
    mids: FxHashSet<Mid>,
}

impl Disk {
    /// Makes the pending writes up to `upto` durable.
    fn sync(&mut self, upto: WriteId) {
        let n = self.pending.iter().take_while(|(id, _)| *id <= upto).count();
        for (_, record) in self.pending.drain(..n) {
            match &record {
                Record::Slots { first, slots } => {
                    for (i, slot) in slots.iter().enumerate() {
                        self.entries.insert(first.plus(i as u64), slot.entry.assigned());
                    }
                }
                Record::Data(data) => {
                    self.mids.insert(data.mid);
                }
                Record::Promise(_)
                | Record::Committed(_)
                | Record::StorageLost
                | Record::Floor { .. }
                | Record::Diverged(_)
                | Record::Checkpoint { .. } => {}
            }
            self.durable.push(record);
        }
        if let Some((count, _)) = self.retiring.filter(|(_, id)| *id <= upto) {
            self.durable.drain(..count);
            self.retiring = None;
        }
    }

    /// Forgets the writes a crash loses, and the compaction that waited for them.
    fn lose_pending(&mut self) {
        self.pending.clear();
        self.syncing = false;
        self.retiring = None;
    }
}

impl Disk {
    /// Compacts as the node does (`sam_node`'s log retirement): the older half of the durable
    /// records is read, the ones the process still needs ([`Process::needs`]) are copied to
    /// the end, and the half is dropped once the copies and every write before them are
    /// durable. A restart then replays what a real store would still hold, in that order.
    fn compact(&mut self, state: &Process) {
        if self.retiring.is_none() {
            let half = self.durable.len() / 2;
            let copies: Vec<Record> = self.durable[..half].iter().filter(|r| state.needs(r)).cloned().collect();
            match self.pending.last() {
                Some(&(id, _)) => {
                    self.pending.extend(copies.into_iter().map(|r| (id, r)));
                    self.retiring = Some((half, id));
                }
                None => {
                    self.durable.drain(..half);
                    self.durable.extend(copies);
                }
            }
        }
        let floor = state.commit_server().map_or(Seq::ZERO, sam_core::CommitServer::floor);
        self.entries.retain(|seq, _| *seq > floor);
        if let Some(ds) = state.data_server() {
            self.mids.retain(|mid| ds.holds(mid));
        }
    }
}

/// Test only: a table whose snapshots carry a value drawn at random per replica, so that
/// equal histories give different digests.
#[derive(Debug)]
struct Unsteady {
    table: KvTable,
    salt: u64,
}

impl StateMachine for Unsteady {
    fn apply(&mut self, seq: Seq, payload: &Bytes) {
        self.table.apply(seq, payload);
    }

    fn snapshot(&self) -> Bytes {
        let mut bytes = self.table.snapshot().to_vec();
        bytes.extend_from_slice(&self.salt.to_le_bytes());
        bytes.into()
    }

    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError> {
        self.table.restore(&snapshot.slice(..snapshot.len().saturating_sub(8)))
    }

    fn applied(&self) -> Seq {
        self.table.applied()
    }

    /// The table's own digest: the replica's state is right, only its snapshots differ.
    fn digest(&self) -> Digest {
        self.table.digest()
    }
}

struct SimProc {
    pid: Pid,
    kind: ProcKind,
    roles: Roles,
    state: Option<Process>,
    life: u32,
    disk: Disk,
    wake_at: Option<Time>,
    /// Messages this process still has to send (senders only).
    to_send: u64,
    /// Its storage was wiped in its last crash: it restarts by the rejoin rule.
    wiped: bool,
    subscriptions: Vec<Channel>,
    /// A late joiner: when it joined, until it caught up from a checkpoint.
    joined_at: Option<Time>,
    /// A late joiner: when it joined and the highest number committed then, until it
    /// delivered that far.
    live_target: Option<(Time, Seq)>,
    /// Its client's messages not committed yet, after its last step.
    in_flight: usize,
    /// Whether it was fetching a checkpoint after its last step.
    catching_up: bool,
}

/// One simulation run.
pub struct Simulation {
    cfg: SimConfig,
    core: Arc<Config>,
    rng: Xoshiro256PlusPlus,
    now: Time,
    queue: BinaryHeap<Reverse<Scheduled>>,
    order: u64,
    procs: Vec<SimProc>,
    by_pid: FxHashMap<Pid, usize>,
    network: Network,
    checker: Checker,
    traffic: FxHashMap<ProcKind, Traffic>,
    faults: FaultCounts,
    fault_end: Time,
    fsync_us: (u64, u64),
    send_interval_us: u64,
    sent: u64,
    actions: Vec<Action>,
    done: bool,
    /// Per epoch and commit server, the `Accepted{upto}` it sent, in order, and when: the votes
    /// the fencing checker counts (a slot refilled from a peer is stored, not voted for).
    acceptances: FxHashMap<(Epoch, usize), Vec<(Seq, Time)>>,
    /// Ballots won: the epoch and when its sequencer took office.
    offices: Vec<(Epoch, Time)>,
    /// The sequencer fault being recovered from: when, and the epoch then.
    failover_from: Option<(Time, Epoch)>,
    /// Failover times: fault to first commit of a new epoch.
    failovers_us: Vec<u64>,
    /// With `trace`: each process's notices, with when and who.
    trace: Vec<String>,
    /// When set, the next sequencer to take office crashes within an fsync or two, for this
    /// long: a crash in the middle of recovery.
    crash_next_office: Option<u64>,
    checkpoints: CheckpointStats,
    /// Messages not committed yet over every sender, after each one's last step.
    in_flight: usize,
}

impl Simulation {
    /// Builds the group, the workload and the fault schedule of `cfg`.
    pub fn new(cfg: SimConfig) -> Simulation {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
        let core = Arc::new(core_config(&cfg));
        let network = Network::new(&cfg, &mut rng);
        let fsync_lo = rng.random_range(100..=400);
        let fsync_us = (fsync_lo, fsync_lo + rng.random_range(0..=400));
        let per_sender_rate = (cfg.rate_per_s / cfg.senders.max(1) as u64).max(1);
        let send_interval_us = (1_000_000 * BURST / per_sender_rate).max(1);
        let mut sim = Simulation {
            core,
            rng,
            now: Time(0),
            queue: BinaryHeap::new(),
            order: 0,
            procs: Vec::new(),
            by_pid: FxHashMap::default(),
            network,
            checker: Checker::new(),
            traffic: FxHashMap::default(),
            faults: FaultCounts::default(),
            fault_end: Time(0),
            fsync_us,
            send_interval_us,
            sent: 0,
            actions: Vec::new(),
            done: false,
            acceptances: FxHashMap::default(),
            offices: Vec::new(),
            failover_from: None,
            failovers_us: Vec::new(),
            trace: Vec::new(),
            crash_next_office: None,
            checkpoints: CheckpointStats::default(),
            in_flight: 0,
            cfg,
        };
        sim.build_group();
        sim.plan_faults();
        sim
    }

    /// Adds the servers first (their indexes come before every member's), then the members.
    fn build_group(&mut self) {
        let core = self.core.clone();
        for (rank, pid) in core.commit_servers.iter().enumerate() {
            let kind = if rank == 0 { ProcKind::Sequencer } else { ProcKind::Commit };
            let roles = Roles { commit: true, ..Roles::default() };
            self.add_proc(*pid, kind, roles, vec![Channel::Global, Channel::Commit]);
        }
        for pid in &core.data_servers {
            let roles = Roles { data: true, ..Roles::default() };
            self.add_proc(*pid, ProcKind::Data, roles, vec![Channel::Global, Channel::Data]);
        }
        for pid in &core.checkpoint_servers {
            let roles = Roles { checkpoint: true, client: Some(Incarnation(self.rng.next_u64())), ..Roles::default() };
            self.add_proc(*pid, ProcKind::Checkpoint, roles, vec![Channel::Global, Channel::Checkpoint]);
        }
        let senders = self.cfg.senders.min(self.cfg.members);
        let workload_us = 1_000_000 * self.cfg.messages as u64 / self.cfg.rate_per_s.max(1);
        for m in 0..self.cfg.members + self.cfg.late_joiners {
            let roles = Roles { client: Some(Incarnation(self.rng.next_u64())), ..Roles::default() };
            let idx = self.add_proc(Pid(1_000 + m as u64), ProcKind::Member, roles, vec![Channel::Global]);
            if m >= self.cfg.members {
                let at = Time(self.rng.random_range(workload_us * 3 / 4..=workload_us + 300_000));
                self.procs[idx].joined_at = Some(at);
                self.schedule(at, Event::Restart { proc: idx });
                continue;
            }
            if m < senders {
                let share = self.cfg.messages / senders + usize::from(m < self.cfg.messages % senders);
                self.procs[idx].to_send = share as u64;
                let first = Time(self.rng.random_range(0..=self.send_interval_us));
                self.schedule(first, Event::SendTick { proc: idx, life: 0 });
            }
        }
        for idx in 0..self.procs.len() {
            if self.procs[idx].joined_at.is_none() {
                self.start_proc(idx);
            }
        }
        self.schedule(Time(CHECK_EVERY_US), Event::Check);
        self.schedule(Time(COMPACT_EVERY_US), Event::Compact);
    }

    fn add_proc(&mut self, pid: Pid, kind: ProcKind, roles: Roles, subscriptions: Vec<Channel>) -> usize {
        let idx = self.procs.len();
        self.by_pid.insert(pid, idx);
        self.procs.push(SimProc {
            pid,
            kind,
            roles,
            state: None,
            life: 0,
            disk: Disk::default(),
            wake_at: None,
            to_send: 0,
            wiped: false,
            subscriptions,
            joined_at: None,
            live_target: None,
            in_flight: 0,
            catching_up: false,
        });
        idx
    }

    fn start_proc(&mut self, idx: usize) {
        let seed = self.rng.next_u64();
        let p = &mut self.procs[idx];
        if p.roles.client.is_some() && p.life > 0 {
            p.roles.client = Some(Incarnation(seed.rotate_left(17)));
        }
        // A wiped server comes back as lost until its marker is durable; after that its
        // records say so.
        p.wiped &= p.disk.durable.is_empty();
        let mut state = if p.wiped {
            Process::start_after_storage_loss(self.core.clone(), p.pid, p.roles, seed, self.now)
        } else {
            Process::start(self.core.clone(), p.pid, p.roles, seed, self.now, &p.disk.durable)
        };
        let machine: Box<dyn StateMachine + Send> = if p.roles.checkpoint && self.cfg.nondeterministic {
            Box::new(Unsteady { table: KvTable::new(), salt: seed })
        } else {
            Box::new(KvTable::new())
        };
        state.attach_state_machine(self.now, machine);
        p.state = Some(state);
        if p.life == 0 && p.joined_at.is_some() {
            p.live_target = Some((self.now, Seq(self.checker.committed())));
        }
        self.after_step(idx);
    }

    fn plan_faults(&mut self) {
        let workload_us = 1_000_000 * self.cfg.messages as u64 / self.cfg.rate_per_s.max(1);
        let start = Time(5_000);
        self.fault_end = start.plus_us(workload_us.max(300_000));
        let k = (self.cfg.k_commit, self.cfg.k_data);
        let limit = |n: usize, k: usize| (k - 1).min(n - k);
        let of_kind = |kind: ProcKind| -> Vec<usize> {
            self.procs.iter().enumerate().filter(|(_, p)| p.kind == kind).map(|(i, _)| i).collect()
        };
        let mut commit = of_kind(ProcKind::Commit);
        if self.cfg.crash_sequencer {
            commit.extend(of_kind(ProcKind::Sequencer));
        }
        let crashable = Crashable {
            groups: vec![
                (commit, limit(self.cfg.n_commit, k.0)),
                (of_kind(ProcKind::Data), limit(self.cfg.n_data, k.1)),
                (of_kind(ProcKind::Checkpoint), 1),
                (of_kind(ProcKind::Member), self.cfg.members / 2),
            ],
        };
        let members = of_kind(ProcKind::Member);
        let faults = plan(&self.cfg, self.procs.len(), &crashable, start, self.fault_end, &mut self.rng);
        for (at, fault) in faults {
            self.schedule(at, Event::Fault(fault));
        }
        if self.cfg.laggard && !members.is_empty() {
            let proc = members[self.rng.random_range(0..members.len())];
            let for_us = self.rng.random_range(workload_us / 3..=workload_us.max(3) * 2 / 3 + 1);
            self.schedule(start.plus_us(workload_us / 5), Event::Fault(Fault::CutOff { proc, for_us }));
        }
    }

    fn schedule(&mut self, at: Time, event: Event) {
        self.order += 1;
        self.queue.push(Reverse(Scheduled { at, order: self.order, event }));
    }

    /// Runs to quiescence (or the time limit), then checks every promise.
    pub fn run(mut self) -> Report {
        let wall = Instant::now();
        while let Some(Reverse(next)) = self.queue.pop() {
            self.now = next.at;
            self.dispatch(next.event);
            if self.done {
                break;
            }
        }
        self.report(wall.elapsed().as_millis() as u64)
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Packet { to, from, msgs } => self.receive(to, from, &msgs),
            Event::Multicast { from, channel, msgs } => self.fan_out(from, channel, msgs),
            Event::Wake { proc, life } => self.wake(proc, life),
            Event::Durable { proc, life, upto } => self.durable(proc, life, upto),
            Event::SendTick { proc, life } => self.send_tick(proc, life),
            Event::Fault(fault) => self.inject(fault),
            Event::Restart { proc } => self.start_proc(proc),
            Event::Heal => self.network.heal(),
            Event::Reconnect => self.network.cut_off(None),
            Event::Check => self.check(),
            Event::Compact => self.compact(),
        }
    }

    fn receive(&mut self, to: usize, from: usize, msgs: &[Message]) {
        let from_pid = self.procs[from].pid;
        let p = &mut self.procs[to];
        let Some(state) = p.state.as_mut() else { return };
        let t = self.traffic.entry(p.kind).or_default();
        t.datagrams_received += 1;
        t.msgs_received += msgs.len() as u64;
        for msg in msgs {
            state.handle(self.now, from_pid, msg);
        }
        self.after_step(to);
    }

    fn fan_out(&mut self, from: usize, channel: Channel, msgs: Datagram) {
        for to in 0..self.procs.len() {
            if !self.procs[to].subscriptions.contains(&channel) {
                continue;
            }
            match self.network.fate(from, to, 0, &mut self.rng) {
                Fate::Lost => {}
                Fate::Arrives { delay_us: 0, copies } => {
                    self.receive(to, from, &msgs);
                    if copies > 1 {
                        self.schedule(self.now.plus_us(1), Event::Packet { to, from, msgs: msgs.clone() });
                    }
                }
                Fate::Arrives { delay_us, copies } => {
                    for _ in 0..copies {
                        self.schedule(self.now.plus_us(delay_us), Event::Packet { to, from, msgs: msgs.clone() });
                    }
                }
            }
        }
    }

    fn wake(&mut self, proc: usize, life: u32) {
        let p = &mut self.procs[proc];
        if p.life != life || p.wake_at != Some(self.now) {
            return;
        }
        p.wake_at = None;
        if let Some(state) = p.state.as_mut() {
            state.handle_tick(self.now);
            self.after_step(proc);
        }
    }

    fn durable(&mut self, proc: usize, life: u32, upto: WriteId) {
        let p = &mut self.procs[proc];
        if p.life != life {
            return;
        }
        p.disk.sync(upto);
        p.disk.syncing = false;
        if let Some(state) = p.state.as_mut() {
            state.handle_durable(self.now, upto);
        }
        self.start_sync(proc);
        self.after_step(proc);
    }

    /// Starts a group commit covering every pending write, unless one is running.
    fn start_sync(&mut self, proc: usize) {
        let p = &mut self.procs[proc];
        let Some(&(upto, _)) = p.disk.pending.last() else { return };
        if p.disk.syncing {
            return;
        }
        p.disk.syncing = true;
        let life = p.life;
        let took = self.rng.random_range(self.fsync_us.0..=self.fsync_us.1);
        self.schedule(self.now.plus_us(took), Event::Durable { proc, life, upto });
    }

    fn send_tick(&mut self, proc: usize, life: u32) {
        let p = &self.procs[proc];
        if p.life != life || p.state.is_none() {
            return;
        }
        let sender = (proc, life);
        for _ in 0..BURST.min(self.procs[proc].to_send) {
            let payload = self.table_update();
            let digest = Digest::of(&payload);
            let state = self.procs[proc].state.as_mut().expect("checked above");
            let Ok(mid) = state.send(self.now, payload.clone()) else { break };
            self.checker.on_sent(mid, digest, sender);
            self.checker.keep_payload(mid, payload, self.cfg.checkpoint_every);
            self.procs[proc].to_send -= 1;
            self.sent += 1;
        }
        self.after_step(proc);
        if self.procs[proc].to_send > 0 {
            self.schedule(self.now.plus_us(self.send_interval_us), Event::SendTick { proc, life });
        }
    }

    /// A random update of the replicated table: mostly puts, some deletes and batches.
    fn table_update(&mut self) -> Bytes {
        let keys = self.cfg.keys.max(1);
        let key = |rng: &mut Xoshiro256PlusPlus| Bytes::from(format!("k{}", rng.random_range(0..keys)));
        let mut value = vec![0u8; self.cfg.payload_bytes];
        self.rng.fill_bytes(&mut value);
        let op = match self.rng.random_range(0..10) {
            0 => KvOp::Delete { key: key(&mut self.rng) },
            1 => KvOp::Batch(vec![
                KvOp::Put { key: key(&mut self.rng), value: Bytes::from(value) },
                KvOp::Delete { key: key(&mut self.rng) },
            ]),
            _ => KvOp::Put { key: key(&mut self.rng), value: Bytes::from(value) },
        };
        op.encode()
    }

    fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::CutOff { proc, for_us } => {
                if self.network.partitioned() {
                    return;
                }
                self.network.cut_off(Some(proc));
                self.faults.partitions += 1;
                self.schedule(self.now.plus_us(for_us), Event::Reconnect);
            }
            Fault::CrashSequencer { down_us } => {
                if let Some(proc) = self.sequencer_proc() {
                    self.note_sequencer_fault();
                    self.inject(Fault::Crash { proc, down_us });
                }
            }
            Fault::IsolateSequencer { mut minority, for_us } => {
                let Some(proc) = self.sequencer_proc() else { return };
                if self.network.partitioned() {
                    return;
                }
                // The minority holds at most `k_commit - 1` commit servers, the sequencer's
                // included: too few to accept anything, and the rest can still elect.
                minority[proc] = true;
                let mut room = self.cfg.k_commit.saturating_sub(2);
                for (i, p) in self.procs.iter().enumerate() {
                    if i != proc && matches!(p.kind, ProcKind::Commit | ProcKind::Sequencer) && minority[i] {
                        minority[i] = room > 0;
                        room = room.saturating_sub(1);
                    }
                }
                self.note_sequencer_fault();
                self.inject(Fault::Partition { sides: minority, for_us });
            }
            Fault::Crash { proc, down_us } => {
                let p = &mut self.procs[proc];
                if p.state.is_none() {
                    return;
                }
                p.state = None;
                p.life += 1;
                p.disk.lose_pending();
                p.wake_at = None;
                let commit = matches!(p.kind, ProcKind::Commit | ProcKind::Sequencer);
                if commit && self.cfg.wipes && self.may_wipe(proc) && self.rng.random_bool(0.25) {
                    // The durable index stays: what was durable before the loss counted when
                    // it was acknowledged (a lost disk is one failure of its kind).
                    let p = &mut self.procs[proc];
                    p.disk.durable.clear();
                    p.disk.retiring = None;
                    p.wiped = true;
                    self.faults.wipes += 1;
                }
                let p = &self.procs[proc];
                let (life, sending) = (p.life, p.to_send > 0);
                self.faults.crashes += 1;
                self.schedule(self.now.plus_us(down_us), Event::Restart { proc });
                if sending {
                    self.schedule(self.now.plus_us(down_us + 1), Event::SendTick { proc, life });
                }
            }
            Fault::Partition { sides, for_us } => {
                if self.network.partitioned() {
                    return;
                }
                self.network.partition(sides);
                self.faults.partitions += 1;
                self.schedule(self.now.plus_us(for_us), Event::Heal);
            }
        }
    }

    /// Carries out what a process's last step asked for.
    fn after_step(&mut self, idx: usize) {
        let Some(state) = self.procs[idx].state.as_mut() else { return };
        self.actions.extend(state.drain_actions());
        let life = (idx, self.procs[idx].life);
        let mut outgoing: Vec<(Dest, Vec<Message>)> = Vec::new();
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            match action {
                Action::Send { to, msg } => {
                    match &msg {
                        Message::Accepted(a) => {
                            let votes = self.acceptances.entry((a.epoch, idx)).or_default();
                            if votes.last().is_none_or(|(upto, _)| a.upto > *upto) {
                                votes.push((a.upto, self.now));
                            }
                        }
                        Message::Commit(c) => {
                            let assigned: Vec<Assigned> = c.entries.iter().map(Entry::assigned).collect();
                            for (seq, mid) in self.checker.on_commit(self.now, c.first, &assigned) {
                                self.check_durable(seq, mid);
                            }
                            self.on_announce(c.epoch, c.first, c.entries.len());
                        }
                        Message::Entries(e) => self.checker.on_entries_served(self.now, e.first, &e.slots),
                        Message::Heartbeat(hb) => {
                            self.checker.on_heartbeat(self.now, hb.committed, hb.chain);
                            let cp = &mut self.checkpoints;
                            cp.advertised = cp.advertised.max(hb.checkpoint.map(|c| c.seq.0));
                        }
                        _ => {}
                    }
                    match outgoing.iter_mut().find(|(d, _)| *d == to) {
                        Some((_, msgs)) => msgs.push(msg),
                        None => outgoing.push((to, vec![msg])),
                    }
                }
                Action::Persist { id, record } => {
                    self.procs[idx].disk.pending.push((id, record));
                }
                Action::Deliver { seq, mid, payload } => {
                    self.checker.on_deliver(self.now, life, seq, mid, Digest::of(&payload));
                }
                Action::Committed { mid, seq } => self.checker.on_outcome(self.now, mid, Outcome::Committed(seq)),
                Action::Expired { mid } => self.checker.on_outcome(self.now, mid, Outcome::Expired),
                Action::OutcomeUnknown { mid } => self.checker.on_outcome(self.now, mid, Outcome::Unknown),
                Action::Notice(notice) if self.cfg.trace => {
                    self.trace.push(format!("{} pid {}: {notice}", self.now, self.procs[idx].pid.0));
                }
                Action::Notice(_) => {}
                Action::Restored { seq, snapshot, .. } => self.on_restored(idx, seq, &snapshot),
                Action::CheckpointMismatch { server, .. } => {
                    self.checkpoints.mismatches += 1;
                    if server == self.procs[idx].pid {
                        self.checker.on_diverged(life);
                    }
                }
                // Nobody in the simulation pings: status is an operator's concern.
                Action::Pong { .. } => {}
            }
        }
        self.actions = actions;
        self.sample_held(idx);
        self.note_live(idx);
        self.note_catch_up(idx);
        self.note_office(idx);
        self.start_sync(idx);
        for (dest, msgs) in outgoing {
            self.transmit(idx, dest, msgs);
        }
        self.reschedule_wake(idx);
    }

    /// A member restored a checkpoint: check it against the log, and time a late joiner.
    fn on_restored(&mut self, idx: usize, seq: Seq, snapshot: &Bytes) {
        let life = (idx, self.procs[idx].life);
        self.checker.on_restored(self.now, life, seq, Digest::of(snapshot));
        if let Some(joined) = self.procs[idx].joined_at.take() {
            self.checkpoints.join_catch_up_us.push(self.now.since_us(joined));
        }
    }

    /// Times a late joiner until it delivered everything committed when it joined.
    fn note_live(&mut self, idx: usize) {
        let p = &self.procs[idx];
        let Some((joined, target)) = p.live_target else { return };
        if p.state.as_ref().and_then(Process::client).is_some_and(|c| c.delivered() >= target) {
            self.checkpoints.join_live_us.push(self.now.since_us(joined));
            self.procs[idx].live_target = None;
        }
    }

    /// Notes when a member starts fetching a checkpoint; with crashes on, now and then crashes
    /// a checkpoint server in the middle of the transfer.
    fn note_catch_up(&mut self, idx: usize) {
        let catching_up =
            self.procs[idx].state.as_ref().and_then(Process::client).is_some_and(sam_core::Client::is_catching_up);
        let started = catching_up && !self.procs[idx].catching_up;
        self.procs[idx].catching_up = catching_up;
        if !started || !self.cfg.crashes || !self.rng.random_bool(0.5) {
            return;
        }
        let servers: Vec<usize> = (0..self.procs.len())
            .filter(|&i| self.procs[i].kind == ProcKind::Checkpoint && self.procs[i].state.is_some())
            .collect();
        if servers.len() < self.cfg.n_checkpoint {
            return;
        }
        let proc = servers[self.rng.random_range(0..servers.len())];
        let at = self.now.plus_us(self.rng.random_range(0..=3_000));
        let down_us = self.rng.random_range(10_000..=300_000);
        self.schedule(at, Event::Fault(Fault::Crash { proc, down_us }));
    }

    /// Lets each disk drop what its process garbage-collected, and samples what servers hold.
    fn compact(&mut self) {
        for p in &mut self.procs {
            if let Some(state) = &p.state {
                p.disk.compact(state);
            }
        }
        self.schedule(self.now.plus_us(COMPACT_EVERY_US), Event::Compact);
    }

    /// Notes what a process holds after a step, for the bounded-resources check.
    fn sample_held(&mut self, idx: usize) {
        let proc = &mut self.procs[idx];
        if let Some(p) = proc.state.as_ref() {
            let cp = &mut self.checkpoints;
            let in_flight = p.client().map_or(0, sam_core::Client::in_flight);
            self.in_flight = self.in_flight + in_flight - proc.in_flight;
            proc.in_flight = in_flight;
            cp.peak_in_flight = cp.peak_in_flight.max(self.in_flight);
            let known = [p.data_server().map(DataServer::checkpoint), p.commit_server().map(CommitServer::checkpoint)];
            if let Some(known) = known.into_iter().flatten().next() {
                let unadvertised = self.checker.committed().saturating_sub(known.map_or(0, |c| c.seq.0));
                cp.peak_unadvertised = cp.peak_unadvertised.max(unadvertised);
            }
            if let Some(d) = p.data_server() {
                cp.peak_data_held = cp.peak_data_held.max(d.held());
            }
            if let Some(c) = p.commit_server() {
                cp.peak_commit_held = cp.peak_commit_held.max(c.held());
            }
            if let Some(c) = p.checkpoint_server() {
                let bytes = c.kept().map(|k| k.size).sum::<u64>();
                cp.peak_checkpoint_bytes = cp.peak_checkpoint_bytes.max(bytes);
                cp.peak_checkpoints_kept = cp.peak_checkpoints_kept.max(c.kept().count());
            }
        }
    }

    /// Whether a commit server may lose its storage now: only when every other commit server
    /// is up and voting. A wiped server votes again only after a ballot it takes no part in,
    /// so more than `k_commit - 1` of them would stop elections for good.
    fn may_wipe(&self, proc: usize) -> bool {
        self.cfg.k_commit >= 2
            && self
                .procs
                .iter()
                .enumerate()
                .filter(|(i, p)| *i != proc && matches!(p.kind, ProcKind::Commit | ProcKind::Sequencer))
                .all(|(_, p)| p.state.as_ref().and_then(Process::commit_server).is_some_and(|c| !c.is_rejoining()))
    }

    /// Counts the disks that hold a newly committed message durably.
    fn check_durable(&mut self, seq: Seq, mid: Mid) {
        let servers = &self.procs[..self.core.commit_servers.len() + self.core.data_servers.len()];
        let on_commit = servers.iter().filter(|p| p.disk.entries.get(&seq) == Some(&Assigned::Mid(mid))).count();
        let on_data = servers.iter().filter(|p| p.disk.mids.contains(&mid)).count();
        let k = (self.cfg.k_commit, self.cfg.k_data);
        self.checker.on_durable_copies(self.now, seq, mid, (on_commit, on_data), k);
    }

    fn transmit(&mut self, from: usize, dest: Dest, msgs: Vec<Message>) {
        let datagrams = self.datagrams(msgs);
        for msgs in datagrams {
            let t = self.traffic.entry(self.procs[from].kind).or_default();
            t.datagrams_sent += 1;
            t.msgs_sent += msgs.len() as u64;
            let msgs = Rc::new(msgs);
            match dest {
                Dest::Channel(channel) => {
                    let delay = self.network.multicast_delay(&mut self.rng);
                    self.order += 1;
                    let event = Event::Multicast { from, channel, msgs };
                    self.queue.push(Reverse(Scheduled { at: self.now.plus_us(delay), order: self.order, event }));
                }
                Dest::Pid(pid) => {
                    let Some(&to) = self.by_pid.get(&pid) else { continue };
                    let common = self.network.multicast_delay(&mut self.rng);
                    if let Fate::Arrives { delay_us, copies } = self.network.fate(from, to, common, &mut self.rng) {
                        for _ in 0..copies {
                            self.schedule(self.now.plus_us(delay_us), Event::Packet { to, from, msgs: msgs.clone() });
                        }
                    }
                }
            }
        }
    }

    /// Splits messages into datagrams; with `wire` on, passes each through the codec.
    fn datagrams(&self, msgs: Vec<Message>) -> Vec<Vec<Message>> {
        if !self.cfg.wire {
            let mut chunks = Vec::new();
            let mut msgs = msgs.into_iter().peekable();
            while msgs.peek().is_some() {
                chunks.push(msgs.by_ref().take(MAX_MSGS_PER_DATAGRAM).collect());
            }
            return chunks;
        }
        let mut packer = FramePacker::new(WIRE_DATAGRAM_BYTES);
        let mut frames = Vec::new();
        for msg in &msgs {
            frames.extend(packer.push(msg).expect("simulated messages fit a datagram"));
        }
        frames.extend(packer.finish());
        let decoded: Vec<Vec<Message>> =
            frames.iter().map(|f| decode_frame(f).expect("a frame the codec wrote decodes")).collect();
        debug_assert_eq!(decoded.iter().flatten().cloned().collect::<Vec<_>>(), msgs);
        decoded
    }

    fn reschedule_wake(&mut self, idx: usize) {
        let p = &mut self.procs[idx];
        let Some(at) = p.state.as_ref().and_then(Process::poll_timeout) else { return };
        let at = at.max(self.now.plus_us(1));
        if p.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        p.wake_at = Some(at);
        let life = p.life;
        self.schedule(at, Event::Wake { proc: idx, life });
    }

    fn check(&mut self) {
        if self.now >= self.fault_end && self.quiescent() {
            self.done = true;
            return;
        }
        if self.now.0 >= self.cfg.max_time_us {
            let why = self.lag_summary();
            self.checker.liveness(self.now, why);
            self.done = true;
            return;
        }
        self.schedule(self.now.plus_us(CHECK_EVERY_US), Event::Check);
    }

    /// The live sequencer of the highest epoch.
    fn sequencer(&self) -> Option<&sam_core::Sequencer> {
        self.procs.iter().filter_map(|p| p.state.as_ref()?.sequencer()).max_by_key(|s| s.epoch())
    }

    /// The process running the live sequencer of the highest epoch.
    fn sequencer_proc(&self) -> Option<usize> {
        let epoch = self.sequencer()?.epoch();
        self.procs
            .iter()
            .position(|p| p.state.as_ref().and_then(Process::sequencer).is_some_and(|s| s.epoch() == epoch))
    }

    /// Starts a failover measurement, unless one is running (a fault during recovery counts
    /// from the first fault); now and then arranges for the successor to crash as it takes
    /// office.
    fn note_sequencer_fault(&mut self) {
        if self.rng.random_bool(0.3) {
            self.crash_next_office = Some(self.rng.random_range(1_000..=300_000));
        }
        if self.failover_from.is_none() {
            if let Some(epoch) = self.sequencer().map(Sequencer::epoch) {
                self.failover_from = Some((self.now, epoch));
            }
        }
    }

    /// Follows announcements: the first commit of a newer epoch ends a failover, and a
    /// deposed sequencer's numbers must not have gathered `k_commit` acceptances after the
    /// promises that deposed it (fencing).
    fn on_announce(&mut self, epoch: Epoch, first: Seq, n: usize) {
        if let Some((since, old)) = self.failover_from {
            if epoch > old {
                self.failovers_us.push(self.now.since_us(since));
                self.failover_from = None;
            }
        }
        let Some(&(_, deposed_at)) = self.offices.iter().filter(|(e, _)| *e > epoch).min_by_key(|(_, t)| *t) else {
            return;
        };
        for seq in (0..n as u64).map(|i| first.plus(i)) {
            let voted_at = |votes: &Vec<(Seq, Time)>| votes.iter().find(|(upto, _)| *upto >= seq).map(|(_, at)| *at);
            let late = (0..self.procs.len())
                .filter_map(|i| self.acceptances.get(&(epoch, i)).and_then(voted_at))
                .filter(|at| *at > deposed_at)
                .count();
            if late >= self.cfg.k_commit {
                let detail = format!("epoch {epoch} committed {seq} with {late} acceptances after it was deposed");
                self.checker.fencing(self.now, detail);
            }
        }
    }

    /// Records a sequencer that just took office.
    fn note_office(&mut self, idx: usize) {
        let Some(epoch) = self.procs[idx].state.as_ref().and_then(Process::sequencer).map(Sequencer::epoch) else {
            return;
        };
        if !self.offices.iter().any(|(e, _)| *e == epoch) {
            self.offices.push((epoch, self.now));
            if let Some(down_us) = self.crash_next_office.take() {
                let at = self.now.plus_us(self.rng.random_range(0..=2_000));
                self.schedule(at, Event::Fault(Fault::Crash { proc: idx, down_us }));
            }
        }
    }

    fn quiescent(&self) -> bool {
        let Some(seq) = self.sequencer() else { return false };
        let sequencers = self.procs.iter().filter(|p| p.state.as_ref().and_then(Process::sequencer).is_some()).count();
        if sequencers != 1 {
            return false;
        }
        let settled = seq.max_assigned() == seq.committed()
            && self
                .procs
                .iter()
                .filter_map(|p| p.state.as_ref()?.commit_server())
                .all(|c| c.committed() == seq.committed());
        let all_up = self.procs.iter().all(|p| p.state.is_some()) && !self.network.partitioned();
        let members_done = self.procs.iter().all(|p| {
            p.to_send == 0
                && p.state
                    .as_ref()
                    .and_then(Process::client)
                    .is_none_or(|c| c.in_flight() == 0 && c.delivered() == seq.committed())
        });
        settled && all_up && members_done
    }

    fn lag_summary(&self) -> String {
        let committed = self.sequencer().map(|s| (s.committed(), s.max_assigned()));
        let lagging: Vec<String> = self
            .procs
            .iter()
            .filter_map(|p| {
                let c = p.state.as_ref()?.client()?;
                let lags = c.delivered() < c.known_committed() || c.in_flight() > 0 || p.to_send > 0;
                lags.then(|| {
                    format!(
                        "{}: delivered {} known {} in flight {} to send {} ({}; wake {:?})",
                        p.pid.0,
                        c.delivered(),
                        c.known_committed(),
                        c.in_flight(),
                        p.to_send,
                        c.stalled_on(),
                        p.wake_at
                    )
                })
                .or_else(|| (c.delivered() < committed?.0).then(|| format!("{}: delivered {}", p.pid.0, c.delivered())))
            })
            .take(8)
            .collect();
        let servers: Vec<String> = self
            .procs
            .iter()
            .filter_map(|p| {
                let c = p.state.as_ref()?.commit_server()?;
                Some(format!(
                    "{}: committed {}{}",
                    p.pid.0,
                    c.committed(),
                    if c.is_rejoining() { " (rejoining)" } else { "" }
                ))
            })
            .collect();
        let sequencers: Vec<String> = self
            .procs
            .iter()
            .filter_map(|p| Some(format!("{}@{}", p.pid.0, p.state.as_ref()?.sequencer()?.epoch())))
            .collect();
        let promises: Vec<String> = self
            .procs
            .iter()
            .filter_map(|p| Some(format!("{}:{}", p.pid.0, p.state.as_ref()?.commit_server()?.promised())))
            .collect();
        let down: Vec<String> = self.procs.iter().filter(|p| p.state.is_none()).map(|p| p.pid.0.to_string()).collect();
        format!(
            "not quiescent (down: {}; partitioned: {}): sequencers {} (promises {}); sequencer (committed, assigned) {committed:?}; commit servers {}; members {}",
            down.join(" "),
            self.network.partitioned(),
            sequencers.join(" "),
            promises.join(" "),
            servers.join(", "),
            lagging.join("; ")
        )
    }

    fn report(mut self, wall_ms: u64) -> Report {
        if self.done && self.checker.violations().is_empty() {
            self.final_checks();
        }
        let committed = self.checker.committed();
        self.checkpoints.unknown = self.checker.unknown();
        for c in self.procs.iter().filter_map(|p| p.state.as_ref()?.client()) {
            let (blocks, catch_ups) = c.caught_up();
            self.checkpoints.blocks_fetched += blocks;
            self.checkpoints.catch_ups += catch_ups;
        }
        let rates = ProcKind::ALL
            .iter()
            .map(|&kind| {
                let n = self.procs.iter().filter(|p| p.kind == kind).count();
                let t = self.traffic.get(&kind).copied().unwrap_or_default();
                let per = |x: u64| if committed == 0 || n == 0 { 0.0 } else { x as f64 / committed as f64 / n as f64 };
                Rate { kind, processes: n, sent_per_msg: per(t.msgs_sent), received_per_msg: per(t.msgs_received) }
            })
            .collect();
        Report {
            sent: self.sent,
            committed,
            deliveries: self.checker.deliveries(),
            expired: self.checker.expired(),
            rates,
            faults: self.faults,
            sim_time_us: self.now.0,
            wall_ms,
            violations: self.checker.violations().to_vec(),
            failovers_us: self.failovers_us,
            trace: self.trace,
            checkpoints: self.checkpoints,
            config: self.cfg,
        }
    }

    fn final_checks(&mut self) {
        let live: Vec<Life> = self
            .procs
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.kind, ProcKind::Member | ProcKind::Checkpoint))
            .map(|(i, p)| (i, p.life))
            .collect();
        self.checker.check_atomicity(self.now, &live);
        let tables: Vec<(Life, Seq, Digest)> = self
            .procs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let c = p.state.as_ref()?.client()?;
                Some(((i, p.life), c.delivered(), c.state_machine()?.digest()))
            })
            .collect();
        self.checker.check_tables(self.now, &tables);
        self.check_bounds();
        let live_senders: FxHashSet<Life> = live.into_iter().collect();
        self.checker.check_validity(self.now, &live_senders);
    }
}

impl Simulation {
    /// Bounded resources (DESIGN section 5), in runs of at least 20 checkpoint intervals
    /// without faults that pause garbage collection. Let `lag` be the most numbers ever
    /// committed above the checkpoint a data or commit server knew advertised (one interval
    /// plus what is committed while a checkpoint is written, reported, advertised and heard of
    /// in a heartbeat). A data server holds the messages committed above the checkpoint before
    /// the one it knows, at most `2 × lag`, plus those not committed yet. A commit server holds
    /// the committed entries above `min(checkpoint, committed - max_lifetime)`, recomputed at
    /// every heartbeat interval: at most `max(lag, max_lifetime)` plus one interval's commits
    /// (at most `rate × heartbeat interval`), plus the uncommitted ones. Every message not
    /// committed yet is in some sender's window or was reported expired, so both stay below
    /// `2 × lag + max_lifetime + rate × heartbeat interval + in flight + expired`, where `in
    /// flight` is the most messages the senders had uncommitted at once. Everything is sampled
    /// after every step. That `lag` itself stays near one interval is what the long run
    /// (`sam sim --messages 1000000 --checkpoint-every 50000`) reports.
    fn check_bounds(&mut self) {
        let cfg = &self.cfg;
        let faulty = cfg.crashes || cfg.partitions || cfg.crash_sequencer || cfg.laggard || cfg.nondeterministic;
        if faulty || cfg.n_checkpoint < cfg.k_checkpoint || (cfg.messages as u64) < 20 * cfg.checkpoint_every {
            return;
        }
        let (in_flight, lag) = (self.checkpoints.peak_in_flight as u64, self.checkpoints.peak_unadvertised);
        let per_heartbeat = cfg.rate_per_s * self.core.heartbeat_interval_us / 1_000_000;
        let bound = 2 * lag + cfg.max_lifetime + per_heartbeat + in_flight + self.checker.expired();
        let (data, commit) = (self.checkpoints.peak_data_held, self.checkpoints.peak_commit_held);
        self.checker.check_bound(self.now, "a data server", data, bound);
        self.checker.check_bound(self.now, "a commit server", commit, bound);
    }
}

/// The least time between two heartbeats that vouch for commits, with signed frames (the
/// node's default).
const SIGNED_HEARTBEAT_US: u64 = 1_000;

/// The core configuration of a simulated group.
fn core_config(cfg: &SimConfig) -> Config {
    let commit = (1..=cfg.n_commit as u64).map(Pid).collect();
    let data = (101..=100 + cfg.n_data as u64).map(Pid).collect();
    let checkpoint = (201..=200 + cfg.n_checkpoint as u64).map(Pid).collect();
    #[allow(unused_mut)]
    let mut core = Config::new(commit, data, checkpoint);
    core.k_checkpoint = cfg.k_checkpoint.min(cfg.n_checkpoint).max(1);
    core.checkpoint_every = cfg.checkpoint_every;
    core.catch_up_after = 2 * cfg.checkpoint_every;
    core.signed_heartbeat_us = cfg.signed.then_some(SIGNED_HEARTBEAT_US);
    core.k_commit = cfg.k_commit;
    core.k_data = cfg.k_data;
    core.max_lifetime = cfg.max_lifetime;
    core.sender_window = cfg.sender_window;
    core.sequencer_window = cfg.sequencer_window;
    core.member_buffer_bytes = cfg.member_buffer_bytes;
    #[cfg(feature = "mutations")]
    {
        core.mutation = cfg.mutation;
    }
    core
}

/// Runs one simulation.
pub fn run(cfg: SimConfig) -> Report {
    Simulation::new(cfg).run()
}

/// Runs the configurations `make(seed)` of every seed on `jobs` threads, calling `done` after
/// each run; returns the reports in seed order.
pub fn run_many(
    seeds: std::ops::Range<u64>,
    jobs: usize,
    make: impl Fn(u64) -> SimConfig + Sync,
    done: impl Fn(&Report) + Sync,
) -> Vec<Report> {
    let next = std::sync::atomic::AtomicU64::new(seeds.start);
    let reports = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed >= seeds.end {
                    break;
                }
                let report = run(make(seed));
                done(&report);
                reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(report);
            });
        }
    });
    let mut reports = reports.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    reports.sort_by_key(|r| r.config.seed);
    reports
}
