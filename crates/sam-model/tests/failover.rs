//! The exhaustive check of DESIGN section 6, and one counterexample per mutant.

use sam_model::{check, check_with, Bounds, Mutant, Outcome};

/// The correct rules must hold over at least this many states: a floor that keeps the check
/// from silently becoming trivial (it explores about 3.9 million).
const STATE_FLOOR: usize = 2_000_000;

#[test]
fn failover_rules_hold() {
    let outcome = check(None);
    print!("{outcome}");
    assert!(outcome.violated.is_none(), "{outcome}");
    assert!(outcome.complete, "{outcome}");
    assert!(outcome.unreached.is_empty(), "vacuous model: {outcome}");
    assert!(outcome.states > STATE_FLOOR, "only {} states: {outcome}", outcome.states);
    assert!(outcome.holds());
}

/// Wider bounds than the suite's: any candidate may use any of three rounds (17 million
/// states, about a minute). Run with `cargo test -p sam-model -- --ignored`.
#[test]
#[ignore = "takes about a minute"]
fn failover_rules_hold_with_three_rounds() {
    let outcome = check_with(Bounds { rounds: 3, ..Bounds::default() }, None);
    print!("{outcome}");
    assert!(outcome.holds(), "{outcome}");
}

fn breaks(mutant: Mutant, bounds: Bounds) -> Outcome {
    let outcome = check_with(bounds, Some(mutant));
    print!("{outcome}");
    let steps = outcome.counterexample.as_ref().map_or(0, Vec::len);
    println!("{mutant}: counterexample of {steps} steps");
    assert!(outcome.violated.is_some(), "mutant {mutant} survived: {outcome}");
    assert!(steps > 0);
    outcome
}

#[test]
fn one_promise_too_few_breaks() {
    breaks(Mutant::OnePromiseTooFew, Bounds::default());
}

#[test]
fn keeping_the_lowest_epoch_breaks() {
    breaks(Mutant::KeepLowestEpoch, Bounds::default());
}

#[test]
fn no_dedup_in_the_recovered_range_breaks() {
    breaks(Mutant::NoRangeDedup, Bounds::default());
}

#[test]
fn dedup_ignoring_what_is_committed_below_from_seq_breaks() {
    breaks(Mutant::DedupIgnoresCommittedBelow, Bounds::default());
}

#[test]
fn accepted_skipping_gaps_breaks() {
    breaks(Mutant::AcceptedSkipsGaps, Bounds::default());
}

#[test]
fn resuming_after_the_highest_reported_alone_breaks() {
    breaks(Mutant::ResumeAfterHighestOnly, Bounds::default());
}

#[test]
fn committed_prefix_from_stored_entries_breaks() {
    breaks(Mutant::PrefixFromStoredEntries, Bounds::default());
}

#[test]
fn wiped_server_that_only_copies_breaks() {
    breaks(Mutant::WipedServerOnlyCopies, Bounds::default());
}

#[test]
fn own_promise_after_prepare_breaks() {
    // Its shortest counterexample needs only two ballots; with three the search takes ~50 s.
    breaks(Mutant::OwnPromiseAfterPrepare, Bounds { ballots: 2, ..Bounds::default() });
}

#[test]
fn mutant_names_round_trip() {
    for m in Mutant::ALL {
        assert_eq!(m.name().parse::<Mutant>(), Ok(m));
    }
    assert!("nonsense".parse::<Mutant>().is_err());
}

#[test]
fn a_cut_check_says_it_is_incomplete() {
    let outcome = check_with(Bounds { max_states: Some(10_000), ..Bounds::default() }, None);
    assert!(!outcome.complete);
    assert!(!outcome.holds());
}
