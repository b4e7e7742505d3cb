//! The log: appending records, rotating segments, retiring old ones.

use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bytes::Bytes;

use crate::disk::{self, DirLock};
use crate::error::StoreError;
use crate::format::{self, RECORD_LEN_MAX, SEGMENT_HEADER_LEN};
use crate::group_commit::{DurableWatch, GroupCommit, OnDurable, OnFsync};
use crate::recovery::{self, Recovered};
use crate::segment::{SealedSegment, Segment, SegmentPlan};
use crate::Position;

/// The default size at which the log moves on to a new segment: 64 MiB.
pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 64 << 20;
/// The smallest segment size accepted (small segments are for tests).
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 64;
/// The largest segment size accepted: recovery reads a whole segment into memory.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 1 << 30;
/// Buffered records are written out (and an fsync requested) once they take this many bytes,
/// even without a [`Log::flush`].
const BUFFER_BYTES_MAX: usize = 1 << 20;

/// When a record counts as durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// After an `fdatasync` that started after it was written returned: it survives a power
    /// failure. The configuration name is `fsync`.
    #[default]
    Fsync,
    /// Once written to the operating system's page cache: it survives a crash of the process,
    /// not of the machine. The configuration name is `os`.
    Os,
}

impl Durability {
    /// The configuration name: `fsync` or `os`.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Os => "os",
        }
    }
}

impl FromStr for Durability {
    type Err = StoreError;

    fn from_str(name: &str) -> Result<Durability, StoreError> {
        match name {
            "fsync" => Ok(Durability::Fsync),
            "os" => Ok(Durability::Os),
            other => Err(StoreError::UnknownDurability(other.to_string())),
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to run a log.
#[derive(Clone)]
pub struct LogOptions {
    /// When records count as durable. Default: [`Durability::Fsync`].
    pub durability: Durability,
    /// The size at which the log starts a new segment, between [`SEGMENT_SIZE_BYTES_MIN`] and
    /// [`SEGMENT_SIZE_BYTES_MAX`]; a record larger than that gets a segment of its own. Default:
    /// [`SEGMENT_SIZE_BYTES_DEFAULT`].
    pub segment_size_bytes: u64,
    /// Reserve each new segment's blocks up to its full size when creating it (`fallocate`), so
    /// that appends do not grow the file and `fdatasync` has less metadata to write. Default: on.
    pub preallocate: bool,
    /// Called with the new durable position each time it grows. Default: none.
    pub on_durable: Option<OnDurable>,
    /// Called with how long each fsync took. Default: none.
    pub on_fsync: Option<OnFsync>,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            durability: Durability::Fsync,
            segment_size_bytes: SEGMENT_SIZE_BYTES_DEFAULT,
            preallocate: true,
            on_durable: None,
            on_fsync: None,
        }
    }
}

impl fmt::Debug for LogOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogOptions")
            .field("durability", &self.durability)
            .field("segment_size_bytes", &self.segment_size_bytes)
            .field("preallocate", &self.preallocate)
            .field("on_durable", &self.on_durable.as_ref().map(|_| "callback"))
            .finish()
    }
}

impl LogOptions {
    fn validate(&self) -> Result<(), StoreError> {
        if !(SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX).contains(&self.segment_size_bytes) {
            return Err(StoreError::InvalidOptions("segment_size_bytes out of range"));
        }
        Ok(())
    }

    fn segment_plan(&self) -> SegmentPlan {
        SegmentPlan {
            durability: self.durability,
            preallocate_bytes: self.preallocate.then_some(self.segment_size_bytes),
        }
    }
}

/// A sealed segment, to read with [`read_sealed`] (off the thread that drives the log, if
/// need be: a sealed segment never changes) before compacting it away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedInfo {
    /// Its file.
    pub path: PathBuf,
    /// The position of its first record.
    pub base: Position,
    /// The position after its last record: where the next segment starts.
    pub end: Position,
}

/// Reads the records of a sealed segment, verifying each; any damage is an error.
pub fn read_sealed(segment: &SealedInfo) -> Result<Vec<(Position, Bytes)>, StoreError> {
    let mut records = Vec::new();
    crate::recovery::read_sealed(&segment.path, segment.base, &mut records)?;
    Ok(records)
}

