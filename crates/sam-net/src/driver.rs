//! The driver: protocol messages in and out over UDP.
//!
//! Outgoing messages are packed per destination into as few datagrams as fit
//! (`max_datagram_bytes`), and leave when the node flushes after handling a batch of inputs,
//! so a burst of actions costs a few system calls. A channel is a multicast group, or in
//! unicast mode the list of servers that hear it: the same frames go to each. Incoming
//! datagrams are read, a system call's batch at a time, when the node asks for input
//! ([`crate::reader`]): on the node's own task, with nothing between socket and core.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sam_core::message::Kind;
use sam_core::wire::{encode_fragments, EncodeError, FramePacker, FLAG_GLOBAL};
use sam_core::{Channel, Dest, Message, Pid};
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::batch;
use crate::injected::InjectedFaults;
use crate::peer::Peers;
use crate::reader::{Reader, Receiver, RecvBuffers, Taken, Unicast};
use crate::relay::Registration;
use crate::security::cookie::CookieJar;
use crate::security::envelope::{RELAY_ENVELOPE_LEN, SEAL_OVERHEAD};
use crate::security::signing::Signer;
use crate::security::{SealFor, Sealer, SecurityError, SecurityPlan};
use crate::socket::{self, Group};

/// The largest datagram UDP carries over IPv4.
pub const MAX_UDP_PAYLOAD_BYTES: usize = 65_507;

/// What a process's network looks like.
#[derive(Clone, Debug)]
pub struct NetPlan {
    /// This process.
    pub pid: Pid,
    /// How frames are sealed and checked.
    pub security: SecurityPlan,
    /// The unicast address this process sends from and is reached at (port 0: any free one).
    pub unicast: SocketAddrV4,
    /// How channels travel.
    pub transport: TransportPlan,
    /// The configured servers and their unicast addresses.
    pub servers: Vec<(Pid, SocketAddrV4)>,
    /// The longest datagram sent.
    pub max_datagram_bytes: usize,
    /// The longest payload reassembled from fragments; a longer one is dropped.
    pub max_message_bytes: usize,
    /// Faults injected on receipt (tests only; none by default).
    pub faults: InjectedFaults,
}

/// How a process's channels travel (DESIGN section 7).
#[derive(Clone, Debug)]
pub enum TransportPlan {
    /// Each channel is an IP multicast group.
    Multicast {
        /// The group of each channel.
        groups: HashMap<Channel, Group>,
        /// The channels this process hears.
        listen: Vec<Channel>,
    },
    /// Each channel is a list of servers, and members hear the global channel from a data
    /// server they register with.
    Unicast(UnicastPlan),
}

/// Unicast mode's plan for one process.
#[derive(Clone, Debug)]
pub struct UnicastPlan {
    /// The servers that hear each channel (every server hears the global channel).
    pub listeners: HashMap<Channel, Vec<SocketAddrV4>>,
    /// What this process does about the global channel.
    pub role: RelayRole,
    /// The lease a member asks its data server for.
    pub lease: Duration,
}

/// A process's part in relaying the global channel, in unicast mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayRole {
    /// A server that is not a data server: it hears the global channel directly.
    None,
    /// A data server: it relays the global channel to the members registered with it.
    Relay,
    /// A member: it registers with one of these data servers.
    Member(Vec<(Pid, SocketAddrV4)>),
}

