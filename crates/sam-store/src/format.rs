//! The on-disk format: how records lie in segment files.
//!
//! This comment is the specification: it says everything needed to write a reader or a writer in
//! another language. Version 1 is described. Fixed-width integers are little-endian.
//!
//! # Directory
//!
//! A log is a directory of *segment files* and one lock file, `LOCK` (see [`LOCK_FILE`]). A
//! segment is named after the [position](crate::Position) of its first record, as 20 decimal
//! digits and the extension `.seg`: the segment whose first record is record 1234 is
//! `00000000000000001234.seg`. Positions number the records of a log from 0, one per record, so
//! each segment starts where the one before it ends; the first segment in the directory starts at
//! the log's oldest retained record (older segments were retired). Files with other names are
//! ignored; a `.seg` file whose name is not 20 digits is an error.
//!
//! # Segment
//!
//! A segment is a 32-byte header followed by records back to back.
//!
//! | bytes    | field    | contents                                                              |
//! |----------|----------|-----------------------------------------------------------------------|
//! | `0..4`   | magic    | the ASCII bytes `S` `M` `L` `G` (`0x53 0x4D 0x4C 0x47`), see [`SEGMENT_MAGIC`] |
//! | `4`      | version  | `1` ([`SEGMENT_VERSION`]); a reader rejects every other value         |
//! | `5`      | flags    | bit 0: the file was preallocated (see below); other bits must be `0`  |
//! | `6..8`   | reserved | must be `0`                                                           |
//! | `8..16`  | base     | `u64`: the position of the segment's first record, equal to the name  |
//! | `16..24` | salt     | `u64`: chosen at random when the segment is created                   |
//! | `24..28` | reserved | must be `0`                                                           |
//! | `28..32` | checksum | `u32`: CRC32C of bytes `0..28`                                        |
//!
//! A *preallocated* segment was extended with zero bytes to its configured size when it was
//! created, before any record was written; the first record header that is all zero marks its
//! end. When the log moves on to the next segment it truncates the previous one to its records,
//! so only the last segment of a log may end in zeros.
//!
//! # Record
//!
//! Each record is a 16-byte header followed by the body, the caller's bytes.
//!
//! | bytes    | field           | contents                                                      |
//! |----------|-----------------|---------------------------------------------------------------|
//! | `0..2`   | magic           | the ASCII bytes `S` `R` (`0x53 0x52`), see [`RECORD_MAGIC`]    |
//! | `2..4`   | reserved        | must be `0`                                                   |
//! | `4..8`   | body length     | `u32`: the number of body bytes, at most [`RECORD_LEN_MAX`]    |
//! | `8..12`  | body checksum   | `u32`: CRC32C of the body                                     |
//! | `12..16` | header checksum | `u32`: CRC32C of the segment's salt (8 bytes, little-endian) followed by header bytes `0..12` |
//!
//! The checksum is CRC-32C (Castagnoli), the one of iSCSI and of SSE 4.2's `crc32` instruction,
//! whose check value for the ASCII string `123456789` is `0xE3069283`.
//!
//! The header has its own checksum so that a reader can trust the length before it reads the
//! body, and it is salted so that a header is valid only in the segment that wrote it: bytes
//! that happen to look like a record (a record's body may hold anything, even another log) are
//! never taken for one.
//!
//! # Reading
//!
//! A reader verifies records from byte 32 in order, each by: the header fits in the file; the
//! header is not all zero; magic; header checksum; reserved bytes; body length at most
//! [`RECORD_LEN_MAX`]; the body fits in the file; body checksum. The first record that fails
//! (or the end of the file) ends the intact records. What follows decides what the failure is:
//!
//! * in a segment that is not the last, anything after the intact records is corruption;
//! * in the last segment, if a valid record header (with its body) starts at any later offset,
//!   the failure is corruption: a crash leaves damage only at the end;
//! * otherwise the rest of the last segment is the *torn tail* of a write a crash interrupted,
//!   or the zeros of a preallocated segment, and it is discarded.
//!
//! # Example
//!
//! A record whose body is the 3 bytes `61 62 63` (`abc`), in a segment with salt 0:
//!
//! ```text
//! 53 52 00 00 03 00 00 00 B7 3F 4B 36 1A B9 AC A4 | 61 62 63
//! magic resv  length=3    body crc    header crc  | body
//! ```

