//! A node: one protocol [`Process`] driven by real time, a real network and a real disk.
//!
//! The node is the host of `sam_core`'s driving loop (see its crate doc): it feeds the process
//! what arrives (datagrams, timer expiries, durable writes, the application's sends), then
//! carries out the actions: messages go to the network driver, records to the log, deliveries
//! and outcomes to the application. After each batch of inputs it flushes the log (one write,
//! an fsync pipelined behind the previous one) and then the network, so a burst of inputs
//! costs one fsync and a few datagrams. Acknowledgements that need durability leave only when
//! the log reports their record durable: the core holds them back until then.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sam_core::{
    decode_record, encode_record, Action, Config, DeliverFrom, Mid, Pid, Process, Record, Roles, SendError, Seq,
    StateMachine, Time, WriteId,
};
use sam_net::{Net, NetError, NetPlan};
use sam_store::{Durability, Log, LogOptions, OnDurable, Position, StoreError, TornTail};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::alarms::{DropReport, DROPS_REPORT_EVERY};
use crate::backlog::Backlog;
use crate::client::{Client, SendFailure};
use crate::compaction::{self, Compaction};
use crate::metrics::{FsyncTimes, NodeMetrics};

/// How often writes a full storage refused are tried again.
const STALLED_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// Inputs handled per turn of the loop before the node writes and sends what they caused.
pub const INPUTS_PER_TURN: usize = 256;
/// Sends taken from the application and waiting for room in the window; beyond it the
/// application waits.
pub const MAX_WAITING_SENDS: usize = 1_024;
/// Events handed to the application and not taken yet (each turn's events travel as one
/// batch) beyond which it is behind. Then a member-only node stops reading the network (so
/// deliveries wait in the socket buffer and are fetched again if dropped) but goes on
/// serving the application's requests. Two kinds of node go on reading, and count the
/// deliveries their application misses in an [`Event::Lagged`]: one with server roles, which
/// the group waits for, and one whose application waits on its sends (for room in the window
/// or for a fate), which only the network can end: otherwise an application blocked in a send
/// and a node waiting for it to read would wait for each other forever.
pub const EVENTS_HELD: usize = 65_536;

/// How a node's storage starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageStart {
    /// A new group member: empty storage is expected.
    Fresh,
    /// A restart: the storage holds what this server wrote before. If it is empty, the
    /// storage was lost, and a commit server rejoins by the rule of DESIGN section 6.
    Recover,
}

/// Everything a node needs to run.
pub struct NodeSpec {
    /// The protocol configuration (the same on every process of the group).
    pub cfg: Arc<Config>,
    /// This process's id.
    pub pid: Pid,
    /// The roles it holds.
    pub roles: Roles,
    /// Its sockets.
    pub net: NetPlan,
    /// The directory of its log; `None` for a process that stores nothing (a member that is
    /// not a server).
    pub dir: Option<PathBuf>,
    /// When writes count as durable.
    pub durability: Durability,
    /// Whether the storage is expected to be new.
    pub start: StorageStart,
    /// The replicated state machine its member runs, if any.
    pub state_machine: Option<Box<dyn StateMachine + Send>>,
    /// Seeds the process's randomness (NACK jitter, server rotation).
    pub seed: u64,
    /// The size at which its log starts a new segment (the unit of compaction).
    pub segment_bytes: u64,
    /// Where its member's deliveries start.
    pub deliver_from: DeliverFrom,
    /// Whether the application receives [`Event::Deliver`] and [`Event::Restored`]. An
    /// application that only sends turns them off; one that keeps them on must read its
    /// events (see [`EVENTS_HELD`]).
    pub deliveries: bool,
}

