//! The sealed frame: what every datagram looks like on the wire (DESIGN section 12,
//! "Sealing"). This comment is the specification.
//!
//! A datagram is a *sealed frame*, or a *relay envelope* around one. A sealed frame is a
//! 54-byte cleartext header, the *payload* (a wire-format frame of `sam_core::wire`, version 1,
//! encrypted in mode `encrypt`), and a trailer. Integers are little-endian.
//!
//! | bytes    | field          | contents                                                            |
//! |----------|----------------|---------------------------------------------------------------------|
//! | `0..2`   | magic          | `S` `M`                                                             |
//! | `2`      | version        | `2` ([`VERSION`])                                                   |
//! | `3`      | flags          | bit 0: a cookie follows the header; bit 1: a cookie challenge (bit 0 set too, empty payload); bit 2: a checkpoint tag precedes the second tag (group tier only); bit 3: a destination follows the header (exactly when the channel is `0`); a relay envelope has `0x80` here instead (below) |
//! | `4`      | mode           | `0` off, `1` authenticate, `2` encrypt                              |
//! | `5`      | suite          | `0` with mode off; `1` AES-256-GCM, `2` ChaCha20-Poly1305           |
//! | `6`      | tier           | the key that seals it: `0` group, `1` server, `2` checkpoint        |
//! | `7`      | channel        | `0` unicast, `1` global, `2` data, `3` commit, `4` checkpoint      |
//! | `8..10`  | key id         | `u16`: which key of the tier                                        |
//! | `10..18` | cluster id     | `u64`: frames of another cluster are dropped                        |
//! | `18..26` | pid            | `u64`: the sender                                                   |
//! | `26..34` | session time   | `u64`: milliseconds since 1970 when the sender's session began      |
//! | `34..42` | session random | `u64`: drawn from the OS RNG for the session                        |
//! | `42..50` | counter        | `u64`: the frame's number in its session, used by exactly one seal  |
//! | `50..54` | payload length | `u32`                                                               |
//!
//! With flag bit 3 the *destination*, the `u64` pid of the one process the frame is for,
//! follows the header; every frame to one process (channel `0`) carries it and no other does,
//! and a receiver drops one that names another pid: a frame captured on its way to one process
//! cannot be replayed to another. Then, with flag bit 0, a 16-byte *cookie*. Both count as
//! header from here on (associated data, CRC). A process whose requests may be answered with more than 3× their
//! bytes (fetches, entry queries, block fetches, relay registrations) echoes the cookie the
//! server gave it in a *challenge* — a frame with flag bits 0 and 1, the cookie, and no
//! payload, never longer than the request it answers (DESIGN section 12, "No reflection").
//!
//! A frame to one process (a challenge aside) is padded with zero bytes after its payload
//! frame to 150 bytes in all (header, 48 bytes of payload, three tags' worth of trailer), so
//! that it is never shorter than the challenge or the `Pong` it may get; a receiver drops a
//! shorter one, reads the payload frame's own length and checks the rest is zeros. Requests
//! and pings are answered only when sent to one process: on a group, every process would
//! answer the one frame.
//!
//! The trailer is, in mode off, the CRC-32C of the header (4 bytes; the payload carries its
//! own). In modes authenticate and encrypt it is the AEAD tag (16 bytes) and, when the tier is
//! group, a second tag (16 bytes): `HMAC-SHA256` under the sender's own key (a member's
//! credential key, or the key servers derive for it) of every byte before it, truncated.
//! A group frame from a commit or data server to a channel or to another server also carries,
//! with flag bit 2, a *checkpoint tag* between the AEAD tag and the second tag: HMAC-SHA256 of
//! every byte up to the AEAD tag under `HKDF(checkpoint key, salt = cluster id, "sam/1
//! server-tag for checkpoint" ‖ key id)`, truncated; the second tag, last, covers it.
//! Checkpoint servers, which hold the checkpoint key but not the server key, believe a server's
//! group frame only by it; what they could forge with it fools no commit or data server.
//! The datagram's length must be exactly header + payload + trailer.
//!
//! The AEAD key is `HKDF-SHA256(tier key, salt = cluster id, "sam/1 frame" ‖ suite ‖ mode ‖
//! key id ‖ pid ‖ session time ‖ session random)`, the nonce `0u32 ‖ counter`, and the
//! associated data the whole header; mode encrypt seals the payload, mode authenticate seals
//! an empty plaintext with header ‖ payload as associated data.
//!
//! A *relay envelope* (unicast mode: a data server passing a global frame on to its members)
//! is `S` `M` `2` `0x80` followed by the sealed frame byte for byte: receivers authenticate
//! the frame inside, never the relay.

use bytes::Bytes;
use sam_core::{Channel, Pid};

use super::keys::ClusterId;

