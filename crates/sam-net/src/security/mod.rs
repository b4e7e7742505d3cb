//! Security (DESIGN section 12): every datagram is a sealed frame ([`envelope`]) under one of
//! the cluster's keys ([`keys`]); receivers check it in a fixed order — header sanity, replay
//! pre-check, AEAD, second tag, replay update ([`replay`]) — before anything is decoded, and
//! tell the driver who vouched for it ([`Authority`]), which decides what that sender may say.
//!
//! [`Sealer`] is the sending half (one per process: sessions, counters, subkeys), [`Opener`]
//! the receiving half (one per socket task: its own replay table).

pub mod cookie;
pub mod envelope;
pub mod keys;
pub mod replay;
pub mod signing;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, NONCE_LEN};
use ring::hmac;
use sam_core::{Channel, Message, Pid};
use subtle::ConstantTimeEq;

use envelope::{Cookie, Header, Mode, Session, Tier, TAG_LEN};
use keys::{derive, ClusterId, Key, KeyKind, Keyring};
use replay::{Refusal, ReplayTable};

/// A session is renewed after this long...
pub const SESSION_RENEW_MS: u64 = 60_000;
/// ...or after this many frames, whichever comes first.
pub const SESSION_RENEW_FRAMES: u64 = 1 << 23;
/// The shortest frame to one process (zero bytes pad its payload; cookie challenges aside):
/// it outweighs a cookie challenge, which may answer a request, and a `Pong` of any tier (48
/// bytes of payload and three tags, no cookie), so that no answer to one frame is larger
/// than it. Receivers drop shorter ones.
pub const UNICAST_DATAGRAM_MIN: usize = envelope::HEADER_LEN + envelope::TO_LEN + 48 + 3 * TAG_LEN;

/// Senders a replay table holds by default.
pub const REPLAY_SENDERS_DEFAULT: usize = 16_384;
/// Second-tag keys an opener derives per millisecond, on average, for sessions it has not
/// seen (DESIGN section 12: "derivations on a miss are rate-limited"): a member that makes up
/// pids or sessions costs a server at most this many HKDF derivations, ~3% of a core. Every
/// sender starts a session a minute, so this serves 1.2 million senders.
pub const TAG_DERIVATIONS_PER_MS: u64 = 20;
/// The most derivations an opener makes in one burst.
pub const TAG_DERIVATIONS_BURST: u64 = 20_000;

/// Which keys a configured server holds, which decides the tag it signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKeys {
    /// A commit or data server: the server key.
    Server,
    /// A server holding only a checkpoint server: the checkpoint key.
    Checkpoint,
}

/// What a process needs to seal and open frames.
#[derive(Clone, Debug)]
pub struct SecurityPlan {
    /// The cluster's protection.
    pub mode: Mode,
    /// The cluster.
    pub cluster: ClusterId,
    /// This process's keys (`None` with mode off).
    pub keys: Option<Arc<Keyring>>,
    /// The configured servers and the keys they hold.
    pub servers: Vec<(Pid, ServerKeys)>,
    /// Member credentials (their pids) that servers refuse.
    pub revoked: Vec<Pid>,
    /// Where a server keeps the time of its latest session, so that sessions only grow across
    /// restarts.
    pub session_file: Option<PathBuf>,
    /// The most senders one replay table holds.
    pub replay_senders_max: usize,
    /// With signed frames, the public keys heartbeats are signed under (empty: heartbeats go
    /// unsigned).
    pub signing_keys: Vec<signing::PublicKey>,
}

impl SecurityPlan {
    /// A plan with security off.
    pub fn off(cluster: ClusterId, servers: Vec<(Pid, ServerKeys)>) -> SecurityPlan {
        SecurityPlan {
            mode: Mode::Off,
            cluster,
            keys: None,
            servers,
            revoked: Vec::new(),
            session_file: None,
            replay_senders_max: REPLAY_SENDERS_DEFAULT,
            signing_keys: Vec::new(),
        }
    }

    fn server_keys(&self, pid: Pid) -> Option<ServerKeys> {
        self.servers.iter().find(|(p, _)| *p == pid).map(|(_, k)| *k)
    }

