//! SAM storage: a durable, append-only log of opaque records, with pipelined group commit.
//!
//! The protocol core describes what a role stores as a stream of records replayed at start
//! (`Record` in `sam-core`), and holds back every acknowledgement until the host reports the
//! write durable (DESIGN section 8). This crate is that host's disk: it appends byte records to
//! checksummed segment files, makes them durable in batches, tells which records are durable, and
//! after a crash returns every intact record, discarding only the torn tail a crash can leave. It
//! knows nothing of SAM's records: the node encodes them to bytes. A segment log rather than an
//! embedded key-value store, because the core already is a log: a store would add a second log
//! (its own) under ours.
//!
//! # Driving a log
//!
//! 1. [`Log::open`] a directory: it returns the log and the [`Recovered`] records, oldest first,
//!    each with its [`Position`]. Replay them to rebuild the role's state.
//! 2. [`Log::append`] each record to store; it returns the record's position at once (the bytes
//!    are only buffered).
//! 3. After a batch of appends (say, after handling every input that was ready), call
//!    [`Log::flush`]: it writes the batch to the file and asks for an fsync. It does not wait.
//! 4. Learn what is durable from [`Log::durable`], a [`DurableWatch`], or the
//!    [`LogOptions::on_durable`] callback; send an acknowledgement only once its record's
//!    position is below the durable position.
//! 5. Once a checkpoint covers old records, re-append whatever is still needed, wait until it is
//!    durable, and [`Log::retire_before`] the checkpoint to delete the segments it covers.
//!
//! ```
//! use sam_store::{Log, LogOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let (mut log, recovered) = Log::open(dir.path(), LogOptions::default())?;
//! assert!(recovered.records.is_empty());
//! let promise = log.append(b"promise epoch 7")?;
//! log.flush()?;
//! log.watch().wait_for(promise.next(), None)?; // or poll log.durable() from an event loop
//! assert!(promise < log.durable());
//! drop(log);
//!
//! let (_log, recovered) = Log::open(dir.path(), LogOptions::default())?;
//! assert_eq!(recovered.records[0].1, &b"promise epoch 7"[..]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Group commit
//!
//! A background thread owns the fsyncs (`fdatasync`). Whenever it is idle and records were
//! written since its last fsync, it starts one covering everything written so far; while that
//! fsync runs, the caller keeps appending and flushing, and the next fsync covers all of it
//! (DESIGN section 9). So one fsync covers one record under a light load and many under a heavy
//! one, and no record waits for more than two fsyncs. A position is reported durable only after
//! an fsync that started after the record was written has returned. With
//! [`Durability::Os`] there is no fsync: records are durable, for this crate's purposes, once
//! they are in the operating system's page cache, which survives a crash of the process but not
//! of the machine.
//!
//! # Recovery
//!
//! The format (see [`format`](mod@format)) checksums every record. A crash can only damage the end of the
//! last segment, so that is the only damage [`Log::open`] repairs: it truncates the torn tail and
//! reports its size in [`Recovered::torn_tail`]. Damage anywhere else, or a damaged record with
//! intact ones after it, is [`StoreError::Corrupt`], naming the file and offset: the log never
//! guesses which records to drop.
//!
//! Segments are preallocated ([`LogOptions::preallocate`]): appends do not grow the file, so an
//! `fdatasync` has less metadata to write (on this project's ext4 test machine, a small
//! `fdatasync` took about 130 µs instead of 160 to 200 µs).

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod disk;
mod error;
pub mod format;
mod group_commit;
mod log;
mod recovery;
mod segment;

use std::fmt;

pub use crate::error::{Corruption, RecordFault, StoreError};
pub use crate::group_commit::{DurableWatch, OnDurable, OnFsync};
pub use crate::log::{
    read_sealed, Durability, Log, LogOptions, SealedInfo, SEGMENT_SIZE_BYTES_DEFAULT, SEGMENT_SIZE_BYTES_MAX,
    SEGMENT_SIZE_BYTES_MIN,
};
pub use crate::recovery::{Recovered, TornTail};

/// Identifies a record: its index in the log, counting from 0 for the first record ever
/// appended, one per record, across segments and restarts.
///
/// A position is also a bound: "durable up to `p`" means every record *before* `p` is durable, so
/// `Position(0)` means none is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

impl Position {
    /// The position of the first record of a new log.
    pub const ZERO: Position = Position(0);

    /// The position after this one.
    pub fn next(self) -> Position {
        Position(self.0 + 1)
    }

    /// The position `count` records after this one.
    pub fn advance(self, count: u64) -> Position {
        Position(self.0 + count)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