/// The first two bytes of every datagram.
pub const MAGIC: [u8; 2] = *b"SM";
/// The version of sealed frames.
pub const VERSION: u8 = 2;
/// The length of a sealed frame's header.
pub const HEADER_LEN: usize = 54;
/// The length of an AEAD tag, and of a second tag.
pub const TAG_LEN: usize = 16;
/// The flags byte of a relay envelope.
pub const RELAY_FLAG: u8 = 0x80;
/// The bytes a relay envelope adds.
pub const RELAY_ENVELOPE_LEN: usize = 4;
/// The length of a cookie.
pub const COOKIE_LEN: usize = 16;
/// Flags bit: a cookie follows the header.
pub const FLAG_COOKIE: u8 = 1;
/// Flags bit: the frame is a cookie challenge.
pub const FLAG_CHALLENGE: u8 = 2;
/// Flags bit: a checkpoint tag precedes the second tag.
pub const FLAG_CHECKPOINT_TAG: u8 = 4;
/// Flags bit: the destination pid follows the header.
pub const FLAG_TO: u8 = 8;
/// The length of the destination.
pub const TO_LEN: usize = 8;
/// The most bytes sealing adds to a payload (header, destination, cookie and three tags).
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TO_LEN + COOKIE_LEN + 3 * TAG_LEN;

/// A cookie: proof that a sender receives at the address it sends from.
pub type Cookie = [u8; COOKIE_LEN];

/// How much protection frames get (DESIGN section 12); the same across a cluster, never
/// negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// No keys: a CRC, a cluster id, nothing an attacker cannot forge. Chosen explicitly only.
    Off,
    /// Every frame authenticated, payloads readable on the wire.
    Authenticate,
    /// Every frame authenticated and its payload encrypted (the default).
    Encrypt,
}

impl Mode {
    /// Its byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Mode::Off => 0,
            Mode::Authenticate => 1,
            Mode::Encrypt => 2,
        }
    }

    /// Its name in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Authenticate => "authenticate",
            Mode::Encrypt => "encrypt",
        }
    }
}

/// Which key seals a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The group key: anything to the global channel or to members, and all that members send.
    Group,
    /// The server key: servers to servers.
    Server,
    /// The checkpoint key: checkpoint servers to servers.
    Checkpoint,
}

impl Tier {
    fn code(self) -> u8 {
        match self {
            Tier::Group => 0,
            Tier::Server => 1,
            Tier::Checkpoint => 2,
        }
    }

    fn from_code(code: u8) -> Option<Tier> {
        [Tier::Group, Tier::Server, Tier::Checkpoint].into_iter().find(|t| t.code() == code)
    }

    /// Its index in per-tier tables.
    pub(crate) fn index(self) -> usize {
        usize::from(self.code())
    }
}

/// A sender's session: renewed every minute or 2^23 frames, so that a counter never repeats
/// under one key; ordered by time, then by its random half.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Session {
    /// Milliseconds since 1970 when it began; only grows within a process (servers persist it).
    pub time_ms: u64,
    /// From the OS RNG.
    pub random: u64,
}

/// A sealed frame's cleartext header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Its protection.
    pub mode: Mode,
    /// The AEAD's code (`0` with mode off).
    pub suite: u8,
    /// The key tier.
    pub tier: Tier,
    /// The channel it was sent on; `None` for unicast to one process.
    pub channel: Option<Channel>,
    /// Which key of the tier.
    pub key_id: u16,
    /// The cluster.
    pub cluster: ClusterId,
    /// The sender.
    pub pid: Pid,
    /// The sender's session.
    pub session: Session,
    /// The frame's number in the session.
    pub counter: u64,
    /// The payload's length.
    pub len: u32,
    /// The one process the frame is for (exactly when `channel` is `None`).
    pub to: Option<Pid>,
    /// The cookie echoed, or granted by a challenge.
    pub cookie: Option<Cookie>,
    /// A cookie challenge (the cookie is the one granted).
    pub challenge: bool,
    /// A checkpoint tag ends the trailer.
    pub checkpoint_tag: bool,
}

/// Why a datagram is not a well-formed sealed frame (before any key is tried).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than a header, wrong magic or version, unknown code in a field, or a length
    /// that does not add up.
    #[error("not a well-formed sealed frame")]
    Malformed,
}

fn channel_code(channel: Option<Channel>) -> u8 {
    match channel {
        None => 0,
        Some(Channel::Global) => 1,
        Some(Channel::Data) => 2,
        Some(Channel::Commit) => 3,
        Some(Channel::Checkpoint) => 4,
    }
}

fn channel_from(code: u8) -> Option<Option<Channel>> {
    Some(match code {
        0 => None,
        1 => Some(Channel::Global),
        2 => Some(Channel::Data),
        3 => Some(Channel::Commit),
        4 => Some(Channel::Checkpoint),
        _ => return None,
    })
}

