//! The promises of the storage layer (issue "A real node"; DESIGN sections 8 and 9): records
//! survive reopen and rotation, a crash loses only a torn tail, other damage is reported, group
//! commit reports durability in order, and retirement deletes only covered segments.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sam_store::format::RECORD_HEADER_LEN;
use sam_store::{Corruption, Durability, Log, LogOptions, OnDurable, Position, RecordFault, StoreError, TornTail};
use tempfile::TempDir;

/// Record `index` of a test log: a few distinct, non-zero bytes whose length varies.
fn record(index: usize) -> Vec<u8> {
    (0..10 + index % 23).map(|byte| (index + byte) as u8 | 1).collect()
}

fn options(segment_size_bytes: u64, preallocate: bool) -> LogOptions {
    LogOptions { segment_size_bytes, preallocate, ..LogOptions::default() }
}

/// Writes records `0..count` to a new log in `dir` and closes it.
fn write_log(dir: &Path, count: usize, options: LogOptions) {
    let (mut log, recovered) = Log::open(dir, options).expect("open");
    assert!(recovered.records.is_empty());
    for index in 0..count {
        assert_eq!(log.append(&record(index)).expect("append"), Position(index as u64));
    }
    assert_eq!(log.close().expect("close"), Position(count as u64));
}

/// Writes records `0..count` to a new log and returns a copy of its files taken after the last
/// fsync, while the log was still open: what a power cut then leaves, preallocated zeros and all.
fn crash_image(count: usize, options: LogOptions) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = Log::open(dir.path(), options).expect("open");
    for index in 0..count {
        log.append(&record(index)).expect("append");
    }
    log.sync().expect("sync");
    let image = tempfile::tempdir().expect("tempdir");
    for file in segment_files(dir.path()) {
        fs::copy(&file, image.path().join(file.file_name().expect("name"))).expect("copy");
    }
    image
}

/// Opens the log in `dir` and checks it holds exactly records `0..count`.
fn assert_holds(dir: &Path, count: usize, options: LogOptions) -> Option<TornTail> {
    let (log, recovered) = Log::open(dir, options).expect("open");
    let expected: Vec<(Position, Vec<u8>)> = (0..count).map(|index| (Position(index as u64), record(index))).collect();
    let found: Vec<(Position, Vec<u8>)> =
        recovered.records.iter().map(|(position, body)| (*position, body.to_vec())).collect();
    assert_eq!(found, expected);
    assert_eq!(log.end(), Position(count as u64));
    recovered.torn_tail
}

/// The segment files of a log, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .collect();
    files.sort();
    files
}

/// A fresh copy of a log directory's segments, with `damage` applied to the bytes of the last
/// (`from_end == 0`) or an earlier segment file.
fn damaged_copy(dir: &Path, from_end: usize, damage: impl FnOnce(&mut Vec<u8>)) -> TempDir {
    let copy = tempfile::tempdir().expect("tempdir");
    let files = segment_files(dir);
    for file in &files {
        fs::copy(file, copy.path().join(file.file_name().expect("name"))).expect("copy");
    }
    let target = copy.path().join(files[files.len() - 1 - from_end].file_name().expect("name"));
    let mut bytes = fs::read(&target).expect("read");
    damage(&mut bytes);
    fs::write(&target, bytes).expect("write");
    copy
}

fn open_error(dir: &Path) -> StoreError {
    Log::open(dir, options(256, false)).expect_err("damage must be reported")
}

#[test]
fn records_survive_reopen_and_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 100, options(256, true));
    assert!(segment_files(dir.path()).len() > 5, "small segments rotate");
    assert_eq!(assert_holds(dir.path(), 100, options(256, true)), None);

    let (mut log, _) = Log::open(dir.path(), options(256, true)).expect("open");
    for index in 100..150 {
        assert_eq!(log.append(&record(index)).expect("append"), Position(index as u64));
    }
    log.close().expect("close");
    assert_eq!(assert_holds(dir.path(), 150, options(256, true)), None);
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = Log::open(dir.path(), options(128, true)).expect("open");
    let large = vec![7u8; 1000];
    log.append(b"small").expect("append");
    log.append(&large).expect("append");
    log.append(b"after").expect("append");
    log.close().expect("close");
    assert_eq!(segment_files(dir.path()).len(), 3);
    let (_, recovered) = Log::open(dir.path(), options(128, true)).expect("open");
    let bodies: Vec<&[u8]> = recovered.records.iter().map(|(_, body)| &body[..]).collect();
    assert_eq!(bodies, [&b"small"[..], &large[..], &b"after"[..]]);
}

