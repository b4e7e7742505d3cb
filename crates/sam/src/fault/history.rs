//! The history of a fault run: every send, every outcome a sender was told, every delivery
//! of every tail, as JSON lines; and its check by the simulator's checkers (DESIGN section 1).
//!
//! The real program shows no sequencer's `Commit`, so the reference of what each number holds
//! is built from what was observed: every delivery and every committed outcome names a
//! number's message (two names for one number break total order, one message at two numbers
//! breaks integrity), and a number below the highest observed that nobody delivered is a
//! no-op. Then each tail's deliveries are replayed in order against that reference (no gap,
//! no repeat, the bytes that were sent), and at quiescence every tail must have delivered
//! every message committed (atomicity, and durability: what a sender was told is committed
//! survived every crash) and every send must have the outcome the history gives it
//! (validity).

use std::collections::BTreeMap;

use rustc_hash::FxHashSet;
use sam_core::{Assigned, Digest, Incarnation, Mid, Pid, Seq, Source, Time};
use sam_sim::check::{Checker, Life, Outcome};
use sam_sim::Violation;
use serde::{Deserialize, Serialize};

/// A message id as it is written: `[pid, incarnation, counter]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MidRecord(pub [u64; 3]);

impl From<Mid> for MidRecord {
    fn from(m: Mid) -> MidRecord {
        MidRecord([m.source.pid.0, m.source.incarnation.0, m.counter])
    }
}

impl From<MidRecord> for Mid {
    fn from(MidRecord([pid, incarnation, counter]): MidRecord) -> Mid {
        Mid { source: Source { pid: Pid(pid), incarnation: Incarnation(incarnation) }, counter }
    }
}

/// What a sender was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Committed at `seq` (in the record).
    Committed,
    /// Expired: never committed.
    Expired,
    /// Unknown: the log that holds it is gone.
    Unknown,
}

/// One line of a history: `t` is microseconds of the host's clock (shared by every process
/// of a run, so that faults and observations line up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Record {
    /// Member `member` sent `mid`, whose payload has this digest (hex).
    Sent { t: u64, member: usize, mid: MidRecord, digest: String },
    /// The sender of `mid` was told its fate (`seq` when committed).
    Outcome { t: u64, member: usize, mid: MidRecord, fate: Fate, seq: Option<u64> },
    /// Tail `member` delivered `mid` at `seq` with a payload of this digest.
    Deliver { t: u64, member: usize, seq: u64, mid: MidRecord, digest: String },
    /// Tail `member` skipped to the checkpoint at `seq` (its deliveries go on after it).
    Restored { t: u64, member: usize, seq: u64 },
    /// Tail `member` heard a new sequencer.
    Sequencer { t: u64, member: usize, epoch: u64, pid: u64 },
    /// The harness injected a fault, or ended one.
    Fault { t: u64, kind: String, target: String },
    /// A sender finished: every send it made has its outcome above.
    Done { t: u64, member: usize },
}

/// The digest as written.
pub fn hex(d: Digest) -> String {
    d.to_string()
}

fn unhex(s: &str) -> Digest {
    // A digest that does not parse cannot match any sent one: the replay reports it.
    let mut digest = [0xff; 32];
    let pairs =
        s.as_bytes().chunks(2).map(|p| std::str::from_utf8(p).ok().and_then(|p| u8::from_str_radix(p, 16).ok()));
    if let Some(bytes) = pairs.collect::<Option<Vec<u8>>>().filter(|b| b.len() == digest.len()) {
        digest.copy_from_slice(&bytes);
    }
    Digest(digest)
}

/// What a check of a history found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Sends recorded.
    pub sent: u64,
    /// Sends told committed.
    pub committed: u64,
    /// Sends told expired.
    pub expired: u64,
    /// Sends told unknown.
    pub unknown: u64,
    /// Deliveries replayed against the reference.
    pub deliveries: u64,
    /// The highest number observed.
    pub highest: u64,
    /// The promises broken (empty: none).
    pub violations: Vec<Violation>,
}