/// What the node tells the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Number `seq` is delivered: message `mid` with its payload.
    Deliver {
        /// The number.
        seq: Seq,
        /// The message's id.
        mid: Mid,
        /// What its sender sent.
        payload: Bytes,
    },
    /// A message this node sent is committed at `seq`.
    Committed {
        /// The message's id.
        mid: Mid,
        /// Its number.
        seq: Seq,
    },
    /// A message this node sent can no longer be committed.
    Expired {
        /// The message's id.
        mid: Mid,
    },
    /// The fate of a message this node sent lies in numbers it skipped by catching up.
    OutcomeUnknown {
        /// The message's id.
        mid: Mid,
    },
    /// The member's state was replaced by the checkpoint at `seq`.
    Restored {
        /// The checkpoint's number.
        seq: Seq,
    },
    /// A process answered [`Node::ping`].
    Pong {
        /// Who answered.
        from: Pid,
        /// The ping's nonce.
        nonce: u64,
        /// How far it is (see `sam_core::message::Pong`).
        committed: Seq,
        /// What it raises for an operator to see (its storage full, say).
        alarms: sam_core::Alarms,
    },
    /// The storage filled up (`full`): writes wait, and so does everything acknowledged only
    /// once durable; or it has room again (`!full`) and the waiting writes went through.
    StorageFull {
        /// Whether it is full now.
        full: bool,
    },
    /// A checkpoint server's snapshot disagreed with another's: an operator must look.
    CheckpointMismatch {
        /// The checkpoint's number.
        seq: Seq,
        /// The server whose digest disagrees.
        server: Pid,
    },
    /// The application of a node with server roles fell [`EVENTS_HELD`] events behind: the
    /// deliveries (and any checkpoint restored) from number `first` through `last` were not
    /// given to it.
    Lagged {
        /// The first number missed.
        first: Seq,
        /// The last number missed.
        last: Seq,
    },
}