    /// With signed frames, what signs the heartbeats `pid` sends: a process holding the
    /// server key signs under its sealing server key.
    pub fn signer(&self, pid: Pid) -> Option<signing::Signer> {
        if self.signing_keys.is_empty() || self.server_keys(pid) != Some(ServerKeys::Server) {
            return None;
        }
        let ring = self.keys.as_ref()?;
        ring.sealing(KeyKind::Server).map(|k| signing::Signer::new(k, ring.cluster))
    }

    /// With signed frames, what checks the heartbeats a member hears.
    pub fn verifier(&self) -> Option<signing::Verifier> {
        (!self.signing_keys.is_empty()).then(|| signing::Verifier::new(self.signing_keys.clone(), self.cluster))
    }
}

/// Why a plan cannot seal.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The mode needs keys the keyring does not hold.
    #[error("mode {mode} needs a {kind} key, and none is held")]
    MissingKey {
        /// The mode.
        mode: &'static str,
        /// The kind missing.
        kind: &'static str,
    },
    /// The keyring belongs to another cluster.
    #[error("the keys are for cluster {keys}, the configuration for {config}")]
    WrongCluster {
        /// The keys' cluster.
        keys: ClusterId,
        /// The configuration's.
        config: ClusterId,
    },
    /// The OS RNG failed.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// The session file could not be read or written.
    #[error("session file {path}: {source}")]
    SessionFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Who vouched for a frame that opened: what the driver's role rules go by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// Sealed under the server key, or under the group key with a valid server tag (at a
    /// checkpoint server: a valid checkpoint tag).
    Server,
    /// Sealed under the checkpoint key, or under the group key with a checkpoint server's
    /// valid second tag.
    Checkpoint,
    /// A member whose credential's tag was checked.
    Member,
    /// Sealed under the group key at a member, which checks no second tag, or security is off.
    Group,
}

impl Authority {
    /// Whether a frame this authority vouched for may carry `msg` (DESIGN section 12: nothing a
    /// member sends is believed as a server-role message). Which server of a role may send
    /// what is the protocol core's rule (`sam_core::senders`), applied to every message after
    /// this one.
    pub fn permits(self, msg: &Message) -> bool {
        let member_kind = matches!(
            msg,
            Message::Data(_)
                | Message::QueryEntries(_)
                | Message::Fetch(_)
                | Message::FetchBlocks(_)
                | Message::Ping(_)
                | Message::Pong(_)
        );
        match self {
            Authority::Server | Authority::Group => true,
            Authority::Checkpoint => member_kind || matches!(msg, Message::Block(_) | Message::CheckpointReport(_)),
            Authority::Member => member_kind,
        }
    }
}

/// A frame that opened.
#[derive(Clone, Debug)]
pub struct Opened {
    /// Its header.
    pub header: Header,
    /// Who vouched for it.
    pub authority: Authority,
    /// The wire-format frame it carried, in the clear.
    pub payload: Bytes,
}

/// Why a datagram was dropped: each is counted, none is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Not a sealed frame of this format.
    Malformed,
    /// Another cluster's, or another mode or suite.
    Foreign,
    /// Sealed with a key tier or id this process does not hold, on the wrong channel, or for
    /// another process.
    Unkeyed,
    /// Its AEAD tag or second tag does not verify, or its sender may not use that key.
    Unauthenticated,
    /// Replay protection refused it.
    Replay(Refusal),
    /// A new session's second tag could not be checked: too many derivations lately.
    Throttled,
}

/// A token bucket for key derivations on a miss, refilled by the millisecond.
#[derive(Debug)]
struct DerivationBudget {
    tokens: u64,
    at_ms: u64,
}

impl DerivationBudget {
    fn new() -> DerivationBudget {
        DerivationBudget { tokens: TAG_DERIVATIONS_BURST, at_ms: 0 }
    }

    /// Takes one derivation at `now_ms`, if the budget allows.
    fn take(&mut self, now_ms: u64) -> bool {
        let refill = now_ms.saturating_sub(self.at_ms).saturating_mul(TAG_DERIVATIONS_PER_MS);
        self.tokens = self.tokens.saturating_add(refill).min(TAG_DERIVATIONS_BURST);
        self.at_ms = self.at_ms.max(now_ms);
        let granted = self.tokens > 0;
        self.tokens -= u64::from(granted);
        granted
    }
}