use std::ops::Range;

use crate::error::RecordFault;

/// The first four bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"SMLG";
/// The format version this crate reads and writes.
pub const SEGMENT_VERSION: u8 = 1;
/// The length of a segment header in bytes.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// The first two bytes of every record header.
pub const RECORD_MAGIC: [u8; 2] = *b"SR";
/// The length of a record header in bytes.
pub const RECORD_HEADER_LEN: usize = 16;
/// The largest record body in bytes (256 MiB): a bound on what one record may make a reader
/// allocate, far above any message SAM stores.
pub const RECORD_LEN_MAX: usize = 256 << 20;
/// The extension of segment file names.
pub const SEGMENT_EXTENSION: &str = "seg";
/// The name of the file a process holds locked while it has the log open.
pub const LOCK_FILE: &str = "LOCK";

/// Flag bit: the segment was preallocated.
const FLAG_PREALLOCATED: u8 = 1;
/// The number of digits in a segment file name.
const NAME_DIGITS: usize = 20;

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// The position of the segment's first record.
    pub base: u64,
    /// The salt every record header's checksum starts with.
    pub salt: u64,
    /// Whether the file was extended with zeros to its full size when created.
    pub preallocated: bool,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut bytes = [0u8; SEGMENT_HEADER_LEN];
        bytes[0..4].copy_from_slice(&SEGMENT_MAGIC);
        bytes[4] = SEGMENT_VERSION;
        bytes[5] = if self.preallocated { FLAG_PREALLOCATED } else { 0 };
        bytes[8..16].copy_from_slice(&self.base.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.salt.to_le_bytes());
        let checksum = crc32c::crc32c(&bytes[0..28]);
        bytes[28..32].copy_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Decodes the header at the start of `segment`, or `None` if it is missing or invalid.
    pub fn decode(segment: &[u8]) -> Option<SegmentHeader> {
        let bytes = segment.get(..SEGMENT_HEADER_LEN)?;
        let valid = bytes[0..4] == SEGMENT_MAGIC
            && bytes[4] == SEGMENT_VERSION
            && bytes[5] & !FLAG_PREALLOCATED == 0
            && bytes[6..8] == [0, 0]
            && bytes[24..28] == [0; 4]
            && read_u32(bytes, 28) == crc32c::crc32c(&bytes[0..28]);
        valid.then(|| SegmentHeader {
            base: read_u64(bytes, 8),
            salt: read_u64(bytes, 16),
            preallocated: bytes[5] & FLAG_PREALLOCATED != 0,
        })
    }
}

/// The number of bytes a record with a body of `body_len` bytes takes in a segment.
pub(crate) fn frame_len(body_len: usize) -> usize {
    RECORD_HEADER_LEN + body_len
}

