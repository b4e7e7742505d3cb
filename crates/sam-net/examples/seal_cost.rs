//! What sealing costs per datagram on this machine: seal and open, by suite and mode, for a
//! path-MTU datagram and a loopback-sized one. `cargo run --release -p sam-net --example
//! seal_cost` (DESIGN section 12, "Budget measured here"; issue 12 asks to measure both suites).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sam_core::{Channel, Pid};
use sam_net::security::envelope::Mode;
use sam_net::security::keys::{ClusterId, Keyring, Suite};
use sam_net::security::{now_ms, Opener, SealFor, Sealer, SecurityPlan, ServerKeys};

const CLUSTER: ClusterId = ClusterId(1);

fn plan(mode: Mode, keys: &Arc<Keyring>) -> SecurityPlan {
    let servers = vec![(Pid(1), ServerKeys::Server)];
    SecurityPlan { mode, keys: Some(keys.clone()), replay_senders_max: 1 << 20, ..SecurityPlan::off(CLUSTER, servers) }
}

/// Mean µs per seal and per open of `frames` datagrams of `size` payload bytes.
fn measure(mode: Mode, suite: Suite, dest: SealFor, size: usize, frames: usize) -> (f64, f64) {
    let server = Arc::new(Keyring::generate_server(CLUSTER, suite).expect("keys"));
    let member = Arc::new(Keyring::member_from(&server, "bench"));
    let (sender_keys, pid) = match dest {
        SealFor::Channel(Channel::Commit) => (server.clone(), Pid(1)),
        _ => (member.clone(), Pid(member.member.expect("member").0 | 1)),
    };
    let mut sealer = Sealer::new(plan(mode, &sender_keys), pid).expect("sealer");
    let mut opener = Opener::new(plan(mode, &server), None);
    let payload = vec![0x5a; size];
    let start = Instant::now();
    let sealed: Vec<Bytes> = (0..frames).map(|_| sealer.seal(dest, &payload)).collect();
    let seal_us = start.elapsed().as_secs_f64() * 1e6 / frames as f64;
    let now = now_ms();
    let start = Instant::now();
    for frame in &sealed {
        opener.open(now, frame).expect("opens");
    }
    let open_us = start.elapsed().as_secs_f64() * 1e6 / frames as f64;
    (seal_us, open_us)
}

fn main() {
    println!("{:<18} {:<13} {:<26} {:>8} {:>9} {:>9}", "suite", "mode", "frame", "bytes", "seal µs", "open µs");
    for suite in Suite::ALL {
        for mode in [Mode::Encrypt, Mode::Authenticate] {
            for (what, dest) in [
                ("server key", SealFor::Channel(Channel::Commit)),
                ("group key + member tag", SealFor::Channel(Channel::Global)),
            ] {
                for size in [1_400, 64_000] {
                    let frames = if size > 10_000 { 5_000 } else { 50_000 };
                    let (seal, open) = measure(mode, suite, dest, size, frames);
                    println!(
                        "{:<18} {:<13} {:<26} {:>8} {:>9.2} {:>9.2}",
                        suite.name(),
                        mode.name(),
                        what,
                        size,
                        seal,
                        open
                    );
                }
            }
        }
    }
    let off = measure(Mode::Off, Suite::Aes256Gcm, SealFor::Channel(Channel::Global), 1_400, 50_000);
    println!("{:<18} {:<13} {:<26} {:>8} {:>9.2} {:>9.2}", "-", "off", "CRC of the header", 1_400, off.0, off.1);
}
