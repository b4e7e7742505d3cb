//! Where to reach a pid.
//!
//! Every frame names its sender's pid (authenticated when security is on); the source address
//! is never an identity. Servers are reached at the addresses the configuration gives them.
//! A member is reached at the address its first direct (not relayed) frame came from, and
//! moves only with a frame that echoed the cookie of its new address — a member can spoof its
//! source, so an address that was never proven to receive must not redirect answers already
//! promised to it. A bounded table, whose entries idle for [`MEMBER_IDLE`] make room for new
//! members.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use sam_core::Pid;

/// Members whose address a process remembers.
pub const MEMBER_ADDRESSES_MAX: usize = 65_536;
/// A member unheard for this long may be forgotten when the table is full.
pub const MEMBER_IDLE: Duration = Duration::from_secs(180);

/// The configured servers' addresses, and the members' last heard.
#[derive(Debug, Default)]
pub struct Peers {
    servers: HashMap<Pid, SocketAddrV4>,
    members: RwLock<HashMap<Pid, (SocketAddrV4, Instant)>>,
}

impl Peers {
    /// The configured servers.
    pub fn new(servers: impl IntoIterator<Item = (Pid, SocketAddrV4)>) -> Peers {
        Peers { servers: servers.into_iter().collect(), members: RwLock::default() }
    }

    /// The configured address of server `pid`.
    pub fn server(&self, pid: Pid) -> Option<SocketAddrV4> {
        self.servers.get(&pid).copied()
    }

    /// The address to reach `pid` at.
    pub fn addr_of(&self, pid: Pid) -> Option<SocketAddrV4> {
        self.server(pid).or_else(|| self.members.read().ok()?.get(&pid).map(|(a, _)| *a))
    }

    /// Notes that member `pid` sent from `addr` at `now`: its address if it has none yet, or
    /// if `proven` (the frame echoed a cookie of `addr`); `false` when the table is full of
    /// members heard recently.
    pub fn learn(&self, pid: Pid, addr: SocketAddrV4, now: Instant, proven: bool) -> bool {
        let Ok(mut members) = self.members.write() else { return false };
        if let Some(entry) = members.get_mut(&pid) {
            if proven || entry.0 == addr {
                *entry = (addr, now);
            }
            return true;
        }
        if members.len() >= MEMBER_ADDRESSES_MAX {
            members.retain(|_, (_, heard)| now.saturating_duration_since(*heard) < MEMBER_IDLE);
            if members.len() >= MEMBER_ADDRESSES_MAX {
                return false;
            }
        }
        members.insert(pid, (addr, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn servers_by_configuration_and_members_by_their_last_frame() {
        let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7000);
        let peers = Peers::new([(Pid(1), server)]);
        assert_eq!(peers.addr_of(Pid(1)), Some(server));
        let member = Pid(1 << 63 | 5);
        assert_eq!(peers.addr_of(member), None);
        let now = Instant::now();
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 40_000);
        assert!(peers.learn(member, a, now, false));
        assert_eq!(peers.addr_of(member), Some(a), "the first address");
        let b = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 40_001);
        assert!(peers.learn(member, b, now, false));
        assert_eq!(peers.addr_of(member), Some(a), "an unproven address moves nothing");
        assert!(peers.learn(member, b, now, true));
        assert_eq!(peers.addr_of(member), Some(b), "a proven one does");
    }
}