/// An append-only log of byte records in a directory, with pipelined group commit.
///
/// One process, one thread: the log is driven by its owner (it is `Send`, not shared); only the
/// durable position is read from elsewhere, through a [`DurableWatch`]. Any write or fsync error
/// fails the log for good ([`StoreError::Failed`]); reopen it to recover what reached the disk.
pub struct Log {
    dir: PathBuf,
    options: LogOptions,
    /// Sealed segments, oldest first; each ends where the next (or the active one) starts.
    sealed: VecDeque<SealedSegment>,
    active: Segment,
    /// Framed records not yet written to the active segment's file.
    buffer: Vec<u8>,
    /// The position the next record gets.
    next: Position,
    commit: GroupCommit,
    _lock: DirLock,
}

impl Log {
    /// Opens the log in `dir`, creating the directory if it is missing, and returns the log with
    /// every intact record it holds. A torn tail a crash left is discarded and reported; any
    /// other damage is [`StoreError::Corrupt`]. Fails with [`StoreError::Locked`] if another log
    /// has the directory open.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<(Log, Recovered), StoreError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        create_dir(&dir, options.durability)?;
        let lock = disk::lock_dir(&dir)?;
        let recovery = recovery::recover(&dir, options.segment_plan())?;
        let next = recovery.active.end();
        let file = recovery.active.file.clone();
        let commit =
            GroupCommit::start(options.durability, next, file, options.on_durable.clone(), options.on_fsync.clone())
                .map_err(|source| StoreError::io("start the sync thread for", &dir, source))?;
        let log = Log {
            dir,
            options,
            sealed: recovery.sealed,
            active: recovery.active,
            buffer: Vec::new(),
            next,
            commit,
            _lock: lock,
        };
        Ok((log, recovery.recovered))
    }

    /// Appends a record and returns its position. The record is only buffered: it is written by
    /// the next [`Log::flush`] (or earlier, when the buffer grows large or the segment fills up)
    /// and durable once [`Log::durable`] passes its position.
    pub fn append(&mut self, record: &[u8]) -> Result<Position, StoreError> {
        self.commit.check()?;
        if record.len() > RECORD_LEN_MAX {
            return Err(StoreError::RecordTooLong { len: record.len(), max: RECORD_LEN_MAX });
        }
        let frame_bytes = format::frame_len(record.len()) as u64;
        if self.active.records > 0 && self.active.len_bytes + frame_bytes > self.options.segment_size_bytes {
            self.rotate()?;
        }
        format::encode_record(&mut self.buffer, self.active.salt, record);
        self.active.len_bytes += frame_bytes;
        self.active.records += 1;
        let position = self.next;
        self.next = position.next();
        if self.buffer.len() >= BUFFER_BYTES_MAX {
            self.flush()?;
        }
        Ok(position)
    }

    /// Writes the buffered records to the file and asks for them to be made durable, without
    /// waiting: under [`Durability::Fsync`] the sync thread covers them with its next fsync;
    /// under [`Durability::Os`] they are durable when this returns.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.commit.check()?;
        self.write_buffer()?;
        self.commit.written(self.next);
        Ok(())
    }

    /// Flushes and blocks until every record appended so far is durable; returns the durable
    /// position. For tests, tools and shutdown: an event loop uses [`Log::flush`] and waits on
    /// the durable position instead.
    pub fn sync(&mut self) -> Result<Position, StoreError> {
        self.flush()?;
        self.commit.watch().wait_for(self.next, None)
    }

    /// Syncs and closes the log; returns the durable position.
    pub fn close(mut self) -> Result<Position, StoreError> {
        self.sync()
    }

    /// The durable position: every record before it is durable. Never blocks.
    pub fn durable(&self) -> Position {
        self.commit.durable()
    }

    /// A handle to read or wait for the durable position from any thread.
    pub fn watch(&self) -> DurableWatch {
        self.commit.watch()
    }

    /// The position of the oldest record kept (records before it were retired).
    pub fn start(&self) -> Position {
        self.sealed.front().map_or(self.active.base, |oldest| oldest.base)
    }

    /// The position the next appended record gets.
    pub fn end(&self) -> Position {
        self.next
    }

    /// The number of segment files: the sealed ones and the one appended to.
    pub fn segments(&self) -> usize {
        self.sealed.len() + 1
    }

    /// The number of fsyncs the group-commit thread has run (not counting the few made when a
    /// segment is created or sealed).
    pub fn fsyncs(&self) -> u64 {
        self.commit.fsyncs()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes every segment all of whose records lie before `position`, oldest first, and
    /// returns how many it deleted; the segment being appended to is never deleted, so some
    /// records before `position` may stay and be recovered after a restart.
    ///
    /// This is garbage collection of what a checkpoint covers: before calling it, re-append
    /// anything still needed from before `position` and wait until that is durable, since the old
    /// copies are gone once this returns (under [`Durability::Fsync`] each deletion is made
    /// durable before the next).
    pub fn retire_before(&mut self, position: Position) -> Result<usize, StoreError> {
        let mut retired = 0;
        while let Some(oldest) = self.sealed.front() {
            let end = self.sealed.get(1).map_or(self.active.base, |next| next.base);
            if end > position {
                break;
            }
            fs::remove_file(&oldest.path).map_err(|source| StoreError::io("remove", &oldest.path, source))?;
            self.sealed.pop_front();
            retired += 1;
            // One removal at a time, so that a crash can only leave a suffix of the segments,
            // never a gap that recovery would take for a lost segment.
            if self.options.durability == Durability::Fsync {
                disk::sync_dir(&self.dir)?;
            }
        }
        Ok(retired)
    }

    /// The oldest sealed segment (every record of it is durable), if there is one besides the
    /// active segment: the one [`Log::retire_before`] retires first.
    pub fn oldest_sealed(&self) -> Option<SealedInfo> {
        let oldest = self.sealed.front()?;
        let end = self.sealed.get(1).map_or(self.active.base, |next| next.base);
        Some(SealedInfo { path: oldest.path.clone(), base: oldest.base, end })
    }

    /// Seals the active segment and starts the next one at the next position. The sealed segment
    /// is durable before the new one takes a record, so a crash can tear only the last segment.
    fn rotate(&mut self) -> Result<(), StoreError> {
        self.check_room()?;
        self.flush()?;
        self.active.seal(self.options.durability).map_err(|error| self.fail(error))?;
        let next =
            Segment::create(&self.dir, self.next, self.options.segment_plan()).map_err(|error| self.fail(error))?;
        let sealed = std::mem::replace(&mut self.active, next);
        self.sealed.push_back(sealed.into_sealed());
        self.commit.switch_file(self.active.file.clone());
        Ok(())
    }

    /// Refuses to start a segment the file system has no room for, before anything changes:
    /// a full disk is a state to wait out, not damage.
    fn check_room(&self) -> Result<(), StoreError> {
        let stat = rustix::fs::statvfs(&self.dir)
            .map_err(|e| StoreError::io("statvfs", &self.dir, io::Error::from_raw_os_error(e.raw_os_error())))?;
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        let needed = self.options.segment_size_bytes.saturating_add(ROOM_MARGIN_BYTES);
        if available < needed {
            return Err(StoreError::Full { dir: self.dir.clone(), needed, available });
        }
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<(), StoreError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let written = (&*self.active.file).write_all(&self.buffer);
        self.buffer.clear();
        written.map_err(|source| self.fail(StoreError::io("write", &self.active.path, source)))
    }

    /// Fails the log for good with `error` (a write may be half done), and returns it.
    fn fail(&self, error: StoreError) -> StoreError {
        self.commit.fail(io::Error::other(error.to_string()));
        error
    }
}

