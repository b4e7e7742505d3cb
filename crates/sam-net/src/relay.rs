//! Unicast mode's relay (DESIGN section 7): members register, under a lease they renew, with
//! a data server, which passes on to them every frame sent on the global channel.
//!
//! A member starts with the data server its port picks, so members spread over the data
//! servers, renews its lease every third of it, and moves to the next data server when its own
//! relayed nothing for half a lease (while a group is up, heartbeats flow on the global channel
//! every few milliseconds; a grant or the server's own frames do not count). A relay keeps at
//! most [`MAX_MEMBERS`] leases and grants at most [`MAX_LEASE`]; a member that moved on is
//! dropped when its lease runs out, and until then gets some frames twice, which the protocol
//! tolerates as it does any duplicate.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sam_core::wire::register_frame;
use sam_core::Pid;
use tokio::net::UdpSocket;

use crate::security::{SealFor, Sealer};

/// The most members one data server relays to.
pub const MAX_MEMBERS: usize = 65_536;
/// The longest lease a data server grants.
/// (DESIGN section 12: a spoofed registration that slipped through would cost at most this.)
pub const MAX_LEASE: Duration = Duration::from_secs(30);
/// The most members one IP address may register with one data server.
pub const MAX_MEMBERS_PER_IP: usize = 256;

/// A data server's registered members (one registration per member pid and per address),
/// where they are and when their leases end; indexed so that a registration costs the same
/// however many members there are.
#[derive(Debug, Default)]
pub(crate) struct Members {
    leases: HashMap<Pid, (SocketAddrV4, Instant)>,
    by_addr: HashMap<SocketAddrV4, Pid>,
    per_ip: HashMap<Ipv4Addr, usize>,
    last_prune: Option<Instant>,
}

impl Members {
    /// Grants member `pid` at `addr` a lease of `asked` (at most [`MAX_LEASE`]); `None` when
    /// full.
    pub(crate) fn register(&mut self, now: Instant, pid: Pid, addr: SocketAddrV4, asked: Duration) -> Option<Duration> {
        self.prune(now);
        // One registration per address: a new pid from it replaces the old one.
        if let Some(old) = self.by_addr.get(&addr).copied().filter(|old| *old != pid) {
            self.remove(old);
        }
        let known = self.leases.contains_key(&pid);
        let same_ip = self.per_ip.get(addr.ip()).copied().unwrap_or(0);
        if !known && (self.leases.len() >= MAX_MEMBERS || same_ip >= MAX_MEMBERS_PER_IP) {
            return None;
        }
        let lease = asked.min(MAX_LEASE);
        if let Some((before, _)) = self.leases.insert(pid, (addr, now + lease)) {
            self.unindex(pid, before);
        }
        self.by_addr.insert(addr, pid);
        *self.per_ip.entry(*addr.ip()).or_default() += 1;
        Some(lease)
    }

    /// The addresses of the members whose lease has not run out.
    pub(crate) fn live(&mut self, now: Instant) -> impl Iterator<Item = SocketAddrV4> + '_ {
        self.prune(now);
        self.leases.values().map(|(addr, _)| *addr)
    }

    /// The leases held, some perhaps run out and not pruned yet.
    pub(crate) fn len(&self) -> usize {
        self.leases.len()
    }

    fn remove(&mut self, pid: Pid) {
        if let Some((addr, _)) = self.leases.remove(&pid) {
            self.unindex(pid, addr);
        }
    }

    /// Takes `pid`'s registration at `addr` out of the indices.
    fn unindex(&mut self, pid: Pid, addr: SocketAddrV4) {
        if self.by_addr.get(&addr) == Some(&pid) {
            self.by_addr.remove(&addr);
        }
        if let Some(n) = self.per_ip.get_mut(addr.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(addr.ip());
            }
        }
    }

    /// Forgets the members whose lease ran out (looking at most once a second).
    fn prune(&mut self, now: Instant) {
        if self.last_prune.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        self.last_prune = Some(now);
        let ended: Vec<Pid> = self.leases.iter().filter(|(_, (_, end))| *end <= now).map(|(p, _)| *p).collect();
        for pid in ended {
            self.remove(pid);
        }
    }
}

/// A member's registration with one of the data servers.
#[derive(Debug)]
pub(crate) struct Registration {
    relays: Vec<(Pid, SocketAddrV4)>,
    /// Wakes the renewal loop at once (a relay's cookie arrived).
    renew: tokio::sync::Notify,
    current: AtomicUsize,
    /// When the current relay was last heard from, in ms after `epoch`.
    heard: AtomicU64,
    epoch: Instant,
    lease: Duration,
}

