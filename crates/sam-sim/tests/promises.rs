//! The promises of DESIGN section 1, checked by the simulator over many seeds with mixed
//! faults (DESIGN section 8: "the simulator is how the hard cases are tested").

mod common;

use common::run_seeds;
use sam_sim::{run, ProcKind, Report, SimConfig};

#[test]
fn every_promise_holds_over_1000_seeds_of_mixed_faults() {
    let reports = run_seeds(0..1000, SimConfig::mixed, "--mixed");
    let crashes: u64 = reports.iter().map(|r| r.faults.crashes).sum();
    let partitions: u64 = reports.iter().map(|r| r.faults.partitions).sum();
    let expired: u64 = reports.iter().map(|r| r.expired).sum();
    let lossy = reports.iter().filter(|r| r.config.loss > 0.15).count();
    assert!(crashes > 1000 && partitions > 300, "the faults happened: {crashes} crashes, {partitions} partitions");
    assert!(expired > 0, "some runs exercise expiry");
    assert!(lossy > 100, "many runs lose more than 15% of datagrams");
}

fn heavy_loss(seed: u64) -> SimConfig {
    SimConfig {
        loss: 0.2,
        dup: 0.05,
        reorder: 0.2,
        crashes: true,
        partitions: true,
        members: 6,
        senders: 3,
        messages: 300,
        ..SimConfig::new(seed)
    }
}

#[test]
fn total_order_and_atomicity_survive_20_percent_loss_with_crashes_and_partitions() {
    run_seeds(
        0..60,
        heavy_loss,
        "--loss 0.2 --dup 0.05 --reorder 0.2 --crashes --partitions --members 6 --senders 3 --messages 300",
    );
}

fn short_lifetime(seed: u64) -> SimConfig {
    SimConfig {
        max_lifetime: 40,
        loss: 0.1,
        partitions: true,
        members: 4,
        senders: 2,
        messages: 300,
        ..SimConfig::new(seed)
    }
}

#[test]
fn validity_every_send_is_committed_or_reported_expired_with_a_short_lifetime() {
    let reports = run_seeds(
        0..60,
        short_lifetime,
        "--max-lifetime 40 --loss 0.1 --partitions --members 4 --senders 2 --messages 300",
    );
    assert!(reports.iter().map(|r| r.expired).sum::<u64>() > 0, "partitions with a short lifetime make sends expire");
}

#[test]
fn a_fault_free_run_delivers_everything_to_everyone() {
    let r = run(SimConfig { members: 20, senders: 4, messages: 2_000, ..SimConfig::new(42) });
    assert!(r.passed(), "{r}");
    assert_eq!((r.sent, r.committed, r.expired), (2_000, 2_000, 0));
    assert_eq!(r.deliveries, 2_000 * (20 + r.config.n_checkpoint as u64), "checkpoint servers are members too");
}

#[test]
fn a_run_replays_exactly_from_its_seed() {
    let a = run(heavy_loss(7));
    let b = run(heavy_loss(7));
    let key =
        |r: &Report| (r.sent, r.committed, r.deliveries, r.expired, r.sim_time_us, r.faults, format!("{:?}", r.rates));
    assert_eq!(key(&a), key(&b));
}

/// The sequencer's messages per committed message, for a group of `members`.
fn sequencer_load(members: usize) -> f64 {
    let r = run(SimConfig { members, senders: 4, messages: 4_000, ..SimConfig::new(3) });
    assert!(r.passed(), "{r}");
    let s = r.rate(ProcKind::Sequencer).expect("a sequencer");
    s.sent_per_msg + s.received_per_msg
}

#[test]
fn the_sequencers_work_per_message_does_not_grow_with_members() {
    let small = sequencer_load(10);
    let large = sequencer_load(300);
    assert!(large < small * 1.25, "10 members: {small:.3} msgs/committed, 300 members: {large:.3}");
}

/// With signed frames (DESIGN section 12) members deliver only what a heartbeat's commit chain
/// vouched for: every promise still holds under mixed faults, sequencer crashes with lost
/// storage, and catch-ups from checkpoints — every sequencer names one chain (the checker's
/// total-order check) and every member gets there.
#[test]
fn every_promise_holds_with_signed_frames() {
    fn mixed(seed: u64) -> SimConfig {
        SimConfig { signed: true, ..SimConfig::mixed(seed) }
    }
    fn failover(seed: u64) -> SimConfig {
        SimConfig { signed: true, ..SimConfig::failover(seed) }
    }
    fn checkpoints(seed: u64) -> SimConfig {
        SimConfig { signed: true, ..SimConfig::checkpoints(seed) }
    }
    let mut reports = run_seeds(0..200, mixed, "--mixed --signed");
    reports.extend(run_seeds(0..100, failover, "--mixed --crash-sequencer --wipes --signed"));
    reports.extend(run_seeds(0..100, checkpoints, "--checkpoints --signed"));
    let delivered: u64 = reports.iter().map(|r| r.deliveries).sum();
    assert!(delivered > 10_000, "members delivered under the chain's vouching: {delivered}");
}
