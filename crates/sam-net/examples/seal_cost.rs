//! What sealing costs per datagram on this machine: seal and open, by suite and mode, for a
//! path-MTU datagram and a loopback-sized one; and what the optional signed frames would add
//! (an Ed25519 signature and its check, a SHA-256 payload digest). `cargo run --release -p
//! sam-net --example seal_cost` (DESIGN section 12, "Budget measured here"; issue 12 asks to
//! measure both suites, and the cost of signed frames).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sam_core::{Channel, Pid};
use sam_net::security::envelope::Mode;
use sam_net::security::keys::{ClusterId, Keyring, Suite};
use sam_net::security::{now_ms, Opener, SealFor, Sealer, SecurityPlan, ServerKeys};

const CLUSTER: ClusterId = ClusterId(1);

fn plan(mode: Mode, keys: &Arc<Keyring>) -> SecurityPlan {
    let servers = vec![(Pid(1), ServerKeys::Server)];
    SecurityPlan { mode, keys: Some(keys.clone()), replay_senders_max: 1 << 20, ..SecurityPlan::off(CLUSTER, servers) }
}

/// Who seals, where to, and who opens.
#[derive(Clone, Copy)]
enum Path {
    /// A server to the commit channel, opened by a server.
    ServerToServers,
    /// A server to the global channel (second and checkpoint tags), opened by a server.
    ServerToGroup,
    /// A member to the global channel (its own tag), opened by a server.
    MemberToGroup,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::ServerToServers => "server key",
            Path::ServerToGroup => "group key + server tags",
            Path::MemberToGroup => "group key + member tag",
        }
    }
}

/// Mean µs per seal and per open of `frames` datagrams of `size` payload bytes.
fn measure(mode: Mode, suite: Suite, path: Path, size: usize, frames: usize) -> (f64, f64) {
    let server = Arc::new(Keyring::generate_server(CLUSTER, suite).expect("keys"));
    let member = Arc::new(Keyring::member_from(&server, "bench"));
    let (sender_keys, pid, dest) = match path {
        Path::ServerToServers => (server.clone(), Pid(1), SealFor::Channel(Channel::Commit)),
        Path::ServerToGroup => (server.clone(), Pid(1), SealFor::Channel(Channel::Global)),
        Path::MemberToGroup => {
            (member.clone(), Pid(member.member.expect("member").0 | 1), SealFor::Channel(Channel::Global))
        }
    };
    let mut sealer = Sealer::new(plan(mode, &sender_keys), pid).expect("sealer");
    let mut opener = Opener::new(plan(mode, &server), Pid(1), None);
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

/// Mean µs of `f` over `n` runs.
fn mean_us(n: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// What signed server frames (DESIGN section 12, optional) would cost per operation.
fn signed_frames() {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("an Ed25519 key");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("the key parses");
    // (cluster id, epoch, s, C_s): what the sequencer signs.
    let statement = [7u8; 8 + 8 + 8 + 32];
    let signature = pair.sign(&statement);
    let public = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref().to_vec());
    let sign = mean_us(5_000, || {
        std::hint::black_box(pair.sign(&statement));
    });
    let verify = mean_us(5_000, || public.verify(&statement, signature.as_ref()).expect("verifies"));
    println!("signed frames (not built): Ed25519 sign {sign:.1} µs, verify {verify:.1} µs per signature");
    for size in [64, 1_400] {
        let payload = vec![0x5a; size];
        let digest = mean_us(200_000, || {
            std::hint::black_box(ring::digest::digest(&ring::digest::SHA256, &payload));
        });
        println!("signed frames (not built): SHA-256 of a {size}-byte payload {digest:.2} µs");
    }
}

fn main() {
    println!("{:<18} {:<13} {:<24} {:>8} {:>9} {:>9}", "suite", "mode", "frame", "bytes", "seal µs", "open µs");
    for suite in Suite::ALL {
        for mode in [Mode::Encrypt, Mode::Authenticate] {
            for path in [Path::ServerToServers, Path::ServerToGroup, Path::MemberToGroup] {
                for size in [1_400, 64_000] {
                    let frames = if size > 10_000 { 5_000 } else { 50_000 };
                    let (seal, open) = measure(mode, suite, path, size, frames);
                    let (suite, mode, path) = (suite.name(), mode.name(), path.name());
                    println!("{suite:<18} {mode:<13} {path:<24} {size:>8} {seal:>9.2} {open:>9.2}");
                }
            }
        }
    }
    let off = measure(Mode::Off, Suite::Aes256Gcm, Path::MemberToGroup, 1_400, 50_000);
    println!("{:<18} {:<13} {:<24} {:>8} {:>9.2} {:>9.2}", "-", "off", "CRC of the header", 1_400, off.0, off.1);
    signed_frames();
}