/// Checks a whole history; `tails` and `senders` are the members of the run (all alive at the
/// end: the harness never kills a member).
pub fn check(records: &[Record], tails: &[usize], senders: &[usize]) -> Verdict {
    // Violations tell their time from the run's first record.
    let t0 = records.iter().map(record_time).min().unwrap_or(0);
    let at = |t: u64| Time(t.saturating_sub(t0));
    let mut checker = Checker::new();
    let life = |member: usize| -> Life { (member, 0) };
    let mut verdict = Verdict::default();
    // What each number holds, as first observed (a second, different name is a violation).
    let mut named: BTreeMap<u64, Mid> = BTreeMap::new();
    let mut conflicts = Vec::new();
    let mut note = |seq: u64, mid: Mid, named: &mut BTreeMap<u64, Mid>| match named.get(&seq) {
        Some(known) if *known != mid => conflicts.push((seq, mid)),
        Some(_) => {}
        None => {
            named.insert(seq, mid);
        }
    };
    for r in records {
        match r {
            Record::Sent { member, mid, digest, .. } => {
                verdict.sent += 1;
                checker.on_sent(Mid::from(*mid), unhex(digest), life(*member));
            }
            Record::Outcome { mid, fate: Fate::Committed, seq: Some(seq), .. } => {
                note(*seq, Mid::from(*mid), &mut named)
            }
            Record::Deliver { seq, mid, .. } => note(*seq, Mid::from(*mid), &mut named),
            _ => {}
        }
    }
    verdict.highest = named.keys().next_back().copied().unwrap_or(0);
    for seq in 1..=verdict.highest {
        let assigned = named.get(&seq).map_or(Assigned::Noop, |m| Assigned::Mid(*m));
        checker.on_commit(Time(0), Seq(seq), &[assigned]);
    }
    for (seq, mid) in conflicts {
        checker.on_commit(Time(0), Seq(seq), &[Assigned::Mid(mid)]);
    }
    for r in records {
        match r {
            Record::Outcome { t, mid, fate, seq, .. } => {
                let outcome = match (fate, seq) {
                    (Fate::Committed, Some(s)) => Outcome::Committed(Seq(*s)),
                    (Fate::Expired, _) => Outcome::Expired,
                    _ => Outcome::Unknown,
                };
                checker.on_outcome(at(*t), Mid::from(*mid), outcome);
            }
            Record::Deliver { t, member, seq, mid, digest } => {
                checker.on_deliver(at(*t), life(*member), Seq(*seq), Mid::from(*mid), unhex(digest));
            }
            Record::Restored { t, member, seq } => checker.on_caught_up(at(*t), life(*member), Seq(*seq)),
            _ => {}
        }
    }
    let end = at(records.iter().map(record_time).max().unwrap_or(0));
    let tails: Vec<Life> = tails.iter().map(|m| life(*m)).collect();
    checker.check_atomicity(end, &tails);
    let senders: FxHashSet<Life> = senders.iter().map(|m| life(*m)).collect();
    checker.check_validity(end, &senders);
    verdict.committed = checker.outcomes_committed();
    verdict.expired = checker.expired();
    verdict.unknown = checker.unknown();
    verdict.deliveries = checker.deliveries();
    verdict.violations = checker.violations().to_vec();
    verdict
}

/// When a record happened.
pub fn record_time(r: &Record) -> u64 {
    match r {
        Record::Sent { t, .. }
        | Record::Outcome { t, .. }
        | Record::Deliver { t, .. }
        | Record::Restored { t, .. }
        | Record::Sequencer { t, .. }
        | Record::Fault { t, .. }
        | Record::Done { t, .. } => *t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mid(counter: u64) -> MidRecord {
        MidRecord([9, 1, counter])
    }

    fn digest(counter: u64) -> String {
        hex(Digest::of(format!("payload {counter}").as_bytes()))
    }

    /// Two sends, committed at 1 and 3 (2 a no-op), delivered by both tails.
    fn good() -> Vec<Record> {
        let mut h = Vec::new();
        for (c, seq) in [(1, 1), (2, 3)] {
            h.push(Record::Sent { t: c, member: 0, mid: mid(c), digest: digest(c) });
            h.push(Record::Outcome { t: 10 + c, member: 0, mid: mid(c), fate: Fate::Committed, seq: Some(seq) });
            for tail in [1, 2] {
                h.push(Record::Deliver { t: 20 + c, member: tail, seq, mid: mid(c), digest: digest(c) });
            }
        }
        h
    }

    #[test]
    fn a_good_history_passes() {
        let v = check(&good(), &[1, 2], &[0]);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!((v.sent, v.committed, v.deliveries, v.highest), (2, 2, 4, 3));
    }

    #[test]
    fn each_broken_promise_is_found() {
        let promise = |h: Vec<Record>| {
            let v = check(&h, &[1, 2], &[0]);
            v.violations.first().map(|v| v.promise)
        };
        use sam_sim::Promise;
        // Tail 2 delivers another message at 3.
        let mut h = good();
        h.push(Record::Sent { t: 5, member: 0, mid: mid(3), digest: digest(3) });
        if let Some(Record::Deliver { mid: m, digest: d, .. }) =
            h.iter_mut().rev().find(|r| matches!(r, Record::Deliver { member: 2, .. }))
        {
            (*m, *d) = (mid(3), digest(3));
        }
        assert_eq!(promise(h), Some(Promise::TotalOrder));
        // One message delivered at two numbers (a send numbered twice).
        let mut h = good();
        for tail in [1, 2] {
            h.push(Record::Deliver { t: 40, member: tail, seq: 4, mid: mid(2), digest: digest(2) });
        }
        assert_eq!(promise(h), Some(Promise::Integrity));
        // Other bytes than were sent.
        let mut h = good();
        if let Some(Record::Deliver { digest: d, .. }) = h.iter_mut().find(|r| matches!(r, Record::Deliver { .. })) {
            *d = digest(7);
        }
        assert_eq!(promise(h), Some(Promise::Integrity));
        // A message told committed that tail 2 never delivered (lost in a crash).
        let h: Vec<Record> =
            good().into_iter().filter(|r| !matches!(r, Record::Deliver { member: 2, seq: 3, .. })).collect();
        assert_eq!(promise(h), Some(Promise::Atomicity));
        // A send with no outcome from a sender that lived.
        let mut h = good();
        h.push(Record::Sent { t: 6, member: 0, mid: mid(5), digest: digest(5) });
        assert_eq!(promise(h), Some(Promise::Validity));
    }
}
