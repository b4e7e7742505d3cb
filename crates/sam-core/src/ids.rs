//! Identifiers of DESIGN section 3: processes, messages, sequence numbers, epochs, digests, time.

use std::fmt;

/// A process identifier: configured for servers, chosen by the application for clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pid(pub u64);

impl Pid {
    /// Member pids have this bit set (servers' pids never do).
    pub const MEMBER: u64 = 1 << 63;
    /// The low bits of a member pid that each process of one credential picks for itself.
    pub const INSTANCE_BITS: u32 = 32;

    /// Whether this is a member's pid.
    pub fn is_member(self) -> bool {
        self.0 & Self::MEMBER != 0
    }

    /// The credential a member pid belongs to (the pid with its instance bits cleared): what
    /// limits per sender count against (DESIGN section 12). A server's pid is its own.
    pub fn credential(self) -> Pid {
        if self.is_member() {
            Pid(self.0 & !((1 << Self::INSTANCE_BITS) - 1))
        } else {
            self
        }
    }
}

/// A random 64-bit value drawn by the host when a sender starts, so that a restarted sender
/// never reuses a [`Mid`] (DESIGN section 3, safety).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Incarnation(pub u64);

/// One incarnation of one sender: the stream whose counters make up its message ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Source {
    /// The sending process.
    pub pid: Pid,
    /// The sender's incarnation.
    pub incarnation: Incarnation,
}

/// A message id: unique over the life of the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mid {
    /// The sender incarnation that made the message.
    pub source: Source,
    /// The sender's counter, from 1 and without gaps for one source.
    pub counter: u64,
}

impl Mid {}

impl Mid {
    /// The message id that follows this one from the same source (saturating).
    pub fn next(self) -> Mid {
        Mid { source: self.source, counter: self.counter.saturating_add(1) }
    }
}

impl fmt::Display for Mid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:x}/{}", self.source.pid.0, self.source.incarnation.0, self.counter)
    }
}

/// A position in the total order: from 1, without gaps. `Seq(0)` means "nothing yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// Before the first number.
    pub const ZERO: Seq = Seq(0);

    /// The next number (saturating: numbers that come from the network may be anything).
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }

    /// This number moved forward by `n` (saturating).
    pub fn plus(self, n: u64) -> Seq {
        Seq(self.0.saturating_add(n))
    }

    /// This number moved back by `n`, stopping at zero.
    pub fn minus(self, n: u64) -> Seq {
        Seq(self.0.saturating_sub(n))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A sequencer's term of office. Totally ordered and unique per candidate: a round number in
/// the high 48 bits and the candidate's commit-server rank in the low 16 (DESIGN section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl Epoch {
    /// No epoch: what a fresh commit server has promised.
    pub const NONE: Epoch = Epoch(0);
    const RANK_BITS: u32 = 16;

    /// The epoch of `round` run by the commit server of `rank`.
    pub fn new(round: u64, rank: u16) -> Epoch {
        Epoch(round << Self::RANK_BITS | u64::from(rank))
    }

    /// The first epoch of a group: round 1, run by the commit server of rank 0.
    pub fn initial() -> Epoch {
        Epoch::new(1, 0)
    }

    /// The round number.
    pub fn round(self) -> u64 {
        self.0 >> Self::RANK_BITS
    }

    /// The rank of the commit server that runs this epoch.
    pub fn rank(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round(), self.rank())
    }
}

/// The SHA-256 digest of a payload, a block or a snapshot. Equal payloads have equal
/// digests, and a payload is checked against the digest its commit entry carries; being
/// collision-resistant in full (DESIGN section 12: SHA-256, not XXH3 nor a part of SHA-256),
/// it keeps a sender from making two payloads that pass for one, which signed frames rely on.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `payload`.
    pub fn of(payload: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(payload).into())
    }
}

impl fmt::Display for Digest {
    /// The 64 hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// A point in time, in microseconds since an arbitrary origin chosen by the host. The core
/// never reads a clock: every input carries `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    /// This time plus a duration in microseconds.
    pub fn plus_us(self, us: u64) -> Time {
        Time(self.0.saturating_add(us))
    }

    /// Microseconds from `earlier` to this time (zero if `earlier` is later).
    pub fn since_us(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// A closed range of sequence numbers `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqRange {
    /// The first number in the range.
    pub first: Seq,
    /// The last number in the range (not below `first`).
    pub last: Seq,
}

impl SeqRange {
    /// How many numbers the range holds.
    pub fn len(&self) -> u64 {
        if self.is_empty() {
            0
        } else {
            (self.last.0 - self.first.0).saturating_add(1)
        }
    }

    /// Whether the range is empty (`last < first`: ill-formed ranges hold nothing).
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }

    /// The numbers of the range in order.
    pub fn iter(&self) -> impl Iterator<Item = Seq> {
        (self.first.0..=self.last.0).map(Seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_sha_256() {
        // FIPS 180-2's example: SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 b00361a3...
        assert_eq!(Digest::of(b"abc").to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
