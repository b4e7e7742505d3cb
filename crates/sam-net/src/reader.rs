//! Reading the sockets: datagrams in, decoded messages out, on the node's own task.
//!
//! The driver reads its sockets itself when the node asks for input: no task and no queue
//! stand between a socket and the protocol core, so a datagram costs no hand-off between
//! threads (issue 13: the hand-offs, not the protocol, were most of a server's CPU). Each
//! socket has a [`Receiver`] that opens what arrives (security, DESIGN section 12: a datagram
//! that does not open or decode is counted and dropped, never answered nor fatal) and
//! reassembles fragments. When the node falls behind it stops asking, and the kernel's socket
//! buffer drops: memory stays bounded. In unicast mode the unicast socket's receiver also
//! serves registrations and relays global frames (a data server), or notes that its relay still
//! relays (a member); what it sends that way waits in [`Taken::direct`] for the driver's next
//! flush.

use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sam_core::wire::{decode_body, decode_datagram, register_frame, Body, Datagram, FRAGMENT_HEADER_MAX, HEADER_LEN};
use sam_core::{Channel, Message, Pid};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::batch;
use crate::driver::{Incoming, NetStats, MAX_UDP_PAYLOAD_BYTES};
use crate::injected::{InjectedFaults, Injector};
use crate::peer::Peers;
use crate::reassembly::Reassembly;
use crate::relay::{Members, Registration};
use crate::security::cookie::{CookieJar, Echo};
use crate::security::envelope::{relay_envelope, unwrap_relayed, Mode, RELAY_ENVELOPE_LEN, SEAL_OVERHEAD};
use crate::security::replay::Refusal;
use crate::security::signing::Verifier;
use crate::security::{now_ms, Authority, Dropped, Opened, Opener, SealFor, Sealer, SecurityPlan};

/// Datagrams one system call may read (each has a buffer of the largest UDP payload).
const RECV_BATCH: usize = 16;

/// What a socket's receiver does besides decoding, in unicast mode.
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

/// What every socket's receiver shares.
#[derive(Clone)]
pub(crate) struct Reader {
    pub(crate) peers: Arc<Peers>,
    pub(crate) stats: Arc<NetStats>,
    pub(crate) max_message: usize,
    /// The group's datagram size (fragments are at most this long).
    pub(crate) max_datagram: usize,
    /// Faults to inject on receipt.
    pub(crate) faults: InjectedFaults,
    /// How frames are checked.
    pub(crate) security: SecurityPlan,
    /// This process (frames to one process must name it).
    pub(crate) pid: Pid,
    /// Seals what a receiver sends (grants, challenges).
    pub(crate) sealer: Arc<Mutex<Sealer>>,
    /// Grants and checks the cookies of requests.
    pub(crate) cookies: Arc<CookieJar>,
    /// With signed frames, checks the heartbeats a member hears.
    pub(crate) verifier: Option<Arc<Verifier>>,
}

/// What reading produced and the driver has not passed on yet.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// Each datagram's messages for the node, in arrival order.
    pub(crate) incoming: VecDeque<Incoming>,
    /// Sealed datagrams to send from the unicast socket at the next flush: challenges,
    /// grants, registrations sent again, frames relayed to members.
    pub(crate) direct: Vec<(SocketAddrV4, Bytes)>,
}

/// The buffers one `recvmmsg` fills, shared by every socket of a driver.
pub(crate) struct RecvBuffers {
    bufs: Vec<Vec<u8>>,
    got: Vec<(usize, SocketAddr)>,
}

impl std::fmt::Debug for RecvBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecvBuffers")
    }
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("socket", &self.socket.local_addr().ok()).finish_non_exhaustive()
    }
}

impl RecvBuffers {
    pub(crate) fn new() -> RecvBuffers {
        // One byte more than UDP carries: a datagram that fills its buffer was cut short.
        RecvBuffers {
            bufs: vec![vec![0u8; MAX_UDP_PAYLOAD_BYTES + 1]; RECV_BATCH],
            got: Vec::with_capacity(RECV_BATCH),
        }
    }
}

/// The payload frame without the zero padding a frame without a cookie carries (see
/// `security::envelope`).
fn unpadded(payload: &Bytes) -> Result<Bytes, Dropped> {
    let declared = payload.get(4..8).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let end = declared.and_then(|d| usize::try_from(d).ok()?.checked_add(HEADER_LEN));
    match end {
        Some(end) if end < payload.len() => {
            let padding = &payload[end..];
            if padding.iter().any(|b| *b != 0) {
                return Err(Dropped::Malformed);
            }
            Ok(payload.slice(..end))
        }
        _ => Ok(payload.clone()),
    }
}