fn mode_from(code: u8) -> Option<Mode> {
    [Mode::Off, Mode::Authenticate, Mode::Encrypt].into_iter().find(|m| m.code() == code)
}

impl Header {
    /// The length of the header with its destination and cookie: what the associated data
    /// covers.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + if self.to.is_some() { TO_LEN } else { 0 } + if self.cookie.is_some() { COOKIE_LEN } else { 0 }
    }

    /// The whole datagram's length for this header.
    pub fn datagram_len(&self) -> usize {
        self.header_len() + self.len as usize + self.trailer_len()
    }

    /// The trailer's length for this header.
    pub fn trailer_len(&self) -> usize {
        match (self.mode, self.tier) {
            (Mode::Off, _) => 4,
            (_, Tier::Group) if self.checkpoint_tag => 3 * TAG_LEN,
            (_, Tier::Group) => 2 * TAG_LEN,
            _ => TAG_LEN,
        }
    }

    /// Appends its bytes (the destination and cookie included) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.encode());
        if let Some(to) = self.to {
            out.extend_from_slice(&to.0.to_le_bytes());
        }
        if let Some(cookie) = &self.cookie {
            out.extend_from_slice(cookie);
        }
    }

    /// The fixed part of its bytes (without the cookie).
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = VERSION;
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        h[3] = flag(self.cookie.is_some(), FLAG_COOKIE)
            | flag(self.challenge, FLAG_CHALLENGE)
            | flag(self.checkpoint_tag, FLAG_CHECKPOINT_TAG)
            | flag(self.to.is_some(), FLAG_TO);
        h[4] = self.mode.code();
        h[5] = self.suite;
        h[6] = self.tier.code();
        h[7] = channel_code(self.channel);
        h[8..10].copy_from_slice(&self.key_id.to_le_bytes());
        h[10..18].copy_from_slice(&self.cluster.0.to_le_bytes());
        h[18..26].copy_from_slice(&self.pid.0.to_le_bytes());
        h[26..34].copy_from_slice(&self.session.time_ms.to_le_bytes());
        h[34..42].copy_from_slice(&self.session.random.to_le_bytes());
        h[42..50].copy_from_slice(&self.counter.to_le_bytes());
        h[50..54].copy_from_slice(&self.len.to_le_bytes());
        h
    }

    /// Reads the header of `datagram` and checks that its length adds up.
    pub fn decode(datagram: &[u8]) -> Result<Header, EnvelopeError> {
        let h: &[u8; HEADER_LEN] =
            datagram.get(..HEADER_LEN).and_then(|h| h.try_into().ok()).ok_or(EnvelopeError::Malformed)?;
        let flags = h[3];
        let known = flags & !(FLAG_COOKIE | FLAG_CHALLENGE | FLAG_CHECKPOINT_TAG | FLAG_TO) == 0;
        let challenge = flags & FLAG_CHALLENGE != 0;
        if h[0..2] != MAGIC || h[2] != VERSION || !known || (challenge && flags & FLAG_COOKIE == 0) {
            return Err(EnvelopeError::Malformed);
        }
        let to = if flags & FLAG_TO != 0 {
            let bytes = datagram.get(HEADER_LEN..HEADER_LEN + TO_LEN).ok_or(EnvelopeError::Malformed)?;
            Some(Pid(u64::from_le_bytes(bytes.try_into().map_err(|_| EnvelopeError::Malformed)?)))
        } else {
            None
        };
        let at = HEADER_LEN + if to.is_some() { TO_LEN } else { 0 };
        let cookie = if flags & FLAG_COOKIE != 0 {
            let bytes = datagram.get(at..at + COOKIE_LEN).ok_or(EnvelopeError::Malformed)?;
            Some(bytes.try_into().map_err(|_| EnvelopeError::Malformed)?)
        } else {
            None
        };
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
        let header = Header {
            mode: mode_from(h[4]).ok_or(EnvelopeError::Malformed)?,
            suite: h[5],
            tier: Tier::from_code(h[6]).ok_or(EnvelopeError::Malformed)?,
            channel: channel_from(h[7]).ok_or(EnvelopeError::Malformed)?,
            key_id: u16::from_le_bytes([h[8], h[9]]),
            cluster: ClusterId(u64_at(10)),
            pid: Pid(u64_at(18)),
            session: Session { time_ms: u64_at(26), random: u64_at(34) },
            counter: u64_at(42),
            len: u32::from_le_bytes([h[50], h[51], h[52], h[53]]),
            to,
            cookie,
            challenge,
            checkpoint_tag: flags & FLAG_CHECKPOINT_TAG != 0,
        };
        let tag_misplaced = header.checkpoint_tag && (header.tier != Tier::Group || header.mode == Mode::Off);
        let to_misplaced = header.to.is_some() != header.channel.is_none();
        if header.datagram_len() != datagram.len() || (challenge && header.len != 0) || tag_misplaced || to_misplaced {
            return Err(EnvelopeError::Malformed);
        }
        Ok(header)
    }
}