/// Why the network could not be set up, or a message not sent.
#[derive(Debug, Error)]
pub enum NetError {
    /// A socket could not be opened, bound or joined to its group.
    #[error("cannot {what} {addr}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The address concerned.
        addr: SocketAddrV4,
        /// The system's reason.
        source: io::Error,
    },
    /// A channel has no multicast group in the plan.
    #[error("no multicast group is configured for the {0:?} channel")]
    NoGroup(Channel),
    /// A message does not fit in one datagram.
    #[error(transparent)]
    TooLarge(#[from] EncodeError),
    /// Frames cannot be sealed with the keys given.
    #[error(transparent)]
    Security(#[from] SecurityError),
}

/// Counters of what the driver saw; read at any time.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Datagrams received and decoded.
    pub datagrams_in: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Bytes of every datagram read, whatever became of it.
    pub bytes_in: AtomicU64,
    /// Bytes of the datagrams sent.
    pub bytes_out: AtomicU64,
    /// Messages handed to the node, by kind (indexed by `Kind::index`).
    pub messages_in: [AtomicU64; Kind::ALL.len()],
    /// Messages queued for sending, by kind; a message to a channel in unicast mode counts once.
    pub messages_out: [AtomicU64; Kind::ALL.len()],
    /// Members registered with this data server for relaying (unicast mode; a gauge).
    pub relay_members: AtomicU64,
    /// System calls that sent them (many datagrams per call where the platform allows).
    pub send_calls: AtomicU64,
    /// Datagrams dropped because they did not decode (garbage, truncated, wrong version).
    pub malformed: AtomicU64,
    /// Frames of another cluster, mode or suite.
    pub foreign: AtomicU64,
    /// Frames sealed with a key this process does not hold, or sent on another channel.
    pub unkeyed: AtomicU64,
    /// Frames whose tag or second tag did not verify, or whose sender may not use its key.
    pub unauthenticated: AtomicU64,
    /// Frames seen before, or below a sender's replay window.
    pub replayed: AtomicU64,
    /// Frames of a session older than the sender's two newest, or out of time bounds.
    pub stale_sessions: AtomicU64,
    /// New senders refused because the replay table was full of live ones (an alarm).
    pub replay_table_full: AtomicU64,
    /// New sessions refused because second-tag keys were derived too often lately (an alarm).
    pub throttled: AtomicU64,
    /// Frames of a pid's older session heard long after its newer one: two processes with one
    /// pid, or captured frames replayed (an alarm).
    pub duplicate_pids: AtomicU64,
    /// Messages an authenticated sender may not send in its role (dropped).
    pub refused: AtomicU64,
    /// Members whose address could not be remembered (the table was full).
    pub members_unlearned: AtomicU64,
    /// Cookie challenges sent (requests without a valid cookie, or with last bucket's).
    pub challenges: AtomicU64,
    /// Messages dropped because their destination has no address.
    pub unroutable: AtomicU64,
    /// Datagrams the system refused to send.
    pub send_errors: AtomicU64,
    /// Frames relayed to members (unicast mode, a data server).
    pub relayed: AtomicU64,
    /// Datagrams dropped on purpose ([`InjectedFaults`]).
    pub injected_drops: AtomicU64,
    /// Datagrams taken twice on purpose ([`InjectedFaults`]).
    pub injected_duplicates: AtomicU64,
    /// Heartbeats a member dropped for a missing or wrong signature (signed frames).
    pub unsigned: AtomicU64,
}

/// How many reasons [`NetStats::drops`] names.
pub const DROP_REASONS: usize = 15;

impl NetStats {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every count of something dropped, with its reason's short name (a metric's label).
    pub fn drops(&self) -> [(&'static str, u64); DROP_REASONS] {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("malformed", read(&self.malformed)),
            ("foreign", read(&self.foreign)),
            ("unkeyed", read(&self.unkeyed)),
            ("unauthenticated", read(&self.unauthenticated)),
            ("replayed", read(&self.replayed)),
            ("stale_session", read(&self.stale_sessions)),
            ("replay_table_full", read(&self.replay_table_full)),
            ("throttled", read(&self.throttled)),
            ("duplicate_pid", read(&self.duplicate_pids)),
            ("refused", read(&self.refused)),
            ("unsigned", read(&self.unsigned)),
            ("unroutable", read(&self.unroutable)),
            ("send_error", read(&self.send_errors)),
            ("member_table_full", read(&self.members_unlearned)),
            ("injected", read(&self.injected_drops)),
        ]
    }
}

/// One datagram's messages and who sent them.
#[derive(Debug)]
pub struct Incoming {
    /// The sender.
    pub from: Pid,
    /// The messages, in order.
    pub msgs: Vec<Message>,
}

/// A process's sockets and its outgoing datagrams.
#[derive(Debug)]
pub struct Net {
    /// This process: what it sends itself never touches a socket.
    pid: Pid,
    socket: Arc<UdpSocket>,
    local: SocketAddrV4,
    channels: Routes,
    peers: Arc<Peers>,
    max_datagram: usize,
    packers: Vec<(Dest, FramePacker)>,
    /// The number of the next series of fragments.
    series: u64,
    ready: Vec<(Dest, Bytes)>,
    sealer: Arc<Mutex<Sealer>>,
    /// With signed frames, what signs the heartbeats this process sends.
    signer: Option<Signer>,
    /// One receiver per socket: the unicast one first.
    receivers: Vec<Receiver>,
    buffers: RecvBuffers,
    /// What the receivers read and the node has not taken, and what they send.
    taken: Taken,
    stats: Arc<NetStats>,
    /// A member's registration in unicast mode, renewed in the background.
    registration: Option<JoinHandle<()>>,
}

/// Where a channel's frames go.
#[derive(Clone, Debug)]
enum Routes {
    /// To each channel's group.
    Multicast(HashMap<Channel, Group>),
    /// To each of the channel's listeners.
    Unicast(HashMap<Channel, Vec<SocketAddrV4>>),
}