/// A second tag's key.
type TagKey = hmac::Key;

/// Per key tier, the id of the key used and a session's subkey under it.
type TierKeys = [Option<(u16, LessSafeKey)>; 3];

/// Writes `bytes` to `path`, a file only its owner may read or write.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)
}

/// Milliseconds since 1970 by the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn aead_key(suite: keys::Suite, secret: &keys::Secret) -> LessSafeKey {
    // Every suite takes 32-byte keys, which is what secrets are.
    LessSafeKey::new(UnboundKey::new(suite.algorithm(), secret.expose()).expect("a 32-byte AEAD key"))
}

/// The AEAD subkey of a sender's session under `key`.
fn frame_key(key: &Key, keyring: &Keyring, mode: Mode, pid: Pid, session: Session) -> LessSafeKey {
    let info: [&[u8]; 7] = [
        b"sam/1 frame",
        &[keyring.suite.code(), mode.code()],
        &key.id.to_le_bytes(),
        &pid.0.to_le_bytes(),
        &session.time_ms.to_le_bytes(),
        &session.random.to_le_bytes(),
        &[],
    ];
    aead_key(keyring.suite, &derive(key.secret.expose(), keyring.cluster, &info))
}

/// The second-tag key a server (or checkpoint server) derives from its tier key.
fn role_tag_key(key: &Key, cluster: ClusterId) -> TagKey {
    let label: &[u8] = match key.kind {
        KeyKind::Checkpoint => b"sam/1 checkpoint-tag",
        _ => b"sam/1 server-tag",
    };
    tag_key(key, cluster, label)
}

/// The key of the checkpoint tag a server adds for checkpoint servers, from the checkpoint key.
fn checkpoint_tag_key(checkpoint: &Key, cluster: ClusterId) -> TagKey {
    tag_key(checkpoint, cluster, b"sam/1 server-tag for checkpoint")
}

fn tag_key(key: &Key, cluster: ClusterId, label: &[u8]) -> TagKey {
    hmac::Key::new(hmac::HMAC_SHA256, derive(key.secret.expose(), cluster, &[label, &key.id.to_le_bytes()]).expose())
}

fn member_tag_key(member: &Key) -> TagKey {
    hmac::Key::new(hmac::HMAC_SHA256, member.secret.expose())
}

fn tag2(key: &TagKey, bytes: &[u8]) -> [u8; TAG_LEN] {
    let full = hmac::sign(key, bytes);
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&full.as_ref()[..TAG_LEN]);
    out
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Where a frame goes, as far as the choice of key is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealFor {
    /// A channel.
    Channel(Channel),
    /// One process.
    Pid(Pid),
}

/// The sending half: this process's session, counter and subkeys.
#[derive(Debug)]
pub struct Sealer {
    plan: SecurityPlan,
    pid: Pid,
    session: Session,
    counter: u64,
    /// Per tier: the sealing key's id and the session's subkey.
    keys: TierKeys,
    /// The second tag this process signs group frames with.
    tag2: Option<TagKey>,
    /// The checkpoint tag a commit or data server adds to group frames for checkpoint servers.
    checkpoint_tag: Option<TagKey>,
    /// The cookies servers granted this process (one per server, the latest).
    cookies: HashMap<Pid, Cookie>,
    /// Per server without a cookie yet, the last payload sent to it: sent again, with the
    /// cookie, when the server's challenge arrives (the request itself was not served).
    pending: HashMap<Pid, Vec<u8>>,
}

impl Sealer {
    /// The sealer of process `pid`; starts its first session.
    pub fn new(plan: SecurityPlan, pid: Pid) -> Result<Sealer, SecurityError> {
        if let Some(keys) = &plan.keys {
            if keys.cluster != plan.cluster {
                return Err(SecurityError::WrongCluster { keys: keys.cluster, config: plan.cluster });
            }
        }
        let mut sealer = Sealer {
            plan,
            pid,
            session: Session { time_ms: 0, random: 0 },
            counter: 0,
            keys: [None, None, None],
            tag2: None,
            checkpoint_tag: None,
            cookies: HashMap::new(),
            pending: HashMap::new(),
        };
        let floor = sealer.read_session_floor()?;
        sealer.session.time_ms = floor;
        sealer.renew()?;
        Ok(sealer)
    }

