//! Log compaction: the disk a server uses stays bounded (DESIGN section 5, garbage collection).
//!
//! Checkpoints let the roles forget what they cover, but the log holds records of everything
//! ever written. So the node looks at its oldest sealed segment from time to time: it reads it
//! off the event loop's thread, asks the process which records it still needs
//! (`Process::needs`), and, when at most half are, appends copies of those, waits until the
//! copies and every write before them are durable, and retires the segment. A segment that is
//! mostly needed is looked at again later. Replay does not depend on the order of the records
//! kept, so the copies may follow newer records.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sam_store::{Position, SealedInfo, StoreError};

/// How often an idle node looks at its oldest sealed segment.
pub const COMPACT_CHECK: Duration = Duration::from_secs(1);
/// How long a segment found mostly needed waits before it is read again.
pub const COMPACT_RETRY: Duration = Duration::from_secs(5);

/// A sealed segment read by a blocking task.
pub(crate) type Read = Result<(SealedInfo, Vec<(Position, Bytes)>), StoreError>;

/// Where compaction stands.
#[derive(Debug)]
pub(crate) enum Compaction {
    /// Nothing under way; the next look is due then.
    Idle { next: Instant },
    /// A task reads the oldest sealed segment.
    Reading,
    /// Copies of what the segment holds that is still needed are written: once everything up
    /// to `after` is durable, the segment, which ends at `end`, is retired.
    Retiring { end: Position, after: Position },
}

impl Compaction {
    /// Compaction of a node that just started.
    pub(crate) fn new(now: Instant) -> Compaction {
        Compaction::Idle { next: now + COMPACT_CHECK }
    }

    /// Whether a look at the oldest sealed segment is due.
    pub(crate) fn due(&self, now: Instant) -> bool {
        matches!(self, Compaction::Idle { next } if now >= *next)
    }

    /// Whether a segment can be retired now that everything before `durable` is durable;
    /// returns where it ends.
    pub(crate) fn retirable(&self, durable: Position) -> Option<Position> {
        match *self {
            Compaction::Retiring { end, after } if durable >= after => Some(end),
            _ => None,
        }
    }
}

/// Whether a segment of `total` records of which `needed` are still needed is worth copying
/// forward now: at most half of it is written again.
pub(crate) fn worth_compacting(needed: usize, total: usize) -> bool {
    needed * 2 <= total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_is_retired_only_once_its_copies_are_durable() {
        let c = Compaction::Retiring { end: Position(10), after: Position(25) };
        assert_eq!(c.retirable(Position(24)), None);
        assert_eq!(c.retirable(Position(25)), Some(Position(10)));
        let now = Instant::now();
        assert!(!Compaction::new(now).due(now));
        assert!(Compaction::new(now).due(now + COMPACT_CHECK));
        assert!(worth_compacting(5, 10) && !worth_compacting(6, 10));
    }
}
