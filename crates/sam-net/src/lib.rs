//! # sam-net: the network driver (DESIGN sections 7 and 8)
//!
//! It carries the protocol core's messages over UDP: the four channels (global, data, commit,
//! checkpoint) as IP multicast groups, and unicast to one process. It knows nothing of the
//! protocol beyond the wire format (`sam_core::wire`): the node asks it to [`Net::queue`]
//! what the core's `Send` actions say, [`Net::flush`]es after each batch of inputs, and feeds
//! what [`Net::recv`] returns into the core.
//!
//! - Many messages share a datagram, up to `max_datagram_bytes` (about 64 KiB on loopback,
//!   the path MTU across hosts); a message too long for one travels as fragments and is
//!   reassembled within bounds ([`reassembly`]).
//! - Every datagram is a sealed frame naming its cluster and sender ([`security`]); the source
//!   address is never an identity ([`peer`]).
//! - Nothing from the network can stop the driver: a datagram that does not open or decode is
//!   counted in [`NetStats`] by why, and dropped.
#![deny(missing_docs)]

mod batch;
mod driver;
pub mod injected;
pub mod peer;
mod reader;
pub mod reassembly;
pub mod relay;
pub mod security;
pub mod socket;

pub use driver::{
    Incoming, Net, NetError, NetPlan, NetStats, RelayRole, TransportPlan, UnicastPlan, DROP_REASONS,
    MAX_UDP_PAYLOAD_BYTES,
};
pub use injected::InjectedFaults;
pub use peer::Peers;
pub use socket::Group;