/// Whether `msg` is a request whose answer may be far larger than it.
fn is_request(msg: &Message) -> bool {
    matches!(msg, Message::Fetch(_) | Message::QueryEntries(_) | Message::FetchBlocks(_))
}

/// Whether `msg` is answered to its sender (a request, or a ping).
fn is_answered(msg: &Message) -> bool {
    is_request(msg) || matches!(msg, Message::Ping(_))
}

/// One socket and what reading it needs.
pub(crate) struct Receiver {
    reader: Reader,
    socket: Arc<UdpSocket>,
    unicast: Unicast,
    reassembly: Reassembly,
    members: Members,
    injector: Injector,
    opener: Opener,
    /// The opener's duplicate-pid alarms already counted in the stats.
    duplicate_pids: u64,
}

impl Reader {
    /// A receiver for `socket`, whose frames may name `channels` (`None`: any).
    pub(crate) fn receiver(
        &self,
        socket: Arc<UdpSocket>,
        unicast: Unicast,
        channels: Option<Vec<Option<Channel>>>,
    ) -> Receiver {
        let min_chunk =
            self.max_datagram.saturating_sub(SEAL_OVERHEAD + RELAY_ENVELOPE_LEN + HEADER_LEN + FRAGMENT_HEADER_MAX);
        let reassembly = Reassembly::new(self.max_message, 2 * self.max_message, min_chunk);
        // Each socket's receiver makes its own choices: seeded by the port it reads.
        let seed = socket.local_addr().map_or(0, |a| u64::from(a.port())) ^ u64::from(std::process::id());
        let injector = Injector::new(self.faults, seed);
        let opener = Opener::new(self.security.clone(), self.pid, channels);
        Receiver {
            reader: self.clone(),
            socket,
            unicast,
            reassembly,
            members: Members::default(),
            injector,
            opener,
            duplicate_pids: 0,
        }
    }
}

impl Receiver {
    /// Ready once the socket may have datagrams waiting. A socket the runtime can no longer
    /// watch (it is shutting down) never is.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self.socket.poll_recv_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }

    /// Reads what is waiting, up to one system call's worth, into `out` (a socket not known to
    /// be ready costs no call).
    pub(crate) fn read(&mut self, bufs: &mut RecvBuffers, out: &mut Taken) {
        bufs.got.clear();
        let socket = &self.socket;
        // A batch that came back short emptied the socket: saying "would block" clears its
        // readiness now, instead of with one more call that finds nothing (tokio clears only if
        // no new event came meanwhile, and a datagram that arrives later raises one). What was
        // read is kept either way.
        let _ = socket.try_io(Interest::READABLE, || {
            batch::recv_batch(socket, &mut bufs.bufs, &mut bufs.got)?;
            match bufs.got.len() < bufs.bufs.len() {
                true => Err(std::io::ErrorKind::WouldBlock.into()),
                false => Ok(()),
            }
        });
        for (i, (len, from)) in bufs.got.iter().enumerate() {
            self.reader.stats.bytes_in.fetch_add((*len).min(MAX_UDP_PAYLOAD_BYTES + 1) as u64, Ordering::Relaxed);
            let copies = self.injector.copies();
            match copies {
                0 => NetStats::add(&self.reader.stats.injected_drops),
                2 => NetStats::add(&self.reader.stats.injected_duplicates),
                _ => {}
            }
            if copies == 0 {
                continue;
            }
            let datagram =
                bufs.bufs[i].get(..*len).filter(|_| *len <= MAX_UDP_PAYLOAD_BYTES).map(Bytes::copy_from_slice);
            self.handle(datagram, *from, copies, out);
        }
    }

    /// Opens one datagram and hands what it holds to the node, `copies` times (a duplicate is
    /// injected after the frame opened: a replayed frame would be refused, and the point is to
    /// test the protocol's own de-duplication).
    fn handle(&mut self, datagram: Option<Bytes>, from: SocketAddr, copies: usize, out: &mut Taken) {
        let stats = self.reader.stats.clone();
        let outcome = match (datagram, from) {
            (Some(datagram), SocketAddr::V4(addr)) => self.take(addr, datagram, &mut out.direct),
            _ => Err(Dropped::Malformed),
        };
        match outcome {
            Ok(Some(incoming)) => {
                NetStats::add(&stats.datagrams_in);
                for msg in &incoming.msgs {
                    NetStats::add(&stats.messages_in[msg.kind().index()]);
                }
                if copies > 1 {
                    out.incoming.push_back(Incoming { from: incoming.from, msgs: incoming.msgs.clone() });
                }
                out.incoming.push_back(incoming);
            }
            Ok(None) => NetStats::add(&stats.datagrams_in),
            Err(dropped) => NetStats::add(match dropped {
                Dropped::Malformed => &stats.malformed,
                Dropped::Foreign => &stats.foreign,
                Dropped::Unkeyed => &stats.unkeyed,
                Dropped::Unauthenticated => &stats.unauthenticated,
                Dropped::Replay(Refusal::Replayed) => &stats.replayed,
                Dropped::Replay(Refusal::StaleSession) => &stats.stale_sessions,
                Dropped::Replay(Refusal::TableFull) => &stats.replay_table_full,
                Dropped::Throttled => &stats.throttled,
            }),
        }
    }

