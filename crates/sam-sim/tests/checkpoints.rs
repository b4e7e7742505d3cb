//! Checkpoints, garbage collection and late join (DESIGN section 5): members that join late,
//! fall behind by more than the log kept, or restart catch up from a checkpoint plus the log;
//! every member's table equals the table of the whole committed log; servers' state stays
//! bounded; a state machine that is not deterministic is caught and never advertised.

mod common;

use common::run_seeds;
use sam_sim::{run, SimConfig};

#[test]
fn late_joiners_laggards_and_checkpoint_server_crashes_keep_every_promise_over_300_seeds() {
    let reports = run_seeds(0..300, SimConfig::checkpoints, "--checkpoints");
    let catch_ups: u64 = reports.iter().map(|r| r.checkpoints.catch_ups).sum();
    let advertised = reports.iter().filter(|r| r.checkpoints.advertised.is_some()).count();
    let joined: usize = reports.iter().map(|r| r.checkpoints.join_catch_up_us.len()).sum();
    assert!(advertised > 250, "checkpoints were advertised in most runs: {advertised}");
    assert!(catch_ups > 300, "members caught up from checkpoints: {catch_ups}");
    assert!(joined > 100, "late joiners caught up from a checkpoint: {joined}");
}

/// DESIGN sections 5 and 6: across sequencer crashes, zombies and commit servers that lose
/// their storage, the checkpoint stays advertised (a new sequencer learns it from the promises
/// and the checkpoint servers' reports), so late joiners and laggards still catch up.
#[test]
fn checkpoints_survive_sequencer_failover_over_1000_seeds() {
    let make = |seed| SimConfig { crash_sequencer: true, wipes: true, ..SimConfig::checkpoints(seed) };
    let reports = run_seeds(0..1000, make, "--checkpoints --crash-sequencer --wipes");
    assert!(reports.iter().map(|r| r.failovers_us.len()).sum::<usize>() > 200, "failovers happened");
}

/// A run of 20 checkpoint intervals without faults that pause garbage collection: the peak
/// held by any data or commit server stays below the bound (checked inside the run), and a
/// member joining near the end catches up from a checkpoint, saying so in the trace.
#[test]
fn server_state_stays_bounded_over_twenty_checkpoint_intervals() {
    let cfg = SimConfig {
        members: 3,
        senders: 2,
        messages: 10_000,
        checkpoint_every: 500,
        max_lifetime: 1_000,
        sequencer_window: 1_024,
        rate_per_s: 40_000,
        loss: 0.01,
        late_joiners: 1,
        trace: true,
        ..SimConfig::new(7)
    };
    let r = run(cfg);
    assert!(r.passed(), "{r}");
    let bound = 2 * 500 + 1_000 + 1_024;
    assert!(r.checkpoints.peak_commit_held < bound && r.checkpoints.peak_data_held < bound, "{r}");
    assert!(r.checkpoints.advertised >= Some(9_000), "{r}");
    assert_eq!(r.checkpoints.join_catch_up_us.len(), 1, "the late joiner caught up from a checkpoint: {r}");
    let said = |what: &str| r.trace.iter().any(|l| l.contains(what));
    assert!(
        said("catching up from the checkpoint at") && said("caught up: restored the checkpoint at"),
        "{:#?}",
        r.trace
    );
}

/// DESIGN section 5: a checkpoint is advertised only when `k_checkpoint` servers report the
/// same digest; a state machine whose snapshots differ between replicas is raised as an error
/// and never advertised (so nothing is garbage-collected under it).
#[test]
fn a_state_machine_that_is_not_deterministic_is_caught_and_never_advertised() {
    let cfg = SimConfig { messages: 400, checkpoint_every: 50, nondeterministic: true, ..SimConfig::new(3) };
    let r = run(cfg);
    assert!(r.passed(), "{r}");
    assert_eq!(r.checkpoints.advertised, None, "{r}");
    assert!(r.checkpoints.mismatches > 0, "the mismatch was raised: {r}");
    let honest = run(SimConfig { nondeterministic: false, ..r.config.clone() });
    assert!(honest.checkpoints.advertised.is_some() && honest.checkpoints.mismatches == 0, "{honest}");
}