/// Why a node stopped or could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The network could not be set up.
    #[error("network: {0}")]
    Net(#[from] NetError),
    /// The log failed (a disk error, or damage recovery will not guess about).
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// A record in the log does not decode: the log's checksums passed, so this is a bug or
    /// a log written by another version.
    #[error("storage: record {position} does not decode: {reason}")]
    Record {
        /// The record's position.
        position: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A role asked to store something on a node configured without storage.
    #[error("this node has no storage directory, but its roles store records")]
    NoStorage,
    /// The application asked a node without a member to send.
    #[error("this node has no member role to send with")]
    NotAMember,
    /// The node stopped before answering.
    #[error("the node has stopped")]
    Stopped,
    /// A payload is longer than the group's message limit (`network.max_message_bytes`).
    #[error("a payload of {len} bytes is longer than the limit of {max} bytes")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Where a member stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The sequencer it follows, once it heard a heartbeat.
    pub sequencer: Option<Pid>,
    /// Every number up to this one is delivered (or skipped under a checkpoint).
    pub delivered: Seq,
    /// The highest number it heard to be committed.
    pub committed: Seq,
    /// The highest epoch it heard of.
    pub epoch: sam_core::Epoch,
    /// The advertised checkpoint it heard of.
    pub checkpoint: Option<sam_core::CheckpointInfo>,
}

/// An application's request.
pub(crate) enum Command {
    Send(SendBatch),
    Progress(oneshot::Sender<Option<Progress>>),
    Snapshot(oneshot::Sender<Option<Bytes>>),
    Ping { to: Pid, nonce: u64 },
    Stop,
}

/// Payloads the application handed over at once, and where their mids go once all of
/// them are sent.
pub(crate) struct SendBatch {
    pub(crate) payloads: VecDeque<Bytes>,
    pub(crate) mids: Vec<Mid>,
    pub(crate) reply: Reply,
}

/// Who is told about a batch of sends.
pub(crate) enum Reply {
    /// The mids, once every payload is sent; their fates come as events.
    Mids(oneshot::Sender<Result<Vec<Mid>, NodeError>>),
    /// The fate of the one payload (a [`Client::send`]); no event reports it.
    Fate(oneshot::Sender<Result<Seq, SendFailure>>),
}

impl Reply {
    /// Tells the asker that none of the batch was sent.
    fn refuse(self, why: NodeError) {
        // An asker that gave up waiting is not an error.
        match self {
            Reply::Mids(reply) => drop(reply.send(Err(why))),
            Reply::Fate(reply) => drop(reply.send(Err(SendFailure::Node(why)))),
        }
    }
}

/// A handle on a running node.
pub struct Node {
    commands: mpsc::Sender<Command>,
    events: mpsc::UnboundedReceiver<Vec<Event>>,
    backlog: Arc<Backlog>,
    /// Events of a batch taken from the node and not handed out yet.
    ready: VecDeque<Event>,
    task: tokio::task::JoinHandle<Result<(), NodeError>>,
    local: std::net::SocketAddrV4,
    recovered: usize,
    torn_tail: Option<TornTail>,
    metrics: NodeMetrics,
}

impl Node {
    /// Opens the node's log and sockets and starts it. Must run inside a tokio runtime.
    pub async fn start(spec: NodeSpec) -> Result<Node, NodeError> {
        let (durable_tx, durable_rx) = mpsc::unbounded_channel();
        let on_durable: OnDurable = Arc::new(move |position: Position| {
            let _ = durable_tx.send(position);
        });
        let fsyncs = FsyncTimes::new();
        let timed = fsyncs.clone();
        let options = LogOptions {
            durability: spec.durability,
            on_durable: Some(on_durable),
            on_fsync: Some(Arc::new(move |took| timed.observe(took))),
            segment_size_bytes: spec.segment_bytes,
            ..LogOptions::default()
        };
        let (log, records, torn_tail) = match spec.dir.clone() {
            Some(dir) => {
                let (log, records, torn) = open_log(dir, options).await?;
                (Some(log), records, torn)
            }
            None => (None, Vec::new(), None),
        };
        let recovered = records.len();
        // The process seals as the pid it runs as.
        let net = Net::bind(&sam_net::NetPlan { pid: spec.pid, ..spec.net.clone() })?;
        let local = net.local_addr();
        let metrics = NodeMetrics::new(net.shared_stats(), spec.roles, fsyncs);
        let clock = Instant::now();
        let now = Time(0);
        let mut process = if records.is_empty() && spec.start == StorageStart::Recover {
            Process::start_after_storage_loss(spec.cfg.clone(), spec.pid, spec.roles, spec.seed, now)
        } else {
            Process::start(spec.cfg.clone(), spec.pid, spec.roles, spec.seed, now, &records)
        };
        process.deliver_from(spec.deliver_from);
        let serves = spec.roles.commit || spec.roles.data || spec.roles.checkpoint;
        if let Some(machine) = spec.state_machine {
            process.attach_state_machine(now, machine);
        }
        let (commands, command_rx) = mpsc::channel(1024);
        // Unbounded in batches: the backlog bounds it in events.
        let (event_tx, events) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::default());
        let host = Host {
            process,
            net,
            log,
            clock,
            writes: VecDeque::new(),
            stalled: VecDeque::new(),
            retry_stalled_at: std::time::Instant::now(),
            events: event_tx,
            backlog: backlog.clone(),
            lagged: None,
            turn_events: Vec::new(),
            waiting: VecDeque::new(),
            waiting_payloads: 0,
            fates: HashMap::new(),
            max_message: spec.net.max_message_bytes,
            actions: Vec::new(),
            encoded: Vec::new(),
            compaction: Compaction::new(std::time::Instant::now()),
            segments: mpsc::channel(1),
            deliveries: spec.deliveries,
            serves,
            reads_behind: serves,
            alarms: crate::alarms::AlarmWatch::default(),
            drops: DropReport::default(),
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(host.run(command_rx, durable_rx));
        Ok(Node { commands, events, backlog, ready: VecDeque::new(), task, local, recovered, torn_tail, metrics })
    }

    /// How many records the node recovered from its log at start.
    pub fn recovered(&self) -> usize {
        self.recovered
    }

    /// The torn tail a crash left at the end of the log and recovery dropped, if any: bytes of
    /// a write that was never reported durable (DESIGN section 12, "Storage": reported).
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// The address the node sends from.
    pub fn local_addr(&self) -> std::net::SocketAddrV4 {
        self.local
    }

    /// The node's metrics, to encode or serve (see [`crate::metrics::MetricsServer`]).
    pub fn metrics(&self) -> NodeMetrics {
        self.metrics.clone()
    }

    /// Sends `payload` to the group; returns its mid at once (its fate comes as an [`Event`]).
    pub async fn send(&self, payload: Bytes) -> Result<Mid, NodeError> {
        let mids = self.send_batch([payload]).await?;
        mids.first().copied().ok_or(NodeError::Stopped)
    }

    /// Sends every payload, in order, as one request (so the node packs them into few
    /// datagrams); returns their mids once all are sent, which waits while the window is full.
    /// A payload over the group's limit refuses the whole batch.
    pub async fn send_batch(&self, payloads: impl IntoIterator<Item = Bytes>) -> Result<Vec<Mid>, NodeError> {
        let payloads: VecDeque<Bytes> = payloads.into_iter().collect();
        let mids = Vec::with_capacity(payloads.len());
        self.ask(|reply| Command::Send(SendBatch { payloads, mids, reply: Reply::Mids(reply) })).await?
    }

    /// A handle that sends through this node and waits for each message's fate; it may be
    /// cloned and used from many tasks at once.
    pub fn client(&self) -> Client {
        Client::new(self.commands.clone())
    }

    /// Where the node's member stands (`None` without a member role).
    pub async fn progress(&self) -> Result<Option<Progress>, NodeError> {
        self.ask(Command::Progress).await
    }

    /// A snapshot of the member's state machine, reflecting every number it delivered
    /// (`None` without one).
    pub async fn snapshot(&self) -> Result<Option<Bytes>, NodeError> {
        self.ask(Command::Snapshot).await
    }

    /// Asks process `to` how far it is; its answer comes as [`Event::Pong`].
    pub async fn ping(&self, to: Pid, nonce: u64) -> Result<(), NodeError> {
        self.commands.send(Command::Ping { to, nonce }).await.map_err(|_| NodeError::Stopped)
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| NodeError::Stopped)?;
        answer.await.map_err(|_| NodeError::Stopped)
    }

    /// The next event (`None` once the node stopped).
    pub async fn next_event(&mut self) -> Option<Event> {
        if self.ready.is_empty() {
            self.take_batch().await?;
        }
        self.ready.pop_front()
    }

    /// Waits for at least one event, then appends up to `limit` waiting events to `into`;
    /// returns how many (0 once the node stopped). Cheaper per event than
    /// [`Node::next_event`] for an application that keeps up with a busy group.
    pub async fn next_events(&mut self, into: &mut Vec<Event>, limit: usize) -> usize {
        while self.ready.is_empty() {
            if self.take_batch().await.is_none() {
                return 0;
            }
        }
        let n = limit.min(self.ready.len());
        into.extend(self.ready.drain(..n));
        n
    }

    /// Moves the next batch of events into `ready`; `None` once the node stopped.
    async fn take_batch(&mut self) -> Option<()> {
        let batch = self.events.recv().await?;
        self.backlog.taken(batch.len());
        self.ready.extend(batch);
        Some(())
    }

    /// Stops the node after it wrote and sent what it had; returns why it stopped if it failed.
    pub async fn stop(self) -> Result<(), NodeError> {
        let _ = self.commands.send(Command::Stop).await;
        self.task.await.map_err(|_| NodeError::Stopped)?
    }
}