/// A relay envelope around `sealed`.
pub fn relay_envelope(sealed: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(RELAY_ENVELOPE_LEN + sealed.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[VERSION, RELAY_FLAG]);
    out.extend_from_slice(sealed);
    Bytes::from(out)
}

/// The sealed frame inside a relay envelope, or `None` when `datagram` is not one.
pub fn unwrap_relayed(datagram: &Bytes) -> Option<Bytes> {
    let is_envelope = datagram.len() > RELAY_ENVELOPE_LEN
        && datagram[0..2] == MAGIC
        && datagram[2] == VERSION
        && datagram[3] == RELAY_FLAG;
    is_envelope.then(|| datagram.slice(RELAY_ENVELOPE_LEN..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            mode: Mode::Encrypt,
            suite: 1,
            tier: Tier::Group,
            channel: Some(Channel::Commit),
            key_id: 3,
            cluster: ClusterId(0x0102_0304_0506_0708),
            pid: Pid(u64::MAX),
            session: Session { time_ms: 1_700_000_000_000, random: 42 },
            counter: 7,
            len: 5,
            to: None,
            cookie: None,
            challenge: false,
            checkpoint_tag: false,
        }
    }

    fn encoded(h: &Header, rest: usize) -> Vec<u8> {
        let mut d = Vec::new();
        h.encode_into(&mut d);
        d.resize(d.len() + rest, 0);
        d
    }

    #[test]
    fn header_round_trips_and_length_must_add_up() {
        let h = header();
        let mut datagram = encoded(&h, 5 + 32);
        assert_eq!(Header::decode(&datagram), Ok(h));
        assert_eq!(Header::decode(&datagram[..datagram.len() - 1]), Err(EnvelopeError::Malformed));
        datagram.push(0);
        assert_eq!(Header::decode(&datagram), Err(EnvelopeError::Malformed));
        let server = Header { tier: Tier::Server, ..h };
        assert_eq!(Header::decode(&encoded(&server, 5 + 16)), Ok(server), "no second tag under the server key");
        let with_cookie = Header { cookie: Some([7; COOKIE_LEN]), ..h };
        assert_eq!(Header::decode(&encoded(&with_cookie, 5 + 32)), Ok(with_cookie));
        let challenge = Header { cookie: Some([7; COOKIE_LEN]), challenge: true, len: 0, ..h };
        assert_eq!(Header::decode(&encoded(&challenge, 32)), Ok(challenge));
        let tagged = Header { checkpoint_tag: true, ..h };
        assert_eq!(Header::decode(&encoded(&tagged, 5 + 48)), Ok(tagged), "a checkpoint tag after the second");
        let misplaced = Header { checkpoint_tag: true, ..server };
        assert_eq!(Header::decode(&encoded(&misplaced, 5 + 32)), Err(EnvelopeError::Malformed), "group tier only");
        let unicast = Header { channel: None, to: Some(Pid(9)), cookie: Some([7; COOKIE_LEN]), ..h };
        assert_eq!(Header::decode(&encoded(&unicast, 5 + 32)), Ok(unicast), "destination, then cookie");
        let nameless = Header { channel: None, ..h };
        assert_eq!(Header::decode(&encoded(&nameless, 5 + 32)), Err(EnvelopeError::Malformed), "to one, naming none");
        let named = Header { to: Some(Pid(9)), ..h };
        assert_eq!(Header::decode(&encoded(&named, 5 + 32)), Err(EnvelopeError::Malformed), "a channel's, naming one");
        let bad = Header { len: 5, ..challenge };
        assert_eq!(Header::decode(&encoded(&bad, 5 + 32)), Err(EnvelopeError::Malformed), "a challenge has no payload");
    }

    #[test]
    fn bad_fields_are_malformed() {
        let good = encoded(&header(), 37);
        for (at, value) in [(0, b'X'), (2, 1), (3, 1), (3, 2), (3, 4), (3, 8), (3, 16), (4, 3), (6, 3), (7, 5)] {
            let mut d = good.clone();
            d[at] = value;
            assert_eq!(Header::decode(&d), Err(EnvelopeError::Malformed), "byte {at} = {value}");
        }
        assert_eq!(Header::decode(&[]), Err(EnvelopeError::Malformed));
    }

    #[test]
    fn relay_envelopes_wrap_byte_for_byte() {
        let sealed = Bytes::from_static(b"SM\x02\x00sealed");
        let env = relay_envelope(&sealed);
        assert_eq!(unwrap_relayed(&env), Some(sealed.clone()));
        assert_eq!(unwrap_relayed(&sealed), None);
    }
}
