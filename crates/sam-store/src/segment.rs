//! One segment file: creating it, reading its records back, and sealing it when the log moves on.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::disk;
use crate::error::{RecordFault, StoreError};
use crate::format::{self, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::log::Durability;
use crate::Position;

/// How new segments are made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SegmentPlan {
    /// Sync new files and the directory before using them.
    pub durability: Durability,
    /// Extend new files to this size with reserved zeros, or not at all.
    pub preallocate_bytes: Option<u64>,
}

/// The segment the log appends to.
#[derive(Debug)]
pub(crate) struct Segment {
    /// The position of its first record.
    pub base: Position,
    /// Its file.
    pub path: PathBuf,
    /// The file, shared with the group-commit thread; its cursor is at `len_bytes` minus whatever
    /// the log still buffers.
    pub file: Arc<File>,
    /// The salt of its record checksums.
    pub salt: u64,
    /// The bytes its header and records take (written or buffered).
    pub len_bytes: u64,
    /// The number of records in it (written or buffered).
    pub records: u64,
    /// Whether its file was extended with zeros when created.
    pub preallocated: bool,
}

/// A segment the log no longer appends to; it ends where the next one starts.
#[derive(Debug)]
pub(crate) struct SealedSegment {
    /// The position of its first record.
    pub base: Position,
    /// Its file.
    pub path: PathBuf,
}

impl Segment {
    /// Creates the segment starting at `base` in `dir`; fails if its file exists.
    pub fn create(dir: &Path, base: Position, plan: SegmentPlan) -> Result<Segment, StoreError> {
        let path = dir.join(format::segment_file_name(base.0));
        // Private to the user that runs the server (DESIGN section 12, "Storage").
        let file = std::os::unix::fs::OpenOptionsExt::mode(&mut OpenOptions::new(), 0o600)
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path);
        let file = file.map_err(|source| StoreError::io("create", &path, source))?;
        Segment::initialize(dir, path, file, base, plan)
    }

    /// Replaces the segment file at `path` (whose header was torn before any record was written)
    /// with an empty segment starting at `base`.
    pub fn recreate(dir: &Path, path: PathBuf, base: Position, plan: SegmentPlan) -> Result<Segment, StoreError> {
        let file = OpenOptions::new().read(true).write(true).truncate(true).open(&path);
        let file = file.map_err(|source| StoreError::io("open", &path, source))?;
        Segment::initialize(dir, path, file, base, plan)
    }

    /// Reopens the last segment of a recovered log to append after its intact records, and
    /// preallocates it again if it was preallocated and then trimmed by a clean close.
    pub fn resume(
        path: PathBuf,
        header: SegmentHeader,
        scan: &SegmentScan,
        plan: SegmentPlan,
    ) -> Result<Segment, StoreError> {
        let file = OpenOptions::new().read(true).write(true).open(&path);
        let mut file = file.map_err(|source| StoreError::io("open", &path, source))?;
        let len_bytes = scan.intact_end as u64;
        file.seek(SeekFrom::Start(len_bytes)).map_err(|source| StoreError::io("seek", &path, source))?;
        match plan.preallocate_bytes {
            Some(size_bytes) if header.preallocated && len_bytes < size_bytes => {
                disk::preallocate(&file, size_bytes).map_err(|source| StoreError::io("fallocate", &path, source))?;
            }
            _ => {}
        }
        Ok(Segment {
            base: Position(header.base),
            path,
            file: Arc::new(file),
            salt: header.salt,
            len_bytes,
            records: scan.bodies.len() as u64,
            preallocated: header.preallocated,
        })
    }

    fn initialize(
        dir: &Path,
        path: PathBuf,
        mut file: File,
        base: Position,
        plan: SegmentPlan,
    ) -> Result<Segment, StoreError> {
        let header =
            SegmentHeader { base: base.0, salt: random_salt(), preallocated: plan.preallocate_bytes.is_some() };
        if let Some(len_bytes) = plan.preallocate_bytes {
            disk::preallocate(&file, len_bytes).map_err(|source| StoreError::io("fallocate", &path, source))?;
        }
        file.write_all(&header.encode()).map_err(|source| StoreError::io("write", &path, source))?;
        if plan.durability == Durability::Fsync {
            file.sync_all().map_err(|source| StoreError::io("fsync", &path, source))?;
            disk::sync_dir(dir)?;
        }
        Ok(Segment {
            base,
            path,
            file: Arc::new(file),
            salt: header.salt,
            len_bytes: SEGMENT_HEADER_LEN as u64,
            records: 0,
            preallocated: header.preallocated,
        })
    }

    /// The position after its last record.
    pub fn end(&self) -> Position {
        self.base.advance(self.records)
    }

    /// Cuts the preallocated zeros off the file and makes it durable, once every record of the
    /// segment is written and before the next segment is created: from then on the file's length
    /// is its content, so recovery treats any trailing byte of a segment that is not the last as
    /// damage.
    pub fn seal(&self, durability: Durability) -> Result<(), StoreError> {
        self.trim().map_err(|source| StoreError::io("truncate", &self.path, source))?;
        if durability == Durability::Fsync {
            self.file.sync_all().map_err(|source| StoreError::io("fsync", &self.path, source))?;
        }
        Ok(())
    }

    /// Cuts the preallocated zeros off the file, once every record is written. A clean close does
    /// it too, so that the next open reads only records, not the zeros.
    pub fn trim(&self) -> io::Result<()> {
        if self.preallocated {
            self.file.set_len(self.len_bytes)?;
        }
        Ok(())
    }

    /// What the log keeps of a sealed segment.
    pub fn into_sealed(self) -> SealedSegment {
        SealedSegment { base: self.base, path: self.path }
    }
}