/// The loop's state: the process and what it drives.
struct Host {
    process: Process,
    net: Net,
    log: Option<Log>,
    clock: Instant,
    /// Writes appended and not durable yet: their ids and the position after each.
    writes: VecDeque<(WriteId, Position)>,
    /// Writes the full storage could not take yet, oldest first, and when to try again.
    stalled: VecDeque<(WriteId, Vec<u8>)>,
    retry_stalled_at: std::time::Instant,
    events: mpsc::UnboundedSender<Vec<Event>>,
    /// How far behind the application is.
    backlog: Arc<Backlog>,
    /// The numbers a node that serves did not give its application while it was behind:
    /// the first and the last.
    lagged: Option<(Seq, Seq)>,
    /// The events of the current turn, sent to the application as one batch.
    turn_events: Vec<Event>,
    /// Sends waiting for room in the window, oldest first.
    waiting: VecDeque<SendBatch>,
    /// The payloads in `waiting`.
    waiting_payloads: usize,
    /// The longest payload the group carries.
    max_message: usize,
    /// Sends whose fate a [`Client`] waits for.
    fates: HashMap<Mid, oneshot::Sender<Result<Seq, SendFailure>>>,
    /// The actions of the current turn (a buffer kept across turns).
    actions: Vec<Action>,
    /// A buffer records are encoded into.
    encoded: Vec<u8>,
    /// Where the compaction of the log stands.
    compaction: Compaction,
    /// Segments read for compaction, from the task that read them.
    segments: (mpsc::Sender<compaction::Read>, mpsc::Receiver<compaction::Read>),
    /// Whether the application takes deliveries.
    deliveries: bool,
    /// Whether the node holds a server role: then it never stops reading the network.
    serves: bool,
    /// Whether this turn reads the network even if the application is behind (see
    /// [`EVENTS_HELD`]): then deliveries it cannot hand over are reported as missed.
    reads_behind: bool,
    /// The alarms its network counters raise.
    alarms: crate::alarms::AlarmWatch,
    /// What it dropped, summed up in the log.
    drops: DropReport,
    metrics: NodeMetrics,
}

