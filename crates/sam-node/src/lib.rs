//! # sam-node: the node and the client (DESIGN section 8)
//!
//! A [`node::Node`] runs one process of a SAM group, any set of its roles, on real sockets, a
//! real disk and real time, by driving `sam_core`'s state machines. `sam server` is a node with
//! server roles; a program joins the group as a member in a few lines:
//!
//! ```no_run
//! use bytes::Bytes;
//! use sam_node::config::ClusterConfig;
//! use sam_node::launch::member_spec;
//! use sam_node::node::{Event, Node};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The cluster's file: `sam local up` writes sam-local/sam.toml, `sam config init` one for
//! // real hosts. It names the servers, the channels and this member's key file.
//! let cluster = ClusterConfig::load("sam-local/sam.toml".as_ref())?;
//! // A seed unique to this run: it picks the member's pid among its credential's and a fresh
//! // incarnation, so that no message id of an earlier run is used again. `false`: no
//! // replicated key-value table (`true` keeps one, read with `Node::snapshot`).
//! let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
//! let mut node = Node::start(member_spec(&cluster, seed, false)?).await?;
//!
//! // A send resolves to the number the group gave the message, or to why it has none.
//! let seq = node.client().send(Bytes::from("route 10.0.0.0/8 via 192.168.0.1")).await?;
//! println!("committed at {seq}");
//!
//! // Every member delivers every message, in the one agreed order, from number 1 (see
//! // `NodeSpec::deliver_from` to start at the checkpoint or now instead).
//! while let Some(event) = node.next_event().await {
//!     if let Event::Deliver { seq, payload, .. } = event {
//!         println!("{seq}: {}", String::from_utf8_lossy(&payload));
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A node that keeps deliveries on must read its events (a member that falls
//! [`node::EVENTS_HELD`] behind stops reading the network until it catches up); one that only
//! sends sets `NodeSpec::deliveries` to `false`. [`metrics::MetricsServer`] serves a node's
//! Prometheus metrics. `examples/router_table.rs` is a whole program: routers keeping one
//! forwarding table.
#![deny(missing_docs)]

pub use sam_core::DeliverFrom;

mod alarms;
mod backlog;
pub mod client;
mod compaction;
pub mod config;
pub mod credential;
pub mod launch;
pub mod metrics;
pub mod node;