impl Drop for Log {
    /// Writes the buffered records to the page cache, as a buffered writer does, and trims the
    /// preallocated zeros off the last segment, but does not wait for an fsync: use
    /// [`Log::close`] for that.
    fn drop(&mut self) {
        if self.commit.check().is_ok() && self.write_buffer().is_ok() {
            // Only saves the next open some reading: errors change nothing recovery relies on.
            let _ = self.active.trim();
        }
    }
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("start", &self.start())
            .field("end", &self.end())
            .field("durable", &self.durable())
            .field("segments", &(self.sealed.len() + 1))
            .finish()
    }
}

/// Creates the log directory if it is missing, and (under fsync durability) makes its entry in
/// the parent durable, so that a log whose records were reported durable cannot vanish whole.
/// Room kept free beyond the next segment (sealing trims and fsyncs metadata).
const ROOM_MARGIN_BYTES: u64 = 64 << 10;

fn create_dir(dir: &Path, durability: Durability) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    // Private to the user that runs the server (DESIGN section 12, "Storage").
    std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(|source| StoreError::io("create directory", dir, source))?;
    match dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        Some(parent) if durability == Durability::Fsync => disk::sync_dir(parent),
        _ => Ok(()),
    }
}

const _: () = assert!(SEGMENT_SIZE_BYTES_MIN >= (SEGMENT_HEADER_LEN + format::RECORD_HEADER_LEN) as u64);