    /// The current session.
    pub fn session(&self) -> Session {
        self.session
    }

    fn read_session_floor(&self) -> Result<u64, SecurityError> {
        let Some(path) = &self.plan.session_file else { return Ok(0) };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(text.trim().parse().unwrap_or(0)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(SecurityError::SessionFile { path: path.clone(), source }),
        }
    }

    /// Starts a new session: a time above the last one's, a fresh random half, fresh subkeys.
    fn renew(&mut self) -> Result<(), SecurityError> {
        // Everything is made first and swapped in at once: a renewal that fails halfway keeps
        // the old session, its subkeys and its counter, so no (key, nonce) is ever used twice.
        let time_ms = now_ms().max(self.session.time_ms.saturating_add(1));
        let session = Session { time_ms, random: u64::from_le_bytes(keys::random()?) };
        let (keys, tag2, checkpoint_tag) = match self.plan.keys.clone() {
            Some(ring) => {
                let (keys, tag2) = self.session_keys(&ring, session)?;
                let checkpoint_tag = match self.plan.server_keys(self.pid) {
                    Some(ServerKeys::Server) => ring
                        .sealing(KeyKind::Server)
                        .map(|k| checkpoint_tag_key(&keys::checkpoint_key(k, ring.cluster), ring.cluster)),
                    _ => None,
                };
                (keys, Some(tag2), checkpoint_tag)
            }
            None => ([None, None, None], None, None),
        };
        if let Some(path) = &self.plan.session_file {
            write_private(path, time_ms.to_string().as_bytes())
                .map_err(|source| SecurityError::SessionFile { path: path.clone(), source })?;
        }
        self.session = session;
        self.counter = 0;
        self.keys = keys;
        self.tag2 = tag2;
        self.checkpoint_tag = checkpoint_tag;
        Ok(())
    }

    /// The subkeys of `session` for the tiers this process seals with, and its second-tag key.
    fn session_keys(&self, ring: &Keyring, session: Session) -> Result<(TierKeys, TagKey), SecurityError> {
        let mode = self.plan.mode;
        let need = |kind: KeyKind| {
            ring.sealing(kind).ok_or(SecurityError::MissingKey { mode: mode.name(), kind: kind.name() })
        };
        let ((tier, key), tag_key) = match self.plan.server_keys(self.pid) {
            Some(ServerKeys::Server) => {
                let k = need(KeyKind::Server)?;
                ((Tier::Server, k), role_tag_key(k, ring.cluster))
            }
            Some(ServerKeys::Checkpoint) => {
                let k = need(KeyKind::Checkpoint)?;
                ((Tier::Checkpoint, k), role_tag_key(k, ring.cluster))
            }
            None => ((Tier::Group, need(KeyKind::Group)?), member_tag_key(need(KeyKind::Member)?)),
        };
        let group = need(KeyKind::Group)?;
        let mut keys = [None, None, None];
        keys[Tier::Group.index()] = Some((group.id, frame_key(group, ring, mode, self.pid, session)));
        keys[tier.index()] = Some((key.id, frame_key(key, ring, mode, self.pid, session)));
        Ok((keys, tag_key))
    }

    /// The tier a frame for `dest` is sealed under: the server (or checkpoint) key between
    /// servers that hold the server key, the group key for everything the group or a member
    /// hears and for everything a member sends.
    pub fn tier_for(&self, dest: SealFor) -> Tier {
        let own = match self.plan.server_keys(self.pid) {
            Some(ServerKeys::Server) => Tier::Server,
            Some(ServerKeys::Checkpoint) => Tier::Checkpoint,
            None => return Tier::Group,
        };
        let to_servers = match dest {
            SealFor::Channel(c) => matches!(c, Channel::Data | Channel::Commit),
            SealFor::Pid(p) => self.plan.server_keys(p) == Some(ServerKeys::Server),
        };
        if to_servers && self.plan.mode != Mode::Off {
            own
        } else {
            Tier::Group
        }
    }