#[test]
fn a_torn_tail_cut_at_every_byte_of_the_last_record_keeps_every_earlier_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let count = 40;
    write_log(dir.path(), count, options(256, false));
    let last = segment_files(dir.path()).pop().expect("a segment");
    let len = fs::metadata(&last).expect("stat").len() as usize;
    let start = len - RECORD_HEADER_LEN - record(count - 1).len();
    for cut in start..len {
        let copy = damaged_copy(dir.path(), 0, |bytes| bytes.truncate(cut));
        let torn = assert_holds(copy.path(), count - 1, options(256, false));
        assert_eq!(
            torn.map(|torn| (torn.offset, torn.bytes)),
            (cut > start).then_some((start as u64, (cut - start) as u64))
        );
        // The repaired log takes new records where the torn one was.
        let (mut log, _) = Log::open(copy.path(), options(256, false)).expect("open");
        assert_eq!(log.append(&record(count - 1)).expect("append"), Position(count as u64 - 1));
        log.close().expect("close");
        assert_eq!(assert_holds(copy.path(), count, options(256, false)), None);
    }
}

#[test]
fn a_zero_filled_tail_of_the_last_record_is_torn() {
    for preallocate in [false, true] {
        let count = 40;
        let dir = crash_image(count, options(256, preallocate));
        let last = segment_files(dir.path()).pop().expect("a segment");
        let bytes = fs::read(&last).expect("read");
        let end = bytes.iter().rposition(|&byte| byte != 0).expect("records") + 1;
        let start = end - RECORD_HEADER_LEN - record(count - 1).len();
        for cut in start..end {
            let mut damaged = bytes.clone();
            damaged[cut..end].fill(0);
            let copy = damaged_copy(dir.path(), 0, |bytes| *bytes = damaged.clone());
            let torn = assert_holds(copy.path(), count - 1, options(256, preallocate));
            let discarded = torn.map_or(0, |torn| torn.bytes) as usize;
            // Trailing zeros of a preallocated segment are not counted as discarded.
            let nonzero_end = damaged.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
            let expected = if preallocate { nonzero_end.saturating_sub(start) } else { bytes.len() - start };
            assert_eq!(discarded, expected, "preallocate {preallocate}, cut at {cut}");
            let (mut log, _) = Log::open(copy.path(), options(256, preallocate)).expect("open");
            log.append(&record(count - 1)).expect("append");
            log.close().expect("close");
            assert_eq!(assert_holds(copy.path(), count, options(256, preallocate)), None);
        }
    }
}

#[test]
fn the_zeros_of_a_preallocated_segment_are_not_a_torn_tail() {
    let dir = crash_image(3, options(4096, true));
    let last = segment_files(dir.path()).pop().expect("a segment");
    assert_eq!(fs::metadata(&last).expect("stat").len(), 4096, "preallocated");
    assert_eq!(assert_holds(dir.path(), 3, options(4096, true)), None);
    // A clean close trims the zeros; the next open preallocates again.
    assert!(fs::metadata(&last).expect("stat").len() < 4096, "trimmed at close");
    let (_log, _) = Log::open(dir.path(), options(4096, true)).expect("open");
    assert_eq!(fs::metadata(&last).expect("stat").len(), 4096, "preallocated again");
}

#[test]
fn a_flipped_bit_anywhere_in_a_middle_record_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 3, options(4096, false));
    let start = 32 + RECORD_HEADER_LEN + record(0).len();
    let end = start + RECORD_HEADER_LEN + record(1).len();
    for at in start..end {
        let copy = damaged_copy(dir.path(), 0, |bytes| bytes[at] ^= 0x10);
        match open_error(copy.path()) {
            StoreError::Corrupt { offset, corruption: Corruption::Record(_), .. } => assert_eq!(offset, start as u64),
            other => panic!("flip at {at}: {other}"),
        }
    }
}

#[test]
fn a_damaged_last_record_is_a_torn_tail() {
    // Nothing follows it, so nothing tells a bit flip from a write cut short: it is discarded.
    let dir = crash_image(3, options(4096, true));
    let copy = damaged_copy(dir.path(), 0, |bytes| {
        let end = bytes.iter().rposition(|&byte| byte != 0).expect("records");
        bytes[end] ^= 0x80;
    });
    let torn = assert_holds(copy.path(), 2, options(4096, true)).expect("a torn tail");
    assert_eq!(torn.bytes, (RECORD_HEADER_LEN + record(2).len()) as u64);
}

