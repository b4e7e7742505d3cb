//! Opening a log directory after a clean stop or a crash: read every segment, verify every
//! record, repair the one kind of damage a crash leaves (a torn tail at the end of the last
//! segment), and refuse everything else.
//!
//! The rules rest on how the log writes: records are appended in order, a segment is sealed
//! (trimmed and made durable) before the next is created, and a new segment's header is durable
//! before it takes a record. So after a crash only the last segment can end in a half-written
//! record, and nothing valid can follow it.
//!
//! One refusal is deliberately strict. A power failure in the middle of an `fdatasync` may in
//! principle leave a later page of a write on disk without an earlier one: damage followed by
//! valid records, all of them never reported durable. Recovery cannot tell that from a bit flip
//! in a record that was acknowledged, so it reports [`Corruption::Record`] rather than drop
//! records it cannot prove were never acknowledged; what to do then (for a commit server: rejoin
//! as having lost its storage, DESIGN section 6) is the node's decision.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::disk;
use crate::error::{Corruption, StoreError};
use crate::format::{self, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::log::Durability;
use crate::segment::{self, SealedSegment, Segment, SegmentPlan, SegmentScan};
use crate::Position;

/// What [`Log::open`](crate::Log::open) found in the directory.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every intact record, oldest first, with its position. The bodies share one buffer per
    /// segment file, so keeping one alive keeps its segment's buffer alive: copy what you keep
    /// long.
    pub records: Vec<(Position, Bytes)>,
    /// The torn tail that was discarded, if a crash left one.
    pub torn_tail: Option<TornTail>,
}

/// The end of the last segment that a crash left half written, and that recovery discarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Where the discarded bytes started (the end of the last intact record).
    pub offset: u64,
    /// How many bytes were discarded (trailing zeros of a preallocated segment not counted).
    pub bytes: u64,
}

/// A recovered log, ready to append to.
#[derive(Debug)]
pub(crate) struct Recovery {
    /// The segments before the last, oldest first.
    pub sealed: VecDeque<SealedSegment>,
    /// The last segment.
    pub active: Segment,
    /// The records and the repair.
    pub recovered: Recovered,
}

/// Recovers the log in `dir` (which exists and is locked), creating its first segment if it has
/// none.
pub(crate) fn recover(dir: &Path, plan: SegmentPlan) -> Result<Recovery, StoreError> {
    let segments = list_segments(dir)?;
    let Some(((last_base, last_path), earlier)) = segments.split_last() else {
        let active = Segment::create(dir, Position::ZERO, plan)?;
        return Ok(Recovery { sealed: VecDeque::new(), active, recovered: Recovered::default() });
    };
    let mut records = Vec::new();
    let mut sealed = VecDeque::new();
    let mut expected = None;
    for (base, path) in earlier {
        expected = Some(recover_sealed(path, *base, expected, &mut records)?);
        sealed.push_back(SealedSegment { base: *base, path: path.clone() });
    }
    let tail = LastSegment { dir, path: last_path.clone(), base: *last_base, expected, plan };
    let (active, torn_tail) = tail.recover(&mut records)?;
    if plan.durability == Durability::Fsync {
        sync_sealed(dir, &sealed)?;
    }
    Ok(Recovery { sealed, active, recovered: Recovered { records, torn_tail } })
}

/// Makes the sealed segments and the directory durable: recovered records count as durable,
/// whatever the durability of the run that wrote them.
fn sync_sealed(dir: &Path, sealed: &VecDeque<SealedSegment>) -> Result<(), StoreError> {
    for segment in sealed {
        let sync = |path: &Path| File::open(path)?.sync_data();
        sync(&segment.path).map_err(|source| StoreError::io("fdatasync", &segment.path, source))?;
    }
    disk::sync_dir(dir)
}

/// The segment files in `dir`, by first position.
fn list_segments(dir: &Path) -> Result<Vec<(Position, PathBuf)>, StoreError> {
    let entries = fs::read_dir(dir).map_err(|source| StoreError::io("list", dir, source))?;
    let mut segments = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| StoreError::io("list", dir, source))?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else { continue };
        match format::parse_segment_file_name(name) {
            None => continue,
            Some(Ok(base)) => segments.push((Position(base), path)),
            Some(Err(())) => return Err(StoreError::corrupt(&path, 0, Corruption::FileName)),
        }
    }
    segments.sort();
    Ok(segments)
}

/// Reads a sealed segment of a log that is open (it must be whole).
pub(crate) fn read_sealed(path: &Path, base: Position, records: &mut Vec<(Position, Bytes)>) -> Result<(), StoreError> {
    recover_sealed(path, base, None, records).map(|_| ())
}

/// Reads a segment that is not the last: it must be whole. Returns the position after its last
/// record.
fn recover_sealed(
    path: &Path,
    base: Position,
    expected: Option<Position>,
    records: &mut Vec<(Position, Bytes)>,
) -> Result<Position, StoreError> {
    let bytes = fs::read(path).map_err(|source| StoreError::io("read", path, source))?;
    let header =
        SegmentHeader::decode(&bytes).ok_or_else(|| StoreError::corrupt(path, 0, Corruption::SegmentHeader))?;
    check_base(path, base, &header, expected)?;
    let scan = segment::scan(&bytes, header);
    if let Some(damage) = scan.damage {
        return Err(StoreError::corrupt(path, damage.offset as u64, Corruption::Record(damage.fault)));
    }
    Ok(collect(bytes, base, &scan, records))
}