/// What reading a segment file found.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    /// The byte ranges of the intact records' bodies, in order.
    pub bodies: Vec<Range<usize>>,
    /// The offset just past the last intact record.
    pub intact_end: usize,
    /// The first record that failed to verify, if the intact records do not reach the end.
    pub damage: Option<Damage>,
}

/// A record that failed to verify, and what follows it.
#[derive(Debug)]
pub(crate) struct Damage {
    /// Where the record starts.
    pub offset: usize,
    /// Why it failed.
    pub fault: RecordFault,
    /// Whether a valid record starts somewhere after it.
    pub valid_record_after: bool,
}

/// Reads the records of `segment`, a whole segment file whose header is `header`.
pub(crate) fn scan(segment: &[u8], header: SegmentHeader) -> SegmentScan {
    let mut bodies = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    while offset < segment.len() {
        match format::verify_record(segment, offset, header.salt) {
            Ok(body) => {
                offset = body.end;
                bodies.push(body);
            }
            Err(fault) => {
                // A record header is never all zero, so no record starts in the trailing zeros.
                let starts = offset + 1..nonzero_end(segment);
                let damage = Damage {
                    offset,
                    fault,
                    valid_record_after: format::next_valid_record(segment, starts, header.salt).is_some(),
                };
                return SegmentScan { bodies, intact_end: offset, damage: Some(damage) };
            }
        }
    }
    SegmentScan { bodies, intact_end: offset, damage: None }
}

/// The offset just past the last non-zero byte of `bytes`. Compares whole pages against zeros
/// first, since the zeros of a preallocated segment can be most of it.
pub(crate) fn nonzero_end(bytes: &[u8]) -> usize {
    const ZERO_PAGE: [u8; 4096] = [0; 4096];
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(ZERO_PAGE.len());
        if bytes[start..end] != ZERO_PAGE[..end - start] {
            return bytes[start..end].iter().rposition(|&byte| byte != 0).map_or(start, |last| start + last + 1);
        }
        end = start;
    }
    0
}

/// A salt no other segment is likely to share, so that records of one segment never verify in
/// another.
fn random_salt() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos());
    RandomState::new().hash_one((nanos, std::process::id()))
}