#[test]
fn damage_in_an_earlier_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 40, options(256, true));
    let earlier = damaged_copy(dir.path(), 1, |bytes| {
        bytes.pop();
    });
    let error = open_error(earlier.path());
    assert!(
        matches!(error, StoreError::Corrupt { corruption: Corruption::Record(RecordFault::Truncated), .. }),
        "{error}"
    );

    let flipped = damaged_copy(dir.path(), 2, |bytes| bytes[40] ^= 1);
    let error = open_error(flipped.path());
    assert!(matches!(error, StoreError::Corrupt { corruption: Corruption::Record(_), offset: 32, .. }), "{error}");
}

#[test]
fn a_missing_segment_is_a_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 40, options(256, true));
    let files = segment_files(dir.path());
    fs::remove_file(&files[1]).expect("remove");
    let error = open_error(dir.path());
    assert!(matches!(error, StoreError::Corrupt { corruption: Corruption::Gap { .. }, .. }), "{error}");
}

#[test]
fn a_segment_torn_while_being_created_is_started_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 40, options(256, true));
    // A crash while rotating: the previous segment was sealed, the new one's header never made it.
    fs::write(dir.path().join("00000000000000000040.seg"), [0u8; 100]).expect("write");
    assert_eq!(assert_holds(dir.path(), 40, options(256, true)), None);
    let (mut log, _) = Log::open(dir.path(), options(256, true)).expect("open");
    log.append(&record(40)).expect("append");
    log.close().expect("close");
    assert_holds(dir.path(), 41, options(256, true));
}

#[test]
fn retire_before_deletes_only_whole_covered_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 60, options(256, true));
    let bases = segment_bases(dir.path());
    assert!(bases.len() >= 4);
    let (mut log, _) = Log::open(dir.path(), options(256, true)).expect("open");
    // A position inside the third segment covers the first two only.
    let inside_third = Position(bases[2] + 1);
    assert_eq!(log.retire_before(inside_third).expect("retire"), 2);
    assert_eq!(log.start(), Position(bases[2]));
    assert_eq!(log.retire_before(inside_third).expect("retire"), 0, "nothing more is covered");
    // Even a position past the end never deletes the segment being appended to.
    let retired = log.retire_before(Position(u64::MAX)).expect("retire");
    assert_eq!(retired, bases.len() - 3);
    assert_eq!(log.start(), Position(*bases.last().expect("bases")));
    drop(log);
    let (log, recovered) = Log::open(dir.path(), options(256, true)).expect("open");
    assert_eq!(recovered.records.first().map(|(position, _)| *position), Some(log.start()));
    assert_eq!(recovered.records.last().map(|(position, _)| *position), Some(Position(59)));
}

/// Compaction's view of the log: the oldest sealed segment, read whole, is the one retired
/// first, and the active segment is never offered.
#[test]
fn the_oldest_sealed_segment_is_read_whole_then_retired() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 60, options(256, true));
    let (mut log, _) = Log::open(dir.path(), options(256, true)).expect("open");
    let oldest = log.oldest_sealed().expect("a sealed segment");
    assert_eq!(oldest.base, Position::ZERO);
    let records = sam_store::read_sealed(&oldest).expect("read");
    let positions: Vec<u64> = records.iter().map(|(p, _)| p.0).collect();
    assert_eq!(positions, (0..oldest.end.0).collect::<Vec<_>>());
    assert!(records.iter().all(|(p, bytes)| *bytes == record(p.0 as usize)));
    assert_eq!(log.retire_before(oldest.end).expect("retire"), 1);
    assert_eq!(log.start(), oldest.end);
    while log.oldest_sealed().is_some() {
        let next = log.oldest_sealed().expect("sealed");
        log.retire_before(next.end).expect("retire");
    }
    assert_eq!(log.start(), Position(*segment_bases(dir.path()).last().expect("active")), "the active one stays");
}

fn segment_bases(dir: &Path) -> Vec<u64> {
    segment_files(dir)
        .iter()
        .map(|path| path.file_stem().and_then(|stem| stem.to_str()).expect("name").parse().expect("digits"))
        .collect()
}

#[test]
fn os_durability_is_reached_on_flush_without_an_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let os = LogOptions { durability: Durability::Os, ..options(256, true) };
    let (mut log, _) = Log::open(dir.path(), os.clone()).expect("open");
    for index in 0..5 {
        log.append(&record(index)).expect("append");
    }
    assert_eq!(log.durable(), Position::ZERO, "nothing is durable before a flush");
    log.flush().expect("flush");
    assert_eq!(log.durable(), Position(5));
    // Filling a segment writes it out (and so makes it durable) without a flush.
    for index in 5..30 {
        log.append(&record(index)).expect("append");
    }
    assert!(log.durable() > Position(5));
    assert_eq!(log.fsyncs(), 0);
    drop(log);
    assert_holds(dir.path(), 30, os);
}

