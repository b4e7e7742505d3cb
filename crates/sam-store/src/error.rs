//! What can go wrong. Every failure is a value: the log never panics on what it reads from disk,
//! and never drops a record silently: damage a crash cannot explain is a [`StoreError::Corrupt`]
//! that names the file and the byte offset.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Position;

/// An error of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An operating-system call failed.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        /// What the log was doing (`"read"`, `"write"`, `"fdatasync"`, ...).
        operation: &'static str,
        /// The file or directory it was doing it to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The log holds damage that a crash cannot leave: it will not guess what to drop.
    #[error(
        "corrupt log: {} at byte {offset}: {corruption}. The server will not guess what to drop: move its \
         storage directory aside and start it again without --init; a commit server then rejoins by copying \
         from its peers (the lost-storage rule, DESIGN section 6), a data server is refilled by retransmissions",
        path.display()
    )]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where in that file the damage starts.
        offset: u64,
        /// What is wrong there.
        corruption: Corruption,
    },
    /// The file system has no room for the next segment: nothing was appended and the log is
    /// as it was; appending again succeeds once there is room (DESIGN section 12: a full disk
    /// stops acceptance, not the process).
    #[error("{}: the file system has {available} bytes free; the next segment needs {needed}", dir.display())]
    Full {
        /// The log directory.
        dir: PathBuf,
        /// The bytes the next segment needs (with a margin).
        needed: u64,
        /// The bytes free for this user.
        available: u64,
    },
    /// Another process (or another [`Log`](crate::Log) in this one) has the directory open.
    #[error("log directory {} is in use by another process", .0.display())]
    Locked(PathBuf),
    /// A record is longer than [`RECORD_LEN_MAX`](crate::format::RECORD_LEN_MAX).
    #[error("record of {len} bytes is longer than the limit of {max} bytes")]
    RecordTooLong {
        /// The record's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An earlier write or fsync failed. After a failed fsync the kernel may have dropped the
    /// unwritten pages, so nothing written since the last good fsync can be trusted: the log
    /// accepts no more writes and never reports a later position durable. Reopen it to recover.
    #[error("the log failed earlier and accepts no more writes: {0}")]
    Failed(#[source] Arc<io::Error>),
    /// A [`LogOptions`](crate::LogOptions) value is out of range.
    #[error("invalid log options: {0}")]
    InvalidOptions(&'static str),
    /// A durability name other than `fsync` or `os`.
    #[error("unknown durability {0:?}: expected \"fsync\" or \"os\"")]
    UnknownDurability(String),
}

impl StoreError {
    /// An [`StoreError::Io`] for `operation` on `path`.
    pub(crate) fn io(operation: &'static str, path: &Path, source: io::Error) -> StoreError {
        StoreError::Io { operation, path: path.to_path_buf(), source }
    }

    /// A [`StoreError::Corrupt`] at `offset` of `path`.
    pub(crate) fn corrupt(path: &Path, offset: u64, corruption: Corruption) -> StoreError {
        StoreError::Corrupt { path: path.to_path_buf(), offset, corruption }
    }
}

/// What is wrong with a corrupt log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// A file has the segment extension but not a segment's name.
    #[error("a .seg file whose name is not 20 digits")]
    FileName,
    /// A segment header is damaged (in the last segment: and records follow it).
    #[error("damaged segment header")]
    SegmentHeader,
    /// A segment header names another first position than the file name does.
    #[error("the header says the segment starts at {recorded}, the file name says {named}")]
    SegmentBase {
        /// The position in the file name.
        named: Position,
        /// The position in the header.
        recorded: Position,
    },
    /// A segment does not start where the one before it ends: a segment is missing.
    #[error("expected a segment starting at {expected}, found one starting at {found}")]
    Gap {
        /// Where the previous segment ends.
        expected: Position,
        /// Where this one starts.
        found: Position,
    },
    /// A record failed to verify, and it is not the torn tail of the log: it is in a segment
    /// that is not the last, or valid records follow it.
    #[error("damaged record ({0})")]
    Record(RecordFault),
}

/// Why a record failed to verify (see the reading rules in [`format`](crate::format)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordFault {
    /// The header or the body runs past the end of the file.
    #[error("runs past the end of the file")]
    Truncated,
    /// The header is all zero bytes.
    #[error("zero header")]
    Zeroed,
    /// The header does not start with the record magic.
    #[error("bad magic")]
    Magic,
    /// The header checksum does not match.
    #[error("header checksum mismatch")]
    HeaderChecksum,
    /// Reserved header bytes are not zero.
    #[error("reserved bytes set")]
    Reserved,
    /// The body length exceeds the limit.
    #[error("length over the limit")]
    Length,
    /// The body checksum does not match.
    #[error("body checksum mismatch")]
    BodyChecksum,
}
