//! The driver: protocol messages in and out over UDP.
//!
//! Outgoing messages are packed per destination into as few datagrams as fit
//! (`max_datagram_bytes`), and leave when the node flushes after handling a batch of inputs,
//! so a burst of actions costs a few system calls. Incoming datagrams are read by one task
//! per socket, decoded there (a datagram that does not decode is counted and dropped, never
//! fatal) and handed to the node through a bounded queue: when the node falls behind, the
//! tasks wait and the kernel's socket buffer drops, so memory stays bounded.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sam_core::wire::{decode_body, decode_datagram, encode_fragments, Datagram, EncodeError, FramePacker};
use sam_core::{Channel, Dest, Message, Pid};
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::peer::Peers;
use crate::reassembly::Reassembly;
use crate::socket::{self, Group};

/// The largest datagram UDP carries over IPv4.
pub const MAX_UDP_PAYLOAD_BYTES: usize = 65_507;
/// Datagrams decoded and waiting for the node, per driver.
pub const INCOMING_QUEUE_DATAGRAMS: usize = 4_096;

/// What a process's network looks like.
#[derive(Clone, Debug)]
pub struct NetPlan {
    /// The unicast address this process sends from and is reached at (port 0: any free one).
    pub unicast: SocketAddrV4,
    /// The multicast group of each channel.
    pub groups: HashMap<Channel, Group>,
    /// The channels this process hears.
    pub listen: Vec<Channel>,
    /// The configured servers and their unicast addresses.
    pub servers: Vec<(Pid, SocketAddrV4)>,
    /// The longest datagram sent.
    pub max_datagram_bytes: usize,
    /// The longest payload reassembled from fragments; a longer one is dropped.
    pub max_message_bytes: usize,
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
}

/// Counters of what the driver saw; read at any time.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Datagrams received and decoded.
    pub datagrams_in: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Datagrams dropped because they did not decode (garbage, truncated, wrong version).
    pub malformed: AtomicU64,
    /// Messages dropped because their destination has no address.
    pub unroutable: AtomicU64,
    /// Datagrams the system refused to send.
    pub send_errors: AtomicU64,
}

impl NetStats {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
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
    socket: Arc<UdpSocket>,
    local: SocketAddrV4,
    groups: HashMap<Channel, Group>,
    peers: Arc<Peers>,
    max_datagram: usize,
    packers: Vec<(SocketAddrV4, FramePacker)>,
    /// The number of the next series of fragments.
    series: u64,
    ready: Vec<(SocketAddrV4, Bytes)>,
    incoming: mpsc::Receiver<Incoming>,
    stats: Arc<NetStats>,
    readers: Vec<JoinHandle<()>>,
}

