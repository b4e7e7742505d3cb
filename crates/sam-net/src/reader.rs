//! Reading one socket: datagrams in, decoded messages out to the node.
//!
//! Each socket has a task of its own that decodes what arrives (a datagram that does not
//! decode is counted and dropped, never fatal), reassembles fragments, and hands the messages
//! to the node through a bounded queue: when the node falls behind, the task waits and the
//! kernel's socket buffer drops, so memory stays bounded. In unicast mode the unicast socket's
//! task also serves registrations and relays global frames (a data server), or notes that its
//! relay still relays (a member).

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sam_core::wire::{
    decode_body, decode_datagram, register_frame, relay_frame, Body, Datagram, FRAGMENT_HEADER_MAX, HEADER_LEN,
    RELAY_OVERHEAD,
};
use sam_core::Pid;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::batch;
use crate::driver::{Incoming, NetStats, MAX_UDP_PAYLOAD_BYTES};
use crate::injected::{InjectedFaults, Injector};
use crate::peer::Peers;
use crate::reassembly::Reassembly;
use crate::relay::{Members, Registration};

/// Datagrams one system call may read (each has a buffer of the largest UDP payload).
const RECV_BATCH: usize = 8;

/// What this socket's task does besides decoding, in unicast mode.
#[derive(Clone, Debug, Default)]
pub(crate) enum Unicast {
    /// Nothing: multicast mode, or a server that is not a data server.
    #[default]
    Plain,
    /// A data server: registers members and relays global frames to them.
    Relay,
    /// A member: believes origins from the data servers and tells its registration what it
    /// heard.
    Member(Arc<Registration>),
}

/// What every socket's reading task shares.
#[derive(Clone)]
pub(crate) struct Reader {
    pub(crate) peers: Arc<Peers>,
    pub(crate) stats: Arc<NetStats>,
    pub(crate) tx: mpsc::Sender<Incoming>,
    pub(crate) max_message: usize,
    /// The group's datagram size (fragments are at most this long).
    pub(crate) max_datagram: usize,
    /// Faults to inject on receipt.
    pub(crate) faults: InjectedFaults,
}

/// One task's state.
struct Task {
    reader: Reader,
    socket: Arc<UdpSocket>,
    unicast: Unicast,
    reassembly: Reassembly,
    members: Members,
    injector: Injector,
}

impl Reader {
    /// Reads `socket` until the driver is dropped.
    pub(crate) fn spawn(&self, socket: Arc<UdpSocket>, unicast: Unicast) -> JoinHandle<()> {
        let min_chunk = self.max_datagram.saturating_sub(HEADER_LEN + FRAGMENT_HEADER_MAX + RELAY_OVERHEAD);
        let reassembly = Reassembly::new(self.max_message, 2 * self.max_message, min_chunk);
        // Each socket's task makes its own choices: seeded by the port it reads.
        let seed = socket.local_addr().map_or(0, |a| u64::from(a.port())) ^ u64::from(std::process::id());
        let injector = Injector::new(self.faults, seed);
        let task = Task { reader: self.clone(), socket, unicast, reassembly, members: Members::default(), injector };
        tokio::spawn(task.run())
    }
}

impl Task {
    async fn run(mut self) {
        // One byte more than UDP carries: a datagram that fills its buffer was cut short.
        let mut bufs = vec![vec![0u8; MAX_UDP_PAYLOAD_BYTES + 1]; RECV_BATCH];
        let mut got = Vec::with_capacity(RECV_BATCH);
        loop {
            if batch::recv_some(&self.socket, &mut bufs, &mut got).await.is_err() {
                continue;
            }
            for (i, (len, from)) in got.iter().enumerate() {
                let copies = self.injector.copies();
                match copies {
                    0 => NetStats::add(&self.reader.stats.injected_drops),
                    2 => NetStats::add(&self.reader.stats.injected_duplicates),
                    _ => {}
                }
                let mut datagram =
                    bufs[i].get(..*len).filter(|_| *len <= MAX_UDP_PAYLOAD_BYTES).map(Bytes::copy_from_slice);
                for left in (0..copies).rev() {
                    // The last copy is the datagram itself: no clone (and no shared buffer) on
                    // the usual path.
                    let copy = if left == 0 { datagram.take() } else { datagram.clone() };
                    if !self.handle(copy, *from).await {
                        return;
                    }
                }
            }
        }
    }