impl Net {
    /// Opens the sockets of `plan` and starts reading them. Must run inside a tokio runtime.
    pub fn bind(plan: &NetPlan) -> Result<Net, NetError> {
        let any_group = match &plan.transport {
            TransportPlan::Multicast { groups, .. } => groups.values().next(),
            TransportPlan::Unicast(_) => None,
        };
        let socket = socket::unicast(plan.unicast, any_group).map_err(|source| NetError::Socket {
            what: "bind",
            addr: plan.unicast,
            source,
        })?;
        let local = match socket.local_addr() {
            Ok(SocketAddr::V4(addr)) => addr,
            _ => plan.unicast,
        };
        let socket = Arc::new(socket);
        let peers = Arc::new(Peers::new(plan.servers.iter().copied()));
        let sealer = Arc::new(Mutex::new(Sealer::new(plan.security.clone(), plan.pid)?));
        let stats = Arc::new(NetStats::default());
        let max_datagram = plan.max_datagram_bytes.clamp(64, MAX_UDP_PAYLOAD_BYTES);
        let reader = Reader {
            peers: peers.clone(),
            stats: stats.clone(),
            max_message: plan.max_message_bytes,
            max_datagram,
            faults: plan.faults,
            security: plan.security.clone(),
            pid: plan.pid,
            sealer: sealer.clone(),
            cookies: Arc::new(CookieJar::new().map_err(SecurityError::from)?),
            verifier: plan.security.verifier().map(Arc::new),
        };
        let mut receivers = Vec::new();
        let mut registration = None;
        let channels = match &plan.transport {
            TransportPlan::Multicast { groups, listen } => {
                receivers.push(reader.receiver(socket.clone(), Unicast::Plain, Some(vec![None])));
                for channel in listen {
                    let group = groups.get(channel).ok_or(NetError::NoGroup(*channel))?;
                    let listener = socket::listener(group).map_err(|source| NetError::Socket {
                        what: "join",
                        addr: group.addr,
                        source,
                    })?;
                    receivers.push(reader.receiver(Arc::new(listener), Unicast::Plain, Some(vec![Some(*channel)])));
                }
                Routes::Multicast(groups.clone())
            }
            TransportPlan::Unicast(unicast) => {
                let role = match &unicast.role {
                    RelayRole::None => Unicast::Plain,
                    RelayRole::Relay => Unicast::Relay,
                    RelayRole::Member(relays) => {
                        let member = Arc::new(Registration::new(local, relays.clone(), unicast.lease));
                        registration = Some(tokio::spawn(member.clone().run(socket.clone(), sealer.clone())));
                        Unicast::Member(member)
                    }
                };
                receivers.push(reader.receiver(socket.clone(), role, None));
                Routes::Unicast(unicast.listeners.clone())
            }
        };
        Ok(Net {
            pid: plan.pid,
            socket,
            local,
            channels,
            peers,
            max_datagram,
            packers: Vec::new(),
            series: first_series(),
            ready: Vec::new(),
            sealer,
            signer: plan.security.signer(plan.pid),
            receivers,
            buffers: RecvBuffers::new(),
            taken: Taken::default(),
            stats,
            registration,
        })
    }

    /// The address this process sends from.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// The driver's counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// The driver's counters, to read from another thread (a metrics endpoint).
    pub fn shared_stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// Queues `msg` for `dest`; it leaves at the next [`Net::flush`] (or earlier, when its
    /// datagram is full). A message too long for a datagram leaves as fragments, after what
    /// was queued for `dest` before it. A destination with no known address is counted and
    /// dropped. A message to this process itself (one role to another: a data server's
    /// `Order` to its own sequencer, say) is handed back by the next [`Net::recv`] at once.
    pub fn queue(&mut self, dest: Dest, msg: &Message) -> Result<(), NetError> {
        if dest == Dest::Pid(self.pid) {
            self.taken.incoming.push_back(Incoming { from: self.pid, msgs: vec![msg.clone()] });
            return Ok(());
        }
        if !self.routable(dest)? {
            NetStats::add(&self.stats.unroutable);
            return Ok(());
        }
        NetStats::add(&self.stats.messages_out[msg.kind().index()]);
        let signed;
        let msg = match (msg, &self.signer) {
            (Message::Heartbeat(hb), Some(signer)) => {
                signed = Message::Heartbeat(signer.sign(hb));
                &signed
            }
            _ => msg,
        };
        // Sealing adds its header and tags; a global frame in unicast mode is relayed inside
        // an envelope: room is left for both.
        let (max, flags) = match (dest, &self.channels) {
            (Dest::Channel(Channel::Global), Routes::Unicast(_)) => {
                (self.max_datagram - SEAL_OVERHEAD - RELAY_ENVELOPE_LEN, FLAG_GLOBAL)
            }
            _ => (self.max_datagram - SEAL_OVERHEAD, 0),
        };
        let packer = match self.packers.iter().position(|(d, _)| *d == dest) {
            Some(i) => &mut self.packers[i].1,
            None => {
                self.packers.push((dest, FramePacker::with_flags(max, flags)));
                &mut self.packers.last_mut().expect("just pushed").1
            }
        };
        match packer.push(msg) {
            Ok(frame) => self.ready.extend(frame.map(|f| (dest, f))),
            Err(EncodeError::TooLarge { .. }) => {
                self.ready.extend(packer.finish().map(|f| (dest, f)));
                self.series = self.series.wrapping_add(1);
                let fragments = encode_fragments(msg, self.series, max, flags)?;
                self.ready.extend(fragments.into_iter().map(|f| (dest, f)));
            }
        }
        Ok(())
    }