impl Host {
    fn now(&self) -> Time {
        Time(self.clock.elapsed().as_micros() as u64)
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut durable: mpsc::UnboundedReceiver<Position>,
    ) -> Result<(), NodeError> {
        // One timer, moved only when the process's deadline moves: a timer set afresh each
        // turn would cost the busy loop a timer-wheel entry per turn.
        let mut sleep = Box::pin(tokio::time::sleep_until(far_future()));
        let mut sleep_set_for = None;
        loop {
            let now = std::time::Instant::now();
            self.watch_alarms(now);
            let wake = self.process.poll_timeout().map(|t| self.clock + std::time::Duration::from_micros(t.0));
            if wake != sleep_set_for {
                sleep.as_mut().reset(wake.map_or_else(far_future, tokio::time::Instant::from_std));
                sleep_set_for = wake;
            }
            // An application that dropped its handle takes nothing: nothing to wait for.
            let behind = self.backlog.full() && !self.events.is_closed();
            // Decided before the turn: the sends it reads for may be gone after it.
            self.reads_behind = self.reads_when_behind();
            tokio::select! {
                first = self.net.recv(), if !behind || self.reads_behind => {
                    self.take(first);
                    let mut inputs = 1;
                    while inputs < INPUTS_PER_TURN {
                        let Some(more) = self.net.try_recv() else { break };
                        self.take(more);
                        inputs += 1;
                    }
                    self.metrics.observe_turn(inputs);
                }
                () = &mut sleep => {
                    // Set again next turn, even to the same deadline.
                    sleep_set_for = None;
                    let now = self.now();
                    self.process.handle_tick(now);
                }
                () = tokio::time::sleep_until(self.retry_stalled_at.into()), if !self.stalled.is_empty() => {}
                Some(position) = durable.recv() => self.made_durable(position)?,
                Some(read) = self.segments.1.recv() => self.compact(read?)?,
                () = self.backlog.room(), if behind => {}
                command = commands.recv(), if self.waiting_payloads < MAX_WAITING_SENDS => {
                    let Some(mut command) = command else { return self.stop().await };
                    for taken in 1.. {
                        if !self.command(command) {
                            return self.stop().await;
                        }
                        if taken == INPUTS_PER_TURN || self.waiting_payloads >= MAX_WAITING_SENDS {
                            break;
                        }
                        let Ok(more) = commands.try_recv() else { break };
                        command = more;
                    }
                }
            }
            self.send_waiting();
            self.carry_out().await?;
            self.look_at_oldest_segment();
        }
    }

    /// Takes one of the application's requests; `false` for a stop.
    fn command(&mut self, command: Command) -> bool {
        match command {
            Command::Send(batch) => match batch.payloads.iter().map(Bytes::len).max() {
                Some(len) if len > self.max_message => {
                    batch.reply.refuse(NodeError::TooLarge { len, max: self.max_message })
                }
                _ => {
                    self.waiting_payloads += batch.payloads.len();
                    self.waiting.push_back(batch);
                }
            },
            Command::Progress(reply) => {
                let _ = reply.send(self.progress());
            }
            Command::Ping { to, nonce } => {
                let _ = self
                    .net
                    .queue(sam_core::Dest::Pid(to), &sam_core::Message::Ping(sam_core::message::Ping { nonce }));
            }
            Command::Snapshot(reply) => {
                let snapshot = self.process.client().and_then(|c| c.state_machine()).map(|m| m.snapshot());
                let _ = reply.send(snapshot);
            }
            Command::Stop => return false,
        }
        true
    }

    /// Writes and sends what is pending, syncs the log, and ends the loop.
    async fn stop(&mut self) -> Result<(), NodeError> {
        self.send_waiting();
        self.carry_out().await?;
        if let Some(log) = &mut self.log {
            log.sync()?;
        }
        Ok(())
    }