    /// Decodes one datagram and hands what it holds to the node; `false` once the node is gone.
    async fn handle(&mut self, datagram: Option<Bytes>, from: SocketAddr) -> bool {
        let msgs = match (datagram, from) {
            (Some(datagram), SocketAddr::V4(addr)) => match decode_datagram(&datagram) {
                Ok(decoded) => self.take(addr, &datagram, decoded).await,
                Err(_) => Err(()),
            },
            _ => Err(()),
        };
        match msgs {
            Ok(Some(incoming)) => {
                NetStats::add(&self.reader.stats.datagrams_in);
                return self.reader.tx.send(incoming).await.is_ok();
            }
            Ok(None) => NetStats::add(&self.reader.stats.datagrams_in),
            Err(()) => NetStats::add(&self.reader.stats.malformed),
        }
        true
    }

    /// What a decoded datagram from `addr` gives the node, if anything; `Err` for one to
    /// count as malformed.
    async fn take(&mut self, addr: SocketAddrV4, raw: &Bytes, datagram: Datagram) -> Result<Option<Incoming>, ()> {
        let sender = self.reader.peers.pid_of(SocketAddr::V4(addr)).ok_or(())?;
        let from = match (datagram.origin, &self.unicast) {
            (None, _) => sender,
            (Some(origin), Unicast::Member(r)) if r.is_relay(addr) => {
                // Only a relayed frame shows the relay still hears the global channel: its
                // grants and its own frames do not.
                r.relayed_by(addr);
                origin
            }
            (Some(_), _) => return Err(()),
        };
        if datagram.global && matches!(self.unicast, Unicast::Relay) {
            self.relay(raw, from).await;
        }
        let msgs = match datagram.body {
            Body::Messages(msgs) => msgs,
            Body::Fragment(fragment) => match self.reassembly.add(Instant::now(), from, fragment) {
                Ok(Some(body)) => decode_body(&body).map_err(|_| ())?,
                Ok(None) => return Ok(None),
                Err(_) => return Err(()),
            },
            Body::Register { lease_ms } => {
                self.register(addr, lease_ms).await;
                return Ok(None);
            }
        };
        Ok((!msgs.is_empty()).then_some(Incoming { from, msgs }))
    }

    /// Passes a global frame from `origin` on to every registered member, in as few system
    /// calls as the platform allows.
    async fn relay(&mut self, raw: &Bytes, origin: Pid) {
        let frame = relay_frame(raw, origin);
        let datagrams: Vec<(SocketAddrV4, &[u8])> =
            self.members.live(Instant::now()).map(|m| (m, &frame[..])).collect();
        let outcome = batch::send_all(&self.socket, &datagrams).await;
        let stats = &self.reader.stats;
        stats.relayed.fetch_add(outcome.sent, Ordering::Relaxed);
        stats.send_calls.fetch_add(outcome.calls, Ordering::Relaxed);
        stats.send_errors.fetch_add(outcome.refused, Ordering::Relaxed);
    }

    /// Grants a member's registration (a data server), or notes the grant (a member).
    async fn register(&mut self, addr: SocketAddrV4, lease_ms: u64) {
        if !matches!(self.unicast, Unicast::Relay) {
            return;
        }
        if let Some(lease) = self.members.register(Instant::now(), addr, Duration::from_millis(lease_ms)) {
            let _ = self.socket.send_to(&register_frame(lease.as_millis() as u64), addr).await;
        }
    }
}