    /// Whether `dest` has an address (a channel always has: an unknown one is an error).
    fn routable(&self, dest: Dest) -> Result<bool, NetError> {
        Ok(match (dest, &self.channels) {
            (Dest::Pid(pid), _) => self.peers.addr_of(pid).is_some(),
            (Dest::Channel(channel), Routes::Multicast(groups)) => {
                groups.get(&channel).ok_or(NetError::NoGroup(channel))?;
                true
            }
            (Dest::Channel(_), Routes::Unicast(_)) => true,
        })
    }

    /// Sends every queued datagram, and what reading called for (challenges, grants, relayed
    /// frames). A datagram the system refuses (a peer's port closed, a full buffer) is
    /// counted: UDP promises nothing and the protocol recovers.
    pub async fn flush(&mut self) {
        for (dest, packer) in &mut self.packers {
            if let Some(frame) = packer.finish() {
                self.ready.push((*dest, frame));
            }
        }
        let sealed: Vec<(Dest, Bytes)> = {
            let mut sealer = self.sealer.lock().unwrap_or_else(|e| e.into_inner());
            self.ready.drain(..).map(|(dest, frame)| (dest, sealer.seal(seal_for(dest), &frame))).collect()
        };
        let mut datagrams: Vec<(SocketAddrV4, &[u8])> = Vec::with_capacity(sealed.len());
        for (dest, frame) in &sealed {
            match (dest, &self.channels) {
                (Dest::Pid(pid), _) => match self.peers.addr_of(*pid) {
                    Some(addr) => datagrams.push((addr, frame)),
                    None => NetStats::add(&self.stats.unroutable),
                },
                (Dest::Channel(channel), Routes::Multicast(groups)) => {
                    datagrams.extend(groups.get(channel).map(|g| (g.addr, &frame[..])));
                }
                (Dest::Channel(channel), Routes::Unicast(listeners)) => {
                    datagrams.extend(listeners.get(channel).into_iter().flatten().map(|addr| (*addr, &frame[..])));
                }
            }
        }
        datagrams.extend(self.taken.direct.iter().map(|(addr, datagram)| (*addr, &datagram[..])));
        let bytes: usize = datagrams.iter().map(|(_, datagram)| datagram.len()).sum();
        let outcome = batch::send_all(&self.socket, &datagrams).await;
        drop(datagrams);
        self.stats.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        self.taken.direct.clear();
        self.stats.datagrams_out.fetch_add(outcome.sent, Ordering::Relaxed);
        self.stats.send_calls.fetch_add(outcome.calls, Ordering::Relaxed);
        self.stats.send_errors.fetch_add(outcome.refused, Ordering::Relaxed);
    }

    /// The next datagram's messages: waits until one arrives (what reading calls for sending
    /// leaves first, so that a driver that only reads still answers).
    pub async fn recv(&mut self) -> Incoming {
        loop {
            if let Some(incoming) = self.taken.incoming.pop_front() {
                return incoming;
            }
            if !self.taken.direct.is_empty() {
                self.flush().await;
            }
            let receivers = &self.receivers;
            std::future::poll_fn(|cx| match receivers.iter().any(|r| r.poll_ready(cx).is_ready()) {
                true => std::task::Poll::Ready(()),
                false => std::task::Poll::Pending,
            })
            .await;
            self.read_ready();
        }
    }

    /// The next datagram's messages, if one is waiting (read without waiting).
    pub fn try_recv(&mut self) -> Option<Incoming> {
        if self.taken.incoming.is_empty() {
            self.read_ready();
        }
        self.taken.incoming.pop_front()
    }

    /// Reads a system call's batch from every socket that may have datagrams waiting.
    fn read_ready(&mut self) {
        for receiver in &mut self.receivers {
            receiver.read(&mut self.buffers, &mut self.taken);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(registration) = &self.registration {
            registration.abort();
        }
    }
}

/// What a frame for `dest` is sealed for.
pub(crate) fn seal_for(dest: Dest) -> SealFor {
    match dest {
        Dest::Pid(pid) => SealFor::Pid(pid),
        Dest::Channel(channel) => SealFor::Channel(channel),
    }
}

/// A starting series number unlikely to repeat one of an earlier run of this process.
fn first_series() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (now.as_nanos() as u64).rotate_left(17)
}