    fn progress(&self) -> Option<Progress> {
        let c = self.process.client()?;
        Some(Progress {
            sequencer: c.sequencer(),
            delivered: c.delivered(),
            committed: c.known_committed(),
            epoch: c.epoch(),
            checkpoint: c.checkpoint(),
        })
    }

    fn take(&mut self, incoming: sam_net::Incoming) {
        let now = self.now();
        for msg in incoming.msgs {
            self.process.handle_owned(now, incoming.from, msg);
        }
    }

    /// Sends what the application asked to, in order, while the sender's window has room:
    /// a full window is back-pressure, not an error. A batch is answered once all of it is sent.
    fn send_waiting(&mut self) {
        let now = self.now();
        while let Some(batch) = self.waiting.front_mut() {
            if self.process.client().is_none() {
                self.waiting_payloads -= batch.payloads.len();
                let batch = self.waiting.pop_front().expect("a batch in front");
                batch.reply.refuse(NodeError::NotAMember);
                continue;
            }
            while let Some(payload) = batch.payloads.pop_front() {
                // A clone of `Bytes` is a reference count, not a copy.
                match self.process.send(now, payload.clone()) {
                    Ok(mid) => {
                        batch.mids.push(mid);
                        self.waiting_payloads -= 1;
                    }
                    Err(SendError::WindowFull(_)) => {
                        batch.payloads.push_front(payload);
                        return;
                    }
                }
            }
            let batch = self.waiting.pop_front().expect("a batch in front");
            match batch.reply {
                Reply::Mids(reply) => {
                    let _ = reply.send(Ok(batch.mids));
                }
                Reply::Fate(reply) => match batch.mids.first() {
                    Some(mid) => {
                        self.fates.insert(*mid, reply);
                    }
                    None => {
                        let _ = reply.send(Err(SendFailure::Node(NodeError::Stopped)));
                    }
                },
            }
        }
    }

    /// Tells the process which writes the log made durable.
    fn made_durable(&mut self, durable: Position) -> Result<(), NodeError> {
        let mut upto = None;
        while self.writes.front().is_some_and(|(_, end)| *end <= durable) {
            upto = self.writes.pop_front().map(|(id, _)| id);
        }
        if let Some(upto) = upto {
            let now = self.now();
            self.process.handle_durable(now, upto);
        }
        self.retire(durable)
    }

    /// Starts reading the oldest sealed segment when a look is due (see [`crate::compaction`]).
    fn look_at_oldest_segment(&mut self) {
        // A node without a log (a member) looks at no clock on its hot path.
        let Some(log) = self.log.as_ref() else { return };
        let now = std::time::Instant::now();
        if !self.compaction.due(now) {
            return;
        }
        let Some(segment) = log.oldest_sealed() else {
            self.compaction = Compaction::new(now);
            return;
        };
        self.compaction = Compaction::Reading;
        let tx = self.segments.0.clone();
        tokio::task::spawn_blocking(move || {
            let read = sam_store::read_sealed(&segment).map(|records| (segment, records));
            let _ = tx.blocking_send(read);
        });
    }