impl Net {
    /// Opens the sockets of `plan` and starts reading them. Must run inside a tokio runtime.
    pub fn bind(plan: &NetPlan) -> Result<Net, NetError> {
        let any_group = plan.groups.values().next();
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
        let stats = Arc::new(NetStats::default());
        let (tx, incoming) = mpsc::channel(INCOMING_QUEUE_DATAGRAMS);
        let reader = Reader { peers: peers.clone(), stats: stats.clone(), tx, max_message: plan.max_message_bytes };
        let mut readers = vec![reader.spawn(socket.clone())];
        for channel in &plan.listen {
            let group = plan.groups.get(channel).ok_or(NetError::NoGroup(*channel))?;
            let listener = socket::listener(group).map_err(|source| NetError::Socket {
                what: "join",
                addr: group.addr,
                source,
            })?;
            readers.push(reader.spawn(Arc::new(listener)));
        }
        Ok(Net {
            socket,
            local,
            groups: plan.groups.clone(),
            peers,
            max_datagram: plan.max_datagram_bytes.clamp(64, MAX_UDP_PAYLOAD_BYTES),
            packers: Vec::new(),
            series: first_series(),
            ready: Vec::new(),
            incoming,
            stats,
            readers,
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

    /// Queues `msg` for `dest`; it leaves at the next [`Net::flush`] (or earlier, when its
    /// datagram is full). A message too long for a datagram leaves as fragments, after what
    /// was queued for `dest` before it. A destination with no known address is counted and
    /// dropped.
    pub fn queue(&mut self, dest: Dest, msg: &Message) -> Result<(), NetError> {
        let Some(addr) = self.address(dest)? else {
            NetStats::add(&self.stats.unroutable);
            return Ok(());
        };
        let max = self.max_datagram;
        let packer = match self.packers.iter().position(|(a, _)| *a == addr) {
            Some(i) => &mut self.packers[i].1,
            None => {
                self.packers.push((addr, FramePacker::new(max)));
                &mut self.packers.last_mut().expect("just pushed").1
            }
        };
        match packer.push(msg) {
            Ok(frame) => self.ready.extend(frame.map(|f| (addr, f))),
            Err(EncodeError::TooLarge { .. }) => {
                self.ready.extend(packer.finish().map(|f| (addr, f)));
                self.series = self.series.wrapping_add(1);
                let fragments = encode_fragments(msg, self.series, max)?;
                self.ready.extend(fragments.into_iter().map(|f| (addr, f)));
            }
        }
        Ok(())
    }

    fn address(&self, dest: Dest) -> Result<Option<SocketAddrV4>, NetError> {
        Ok(match dest {
            Dest::Pid(pid) => self.peers.addr_of(pid),
            Dest::Channel(channel) => Some(self.groups.get(&channel).ok_or(NetError::NoGroup(channel))?.addr),
        })
    }

    /// Sends every queued datagram. A datagram the system refuses (a peer's port closed, a
    /// full buffer) is counted: UDP promises nothing and the protocol recovers.
    pub async fn flush(&mut self) {
        for (addr, packer) in &mut self.packers {
            if let Some(frame) = packer.finish() {
                self.ready.push((*addr, frame));
            }
        }
        for (addr, frame) in self.ready.drain(..) {
            match self.socket.send_to(&frame, addr).await {
                Ok(_) => NetStats::add(&self.stats.datagrams_out),
                Err(_) => NetStats::add(&self.stats.send_errors),
            }
        }
    }

    /// The next datagram's messages (waits for one).
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// The next datagram's messages, if one is waiting.
    pub fn try_recv(&mut self) -> Option<Incoming> {
        self.incoming.try_recv().ok()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

/// What every socket's reading task shares.
#[derive(Clone)]
struct Reader {
    peers: Arc<Peers>,
    stats: Arc<NetStats>,
    tx: mpsc::Sender<Incoming>,
    max_message: usize,
}

impl Reader {
    /// Reads `socket` until the driver is dropped.
    fn spawn(&self, socket: Arc<UdpSocket>) -> JoinHandle<()> {
        let reader = self.clone();
        tokio::spawn(async move {
            // One byte more than UDP carries: a datagram that fills it was cut short.
            let mut buf = vec![0u8; MAX_UDP_PAYLOAD_BYTES + 1];
            let mut reassembly = Reassembly::new(reader.max_message, 2 * reader.max_message);
            loop {
                let Ok((len, addr)) = socket.recv_from(&mut buf).await else { continue };
                let Some(from) = reader.peers.pid_of(addr).filter(|_| len <= MAX_UDP_PAYLOAD_BYTES) else {
                    NetStats::add(&reader.stats.malformed);
                    continue;
                };
                let Some(msgs) = reader.decode(&mut reassembly, from, &buf[..len]).filter(|m| !m.is_empty()) else {
                    continue;
                };
                if reader.tx.send(Incoming { from, msgs }).await.is_err() {
                    return;
                }
            }
        })
    }

    /// The messages of a datagram (none for a fragment of an incomplete series); `None`, and
    /// counted, for one that does not decode.
    fn decode(&self, reassembly: &mut Reassembly, from: Pid, datagram: &[u8]) -> Option<Vec<Message>> {
        let decoded = match decode_datagram(&Bytes::copy_from_slice(datagram)) {
            Ok(Datagram::Messages(msgs)) => Ok(msgs),
            Ok(Datagram::Fragment(fragment)) => match reassembly.add(std::time::Instant::now(), from, fragment) {
                Ok(Some(body)) => decode_body(&body).map_err(|_| ()),
                Ok(None) => Ok(Vec::new()),
                Err(_) => Err(()),
            },
            Err(_) => Err(()),
        };
        match decoded {
            Ok(msgs) => {
                NetStats::add(&self.stats.datagrams_in);
                Some(msgs)
            }
            Err(()) => {
                NetStats::add(&self.stats.malformed);
                None
            }
        }
    }
}

/// A starting series number unlikely to repeat one of an earlier run of this process.
fn first_series() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (now.as_nanos() as u64).rotate_left(17)
}
