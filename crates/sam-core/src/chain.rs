//! The commit chain (DESIGN section 12, signed frames): `C_s = SHA-256(C_{s-1} ‖ s ‖ entry_s)`
//! over the committed entries, from [`Chain::GENESIS`] before number 1.
//!
//! Everyone who learns the committed entries computes it the same way: the sequencer and the
//! commit servers (a new sequencer starts from its commit server's), the members as they learn
//! entries, the checkpoint servers at each checkpoint (an advertised checkpoint carries `C_c`,
//! from which a member that restores it goes on). With signed frames the sequencer's
//! heartbeats name `(committed, C_committed)` under its signature, and a member delivers a
//! number only once a signed chain covers it: one signature vouches for every entry before it,
//! so signing at most once a millisecond costs the same at any rate.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::ids::Seq;
use crate::message::Entry;

/// The chain value after some committed number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Chain(pub [u8; 32]);

impl Chain {
    /// The value before number 1.
    pub const GENESIS: Chain = Chain([0; 32]);

    /// The value after `seq`, which holds `entry`, following this one.
    pub fn then(&self, seq: Seq, entry: &Entry) -> Chain {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(seq.0.to_le_bytes());
        match entry {
            Entry::Msg { mid, digest } => {
                h.update([1]);
                h.update(mid.source.pid.0.to_le_bytes());
                h.update(mid.source.incarnation.0.to_le_bytes());
                h.update(mid.counter.to_le_bytes());
                h.update(digest.0);
            }
            Entry::Noop => h.update([0]),
        }
        Chain(h.finalize().into())
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Chain({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// A point of the chain: its value after `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ChainPoint {
    /// The number.
    pub seq: Seq,
    /// The chain after it.
    pub chain: Chain,
}

impl ChainPoint {
    /// The point before number 1.
    pub const GENESIS: ChainPoint = ChainPoint { seq: Seq::ZERO, chain: Chain::GENESIS };

    /// The point after the next number, which holds `entry`.
    pub fn then(self, entry: &Entry) -> ChainPoint {
        let seq = self.seq.next();
        ChainPoint { seq, chain: self.chain.then(seq, entry) }
    }
}

/// An Ed25519 signature over a heartbeat (DESIGN section 12), made and checked by the network
/// layer: the core only carries it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Digest, Incarnation, Mid, Pid, Source};

    fn msg(counter: u64) -> Entry {
        let source = Source { pid: Pid(7), incarnation: Incarnation(1) };
        Entry::Msg { mid: Mid { source, counter }, digest: Digest::of(&counter.to_le_bytes()) }
    }

    #[test]
    fn the_chain_binds_every_entry_and_its_number() {
        let entries = [msg(1), Entry::Noop, msg(2)];
        let walk = |entries: &[Entry]| entries.iter().fold(ChainPoint::GENESIS, |p, e| p.then(e));
        let base = walk(&entries);
        assert_eq!(base.seq, Seq(3));
        assert_eq!(base, walk(&entries), "deterministic");
        for i in 0..entries.len() {
            let mut forged = entries;
            forged[i] = msg(99);
            assert_ne!(walk(&forged).chain, base.chain, "entry {i} is bound");
        }
        let shifted = ChainPoint { seq: Seq(1), chain: Chain::GENESIS };
        assert_ne!(entries.iter().fold(shifted, |p, e| p.then(e)).chain, base.chain, "numbers are bound");
    }
}