#[test]
fn durable_positions_are_reported_in_order_and_only_for_flushed_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reported = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&reported);
    let on_durable: OnDurable = Arc::new(move |position| sink.lock().expect("no panic").push(position));
    // Segments large enough that no rotation writes records out before their flush.
    let options = LogOptions { on_durable: Some(on_durable), ..options(1 << 20, true) };
    let (mut log, _) = Log::open(dir.path(), options).expect("open");
    let mut flushed = Position::ZERO;
    for index in 0..500 {
        log.append(&record(index)).expect("append");
        assert!(log.durable() <= flushed, "a record is durable before it was flushed");
        if index % 7 == 0 {
            log.flush().expect("flush");
            flushed = log.end();
        }
    }
    let end = log.sync().expect("sync");
    assert_eq!(end, Position(500));
    let reported = reported.lock().expect("no panic").clone();
    assert!(reported.windows(2).all(|pair| pair[0] < pair[1]), "positions reported out of order: {reported:?}");
    assert_eq!(reported.last(), Some(&end));
    assert!(log.fsyncs() >= 1 && log.fsyncs() <= reported.len() as u64 + 1);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, _) = Log::open(dir.path(), LogOptions::default()).expect("open");
    let error = Log::open(dir.path(), LogOptions::default()).expect_err("locked");
    assert!(matches!(error, StoreError::Locked(_)), "{error}");
}

#[test]
fn a_log_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Log>();
    assert_send::<sam_store::DurableWatch>();
}

#[test]
fn durability_names_parse() {
    assert_eq!("fsync".parse::<Durability>().expect("name"), Durability::Fsync);
    assert_eq!("os".parse::<Durability>().expect("name"), Durability::Os);
    assert!(matches!("never".parse::<Durability>(), Err(StoreError::UnknownDurability(_))));
    assert_eq!(Durability::default().to_string(), "fsync");
}

#[test]
fn a_stray_segment_name_and_bad_options_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("7.seg"), b"").expect("write");
    let error = Log::open(dir.path(), LogOptions::default()).expect_err("bad name");
    assert!(matches!(error, StoreError::Corrupt { corruption: Corruption::FileName, .. }), "{error}");
    let error = Log::open(dir.path(), options(1, true)).expect_err("tiny segments");
    assert!(matches!(error, StoreError::InvalidOptions(_)), "{error}");
}

/// DESIGN section 12, "Storage": a server's log directory and every file in it are private to
/// the user that runs it, and damage in the middle of a log names the way back.
#[test]
fn log_directories_and_files_are_private_and_corruption_says_how_to_recover() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("server-1");
    write_log(&dir, 3, options(4_096, false));
    let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for entry in fs::read_dir(&dir).expect("read dir") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    let text =
        StoreError::Corrupt { path: dir.join("x"), offset: 7, corruption: Corruption::SegmentHeader }.to_string();
    assert!(text.contains("move its storage directory aside") && text.contains("without --init"), "{text}");
}

/// A small tmpfs mounted for one test, unmounted when dropped (the tests run as root).
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallDisk { dir }
    }

    fn resize(&self, bytes: u64) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(self.dir.path())
            .status()
            .expect("run mount");
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

/// DESIGN section 12, "Storage": a full disk stops appends, not the log. The append that
/// needs a segment there is no room for fails with `Full` and changes nothing; once there is
/// room the same append succeeds, and every record is there after a reopen.
#[test]
fn a_full_disk_refuses_appends_without_damage_until_room_returns() {
    let disk = SmallDisk::mount(512 << 10);
    let dir = disk.dir.path().join("log");
    let opts = || options(64 << 10, true);
    let (mut log, _) = Log::open(&dir, opts()).expect("open");
    let mut appended = 0;
    let full = loop {
        match log.append(&record(appended)) {
            Ok(position) => {
                assert_eq!(position, Position(appended as u64));
                appended += 1;
            }
            Err(e) => break e,
        }
        assert!(appended < 1_000_000, "the disk never filled");
    };
    assert!(matches!(full, StoreError::Full { .. }), "{full}");
    assert_eq!(log.end(), Position(appended as u64), "nothing was appended");
    assert!(matches!(log.append(&record(appended)), Err(StoreError::Full { .. })), "still full");
    log.sync().expect("what was appended is durable");
    disk.resize(4 << 20);
    for index in appended..appended + 2_000 {
        assert_eq!(log.append(&record(index)).expect("room again"), Position(index as u64));
    }
    log.close().expect("close");
    assert_eq!(assert_holds(&dir, appended + 2_000, opts()), None);
}
