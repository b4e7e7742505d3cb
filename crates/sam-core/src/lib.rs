//! # sam-core: the SAM protocol as pure state machines
//!
//! This crate is the protocol of Scalable Atomic Multicast (see `DESIGN.md`): one state
//! machine per role — [`Sequencer`], [`CommitServer`], [`DataServer`], [`CheckpointServer`],
//! [`Client`] — and a [`Process`] that holds any set of them. It is deterministic: it opens no
//! socket, reads no clock, starts no thread and draws no unseeded randomness. Time comes in as
//! `now` with every input; randomness (NACK jitter, server rotation) comes from a seed.
//!
//! ## Driving a process
//!
//! A host (the simulator, or the real node) runs this loop:
//!
//! 1. **Input.** Feed what happens: [`Process::handle`] for a message from a peer,
//!    [`Process::handle_tick`] when the time from [`Process::poll_timeout`] has come,
//!    [`Process::handle_durable`] when the storage made writes durable, [`Process::send`] when
//!    the application sends.
//! 2. **Output.** Take the [`Action`]s from [`Process::drain_actions`] and carry them out in
//!    order: send messages (packing many into one datagram with [`wire::FramePacker`]), append
//!    records to durable storage (as bytes from [`encode_record`]), hand deliveries and send
//!    outcomes to the application.
//! 3. **Durability.** Group writes and sync them together; then report the highest durable
//!    [`WriteId`] with [`Process::handle_durable`]. Acknowledgements that need durability
//!    (`Order`, `Accepted`) come out only then, so none can overtake its write.
//! 4. **Restart.** After a crash, replay the durable [`Record`]s (read back with
//!    [`decode_record`]) into [`Process::start`].
//!
//! A fresh group's commit server of rank 0 stands for election at its first tick, starting
//! with a pre-vote that changes nothing durable:
//!
//! ```
//! use std::sync::Arc;
//! use sam_core::{Action, Config, Message, Pid, Process, Roles, Time};
//!
//! let cfg = Config::new(vec![Pid(1), Pid(2), Pid(3)], vec![Pid(1), Pid(2), Pid(3)], vec![]);
//! let roles = Roles { commit: true, data: true, ..Roles::default() };
//! let mut server = Process::start(Arc::new(cfg), Pid(1), roles, 7, Time(0), &[]);
//! server.handle_tick(server.poll_timeout().unwrap());
//! let stands = server.drain_actions().any(|a| matches!(a, Action::Send { msg: Message::PreVote(_), .. }));
//! assert!(stands);
//! ```
#![deny(missing_docs)]

pub mod action;
mod asker;
pub mod ballot;
mod catch_up;
pub mod chain;
pub mod checkpoint_server;
pub mod client;
pub mod commit_server;
pub mod config;
pub mod data_server;
pub mod ids;
pub mod message;
pub mod notice;
pub mod process;
pub mod record_format;
pub mod senders;
pub mod sequencer;
pub mod state_machine;
pub mod wire;

pub use action::{Action, Channel, Dest, Outbox, Record, WriteId};
pub use chain::{Chain, ChainPoint, Signature};
pub use checkpoint_server::{Checkpoint, CheckpointServer};
pub use client::{Client, DeliverFrom, SendError};
pub use commit_server::CommitServer;
pub use config::{Config, ConfigError, Mutation};
pub use data_server::DataServer;
pub use ids::{Digest, Epoch, Incarnation, Mid, Pid, Seq, SeqRange, Source, Time};
pub use message::{Alarms, Assigned, CheckpointInfo, Entry, Message, Slot};
pub use notice::Notice;
pub use process::{Process, Roles};
pub use record_format::{decode_record, encode_record};
pub use sequencer::Sequencer;
pub use state_machine::{KvOp, KvTable, RestoreError, StateMachine};