    /// Copies forward what a read segment holds that the process still needs, if that is at
    /// most half of it; else looks again later.
    fn compact(
        &mut self,
        (segment, records): (sam_store::SealedInfo, Vec<(Position, Bytes)>),
    ) -> Result<(), NodeError> {
        let Some(log) = self.log.as_mut() else { return Ok(()) };
        // A record that does not decode is kept: only the process can tell it is garbage.
        let process = &self.process;
        let needed: Vec<&Bytes> = records
            .iter()
            .map(|(_, bytes)| bytes)
            .filter(|b| decode_record(b).map_or(true, |r| process.needs(&r)))
            .collect();
        let (kept, of) = (needed.len(), records.len());
        if !compaction::worth_compacting(kept, of) {
            self.compaction = Compaction::Idle { next: std::time::Instant::now() + compaction::COMPACT_RETRY };
            return Ok(());
        }
        for bytes in needed {
            match log.append(bytes) {
                Ok(_) => {}
                // Copies made so far are duplicates replay tolerates; try again later.
                Err(StoreError::Full { .. }) => {
                    self.compaction = Compaction::Idle { next: std::time::Instant::now() + compaction::COMPACT_RETRY };
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        log.flush()?;
        tracing::info!(
            pid = self.process.pid().0,
            "compaction: {kept} of the oldest segment's {of} records still needed, copied forward"
        );
        self.compaction = Compaction::Retiring { end: segment.end, after: log.end() };
        let durable = log.durable();
        self.retire(durable)
    }

    /// Retires the segment being compacted once its copies are durable.
    fn retire(&mut self, durable: Position) -> Result<(), NodeError> {
        let (Some(log), Some(end)) = (self.log.as_mut(), self.compaction.retirable(durable)) else { return Ok(()) };
        let retired = log.retire_before(end)?;
        tracing::info!(
            pid = self.process.pid().0,
            "compaction retired {retired} segment(s); the log keeps {}",
            log.segments()
        );
        // The next segment may be garbage too: look at once.
        self.compaction = Compaction::Idle { next: std::time::Instant::now() };
        Ok(())
    }

    /// Appends the record in `self.encoded` as write `id`; `false` when the storage is full
    /// (the record is not appended, and the process is told).
    fn append(&mut self, id: WriteId) -> Result<bool, NodeError> {
        match self.log.as_mut().ok_or(NodeError::NoStorage)?.append(&self.encoded) {
            Ok(position) => {
                self.writes.push_back((id, position.next()));
                Ok(true)
            }
            Err(StoreError::Full { .. }) => {
                if self.stalled.is_empty() {
                    self.storage_full(true);
                }
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Tries the stalled writes again, in order, once their retry is due.
    fn retry_stalled(&mut self) -> Result<(), NodeError> {
        let now = std::time::Instant::now();
        if self.stalled.is_empty() || now < self.retry_stalled_at {
            return Ok(());
        }
        self.retry_stalled_at = now + STALLED_RETRY;
        while let Some((id, bytes)) = self.stalled.pop_front() {
            self.encoded = bytes;
            if !self.append(id)? {
                let bytes = std::mem::take(&mut self.encoded);
                self.stalled.push_front((id, bytes));
                return Ok(());
            }
        }
        self.storage_full(false);
        Ok(())
    }

    /// Raises or clears the alarms the network counters call for and copies the positions
    /// for the metrics, at most every [`crate::alarms::ALARM_CHECK`] (a ping between two turns
    /// may see them that late); logs what was dropped every [`DROPS_REPORT_EVERY`].
    fn watch_alarms(&mut self, now: std::time::Instant) {
        if let Some(dropped) = self.drops.due(now, self.net.stats()) {
            tracing::warn!(
                pid = self.process.pid().0,
                "dropped in the last {} s: {dropped}",
                DROPS_REPORT_EVERY.as_secs()
            );
        }
        if let Some(alarms) = self.alarms.due(now, self.net.stats()) {
            for (alarm, up) in alarms {
                self.process.set_alarm(alarm, up);
            }
            // The metrics' copy of the positions follows the same beat.
            self.metrics.copy_positions(&self.process, self.log.as_ref(), self.backlog.held());
        }
    }

    /// Tells the process and the application that the storage filled up or has room again.
    fn storage_full(&mut self, full: bool) {
        self.process.set_alarm(sam_core::Alarms::STORAGE_FULL, full);
        self.turn_events.push(Event::StorageFull { full });
    }

    /// Carries out the process's actions, then writes and sends what they asked for.
    async fn carry_out(&mut self) -> Result<(), NodeError> {
        self.retry_stalled()?;
        // The buffer is kept across turns: no allocation per turn on the hot path.
        let mut actions = std::mem::take(&mut self.actions);
        actions.extend(self.process.drain_actions());
        for action in actions.drain(..) {
            self.carry(action)?;
        }
        self.actions = actions;
        if let Some(log) = self.log.as_mut().filter(|_| !self.writes.is_empty()) {
            log.flush()?;
        }
        self.net.flush().await;
        self.hand_over_events();
        Ok(())
    }

    /// Gives the application this turn's events; the node never waits on an application
    /// that may wait on it (see [`EVENTS_HELD`]).
    fn hand_over_events(&mut self) {
        self.tell_lagged();
        if self.turn_events.is_empty() {
            return;
        }
        let n = self.turn_events.len();
        // Counted before it is sent, so that the application never takes more than was handed.
        self.backlog.handed(n);
        // Nobody listening (the handle is gone) is not an error.
        if self.events.send(std::mem::take(&mut self.turn_events)).is_err() {
            self.backlog.taken(n);
        }
    }

    /// Tells the application, once it caught up, which deliveries it missed.
    fn tell_lagged(&mut self) {
        if self.backlog.full() {
            return;
        }
        if let Some((first, last)) = self.lagged.take() {
            self.turn_events.push(Event::Lagged { first, last });
        }
    }

    fn carry(&mut self, action: Action) -> Result<(), NodeError> {
        let event = match action {
            Action::Send { to, msg } => {
                // A message too large for a datagram was refused by the core's limits
                // already; one that slips through is dropped, as a lost datagram would be.
                let _ = self.net.queue(to, &msg);
                return Ok(());
            }
            Action::Persist { id, record } => {
                self.encoded.clear();
                encode_record(&record, &mut self.encoded);
                if self.stalled.is_empty() && self.append(id)? {
                    return Ok(());
                }
                self.stalled.push_back((id, self.encoded.clone()));
                return Ok(());
            }
            Action::Deliver { seq, mid, payload } => self.for_application(seq, Event::Deliver { seq, mid, payload }),
            Action::Committed { mid, seq } => self.fate(mid, Ok(seq), Event::Committed { mid, seq }),
            Action::Expired { mid } => self.fate(mid, Err(SendFailure::Expired(mid)), Event::Expired { mid }),
            Action::OutcomeUnknown { mid } => {
                self.fate(mid, Err(SendFailure::OutcomeUnknown(mid)), Event::OutcomeUnknown { mid })
            }
            Action::Restored { seq, .. } => self.for_application(seq, Event::Restored { seq }),
            Action::CheckpointMismatch { seq, server, .. } => Some(Event::CheckpointMismatch { seq, server }),
            Action::Notice(notice) => {
                tracing::info!(pid = self.process.pid().0, "{notice}");
                None
            }
            Action::Pong { from, pong } => {
                Some(Event::Pong { from, nonce: pong.nonce, committed: pong.committed, alarms: pong.alarms })
            }
        };
        self.turn_events.extend(event);
        Ok(())
    }

    /// A delivery or restore at `seq` for the application: none when it takes none; part of
    /// an [`Event::Lagged`] instead when it is [`EVENTS_HELD`] behind on a node that serves.
    fn for_application(&mut self, seq: Seq, event: Event) -> Option<Event> {
        if !self.deliveries {
            return None;
        }
        if !self.backlog.full() || !self.reads_behind {
            self.tell_lagged();
            return Some(event);
        }
        self.lagged.get_or_insert((seq, seq)).1 = seq;
        None
    }

    /// Whether the node reads the network while its application is [`EVENTS_HELD`] behind
    /// (see there): it holds a server role, or the application waits on its sends.
    fn reads_when_behind(&self) -> bool {
        self.serves || !self.waiting.is_empty() || !self.fates.is_empty()
    }

    /// Tells a send's fate to the [`Client`] waiting for it; `event` tells it otherwise.
    fn fate(&mut self, mid: Mid, fate: Result<Seq, SendFailure>, event: Event) -> Option<Event> {
        match self.fates.remove(&mid) {
            Some(waiter) => {
                let _ = waiter.send(fate);
                None
            }
            None => Some(event),
        }
    }
}

/// Opens the log in `dir` and decodes its records, off the event loop's thread.
async fn open_log(dir: PathBuf, options: LogOptions) -> Result<(Log, Vec<Record>, Option<TornTail>), NodeError> {
    let (log, recovered) =
        tokio::task::spawn_blocking(move || Log::open(dir, options)).await.map_err(|_| NodeError::Stopped)??;
    let records = recovered
        .records
        .iter()
        .map(|(position, bytes)| {
            decode_record(bytes).map_err(|e| NodeError::Record { position: position.0, reason: e.to_string() })
        })
        .collect::<Result<Vec<Record>, NodeError>>()?;
    Ok((log, records, recovered.torn_tail))
}

/// A deadline that never comes, for a process with no timer.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}
