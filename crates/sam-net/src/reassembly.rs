//! Reassembly of messages sent as fragments (DESIGN section 7: "messages larger than one
//! datagram are fragmented and reassembled with a bound").
//!
//! Each series (sender, series number) is kept until its last fragment arrives. Everything is
//! bounded, because fragments come from the network: a series may not claim more than the
//! largest message, all series together hold at most a fixed number of bytes and series, the
//! oldest series is dropped to make room, and a series that does not complete within a
//! timeout is dropped. A dropped series is a lost datagram: the protocol sends again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sam_core::wire::Fragment;
use sam_core::Pid;

/// How long a series may take to complete.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(2);
/// The most series in reassembly at once.
pub const MAX_SERIES: usize = 64;
/// What one message may take beyond its payload once encoded (kind, lengths, id, timestamp).
const ENCODING_SLACK: usize = 64;

/// Why a fragment was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its series claims more bytes or fragments than the largest message allows.
    TooLarge,
    /// It disagrees with earlier fragments of its series (another count); the series is dropped.
    Inconsistent,
}

/// One message being reassembled.
#[derive(Debug)]
struct Series {
    chunks: Vec<Option<Bytes>>,
    missing: u32,
    bytes: usize,
    started: Instant,
}

/// The series in reassembly, with their bounds.
#[derive(Debug)]
pub struct Reassembly {
    series: HashMap<(Pid, u64), Series>,
    held: usize,
    max_message: usize,
    /// The most fragments a series of the largest message needs: a series claiming more is
    /// refused before its table of chunks is allocated.
    max_count: usize,
    max_held: usize,
    last_sweep: Option<Instant>,
}

impl Reassembly {
    /// Reassembly of messages of at most `max_message` payload bytes, holding at most
    /// `max_held` bytes of incomplete series; every fragment but a series' last carries at
    /// least `min_chunk` bytes (the group's datagram size less the headers), which bounds the
    /// fragments a series may claim before its table of chunks is allocated.
    pub fn new(max_message: usize, max_held: usize, min_chunk: usize) -> Reassembly {
        let max_message = max_message.saturating_add(ENCODING_SLACK);
        let max_count = max_message.div_ceil(min_chunk.max(1)) + 1;
        Reassembly {
            series: HashMap::new(),
            held: 0,
            max_message,
            max_count,
            max_held: max_held.max(max_message),
            last_sweep: None,
        }
    }

    /// The bytes held in incomplete series.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Takes a fragment from `from`; returns the message's bytes (a frame body) once its
    /// series is complete.
    pub fn add(&mut self, now: Instant, from: Pid, fragment: Fragment) -> Result<Option<Bytes>, Refused> {
        self.sweep(now);
        if fragment.count as usize > self.max_count {
            return Err(Refused::TooLarge);
        }
        if fragment.count == 1 {
            return self.fits(fragment.chunk.len()).map(|()| Some(fragment.chunk));
        }
        let key = (from, fragment.series);
        if !self.series.contains_key(&key) {
            self.make_room();
            let chunks = vec![None; fragment.count as usize];
            self.series.insert(key, Series { chunks, missing: fragment.count, bytes: 0, started: now });
        }
        let series = self.series.get_mut(&key).expect("inserted above");
        if series.chunks.len() != fragment.count as usize {
            self.remove(key);
            return Err(Refused::Inconsistent);
        }
        let slot = &mut series.chunks[fragment.index as usize];
        if slot.is_some() {
            return Ok(None);
        }
        let len = fragment.chunk.len();
        if series.bytes + len > self.max_message {
            self.remove(key);
            return Err(Refused::TooLarge);
        }
        *slot = Some(fragment.chunk);
        series.missing -= 1;
        series.bytes += len;
        self.held += len;
        if series.missing > 0 {
            self.shed_bytes(key);
            return Ok(None);
        }
        let series = self.remove(key).expect("present");
        let mut whole = BytesMut::with_capacity(series.bytes);
        for chunk in series.chunks.into_iter().flatten() {
            whole.extend_from_slice(&chunk);
        }
        Ok(Some(whole.freeze()))
    }

    fn fits(&self, len: usize) -> Result<(), Refused> {
        if len > self.max_message {
            Err(Refused::TooLarge)
        } else {
            Ok(())
        }
    }