    /// What a datagram from `addr` gives the node, if anything, or why it was dropped: the
    /// sealed frame is opened (inside a relay envelope only at a member), then decoded; what
    /// it calls for sending goes to `direct`.
    fn take(
        &mut self,
        addr: SocketAddrV4,
        datagram: Bytes,
        direct: &mut Vec<(SocketAddrV4, Bytes)>,
    ) -> Result<Option<Incoming>, Dropped> {
        let (sealed, relayed) = match unwrap_relayed(&datagram) {
            Some(inner) if matches!(self.unicast, Unicast::Member(_)) => (inner, true),
            Some(_) => return Err(Dropped::Malformed),
            None => (datagram, false),
        };
        let opened = self.opener.open(now_ms(), &sealed);
        let duplicates = self.opener.duplicate_pid_alarms();
        if duplicates > self.duplicate_pids {
            self.reader.stats.duplicate_pids.fetch_add(duplicates - self.duplicate_pids, Ordering::Relaxed);
            self.duplicate_pids = duplicates;
        }
        let opened = opened?;
        if opened.header.challenge {
            self.note_challenge(addr, &opened, relayed, direct)?;
            return Ok(None);
        }
        let decoded = decode_datagram(&unpadded(&opened.payload)?).map_err(|_| Dropped::Malformed)?;
        let from = opened.header.pid;
        self.note_sender(addr, &opened, relayed, &decoded)?;
        if decoded.global && !relayed && matches!(self.unicast, Unicast::Relay) {
            self.relay(&sealed, direct);
        }
        let mut msgs = match decoded.body {
            Body::Messages(msgs) => msgs,
            Body::Fragment(fragment) => match self.reassembly.add(Instant::now(), from, fragment) {
                Ok(Some(body)) => decode_body(&body).map_err(|_| Dropped::Malformed)?,
                Ok(None) => return Ok(None),
                Err(_) => return Err(Dropped::Malformed),
            },
            // Only a relay grants, and only what was sent to it alone: many answering one
            // multicast frame would multiply it (a member's grant needs no answer either).
            Body::Register { lease_ms } => {
                let to_relay = matches!(self.unicast, Unicast::Relay) && opened.header.channel.is_none();
                if to_relay && self.echoed(addr, &opened, sealed.len(), direct) {
                    self.register(from, addr, lease_ms, direct);
                }
                return Ok(None);
            }
        };
        let before = msgs.len();
        // What is answered is answered only when sent to this process alone: every process on
        // a group answering one spoofed frame would reflect it many times over.
        let to_me = opened.header.channel.is_none();
        msgs.retain(|msg| opened.authority.permits(msg) && (to_me || !is_answered(msg)));
        let refused = (before - msgs.len()) as u64;
        self.reader.stats.refused.fetch_add(refused, Ordering::Relaxed);
        self.drop_unsigned(&opened, &mut msgs);
        if msgs.iter().any(is_request) && !self.echoed(addr, &opened, sealed.len(), direct) {
            msgs.retain(|msg| !is_request(msg));
        }
        Ok((!msgs.is_empty()).then_some(Incoming { from, msgs }))
    }

    /// With signed frames, drops the heartbeats a member hears without a valid signature: the
    /// group key vouches only that some member or server sealed them. Servers need no
    /// signature: they believe a heartbeat only under the server key or its tag.
    fn drop_unsigned(&self, opened: &Opened, msgs: &mut Vec<Message>) {
        let Some(verifier) = self.reader.verifier.as_ref().filter(|_| opened.authority == Authority::Group) else {
            return;
        };
        let before = msgs.len();
        msgs.retain(|msg| !matches!(msg, Message::Heartbeat(hb) if !verifier.verify(hb)));
        self.reader.stats.unsigned.fetch_add((before - msgs.len()) as u64, Ordering::Relaxed);
    }

