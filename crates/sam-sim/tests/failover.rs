//! Sequencer failover (DESIGN section 6): the group survives the loss of its sequencer —
//! crashes, also during recovery, and partitions that leave a zombie running — without losing,
//! duplicating or reordering anything, and a deposed sequencer never gets anything committed.

use sam_core::Mutation;
use sam_sim::{run, Promise, Report, SimConfig};

fn run_seeds(range: std::ops::Range<u64>, make: fn(u64) -> SimConfig) -> Vec<Report> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let seeds: Vec<u64> = range.collect();
    let reports: Vec<Report> = std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .chunks(seeds.len().div_ceil(jobs))
            .map(|chunk| s.spawn(move || chunk.iter().map(|&seed| run(make(seed))).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a simulation panicked")).collect()
    });
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| {
            format!("{r}\n  replay: cargo run --release -- sim --mixed --crash-sequencer --seed {}", r.config.seed)
        })
        .collect();
    assert!(failed.is_empty(), "{} seeds failed:\n{}", failed.len(), failed.join("\n"));
    reports
}

/// A longer run than the mixed default, so that several sequencer faults fall inside it.
fn long_failover(seed: u64) -> SimConfig {
    SimConfig { messages: 2_000, rate_per_s: 1_000, ..SimConfig::failover(seed) }
}

#[test]
fn total_order_survives_sequencer_crashes_and_zombies_over_500_seeds() {
    let reports = run_seeds(0..500, SimConfig::failover);
    let failovers: usize = reports.iter().map(|r| r.failovers_us.len()).sum();
    assert!(failovers > 100, "sequencer faults happened and were recovered from: {failovers}");
}

#[test]
fn every_promise_holds_through_repeated_failovers_in_long_runs() {
    let reports = run_seeds(1_000..1_060, long_failover);
    let failovers: Vec<u64> = reports.iter().flat_map(|r| r.failovers_us.iter().copied()).collect();
    assert!(failovers.len() > 60, "at least one failover per run on average: {}", failovers.len());
    let slow = failovers.iter().filter(|us| **us > 5_000_000).count();
    assert_eq!(slow, 0, "no failover took more than 5 s of simulated time: {failovers:?}");
}

/// Runs failover seeds of a broken variant until one fails, and returns the promises broken.
fn broken(mutation: Mutation) -> Vec<Promise> {
    for seed in 0..300 {
        let r = run(SimConfig { mutation: Some(mutation), ..long_failover(seed) });
        if !r.passed() {
            return r.violations.iter().map(|v| v.promise).collect();
        }
    }
    panic!("no seed of {mutation:?} broke a promise");
}

#[test]
fn fencing_catches_commit_servers_that_accept_a_deposed_epoch() {
    let promises = broken(Mutation::AcceptOldEpoch);
    assert!(promises.contains(&Promise::Fencing), "{promises:?}");
}

#[test]
fn total_order_catches_a_candidate_that_takes_office_with_one_promise_too_few() {
    let promises = broken(Mutation::PromiseTooFew);
    assert!(promises.iter().any(|p| matches!(p, Promise::TotalOrder | Promise::Integrity)), "{promises:?}");
}