    /// Notes the cookie server `pid` granted this process: frames to it carry it from now on.
    /// Returns the last frame sent to it without one, sealed again with the cookie, to send
    /// again (its request was challenged, not served).
    pub fn set_cookie(&mut self, pid: Pid, cookie: Cookie) -> Option<Bytes> {
        self.cookies.insert(pid, cookie);
        let payload = self.pending.remove(&pid)?;
        Some(self.seal_frame(SealFor::Pid(pid), Some(cookie), false, &payload))
    }

    /// Seals the wire-format frame `payload` for `dest`, with the cookie `dest` granted. A
    /// frame to one process is padded to [`UNICAST_DATAGRAM_MIN`]: a request is never shorter
    /// than the challenge or the `Pong` it may get.
    pub fn seal(&mut self, dest: SealFor, payload: &[u8]) -> Bytes {
        let SealFor::Pid(pid) = dest else { return self.seal_frame(dest, None, false, payload) };
        let cookie = self.cookies.get(&pid).copied();
        // Only a request to a server may be challenged, and never one from a server.
        let challengeable = self.plan.server_keys(self.pid) != Some(ServerKeys::Server);
        if cookie.is_none() && challengeable && self.plan.server_keys(pid).is_some() {
            self.pending.insert(pid, payload.to_vec());
        }
        self.seal_frame(dest, cookie, false, payload)
    }

    /// A cookie challenge to `to`: the cookie it must echo, and nothing else.
    pub fn seal_challenge(&mut self, to: Pid, cookie: Cookie) -> Bytes {
        self.seal_frame(SealFor::Pid(to), Some(cookie), true, &[])
    }

    /// The header of the next frame for `dest`, with `len` bytes of payload.
    fn header(&self, dest: SealFor, cookie: Option<Cookie>, challenge: bool, len: usize) -> Header {
        let tier = self.tier_for(dest);
        let (channel, to) = match dest {
            SealFor::Channel(c) => (Some(c), None),
            SealFor::Pid(p) => (None, Some(p)),
        };
        let mode = self.plan.mode;
        let (suite, key_id) = match (&self.plan.keys, &self.keys[tier.index()]) {
            (Some(ring), Some((id, _))) if mode != Mode::Off => (ring.suite.code(), *id),
            _ => (0, 0),
        };
        // Checkpoint servers hear channels and their own unicast; members do not check it.
        let to_servers = match dest {
            SealFor::Channel(_) => true,
            SealFor::Pid(p) => self.plan.server_keys(p).is_some(),
        };
        Header {
            mode,
            suite,
            tier,
            channel,
            key_id,
            cluster: self.plan.cluster,
            pid: self.pid,
            session: self.session,
            counter: self.counter,
            len: u32::try_from(len).unwrap_or(u32::MAX),
            to,
            cookie,
            challenge,
            checkpoint_tag: tier == Tier::Group && mode != Mode::Off && self.checkpoint_tag.is_some() && to_servers,
        }
    }

