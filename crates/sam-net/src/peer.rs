//! Who sent a datagram: the pid behind a source address.
//!
//! A frame does not name its sender; the source address does. Servers send everything, their
//! multicasts included, from the unicast address the configuration gives them, so a datagram
//! from that address is theirs. Any other address (a member, a sender outside the group) gets
//! a pid made from the address itself, in a range no server may use: replies to that pid go
//! back to that address, and no table of strangers has to be kept or bounded.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use sam_core::Pid;

/// Pids at or above this are addresses, not configured servers.
pub const ADDRESS_PIDS: u64 = 1 << 63;

/// The pids of the configured servers and the addresses behind them.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    by_addr: HashMap<SocketAddrV4, Pid>,
    by_pid: HashMap<Pid, SocketAddrV4>,
}

impl Peers {
    /// The configured servers (every pid below [`ADDRESS_PIDS`]).
    pub fn new(servers: impl IntoIterator<Item = (Pid, SocketAddrV4)>) -> Peers {
        let mut peers = Peers::default();
        for (pid, addr) in servers {
            debug_assert!(pid.0 < ADDRESS_PIDS, "server pids lie below the address range");
            peers.by_addr.insert(addr, pid);
            peers.by_pid.insert(pid, addr);
        }
        peers
    }

    /// The pid of whoever sends from `addr`; `None` for an address that is not IPv4.
    pub fn pid_of(&self, addr: SocketAddr) -> Option<Pid> {
        let SocketAddr::V4(addr) = addr else { return None };
        Some(self.by_addr.get(&addr).copied().unwrap_or_else(|| address_pid(addr)))
    }

    /// The address to reach `pid` at.
    pub fn addr_of(&self, pid: Pid) -> Option<SocketAddrV4> {
        self.by_pid.get(&pid).copied().or_else(|| pid_address(pid))
    }
}

/// The pid a process that is not a configured server gets from its address.
pub fn address_pid(addr: SocketAddrV4) -> Pid {
    Pid(ADDRESS_PIDS | u64::from(addr.ip().to_bits()) << 16 | u64::from(addr.port()))
}

/// The address behind an address pid.
fn pid_address(pid: Pid) -> Option<SocketAddrV4> {
    if pid.0 < ADDRESS_PIDS || pid.0 >> 48 != ADDRESS_PIDS >> 48 {
        return None;
    }
    let ip = Ipv4Addr::from_bits((pid.0 >> 16) as u32);
    Some(SocketAddrV4::new(ip, pid.0 as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_known_by_address_and_strangers_get_their_address_as_pid() {
        let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7000);
        let peers = Peers::new([(Pid(1), server)]);
        assert_eq!(peers.pid_of(server.into()), Some(Pid(1)));
        assert_eq!(peers.addr_of(Pid(1)), Some(server));
        let member = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 40_000);
        let pid = peers.pid_of(member.into()).unwrap();
        assert!(pid.0 >= ADDRESS_PIDS);
        assert_eq!(peers.addr_of(pid), Some(member));
        assert_eq!(peers.addr_of(Pid(5)), None, "an unknown server pid has no address");
    }
}