    /// Drops the series that timed out (looking at most once per tenth of the timeout).
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|t| now.saturating_duration_since(t) < REASSEMBLY_TIMEOUT / 10) {
            return;
        }
        self.last_sweep = Some(now);
        let expired: Vec<_> = self
            .series
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.started) > REASSEMBLY_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.remove(key);
        }
    }

    /// Drops the oldest series while there are too many to start another.
    fn make_room(&mut self) {
        while self.series.len() >= MAX_SERIES {
            self.drop_oldest(None);
        }
    }

    /// Drops the oldest series other than `keep` while too many bytes are held.
    fn shed_bytes(&mut self, keep: (Pid, u64)) {
        while self.held > self.max_held && self.series.len() > 1 {
            self.drop_oldest(Some(keep));
        }
        if self.held > self.max_held {
            self.remove(keep);
        }
    }

    fn drop_oldest(&mut self, keep: Option<(Pid, u64)>) {
        let oldest =
            self.series.iter().filter(|(k, _)| Some(**k) != keep).min_by_key(|(_, s)| s.started).map(|(k, _)| *k);
        if let Some(key) = oldest {
            self.remove(key);
        }
    }

    fn remove(&mut self, key: (Pid, u64)) -> Option<Series> {
        let series = self.series.remove(&key)?;
        self.held -= series.bytes;
        Some(series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(series: u64, index: u32, count: u32, chunk: impl Into<Bytes>) -> Fragment {
        Fragment { series, index, count, chunk: chunk.into() }
    }

    #[test]
    fn a_series_completes_in_any_order_and_duplicates_are_ignored() {
        let mut r = Reassembly::new(100, 1_000, 1);
        let now = Instant::now();
        assert_eq!(r.add(now, Pid(1), fragment(5, 2, 3, &b"ef"[..])), Ok(None));
        assert_eq!(r.add(now, Pid(1), fragment(5, 0, 3, &b"ab"[..])), Ok(None));
        assert_eq!(r.add(now, Pid(1), fragment(5, 0, 3, &b"ab"[..])), Ok(None));
        assert_eq!(r.add(now, Pid(2), fragment(5, 1, 3, &b"XX"[..])), Ok(None), "another sender's series");
        assert_eq!(r.held(), 6);
        assert_eq!(r.add(now, Pid(1), fragment(5, 1, 3, &b"cd"[..])), Ok(Some(Bytes::from_static(b"abcdef"))));
        assert_eq!(r.held(), 2);
    }

    #[test]
    fn a_series_larger_than_the_largest_message_is_refused() {
        let mut r = Reassembly::new(4, 1_000, 1);
        let now = Instant::now();
        assert_eq!(r.add(now, Pid(1), fragment(1, 0, 1_000, &b"a"[..])), Err(Refused::TooLarge));
        let mut big_chunks = Reassembly::new(1 << 20, 2 << 20, 1_000);
        let claim = fragment(1, 0, 1_100, &b"a"[..]);
        assert_eq!(big_chunks.add(now, Pid(1), claim), Err(Refused::TooLarge), "more fragments than 1 MiB needs");
        assert_eq!(r.add(now, Pid(1), fragment(2, 0, 3, vec![0u8; 40])), Ok(None));
        assert_eq!(r.add(now, Pid(1), fragment(2, 1, 3, vec![0u8; 40])), Err(Refused::TooLarge));
        assert_eq!(r.held(), 0, "the series is dropped");
        assert_eq!(r.add(now, Pid(1), fragment(3, 0, 2, &b"a"[..])), Ok(None));
        assert_eq!(r.add(now, Pid(1), fragment(3, 1, 3, &b"b"[..])), Err(Refused::Inconsistent));
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn held_bytes_series_and_time_are_bounded() {
        let mut r = Reassembly::new(10, 10, 1);
        let start = Instant::now();
        for series in 0..MAX_SERIES as u64 + 10 {
            let _ = r.add(start, Pid(1), fragment(series, 0, 2, &b"x"[..]));
        }
        assert!(r.series.len() <= MAX_SERIES);
        assert!(r.held() <= 74, "at most the byte bound: {}", r.held());
        let later = start + REASSEMBLY_TIMEOUT + Duration::from_millis(1);
        assert_eq!(r.add(later, Pid(2), fragment(0, 0, 2, &b"y"[..])), Ok(None));
        assert_eq!(r.held(), 1, "the old series timed out");
    }
}