    fn seal_frame(&mut self, dest: SealFor, cookie: Option<Cookie>, challenge: bool, payload: &[u8]) -> Bytes {
        if self.counter >= SESSION_RENEW_FRAMES || now_ms().saturating_sub(self.session.time_ms) >= SESSION_RENEW_MS {
            // A failed renewal (the RNG, a session file) keeps the whole session, counter
            // included: its counter has 2^64 values, renewal only bounds how long a key lives.
            let _ = self.renew();
        }
        let mut header = self.header(dest, cookie, challenge, payload.len());
        // Zeros after the payload frame make a frame to one process outweigh what may answer it.
        let pad = if header.to.is_some() && !challenge {
            UNICAST_DATAGRAM_MIN.saturating_sub(header.datagram_len())
        } else {
            0
        };
        header.len = u32::try_from(payload.len() + pad).unwrap_or(u32::MAX);
        self.counter += 1;
        let (mode, tier, counter, checkpoint_tag) = (header.mode, header.tier, header.counter, header.checkpoint_tag);
        let head = header.header_len();
        let mut out = Vec::with_capacity(header.datagram_len());
        header.encode_into(&mut out);
        out.extend_from_slice(payload);
        out.resize(out.len() + pad, 0);
        match (mode, &self.keys[tier.index()]) {
            (Mode::Off, _) | (_, None) => {
                out.extend_from_slice(&crc32c::crc32c(&out[..head]).to_le_bytes());
                return Bytes::from(out);
            }
            (Mode::Encrypt, Some((_, key))) => {
                let (aad, body) = out.split_at_mut(head);
                let tag = key.seal_in_place_separate_tag(nonce(counter), Aad::from(&aad[..]), body);
                // Sealing fails only past the AEAD's length limit (GBs), far beyond a datagram.
                out.extend_from_slice(tag.expect("a datagram is within the AEAD's limit").as_ref());
            }
            (Mode::Authenticate, Some((_, key))) => {
                let tag = key.seal_in_place_separate_tag(nonce(counter), Aad::from(&out[..]), &mut []);
                out.extend_from_slice(tag.expect("a datagram is within the AEAD's limit").as_ref());
            }
        }
        if tier == Tier::Group {
            // The second tag comes last and covers the checkpoint tag too: a server that checks
            // it sees any change to the frame.
            if let Some(k) = self.checkpoint_tag.as_ref().filter(|_| checkpoint_tag) {
                let t = tag2(k, &out);
                out.extend_from_slice(&t);
            }
            if let Some(k) = &self.tag2 {
                let t = tag2(k, &out);
                out.extend_from_slice(&t);
            }
        }
        Bytes::from(out)
    }
}

/// Keys cached per sender session in a replay table.
#[derive(Debug, Default)]
pub struct SessionKeys {
    aead: TierKeys,
    tag2: Option<(Authority, TagKey)>,
}

/// Which of a group frame's extra tags a process can check, by the keys it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verifier {
    /// None (a member): the group key vouches for everything.
    None,
    /// Every second tag (the server key and member master are held).
    Server,
    /// Checkpoint tags instead of server tags (the checkpoint key is held, not the server key).
    Checkpoint,
}

/// The receiving half: one per socket task, with its own replay table.
#[derive(Debug)]
pub struct Opener {
    plan: SecurityPlan,
    /// This process: frames to one process must name it.
    me: Pid,
    table: ReplayTable<SessionKeys>,
    /// Which tags of group frames this process checks.
    verifier: Verifier,
    /// Derivations of second-tag keys left for new sessions.
    derivations: DerivationBudget,
    /// Channels frames may name on this socket (`None`: any).
    channels: Option<Vec<Option<Channel>>>,
}

impl Opener {
    /// An opener for process `me`'s socket that hears `channels` (`None`: every channel,
    /// unicast mode's one socket; `Some(None)` in the list stands for unicast to this process).
    pub fn new(plan: SecurityPlan, me: Pid, channels: Option<Vec<Option<Channel>>>) -> Opener {
        let holds = |kind| plan.keys.as_ref().is_some_and(|k| k.of_kind(kind).next().is_some());
        let verifier = if holds(KeyKind::Server) {
            Verifier::Server
        } else if holds(KeyKind::Checkpoint) {
            Verifier::Checkpoint
        } else {
            Verifier::None
        };
        let table = ReplayTable::new(plan.replay_senders_max);
        Opener { plan, me, table, verifier, derivations: DerivationBudget::new(), channels }
    }

    /// Frames of an older session of a pid heard long after a newer one.
    pub fn duplicate_pid_alarms(&self) -> u64 {
        self.table.duplicate_pid_alarms
    }

