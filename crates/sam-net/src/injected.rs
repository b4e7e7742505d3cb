//! Faults injected where datagrams arrive, for tests of the real program (the `[testing]`
//! section of the configuration; never meant for production): each datagram received is
//! dropped, or handed to the node twice, at the rates set. The protocol must mask both, as it
//! masks the network's own loss and duplication.

use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// The most a rate may be, in parts per thousand: beyond half, nothing is tested but patience.
pub const MAX_PER_MILLE: u16 = 500;

/// Rates of injected faults, in parts per thousand of the datagrams received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InjectedFaults {
    /// Datagrams dropped.
    pub drop_per_mille: u16,
    /// Datagrams handed over twice.
    pub duplicate_per_mille: u16,
}

/// The faults of one reading task and the randomness that picks their datagrams.
#[derive(Debug)]
pub(crate) struct Injector {
    faults: InjectedFaults,
    rng: Xoshiro256PlusPlus,
}

impl Injector {
    /// An injector of `faults`, its choices seeded by `seed`.
    pub(crate) fn new(faults: InjectedFaults, seed: u64) -> Injector {
        Injector { faults, rng: Xoshiro256PlusPlus::seed_from_u64(seed) }
    }

    /// How many times the next datagram is taken: 0 (dropped), 1, or 2 (duplicated).
    pub(crate) fn copies(&mut self) -> usize {
        if self.faults == InjectedFaults::default() {
            return 1;
        }
        let drop = self.faults.drop_per_mille.min(MAX_PER_MILLE);
        let duplicate = self.faults.duplicate_per_mille.min(MAX_PER_MILLE);
        match (self.rng.next_u32() % 1_000) as u16 {
            roll if roll < drop => 0,
            roll if roll < drop + duplicate => 2,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_kept_roughly_and_none_means_every_datagram_once() {
        let mut plain = Injector::new(InjectedFaults::default(), 1);
        assert!((0..1_000).all(|_| plain.copies() == 1));
        let faults = InjectedFaults { drop_per_mille: 100, duplicate_per_mille: 50 };
        let mut injector = Injector::new(faults, 2);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[injector.copies()] += 1;
        }
        assert!((9_000..11_000).contains(&counts[0]), "{counts:?}");
        assert!((4_000..6_000).contains(&counts[2]), "{counts:?}");
    }
}
