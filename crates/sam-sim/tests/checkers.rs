//! Each checker fails when it should: fed a broken history, or run against a deliberately
//! broken protocol variant (the `mutations` feature, test-only).

use sam_core::{Assigned, Digest, Incarnation, Mid, Mutation, Pid, Seq, Source, Time};
mod common;

use common::broken;
use sam_sim::check::{Checker, Outcome};
use sam_sim::{Promise, SimConfig};

fn mid(counter: u64) -> Mid {
    Mid { source: Source { pid: Pid(1000), incarnation: Incarnation(1) }, counter }
}

fn d(x: u8) -> Digest {
    Digest::of(&[x])
}

fn promises(c: &Checker) -> Vec<Promise> {
    c.violations().iter().map(|v| v.promise).collect()
}

/// A checker that saw `mid(1)` and `mid(2)` sent and committed at 1 and 2.
fn history() -> Checker {
    let mut c = Checker::new();
    c.on_sent(mid(1), d(1), (9, 0));
    c.on_sent(mid(2), d(2), (9, 0));
    c.on_commit(Time(1), Seq(1), &[Assigned::Mid(mid(1)), Assigned::Mid(mid(2))]);
    c
}

#[test]
fn a_correct_history_passes() {
    let mut c = history();
    c.on_deliver(Time(2), (0, 0), Seq(1), mid(1), d(1));
    c.on_deliver(Time(2), (0, 0), Seq(2), mid(2), d(2));
    c.on_outcome(Time(2), mid(1), Outcome::Committed(Seq(1)));
    c.on_outcome(Time(2), mid(2), Outcome::Committed(Seq(2)));
    c.check_atomicity(Time(3), &[(0, 0)]);
    c.check_validity(Time(3), &[(9, 0)].into_iter().collect());
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}

#[test]
fn total_order_catches_two_commits_at_one_number() {
    let mut c = history();
    c.on_commit(Time(2), Seq(2), &[Assigned::Mid(mid(1))]);
    assert!(promises(&c).contains(&Promise::TotalOrder));
}

#[test]
fn total_order_catches_a_member_delivering_another_message_at_a_number() {
    let mut c = history();
    c.on_deliver(Time(2), (0, 0), Seq(1), mid(2), d(2));
    assert_eq!(promises(&c), vec![Promise::TotalOrder]);
}

#[test]
fn total_order_catches_a_skipped_number() {
    let mut c = history();
    c.on_deliver(Time(2), (0, 0), Seq(2), mid(2), d(2));
    assert_eq!(promises(&c), vec![Promise::TotalOrder]);
}

#[test]
fn integrity_catches_other_bytes_a_duplicate_and_an_invention() {
    let mut c = history();
    c.on_deliver(Time(2), (0, 0), Seq(1), mid(1), d(7));
    assert_eq!(promises(&c), vec![Promise::Integrity], "other bytes");
    let mut c = history();
    c.on_deliver(Time(2), (0, 0), Seq(1), mid(1), d(1));
    c.on_deliver(Time(2), (0, 0), Seq(1), mid(1), d(1));
    assert_eq!(promises(&c), vec![Promise::Integrity], "delivered twice");
    let mut c = history();
    c.on_commit(Time(2), Seq(3), &[Assigned::Mid(mid(1))]);
    assert_eq!(promises(&c), vec![Promise::Integrity], "one message at two numbers");
    let mut c = history();
    c.on_commit(Time(2), Seq(3), &[Assigned::Mid(mid(99))]);
    assert_eq!(promises(&c), vec![Promise::Integrity], "a message nobody sent");
}

#[test]
fn atomicity_catches_a_live_member_that_missed_a_number() {
    let mut c = history();
    c.on_deliver(Time(2), (0, 0), Seq(1), mid(1), d(1));
    c.check_atomicity(Time(3), &[(0, 0)]);
    assert_eq!(promises(&c), vec![Promise::Atomicity]);
}

#[test]
fn validity_catches_a_lost_send_and_a_wrong_outcome() {
    let mut c = history();
    c.on_outcome(Time(2), mid(1), Outcome::Committed(Seq(1)));
    c.check_validity(Time(3), &[(9, 0)].into_iter().collect());
    assert_eq!(promises(&c), vec![Promise::Validity], "mid 2 has no outcome");
    let mut c = history();
    c.on_outcome(Time(2), mid(1), Outcome::Committed(Seq(1)));
    c.on_outcome(Time(2), mid(2), Outcome::Expired);
    c.check_validity(Time(3), &[(9, 0)].into_iter().collect());
    assert_eq!(promises(&c), vec![Promise::Validity], "mid 2 reported expired but committed");
    let mut c = history();
    c.check_validity(Time(3), &Default::default());
    assert!(c.violations().is_empty(), "a sender that crashed is owed nothing");
}

#[test]
fn durability_catches_a_commit_announced_before_k_copies_are_durable() {
    let mut c = history();
    c.on_durable_copies(Time(3), Seq(1), mid(1), (2, 2), (2, 2));
    assert!(c.violations().is_empty());
    c.on_durable_copies(Time(3), Seq(2), mid(2), (2, 1), (2, 2));
    assert_eq!(promises(&c), vec![Promise::Durability], "mid 2's data is on one disk only");
}

#[test]
fn durability_catches_commit_servers_that_accept_before_their_write_is_durable() {
    let promises = broken(Mutation::AcceptBeforeDurable, SimConfig::new, &[Promise::Durability]);
    assert!(promises.contains(&Promise::Durability), "{promises:?}");
}

#[test]
fn atomicity_catches_members_that_never_recover_gaps() {
    let promises = broken(
        Mutation::NoGapRecovery,
        |seed| SimConfig { loss: 0.05, max_time_us: 5_000_000, ..SimConfig::new(seed) },
        &[Promise::Atomicity, Promise::Liveness],
    );
    assert!(promises.contains(&Promise::Atomicity) || promises.contains(&Promise::Liveness), "{promises:?}");
}

#[test]
fn validity_catches_senders_that_never_retransmit() {
    let promises = broken(
        Mutation::NoRetransmission,
        |seed| SimConfig { loss: 0.2, max_time_us: 5_000_000, ..SimConfig::new(seed) },
        &[Promise::Validity, Promise::Liveness],
    );
    assert!(promises.contains(&Promise::Validity) || promises.contains(&Promise::Liveness), "{promises:?}");
}

#[test]
fn integrity_catches_a_sequencer_that_does_not_deduplicate() {
    let promises = broken(
        Mutation::NoDeduplication,
        |seed| SimConfig { dup: 0.3, loss: 0.1, ..SimConfig::new(seed) },
        &[Promise::Integrity],
    );
    assert!(promises.contains(&Promise::Integrity), "{promises:?}");
}
