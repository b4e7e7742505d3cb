//! What an operator should know happened inside a process (issue: logs): the core does no IO,
//! so state changes come out as data, in [`crate::Action::Notice`]; the node logs them, the
//! simulator prints them with `sam sim --trace`.

use std::fmt;

use crate::ids::{Epoch, Seq};

/// A state change worth a line in a log: rare, never one per message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// This commit server stands for election (or, as sequencer, again: a peer that lost its
    /// storage needs a ballot).
    BallotStarted {
        /// The epoch it stands with.
        epoch: Epoch,
        /// Its committed prefix plus one.
        from_seq: Seq,
        /// Whether the sitting sequencer stands again.
        again: bool,
    },
    /// A ballot ended without office (a higher epoch, or no quorum in time).
    BallotLost {
        /// The ballot's epoch.
        epoch: Epoch,
    },
    /// This process took office as sequencer.
    TookOffice {
        /// Its epoch.
        epoch: Epoch,
        /// The first number of the range it recovered and re-proposes.
        from_seq: Seq,
        /// How many numbers that range holds.
        recovered: u64,
        /// Microseconds from the ballot's start.
        took_us: u64,
    },
    /// This process's sequencer stopped: a commit server promised a higher epoch.
    SteppedDown {
        /// The epoch it ran.
        epoch: Epoch,
    },
    /// This commit server, rejoining after it lost its storage, votes again.
    Rejoined {
        /// The epoch it took as its promise.
        epoch: Epoch,
    },
    /// The sequencer advertises a new checkpoint.
    CheckpointAdvertised {
        /// Its number.
        seq: Seq,
    },
    /// This member fetches a checkpoint to catch up from (it fell far behind, the log it
    /// needs is gone, or its own state diverged).
    CatchingUp {
        /// The checkpoint's number.
        checkpoint: Seq,
        /// Where its delivered prefix stands.
        delivered: Seq,
    },
    /// This member restored a checkpoint and delivers on from the number after it.
    CaughtUp {
        /// The checkpoint's number.
        checkpoint: Seq,
        /// The snapshot bytes fetched for it.
        bytes: u64,
    },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Notice::BallotStarted { epoch, from_seq, again: false } => {
                write!(f, "standing for election with epoch {epoch}, from number {from_seq}")
            }
            Notice::BallotStarted { epoch, from_seq, again: true } => write!(
                f,
                "standing again with epoch {epoch}, from number {from_seq}, for a server that lost its storage"
            ),
            Notice::BallotLost { epoch } => write!(f, "ballot of epoch {epoch} lost"),
            Notice::TookOffice { epoch, from_seq, recovered, took_us } => write!(
                f,
                "sequencer of epoch {epoch}: re-proposing {recovered} numbers from {from_seq}, {:.1} ms after the ballot began",
                took_us as f64 / 1_000.0
            ),
            Notice::SteppedDown { epoch } => write!(f, "sequencer of epoch {epoch} stepped down: a higher epoch was promised"),
            Notice::Rejoined { epoch } => {
                write!(f, "rejoined after losing storage: voting again from epoch {epoch}")
            }
            Notice::CheckpointAdvertised { seq } => write!(f, "advertising the checkpoint at {seq}"),
            Notice::CatchingUp { checkpoint, delivered } => {
                write!(f, "catching up from the checkpoint at {checkpoint} (delivered through {delivered})")
            }
            Notice::CaughtUp { checkpoint, bytes } => {
                write!(f, "caught up: restored the checkpoint at {checkpoint} ({bytes} bytes fetched)")
            }
        }
    }
}
