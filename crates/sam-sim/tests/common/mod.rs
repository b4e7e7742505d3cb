//! What the simulation test files share: running many seeds, and finding a seed on which a
//! broken variant fails.

// Each test file uses a part of this module.
#![allow(dead_code)]

use sam_core::Mutation;
use sam_sim::{run, run_many, Promise, Report, SimConfig};

/// Runs seeds `range` of `make` on all cores and fails with the replay command of every seed
/// that broke a promise (`replay` holds the `sam sim` flags besides `--seed`).
pub fn run_seeds(range: std::ops::Range<u64>, make: fn(u64) -> SimConfig, replay: &str) -> Vec<Report> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reports = run_many(range, jobs, make, |_| {});
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{r}\n  replay: cargo run --release -- sim {replay} --seed {}", r.config.seed))
        .collect();
    assert!(failed.is_empty(), "{} seeds failed:\n{}", failed.len(), failed.join("\n"));
    reports
}

/// Runs seeds of a broken variant until one breaks one of the `wanted` promises, and returns
/// the promises that seed broke.
pub fn broken(mutation: Mutation, make: impl Fn(u64) -> SimConfig, wanted: &[Promise]) -> Vec<Promise> {
    for seed in 0..300 {
        let r = run(SimConfig { mutation: Some(mutation), ..make(seed) });
        let promises: Vec<Promise> = r.violations.iter().map(|v| v.promise).collect();
        if promises.iter().any(|p| wanted.contains(p)) {
            return promises;
        }
    }
    panic!("no seed of {mutation:?} broke any of {wanted:?}");
}