/// Appends the record `body` to `out`, framed for a segment with `salt`.
pub(crate) fn encode_record(out: &mut Vec<u8>, salt: u64, body: &[u8]) {
    assert!(body.len() <= RECORD_LEN_MAX, "caller checks the record length");
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[0..2].copy_from_slice(&RECORD_MAGIC);
    header[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
    header[8..12].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let checksum = header_checksum(salt, &header[0..12]);
    header[12..16].copy_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
}

/// Verifies the record starting at `offset` in `segment` (a whole segment file with `salt`) and
/// returns the byte range of its body.
pub(crate) fn verify_record(segment: &[u8], offset: usize, salt: u64) -> Result<Range<usize>, RecordFault> {
    let header_end = offset.checked_add(RECORD_HEADER_LEN).ok_or(RecordFault::Truncated)?;
    let header = segment.get(offset..header_end).ok_or(RecordFault::Truncated)?;
    if header.iter().all(|&byte| byte == 0) {
        return Err(RecordFault::Zeroed);
    }
    if header[0..2] != RECORD_MAGIC {
        return Err(RecordFault::Magic);
    }
    if read_u32(header, 12) != header_checksum(salt, &header[0..12]) {
        return Err(RecordFault::HeaderChecksum);
    }
    if header[2..4] != [0, 0] {
        return Err(RecordFault::Reserved);
    }
    let body_len = read_u32(header, 4) as usize;
    if body_len > RECORD_LEN_MAX {
        return Err(RecordFault::Length);
    }
    let body = header_end..header_end + body_len;
    let bytes = segment.get(body.clone()).ok_or(RecordFault::Truncated)?;
    if read_u32(header, 8) != crc32c::crc32c(bytes) {
        return Err(RecordFault::BodyChecksum);
    }
    Ok(body)
}

/// The offset of the first valid record of `segment` (with `salt`) that starts in `starts`.
pub(crate) fn next_valid_record(segment: &[u8], starts: Range<usize>, salt: u64) -> Option<usize> {
    let first = starts.start;
    let candidates = segment.get(starts)?;
    candidates
        .iter()
        .enumerate()
        .filter(|&(_, &byte)| byte == RECORD_MAGIC[0])
        .map(|(index, _)| first + index)
        .find(|&start| verify_record(segment, start, salt).is_ok())
}

/// The file name of the segment whose first record is at `base`.
pub(crate) fn segment_file_name(base: u64) -> String {
    format!("{base:0width$}.{SEGMENT_EXTENSION}", width = NAME_DIGITS)
}

/// Parses a segment file name: `None` if the name is not a segment's at all, `Some(Err(()))` if
/// it has the segment extension but is otherwise malformed.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<Result<u64, ()>> {
    let stem = name.strip_suffix(SEGMENT_EXTENSION)?.strip_suffix('.')?;
    let digits_only = stem.len() == NAME_DIGITS && stem.bytes().all(|byte| byte.is_ascii_digit());
    Some(if digits_only { stem.parse().map_err(drop) } else { Err(()) })
}

fn header_checksum(salt: u64, header_start: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), header_start)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn documented_record_example_matches_the_encoder() {
        let mut out = Vec::new();
        encode_record(&mut out, 0, b"abc");
        let hex: Vec<String> = out.iter().map(|byte| format!("{byte:02X}")).collect();
        assert_eq!(hex.join(" "), "53 52 00 00 03 00 00 00 B7 3F 4B 36 1A B9 AC A4 61 62 63");
        assert_eq!(verify_record(&out, 0, 0), Ok(16..19));
    }

    #[test]
    fn a_record_is_valid_only_under_its_segments_salt() {
        let mut out = Vec::new();
        encode_record(&mut out, 7, b"body");
        assert_eq!(verify_record(&out, 0, 8), Err(RecordFault::HeaderChecksum));
    }

    #[test]
    fn segment_header_round_trips_and_rejects_a_flipped_bit() {
        let header = SegmentHeader { base: 1234, salt: 0xDEAD_BEEF, preallocated: true };
        let mut bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Some(header));
        bytes[9] ^= 4;
        assert_eq!(SegmentHeader::decode(&bytes), None);
    }

    #[test]
    fn segment_file_names_are_twenty_digits() {
        assert_eq!(segment_file_name(1234), "00000000000000001234.seg");
        assert_eq!(parse_segment_file_name("00000000000000001234.seg"), Some(Ok(1234)));
        assert_eq!(parse_segment_file_name("1234.seg"), Some(Err(())));
        assert_eq!(parse_segment_file_name("LOCK"), None);
    }
}