    /// Whether a request from `addr` may be answered: it came from a server that vouched for
    /// itself with the server key, or echoed its cookie. A request without one is answered
    /// with a challenge, when that is no larger than the request, and not served; one with
    /// last bucket's cookie is served and given the current one (DESIGN section 12).
    fn echoed(
        &mut self,
        addr: SocketAddrV4,
        opened: &Opened,
        request_len: usize,
        direct: &mut Vec<(SocketAddrV4, Bytes)>,
    ) -> bool {
        if opened.authority == Authority::Server {
            return true;
        }
        let (pid, now) = (opened.header.pid, now_ms());
        let echo = self.reader.cookies.check(now, addr, pid, opened.header.cookie.as_ref());
        if echo != Echo::Missing && pid.is_member() {
            // Proven to receive there: answers go there from now on.
            self.reader.peers.learn(pid, addr, Instant::now(), true);
        }
        if echo != Echo::Current {
            let cookie = self.reader.cookies.mint(now, addr, pid);
            let challenge = self.reader.sealer.lock().unwrap_or_else(|e| e.into_inner()).seal_challenge(pid, cookie);
            if challenge.len() <= request_len {
                NetStats::add(&self.reader.stats.challenges);
                direct.push((addr, challenge));
            }
        }
        echo != Echo::Missing
    }

    /// Takes the cookie a server granted: frames to it carry it from now on, and a waiting
    /// registration is sent again at once.
    fn note_challenge(
        &self,
        addr: SocketAddrV4,
        opened: &Opened,
        relayed: bool,
        direct: &mut Vec<(SocketAddrV4, Bytes)>,
    ) -> Result<(), Dropped> {
        let (pid, cookie) = (opened.header.pid, opened.header.cookie);
        let from_server = self.reader.peers.server(pid).is_some();
        // Without keys a challenge is believed only from the server's own address.
        let believed = self.reader.security.mode != Mode::Off || self.reader.peers.server(pid) == Some(addr);
        let (Some(cookie), true, true, false) = (cookie, from_server, believed, relayed) else {
            return Err(Dropped::Unauthenticated);
        };
        let again = self.reader.sealer.lock().unwrap_or_else(|e| e.into_inner()).set_cookie(pid, cookie);
        if let (Some(frame), Some(server)) = (again, self.reader.peers.server(pid)) {
            // Fire and forget: a lost one is asked again by the protocol's own timeout.
            direct.push((server, frame));
        }
        if let Unicast::Member(registration) = &self.unicast {
            registration.renew_now();
        }
        Ok(())
    }

    /// Checks how a frame that opened travelled, and remembers where its sender is.
    fn note_sender(
        &self,
        addr: SocketAddrV4,
        opened: &Opened,
        relayed: bool,
        decoded: &Datagram,
    ) -> Result<(), Dropped> {
        let pid = opened.header.pid;
        if relayed && !decoded.global {
            // Relays pass on global frames only, in an envelope, never rewritten.
            return Err(Dropped::Malformed);
        }
        if relayed {
            if let Unicast::Member(registration) = &self.unicast {
                // Only a relayed frame shows the relay still hears the global channel.
                registration.relayed_by(addr);
            }
            return Ok(());
        }
        let peers = &self.reader.peers;
        if pid.is_member() {
            if !peers.learn(pid, addr, Instant::now(), false) {
                NetStats::add(&self.reader.stats.members_unlearned);
            }
        } else if self.reader.security.mode == Mode::Off && peers.server(pid) != Some(addr) {
            // Without keys a server pid is believed only from the server's own address.
            return Err(Dropped::Unauthenticated);
        }
        Ok(())
    }

    /// Passes a global frame on to every registered member, byte for byte inside a relay
    /// envelope (one buffer for all of them), with the driver's next flush.
    fn relay(&mut self, sealed: &Bytes, direct: &mut Vec<(SocketAddrV4, Bytes)>) {
        let frame = relay_envelope(sealed);
        let before = direct.len();
        direct.extend(self.members.live(Instant::now()).map(|m| (m, frame.clone())));
        let stats = &self.reader.stats;
        stats.relayed.fetch_add((direct.len() - before) as u64, Ordering::Relaxed);
        stats.relay_members.store(self.members.len() as u64, Ordering::Relaxed);
    }

    /// Grants a member's registration (a data server), or notes the grant (a member).
    fn register(&mut self, pid: Pid, addr: SocketAddrV4, lease_ms: u64, direct: &mut Vec<(SocketAddrV4, Bytes)>) {
        if !matches!(self.unicast, Unicast::Relay) || !pid.is_member() {
            return;
        }
        let granted = self.members.register(Instant::now(), pid, addr, Duration::from_millis(lease_ms));
        self.reader.stats.relay_members.store(self.members.len() as u64, Ordering::Relaxed);
        if let Some(lease) = granted {
            let grant = register_frame(lease.as_millis() as u64);
            let sealed = self.reader.sealer.lock().unwrap_or_else(|e| e.into_inner()).seal(SealFor::Pid(pid), &grant);
            direct.push((addr, sealed));
        }
    }
}
