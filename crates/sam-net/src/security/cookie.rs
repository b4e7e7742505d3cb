//! Cookies against reflection (DESIGN section 12, "No reflection"): a request whose answer may
//! be many times its size — a fetch, an entry query, a block fetch, a relay registration —
//! is served only to an address that echoed a cookie it was given there. A spoofed source
//! never sees its cookie, so it can make a server send its victim nothing but challenges, each
//! no larger than the spoofed request.
//!
//! A cookie is `HMAC-SHA256(process secret, bucket ‖ ip ‖ port ‖ pid)` truncated to 16 bytes,
//! with 30-second buckets; the current and the previous bucket's are accepted. The secret is
//! drawn at start and never leaves the process: each server grants its own cookies, and a
//! restart only costs its requesters one challenge.

use std::net::SocketAddrV4;

use ring::hmac;
use sam_core::Pid;
use subtle::ConstantTimeEq;

use super::envelope::{Cookie, COOKIE_LEN};
use super::keys::{random, KeyError};

/// How long one cookie is the current one.
pub const COOKIE_BUCKET_MS: u64 = 30_000;

/// What a request's cookie proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Echo {
    /// This bucket's cookie: serve it.
    Current,
    /// The previous bucket's: serve it, and grant the current one.
    Previous,
    /// None, or a wrong one: challenge, do not serve.
    Missing,
}

/// A process's cookie secret.
#[derive(Debug)]
pub struct CookieJar {
    key: hmac::Key,
}

impl CookieJar {
    /// A jar with a fresh secret from the OS RNG.
    pub fn new() -> Result<CookieJar, KeyError> {
        let secret: [u8; 32] = random()?;
        Ok(CookieJar { key: hmac::Key::new(hmac::HMAC_SHA256, &secret) })
    }

    /// The cookie of `pid` at `addr` now.
    pub fn mint(&self, now_ms: u64, addr: SocketAddrV4, pid: Pid) -> Cookie {
        self.at(now_ms / COOKIE_BUCKET_MS, addr, pid)
    }

    /// What `cookie`, from `pid` at `addr`, proves now.
    pub fn check(&self, now_ms: u64, addr: SocketAddrV4, pid: Pid, cookie: Option<&Cookie>) -> Echo {
        let Some(cookie) = cookie else { return Echo::Missing };
        let bucket = now_ms / COOKIE_BUCKET_MS;
        if bool::from(self.at(bucket, addr, pid).ct_eq(cookie)) {
            Echo::Current
        } else if bool::from(self.at(bucket.saturating_sub(1), addr, pid).ct_eq(cookie)) {
            Echo::Previous
        } else {
            Echo::Missing
        }
    }

    fn at(&self, bucket: u64, addr: SocketAddrV4, pid: Pid) -> Cookie {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&bucket.to_le_bytes());
        ctx.update(&addr.ip().octets());
        ctx.update(&addr.port().to_le_bytes());
        ctx.update(&pid.0.to_le_bytes());
        let mut cookie = [0u8; COOKIE_LEN];
        cookie.copy_from_slice(&ctx.sign().as_ref()[..COOKIE_LEN]);
        cookie
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn a_cookie_holds_for_its_address_and_pid_for_two_buckets_only() {
        let jar = CookieJar::new().unwrap();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4000);
        let now = 10 * COOKIE_BUCKET_MS;
        let cookie = jar.mint(now, addr, Pid(7));
        assert_eq!(jar.check(now, addr, Pid(7), Some(&cookie)), Echo::Current);
        assert_eq!(jar.check(now + COOKIE_BUCKET_MS, addr, Pid(7), Some(&cookie)), Echo::Previous);
        assert_eq!(jar.check(now + 2 * COOKIE_BUCKET_MS, addr, Pid(7), Some(&cookie)), Echo::Missing);
        let other = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4001);
        assert_eq!(jar.check(now, other, Pid(7), Some(&cookie)), Echo::Missing, "another address");
        assert_eq!(jar.check(now, addr, Pid(8), Some(&cookie)), Echo::Missing, "another pid");
        assert_eq!(jar.check(now, addr, Pid(7), None), Echo::Missing);
        assert_ne!(CookieJar::new().unwrap().mint(now, addr, Pid(7)), cookie, "each process its own secret");
    }
}
