//! Sequencer failover (DESIGN section 6): the group survives the loss of its sequencer —
//! crashes, also during recovery, and partitions that leave a zombie running — without losing,
//! duplicating or reordering anything, and a deposed sequencer never gets anything committed.

mod common;

use common::{broken, run_seeds};
use sam_core::Mutation;
use sam_sim::{run, Promise, SimConfig};

/// A longer run than the mixed default, so that several sequencer faults fall inside it.
fn long_failover(seed: u64) -> SimConfig {
    SimConfig { messages: 2_000, rate_per_s: 1_000, ..SimConfig::failover(seed) }
}

#[test]
fn total_order_survives_sequencer_crashes_and_zombies_over_500_seeds() {
    let reports = run_seeds(0..500, SimConfig::failover, "--mixed --crash-sequencer --wipes");
    let failovers: usize = reports.iter().map(|r| r.failovers_us.len()).sum();
    assert!(failovers > 100, "sequencer faults happened and were recovered from: {failovers}");
}

#[test]
fn every_promise_holds_through_repeated_failovers_in_long_runs() {
    let reports =
        run_seeds(1_000..1_060, long_failover, "--mixed --crash-sequencer --wipes --messages 2000 --rate 1000");
    let failovers: Vec<u64> = reports.iter().flat_map(|r| r.failovers_us.iter().copied()).collect();
    assert!(failovers.len() >= 45, "failovers in most runs: {}", failovers.len());
    let slow = failovers.iter().filter(|us| **us > 5_000_000).count();
    assert_eq!(slow, 0, "no failover took more than 5 s of simulated time: {failovers:?}");
}

#[test]
fn fencing_catches_commit_servers_that_accept_a_deposed_epoch() {
    let promises = broken(Mutation::AcceptOldEpoch, long_failover, &[Promise::Fencing]);
    assert!(promises.contains(&Promise::Fencing), "{promises:?}");
}

#[test]
fn total_order_catches_a_candidate_that_takes_office_with_one_promise_too_few() {
    let promises = broken(Mutation::PromiseTooFew, long_failover, &[Promise::TotalOrder, Promise::Integrity]);
    assert!(promises.iter().any(|p| matches!(p, Promise::TotalOrder | Promise::Integrity)), "{promises:?}");
}

/// `sam sim --trace`: what each process noticed comes out as data from the core, in order —
/// candidacies, the sequencer taking office with the range it recovered, step-downs.
#[test]
fn a_traced_failover_shows_the_election_and_the_new_sequencer() {
    let traced = (0..20)
        .map(|seed| run(SimConfig { trace: true, ..SimConfig::failover(seed) }))
        .find(|r| !r.failovers_us.is_empty())
        .expect("a seed with failovers");
    let said = |what: &str| traced.trace.iter().filter(|l| l.contains(what)).count();
    assert!(said("standing for election") >= 2, "{:#?}", traced.trace);
    assert!(said("re-proposing") >= 2, "{:#?}", traced.trace);
    assert!(run(SimConfig::failover(traced.config.seed)).trace.is_empty(), "nothing is kept without --trace");
}