impl Registration {
    /// A registration of the member at `me` with one of `relays`, for leases of `lease`.
    pub(crate) fn new(me: SocketAddrV4, relays: Vec<(Pid, SocketAddrV4)>, lease: Duration) -> Registration {
        // Members take ports the system picks, so the port spreads them over the relays.
        let first = usize::from(me.port()) % relays.len().max(1);
        Registration {
            relays,
            renew: tokio::sync::Notify::new(),
            current: AtomicUsize::new(first),
            heard: AtomicU64::new(0),
            epoch: Instant::now(),
            lease,
        }
    }

    /// Notes a frame `addr` relayed: if it is the current relay, it still relays.
    pub(crate) fn relayed_by(&self, addr: SocketAddrV4) {
        if self.current().is_some_and(|(_, a)| a == addr) {
            self.heard.store(self.elapsed_ms(), Ordering::Relaxed);
        }
    }

    /// Sends the registration again now (a relay challenged it, and its cookie is here).
    pub(crate) fn renew_now(&self) {
        self.renew.notify_one();
    }

    fn current(&self) -> Option<(Pid, SocketAddrV4)> {
        self.relays.get(self.current.load(Ordering::Relaxed)).copied()
    }

    fn elapsed_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers and renews until the driver is dropped, moving to the next data server when
    /// the current one falls silent.
    pub(crate) async fn run(self: Arc<Self>, socket: Arc<UdpSocket>, sealer: Arc<Mutex<Sealer>>) {
        if self.relays.is_empty() {
            return;
        }
        let frame = register_frame(self.lease.as_millis() as u64);
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.heard.store(self.elapsed_ms(), Ordering::Relaxed);
        loop {
            tokio::select! {
                _ = renew.tick() => {}
                () = self.renew.notified() => {}
            }
            let silent = self.elapsed_ms().saturating_sub(self.heard.load(Ordering::Relaxed));
            if u128::from(silent) > (self.lease / 2).as_millis() {
                let next = (self.current.load(Ordering::Relaxed) + 1) % self.relays.len();
                self.current.store(next, Ordering::Relaxed);
                self.heard.store(self.elapsed_ms(), Ordering::Relaxed);
            }
            if let Some((pid, relay)) = self.current() {
                // A fresh seal each time: a counter is used once.
                let sealed = sealer.lock().unwrap_or_else(|e| e.into_inner()).seal(SealFor::Pid(pid), &frame);
                // A refused send is a lost registration: the next renewal tries again.
                let _ = socket.send_to(&sealed, relay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
    }

    #[test]
    fn leases_are_capped_and_run_out() {
        let mut m = Members::default();
        let now = Instant::now();
        assert_eq!(m.register(now, Pid(1), addr(1), Duration::from_secs(3_600)), Some(MAX_LEASE));
        assert_eq!(m.register(now, Pid(2), addr(2), Duration::from_secs(2)), Some(Duration::from_secs(2)));
        assert_eq!(m.live(now).count(), 2);
        let later = now + Duration::from_secs(3);
        assert_eq!(m.live(later).collect::<Vec<_>>(), vec![addr(1)], "the short lease ran out");
    }

    #[test]
    fn one_registration_per_address_and_a_bounded_number_per_ip() {
        let mut m = Members::default();
        let now = Instant::now();
        let lease = Duration::from_secs(10);
        assert!(m.register(now, Pid(1), addr(1), lease).is_some());
        assert!(m.register(now, Pid(2), addr(1), lease).is_some());
        assert_eq!(m.leases.len(), 1, "the new pid from one address replaces the old");
        for port in 2..=MAX_MEMBERS_PER_IP as u16 {
            assert!(m.register(now, Pid(u64::from(port) + 10), addr(port), lease).is_some());
        }
        assert!(m.register(now, Pid(9_999), addr(9_999), lease).is_none(), "the IP's share is used up");
        assert!(m.register(now, Pid(1_000), SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 1), lease).is_some());
        let later = now + lease;
        assert_eq!(m.live(later).count(), 0, "every lease ran out");
        assert!(m.by_addr.is_empty() && m.per_ip.is_empty(), "and the indices with them");
        assert!(m.register(later, Pid(9_999), addr(9_999), lease).is_some(), "the IP has room again");
    }

    #[test]
    fn members_spread_over_the_relays() {
        let relays: Vec<_> = (1..=3).map(|p| (Pid(p.into()), addr(p))).collect();
        let chosen: std::collections::HashSet<_> = (1_000..1_030)
            .map(|port| Registration::new(addr(port), relays.clone(), Duration::from_secs(3)).current())
            .collect();
        assert_eq!(chosen.len(), 3, "thirty members use every relay");
    }
}