/// Checks that a segment's header agrees with its name and that it starts where the previous
/// segment ends.
fn check_base(
    path: &Path,
    named: Position,
    header: &SegmentHeader,
    expected: Option<Position>,
) -> Result<(), StoreError> {
    let recorded = Position(header.base);
    if recorded != named {
        return Err(StoreError::corrupt(path, 0, Corruption::SegmentBase { named, recorded }));
    }
    check_continuity(path, named, expected)
}

fn check_continuity(path: &Path, found: Position, expected: Option<Position>) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != found => Err(StoreError::corrupt(path, 0, Corruption::Gap { expected, found })),
        _ => Ok(()),
    }
}

/// Appends the intact records of a scanned segment to `records`; returns the position after
/// them.
fn collect(mut bytes: Vec<u8>, base: Position, scan: &SegmentScan, records: &mut Vec<(Position, Bytes)>) -> Position {
    bytes.truncate(scan.intact_end);
    if bytes.capacity() > 2 * bytes.len() {
        bytes.shrink_to_fit();
    }
    let bytes = Bytes::from(bytes);
    let mut position = base;
    for body in &scan.bodies {
        records.push((position, bytes.slice(body.clone())));
        position = position.next();
    }
    position
}

/// The last segment of a log being recovered.
struct LastSegment<'a> {
    dir: &'a Path,
    path: PathBuf,
    base: Position,
    expected: Option<Position>,
    plan: SegmentPlan,
}

impl LastSegment<'_> {
    /// Reads the last segment, repairs a torn tail, and reopens it for appending.
    fn recover(self, records: &mut Vec<(Position, Bytes)>) -> Result<(Segment, Option<TornTail>), StoreError> {
        let bytes = fs::read(&self.path).map_err(|source| StoreError::io("read", &self.path, source))?;
        let Some(header) = SegmentHeader::decode(&bytes) else {
            return self.recover_torn_header(&bytes);
        };
        check_base(&self.path, self.base, &header, self.expected)?;
        let scan = segment::scan(&bytes, header);
        let torn_tail = match &scan.damage {
            Some(damage) if damage.valid_record_after => {
                let corruption = Corruption::Record(damage.fault);
                return Err(StoreError::corrupt(&self.path, damage.offset as u64, corruption));
            }
            Some(damage) => self.discard_tail(damage.offset, &bytes, header.preallocated)?,
            None => None,
        };
        collect(bytes, self.base, &scan, records);
        let active = Segment::resume(self.path, header, &scan, self.plan)?;
        if self.plan.durability == Durability::Fsync {
            // Recovered records count as durable: see `sync_sealed`.
            active.file.sync_data().map_err(|source| StoreError::io("fdatasync", &active.path, source))?;
        }
        Ok((active, torn_tail))
    }

    /// A last segment whose header did not verify: a crash while it was being created, before
    /// any record, if nothing but zeros follows the header.
    fn recover_torn_header(self, bytes: &[u8]) -> Result<(Segment, Option<TornTail>), StoreError> {
        let after_header = bytes.get(SEGMENT_HEADER_LEN..).unwrap_or_default();
        if segment::nonzero_end(after_header) > 0 {
            return Err(StoreError::corrupt(&self.path, 0, Corruption::SegmentHeader));
        }
        check_continuity(&self.path, self.base, self.expected)?;
        let discarded = segment::nonzero_end(bytes) as u64;
        let torn_tail = (discarded > 0).then(|| TornTail { path: self.path.clone(), offset: 0, bytes: discarded });
        Ok((Segment::recreate(self.dir, self.path, self.base, self.plan)?, torn_tail))
    }

    /// Discards everything from `offset` on: cuts the file there, or, in a preallocated segment,
    /// zeroes it back to the end of what was written, so the segment reads as ending there.
    fn discard_tail(&self, offset: usize, bytes: &[u8], preallocated: bool) -> Result<Option<TornTail>, StoreError> {
        let end = if preallocated { segment::nonzero_end(bytes).max(offset) } else { bytes.len() };
        if end == offset {
            return Ok(None);
        }
        let repair = || -> io::Result<()> {
            let mut file = OpenOptions::new().write(true).open(&self.path)?;
            if preallocated {
                file.seek(SeekFrom::Start(offset as u64))?;
                file.write_all(&vec![0u8; end - offset])?;
            } else {
                file.set_len(offset as u64)?;
            }
            if self.plan.durability == Durability::Fsync {
                file.sync_all()?;
            }
            Ok(())
        };
        repair().map_err(|source| StoreError::io("discard the torn tail of", &self.path, source))?;
        Ok(Some(TornTail { path: self.path.clone(), offset: offset as u64, bytes: (end - offset) as u64 }))
    }
}
