//! # sam-sim: the deterministic simulator
//!
//! Drives the protocol core ([`sam_core`]) with a seeded network — loss, duplication,
//! reordering, delay, partitions that heal — and crash/restart of servers and members, where a
//! restart keeps only what was durably written. One `u64` seed derives every parameter, so any
//! run replays exactly: `sam sim --seed N` with the flags [`SimConfig::replay_flags`] prints.
//!
//! The checkers ([`check`]) follow the run: total order and integrity at every delivery;
//! atomicity, validity and durability once faults have healed and the group is quiescent.
//! Counters give the messages each kind of process sent and received per committed message.
#![deny(missing_docs)]

pub mod check;
pub mod config;
pub mod network;
pub mod report;
pub mod sim;

pub use check::{Checker, Promise, Violation};
pub use config::SimConfig;
pub use report::{ProcKind, Report};
pub use sim::{run, run_many, Simulation};