    /// Checks and opens a sealed frame (not a relay envelope) received at `now_ms`.
    pub fn open(&mut self, now_ms: u64, datagram: &Bytes) -> Result<Opened, Dropped> {
        let header = Header::decode(datagram).map_err(|_| Dropped::Malformed)?;
        if header.channel.is_none() && !header.challenge && datagram.len() < UNICAST_DATAGRAM_MIN {
            return Err(Dropped::Malformed);
        }
        self.check_header(&header)?;
        let head = header.header_len();
        let payload_end = head + header.len as usize;
        if header.mode == Mode::Off {
            let crc = crc32c::crc32c(&datagram[..head]).to_le_bytes();
            if datagram[payload_end..] != crc {
                return Err(Dropped::Malformed);
            }
            return Ok(Opened { header, authority: Authority::Group, payload: datagram.slice(head..payload_end) });
        }
        let (pid, session, counter) = (header.pid, header.session, header.counter);
        let lane = usize::from(header.channel == Some(Channel::Global));
        let slot = self.table.check(now_ms, pid, session, lane, counter).map_err(Dropped::Replay)?;
        let mut fresh = SessionKeys::default();
        let Opener { plan, table, verifier, derivations, .. } = self;
        let keys = match table.keys_mut(pid, slot) {
            Some(cached) => cached,
            None => &mut fresh,
        };
        let payload = open_aead(plan, &header, datagram, keys)?;
        let authority = authority(plan, *verifier, &header, datagram, keys, || derivations.take(now_ms))?;
        self.table.admit(now_ms, pid, session, (lane, counter), slot, || fresh).map_err(Dropped::Replay)?;
        Ok(Opened { header, authority, payload })
    }

    fn check_header(&self, h: &Header) -> Result<(), Dropped> {
        let suite = if h.mode == Mode::Off { 0 } else { self.plan.keys.as_ref().map_or(0, |k| k.suite.code()) };
        if h.cluster != self.plan.cluster || h.mode != self.plan.mode || h.suite != suite {
            return Err(Dropped::Foreign);
        }
        // Without keys there is one tier and no key id: nothing else is sealed that way.
        if h.mode == Mode::Off && (h.tier != Tier::Group || h.key_id != 0) {
            return Err(Dropped::Malformed);
        }
        if self.channels.as_ref().is_some_and(|c| !c.contains(&h.channel)) || h.to.is_some_and(|to| to != self.me) {
            return Err(Dropped::Unkeyed);
        }
        // A configured server's pid is never a member's, and members hold only the group key.
        let server = self.plan.server_keys(h.pid);
        let fits = match h.tier {
            Tier::Group => server.is_some() || h.pid.is_member(),
            Tier::Server => server == Some(ServerKeys::Server),
            Tier::Checkpoint => server == Some(ServerKeys::Checkpoint),
        };
        if !fits {
            return Err(Dropped::Unauthenticated);
        }
        if h.pid.is_member() && self.plan.revoked.contains(&h.pid.credential()) {
            return Err(Dropped::Unauthenticated);
        }
        Ok(())
    }
}

/// Which extra tag of a group frame a receiver checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    /// The second tag.
    Second,
    /// The checkpoint tag.
    Checkpoint,
}

/// Who vouched for a frame whose AEAD opened: the tier key, or for group frames the extra tag
/// this receiver can check (none at a member).
fn authority(
    plan: &SecurityPlan,
    verifier: Verifier,
    h: &Header,
    datagram: &[u8],
    keys: &mut SessionKeys,
    may_derive: impl FnOnce() -> bool,
) -> Result<Authority, Dropped> {
    match h.tier {
        Tier::Server => return Ok(Authority::Server),
        Tier::Checkpoint => return Ok(Authority::Checkpoint),
        Tier::Group => {}
    }
    let which = match (verifier, plan.server_keys(h.pid)) {
        (Verifier::None, _) => return Ok(Authority::Group),
        (Verifier::Checkpoint, Some(ServerKeys::Server)) if !h.checkpoint_tag => return Err(Dropped::Unauthenticated),
        (Verifier::Checkpoint, Some(ServerKeys::Server)) => Which::Checkpoint,
        _ => Which::Second,
    };
    // The checkpoint tag covers the frame up to its AEAD tag, the second tag all before it.
    let aead_end = h.datagram_len() - h.trailer_len() + TAG_LEN;
    let at = if which == Which::Checkpoint { aead_end } else { datagram.len() - TAG_LEN };
    let signed_end = if which == Which::Checkpoint { aead_end } else { at };
    let (signed, tag) = (&datagram[..signed_end], &datagram[at..at + TAG_LEN]);
    let verifies = |k: &TagKey| bool::from(tag2(k, signed).ct_eq(tag));
    if let Some((authority, k)) = &keys.tag2 {
        return if verifies(k) { Ok(*authority) } else { Err(Dropped::Unauthenticated) };
    }
    // Servers' tag keys depend on neither pid nor session: only members' cost a derivation
    // each, and only they are rationed, so that made-up members never delay a server's.
    if h.pid.is_member() && !may_derive() {
        return Err(Dropped::Throttled);
    }
    let found = tag_candidates(plan, h.pid).into_iter().find(|(_, k)| verifies(k));
    let (authority, k) = found.ok_or(Dropped::Unauthenticated)?;
    keys.tag2 = Some((authority, k));
    Ok(authority)
}

