//! # sam-node: the node and the client (DESIGN section 8)
#![deny(missing_docs)]

mod alarms;
mod backlog;
pub mod client;
mod compaction;
pub mod config;
pub mod credential;
pub mod launch;
pub mod metrics;
pub mod node;