/// The keys a sender's tag may be under at this receiver (more than one during a rotation).
fn tag_candidates(plan: &SecurityPlan, pid: Pid) -> Vec<(Authority, TagKey)> {
    let Some(ring) = &plan.keys else { return Vec::new() };
    // Servers derive checkpoint keys from server keys; checkpoint servers hold them.
    let checkpoint_keys = || -> Vec<Key> {
        let derived = ring.of_kind(KeyKind::Server).map(|k| keys::checkpoint_key(k, ring.cluster));
        derived.chain(ring.of_kind(KeyKind::Checkpoint).cloned()).collect()
    };
    let servers = ring.of_kind(KeyKind::Server).next().is_some();
    match plan.server_keys(pid) {
        Some(ServerKeys::Server) if servers => {
            ring.of_kind(KeyKind::Server).map(|k| (Authority::Server, role_tag_key(k, ring.cluster))).collect()
        }
        Some(ServerKeys::Server) => {
            checkpoint_keys().iter().map(|k| (Authority::Server, checkpoint_tag_key(k, ring.cluster))).collect()
        }
        Some(ServerKeys::Checkpoint) => {
            checkpoint_keys().iter().map(|k| (Authority::Checkpoint, role_tag_key(k, ring.cluster))).collect()
        }
        None => ring
            .of_kind(KeyKind::MemberMaster)
            .map(|m| (Authority::Member, member_tag_key(&keys::member_key(m, ring.cluster, pid))))
            .collect(),
    }
}

/// Opens the AEAD of a frame whose header passed: the payload in the clear.
fn open_aead(plan: &SecurityPlan, h: &Header, datagram: &Bytes, keys: &mut SessionKeys) -> Result<Bytes, Dropped> {
    let ring = plan.keys.as_ref().ok_or(Dropped::Unkeyed)?;
    let slot = &mut keys.aead[h.tier.index()];
    if !matches!(slot, Some((id, _)) if *id == h.key_id) {
        let kind = match h.tier {
            Tier::Group => KeyKind::Group,
            Tier::Server => KeyKind::Server,
            Tier::Checkpoint => KeyKind::Checkpoint,
        };
        let key = match h.tier {
            // Servers hold the server key and derive the checkpoint key from it.
            Tier::Checkpoint if ring.key(kind, h.key_id).is_none() => ring
                .key(KeyKind::Server, h.key_id)
                .map(|k| keys::checkpoint_key(k, ring.cluster))
                .ok_or(Dropped::Unkeyed)?,
            _ => ring.key(kind, h.key_id).cloned().ok_or(Dropped::Unkeyed)?,
        };
        *slot = Some((h.key_id, frame_key(&key, ring, h.mode, h.pid, h.session)));
    }
    let Some((_, key)) = slot else { return Err(Dropped::Unkeyed) };
    let head = h.header_len();
    let payload_end = head + h.len as usize;
    let tag_bytes = &datagram[payload_end..payload_end + TAG_LEN];
    let tag = Tag::try_from(tag_bytes).map_err(|_| Dropped::Malformed)?;
    match h.mode {
        Mode::Authenticate => {
            key.open_in_place_separate_tag(nonce(h.counter), Aad::from(&datagram[..payload_end]), tag, &mut [], 0..)
                .map_err(|_| Dropped::Unauthenticated)?;
            Ok(datagram.slice(head..payload_end))
        }
        _ => {
            let mut body = BytesMut::from(&datagram[head..payload_end]);
            key.open_in_place_separate_tag(nonce(h.counter), Aad::from(&datagram[..head]), tag, &mut body, 0..)
                .map_err(|_| Dropped::Unauthenticated)?;
            Ok(body.freeze())
        }
    }
}

#[cfg(test)]
mod tests;
