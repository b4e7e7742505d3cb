//! Sealing and opening: each mode round-trips, and every way a frame may be forged, altered
//! or replayed is refused.

use super::*;
use keys::Suite;

const CLUSTER: ClusterId = ClusterId(0x5A5A);
const SEQUENCER: Pid = Pid(1);
const CHECKPOINTER: Pid = Pid(4);

struct Cluster {
    server: Arc<Keyring>,
    checkpoint: Arc<Keyring>,
    alice: Arc<Keyring>,
}

fn cluster(suite: Suite) -> Cluster {
    let server = Keyring::generate_server(CLUSTER, suite).unwrap();
    let checkpoint = Keyring::checkpoint_from(&server);
    let alice = Keyring::member_from(&server, "alice");
    Cluster { server: Arc::new(server), checkpoint: Arc::new(checkpoint), alice: Arc::new(alice) }
}

fn plan(mode: Mode, keys: Option<Arc<Keyring>>) -> SecurityPlan {
    let servers =
        vec![(SEQUENCER, ServerKeys::Server), (Pid(2), ServerKeys::Server), (CHECKPOINTER, ServerKeys::Checkpoint)];
    SecurityPlan { mode, keys, ..SecurityPlan::off(CLUSTER, servers) }
}

fn alice_pid(c: &Cluster) -> Pid {
    Pid(c.alice.member.unwrap().0 | 7)
}

fn open(opener: &mut Opener, frame: &Bytes) -> Result<Opened, Dropped> {
    opener.open(now_ms(), frame)
}

#[test]
fn every_mode_and_suite_round_trips_and_names_its_sender() {
    for suite in Suite::ALL {
        let c = cluster(suite);
        for mode in [Mode::Encrypt, Mode::Authenticate] {
            let mut alice = Sealer::new(plan(mode, Some(c.alice.clone())), alice_pid(&c)).unwrap();
            let mut server = Opener::new(plan(mode, Some(c.server.clone())), SEQUENCER, None);
            let mut member = Opener::new(plan(mode, Some(c.alice.clone())), alice_pid(&c), None);
            let frame = alice.seal(SealFor::Channel(Channel::Global), b"payload");
            let hidden = !frame.windows(7).any(|w| w == b"payload");
            assert_eq!(hidden, mode == Mode::Encrypt, "{mode:?}: the payload is readable only when authenticated");
            let opened = open(&mut server, &frame).unwrap();
            assert_eq!(
                (&opened.payload[..], opened.header.pid, opened.authority),
                (&b"payload"[..], alice_pid(&c), Authority::Member)
            );
            assert_eq!(
                open(&mut member, &frame).unwrap().authority,
                Authority::Group,
                "members check only the group key"
            );
            let mut seq = Sealer::new(plan(mode, Some(c.server.clone())), SEQUENCER).unwrap();
            let to_servers = seq.seal(SealFor::Channel(Channel::Commit), b"assign");
            assert_eq!(Header::decode(&to_servers).unwrap().tier, Tier::Server);
            assert_eq!(open(&mut server, &to_servers).unwrap().authority, Authority::Server);
            assert_eq!(open(&mut member, &to_servers).unwrap_err(), Dropped::Unkeyed, "members hold no server key");
            let to_group = seq.seal(SealFor::Channel(Channel::Global), b"commit");
            assert_eq!(open(&mut server, &to_group).unwrap().authority, Authority::Server, "server tag");
            assert_eq!(open(&mut member, &to_group).unwrap().payload, Bytes::from_static(b"commit"));
        }
    }
}

#[test]
fn mode_off_names_the_cluster_and_checks_a_crc() {
    let mut sealer = Sealer::new(plan(Mode::Off, None), Pid(1 << 63)).unwrap();
    let mut opener = Opener::new(plan(Mode::Off, None), SEQUENCER, None);
    let frame = sealer.seal(SealFor::Channel(Channel::Global), b"x");
    assert_eq!(open(&mut opener, &frame).unwrap().payload, Bytes::from_static(b"x"));
    let mut flipped = frame.to_vec();
    flipped[20] ^= 1;
    assert_eq!(open(&mut opener, &Bytes::from(flipped)).unwrap_err(), Dropped::Malformed);
    let other = SecurityPlan { cluster: ClusterId(1), ..plan(Mode::Off, None) };
    assert_eq!(Opener::new(other, SEQUENCER, None).open(now_ms(), &frame).unwrap_err(), Dropped::Foreign);
    // Without keys nothing names a key tier, key id or suite: such a frame is no mode-off frame.
    for (at, value) in [(5, 1), (6, 1), (8, 1)] {
        let mut f = sealer.seal(SealFor::Channel(Channel::Global), b"x").to_vec();
        f[at] = value;
        let head = envelope::HEADER_LEN;
        let crc = crc32c::crc32c(&f[..head]).to_le_bytes();
        let end = f.len();
        f[end - 4..].copy_from_slice(&crc);
        assert!(open(&mut opener, &Bytes::from(f)).is_err(), "byte {at} = {value}");
    }
}

#[test]
fn every_flipped_bit_is_refused_and_each_frame_opens_once() {
    let c = cluster(Suite::Aes256Gcm);
    let mut alice = Sealer::new(plan(Mode::Encrypt, Some(c.alice.clone())), alice_pid(&c)).unwrap();
    let frame = alice.seal(SealFor::Pid(SEQUENCER), b"fetch this");
    for bit in 0..frame.len() * 8 {
        let mut f = frame.to_vec();
        f[bit / 8] ^= 1 << (bit % 8);
        let mut server = Opener::new(plan(Mode::Encrypt, Some(c.server.clone())), SEQUENCER, None);
        assert!(open(&mut server, &Bytes::from(f)).is_err(), "bit {bit}");
    }
    let mut server = Opener::new(plan(Mode::Encrypt, Some(c.server.clone())), SEQUENCER, None);
    assert!(open(&mut server, &frame).is_ok());
    assert_eq!(open(&mut server, &frame).unwrap_err(), Dropped::Replay(Refusal::Replayed));
    // A later frame opens; the earlier one still does not.
    let next = alice.seal(SealFor::Pid(SEQUENCER), b"more");
    assert!(open(&mut server, &next).is_ok());
    assert_eq!(open(&mut server, &frame).unwrap_err(), Dropped::Replay(Refusal::Replayed));
}

#[test]
fn a_member_cannot_pass_as_a_server_or_as_another_member() {
    let c = cluster(Suite::Aes256Gcm);
    let mode = Mode::Encrypt;
    let mut server = Opener::new(plan(mode, Some(c.server.clone())), SEQUENCER, None);
    // Alice claims the sequencer's pid: she can seal under the group key, not tag as a server.
    let mut forger = Sealer::new(plan(mode, Some(c.alice.clone())), alice_pid(&c)).unwrap();
    forger.pid = SEQUENCER;
    let forged = forger.seal(SealFor::Channel(Channel::Global), b"heartbeat");
    assert_eq!(open(&mut server, &forged).unwrap_err(), Dropped::Unauthenticated);
    // Alice claims Bob's pid.
    let bob = keys::member_pid("bob");
    forger.pid = bob;
    forger.renew().unwrap();
    let forged = forger.seal(SealFor::Channel(Channel::Global), b"data");
    assert_eq!(open(&mut server, &forged).unwrap_err(), Dropped::Unauthenticated);
    // Revoked: refused before any key is tried.
    let revoked = SecurityPlan { revoked: vec![c.alice.member.unwrap()], ..plan(mode, Some(c.server.clone())) };
    let mut alice = Sealer::new(plan(mode, Some(c.alice.clone())), alice_pid(&c)).unwrap();
    let frame = alice.seal(SealFor::Channel(Channel::Global), b"data");
    assert_eq!(Opener::new(revoked, SEQUENCER, None).open(now_ms(), &frame).unwrap_err(), Dropped::Unauthenticated);
    // A member credential of another cluster's master.
    let stranger = Keyring::member_from(&Keyring::generate_server(CLUSTER, Suite::Aes256Gcm).unwrap(), "alice");
    let stranger = Keyring {
        keys: c.alice.of_kind(KeyKind::Group).cloned().chain(stranger.of_kind(KeyKind::Member).cloned()).collect(),
        ..stranger
    };
    let mut s = Sealer::new(plan(mode, Some(Arc::new(stranger))), alice_pid(&c)).unwrap();
    let forged = s.seal(SealFor::Channel(Channel::Global), b"data");
    assert_eq!(open(&mut server, &forged).unwrap_err(), Dropped::Unauthenticated);
}

#[test]
fn checkpoint_servers_seal_under_their_key_which_servers_derive() {
    let c = cluster(Suite::Aes256Gcm);
    let mut ckpt = Sealer::new(plan(Mode::Encrypt, Some(c.checkpoint.clone())), CHECKPOINTER).unwrap();
    let report = ckpt.seal(SealFor::Pid(SEQUENCER), b"report");
    assert_eq!(Header::decode(&report).unwrap().tier, Tier::Checkpoint);
    let mut server = Opener::new(plan(Mode::Encrypt, Some(c.server.clone())), SEQUENCER, None);
    assert_eq!(open(&mut server, &report).unwrap().authority, Authority::Checkpoint);
    let block = ckpt.seal(SealFor::Channel(Channel::Checkpoint), b"block");
    assert_eq!(Header::decode(&block).unwrap().tier, Tier::Group);
    assert_eq!(open(&mut server, &block).unwrap().authority, Authority::Checkpoint, "checkpoint tag");
    // A frame to one process opens at that process only: it names it.
    let to_alice = ckpt.seal(SealFor::Pid(alice_pid(&c)), b"block");
    assert_eq!(open(&mut server, &to_alice).unwrap_err(), Dropped::Unkeyed, "captured and sent elsewhere");
    let mut alice = Opener::new(plan(Mode::Encrypt, Some(c.alice.clone())), alice_pid(&c), None);
    assert!(open(&mut alice, &to_alice).is_ok());
    // A checkpoint key may not seal as if it were the server key's owner.
    let lie = SecurityPlan {
        servers: vec![(SEQUENCER, ServerKeys::Checkpoint)],
        ..plan(Mode::Encrypt, Some(c.checkpoint.clone()))
    };
    let mut forger = Sealer::new(lie, SEQUENCER).unwrap();
    let forged = forger.seal(SealFor::Channel(Channel::Global), b"x");
    assert_eq!(open(&mut server, &forged).unwrap_err(), Dropped::Unauthenticated);
}

#[test]
fn checkpoint_servers_believe_servers_by_the_checkpoint_tag_and_members_by_their_tags() {
    let c = cluster(Suite::Aes256Gcm);
    let mode = Mode::Encrypt;
    let mut ckpt = Opener::new(plan(mode, Some(c.checkpoint.clone())), CHECKPOINTER, None);
    let mut seq = Sealer::new(plan(mode, Some(c.server.clone())), SEQUENCER).unwrap();
    let commit = seq.seal(SealFor::Channel(Channel::Global), b"commit");
    assert!(Header::decode(&commit).unwrap().checkpoint_tag);
    assert_eq!(open(&mut ckpt, &commit).unwrap().authority, Authority::Server);
    let to_ckpt = seq.seal(SealFor::Pid(CHECKPOINTER), b"entries");
    assert_eq!(open(&mut ckpt, &to_ckpt).unwrap().authority, Authority::Server, "unicast to it too");
    let to_member = seq.seal(SealFor::Pid(alice_pid(&c)), b"fetched");
    assert!(!Header::decode(&to_member).unwrap().checkpoint_tag, "members do not check it");
    // A member claiming the sequencer's pid: the group key seals, no checkpoint tag verifies.
    let mut forger = Sealer::new(plan(mode, Some(c.alice.clone())), alice_pid(&c)).unwrap();
    forger.pid = SEQUENCER;
    let forged = forger.seal(SealFor::Channel(Channel::Global), b"commit");
    let mut fresh = Opener::new(plan(mode, Some(c.checkpoint.clone())), CHECKPOINTER, None);
    assert_eq!(open(&mut fresh, &forged).unwrap_err(), Dropped::Unauthenticated, "no checkpoint tag");
    // The checkpoint tag altered (it sits before the second tag, which covers it).
    let mut bytes = commit.to_vec();
    let at = bytes.len() - TAG_LEN - 1;
    bytes[at] ^= 1;
    let mut server = Opener::new(plan(mode, Some(c.server.clone())), SEQUENCER, None);
    assert_eq!(open(&mut server, &Bytes::from(bytes.clone())).unwrap_err(), Dropped::Unauthenticated, "tag2 covers it");
    let mut fresh = Opener::new(plan(mode, Some(c.checkpoint.clone())), CHECKPOINTER, None);
    assert_eq!(open(&mut fresh, &Bytes::from(bytes)).unwrap_err(), Dropped::Unauthenticated);
    assert_eq!(open(&mut fresh, &commit).unwrap().authority, Authority::Server, "the real frame still opens");
    // A member under its own pid is a member, which may not send server-role messages; under
    // another member's pid it is nobody: checkpoint servers check members' tags too.
    let mut alice = Sealer::new(plan(mode, Some(c.alice.clone())), alice_pid(&c)).unwrap();
    let data = alice.seal(SealFor::Channel(Channel::Global), b"data");
    assert_eq!(open(&mut ckpt, &data).unwrap().authority, Authority::Member);
    let mut as_bob = Sealer::new(plan(mode, Some(c.alice.clone())), alice_pid(&c)).unwrap();
    as_bob.pid = Pid(keys::member_pid("bob").0 | 1);
    as_bob.renew().unwrap();
    let forged = as_bob.seal(SealFor::Channel(Channel::Global), b"data under bob's id");
    assert_eq!(open(&mut ckpt, &forged).unwrap_err(), Dropped::Unauthenticated);
    // Another checkpoint server's second tag is checked under the checkpoint key.
    let mut other = Sealer::new(plan(mode, Some(c.checkpoint.clone())), CHECKPOINTER).unwrap();
    let advert = other.seal(SealFor::Channel(Channel::Checkpoint), b"block");
    assert_eq!(open(&mut ckpt, &advert).unwrap().authority, Authority::Checkpoint);
    // Commit and data servers go by the server tag.
    assert_eq!(open(&mut server, &commit).unwrap().authority, Authority::Server);
}

/// DESIGN section 12, "No reflection": `Ping`/status replies are never larger than their
/// request, whoever pings (a member, or a server) and however far the answerer got.
#[test]
fn a_pong_is_never_larger_than_the_ping_it_answers() {
    use sam_core::message::{Ping, Pong};
    use sam_core::wire::encode_frame;
    let c = cluster(Suite::Aes256Gcm);
    let mode = Mode::Encrypt;
    let ping = encode_frame(&[Message::Ping(Ping { nonce: u64::MAX })]);
    let pong = encode_frame(&[Message::Pong(Pong {
        nonce: u64::MAX,
        committed: sam_core::Seq(u64::MAX),
        alarms: sam_core::Alarms::STORAGE_FULL,
    })]);
    let mut alice = Sealer::new(plan(mode, Some(c.alice.clone())), alice_pid(&c)).unwrap();
    let mut seq = Sealer::new(plan(mode, Some(c.server.clone())), SEQUENCER).unwrap();
    let mut ckpt = Sealer::new(plan(mode, Some(c.checkpoint.clone())), CHECKPOINTER).unwrap();
    let pairs = [
        (alice.seal(SealFor::Pid(SEQUENCER), &ping), seq.seal(SealFor::Pid(alice_pid(&c)), &pong)),
        (alice.seal(SealFor::Pid(CHECKPOINTER), &ping), ckpt.seal(SealFor::Pid(alice_pid(&c)), &pong)),
        (seq.seal(SealFor::Pid(CHECKPOINTER), &ping), ckpt.seal(SealFor::Pid(SEQUENCER), &pong)),
        (ckpt.seal(SealFor::Pid(SEQUENCER), &ping), seq.seal(SealFor::Pid(CHECKPOINTER), &pong)),
    ];
    for (i, (ping, pong)) in pairs.iter().enumerate() {
        assert!(pong.len() <= ping.len(), "pair {i}: a pong of {} bytes answers a ping of {}", pong.len(), ping.len());
    }
}

/// DESIGN section 12: "derivations on a miss are rate-limited": a member making up pids or
/// sessions costs a server a bounded number of key derivations; known sessions cost none.
#[test]
fn second_tag_derivations_for_new_sessions_are_rate_limited() {
    let c = cluster(Suite::Aes256Gcm);
    let mode = Mode::Encrypt;
    let bob_keys = Arc::new(Keyring::member_from(&c.server, "bob"));
    let bob_pid = Pid(bob_keys.member.unwrap().0 | 1);
    let mut alice = Sealer::new(plan(mode, Some(c.alice.clone())), alice_pid(&c)).unwrap();
    let mut bob = Sealer::new(plan(mode, Some(bob_keys)), bob_pid).unwrap();
    let mut server = Opener::new(plan(mode, Some(c.server.clone())), SEQUENCER, None);
    let now = now_ms();
    server.derivations = DerivationBudget { tokens: 1, at_ms: now };
    let global = SealFor::Channel(Channel::Global);
    assert!(server.open(now, &bob.seal(global, b"1")).is_ok(), "the last derivation in the budget");
    let from_alice = alice.seal(global, b"1");
    assert_eq!(server.open(now, &from_alice).unwrap_err(), Dropped::Throttled, "none left this millisecond");
    assert!(server.open(now, &bob.seal(global, b"2")).is_ok(), "a known session needs no derivation");
    assert!(server.open(now + 1, &from_alice).is_ok(), "the budget refills by the millisecond");
    server.derivations = DerivationBudget { tokens: 0, at_ms: now + 1 };
    let mut seq = Sealer::new(plan(mode, Some(c.server.clone())), SEQUENCER).unwrap();
    assert!(server.open(now + 1, &seq.seal(global, b"commit")).is_ok(), "servers are never rationed");
    let mut budget = DerivationBudget { tokens: 0, at_ms: 10 };
    assert!(!budget.take(10));
    assert!(budget.take(11) && (1..TAG_DERIVATIONS_PER_MS).all(|_| budget.take(11)) && !budget.take(11));
    assert!(budget.take(u64::MAX) && budget.tokens == TAG_DERIVATIONS_BURST - 1, "refills at most to the burst");
}

#[test]
fn foreign_mode_suite_cluster_and_channel_are_refused() {
    let c = cluster(Suite::Aes256Gcm);
    let mut alice = Sealer::new(plan(Mode::Encrypt, Some(c.alice.clone())), alice_pid(&c)).unwrap();
    let frame = alice.seal(SealFor::Channel(Channel::Data), b"d");
    let server = || plan(Mode::Encrypt, Some(c.server.clone()));
    let auth = SecurityPlan { mode: Mode::Authenticate, ..server() };
    assert_eq!(Opener::new(auth, SEQUENCER, None).open(now_ms(), &frame).unwrap_err(), Dropped::Foreign);
    let other = SecurityPlan { cluster: ClusterId(9), ..server() };
    assert_eq!(Opener::new(other, SEQUENCER, None).open(now_ms(), &frame).unwrap_err(), Dropped::Foreign);
    let commit_socket = Opener::new(server(), SEQUENCER, Some(vec![Some(Channel::Commit)])).open(now_ms(), &frame);
    assert_eq!(commit_socket.unwrap_err(), Dropped::Unkeyed, "a data-channel frame replayed to the commit group");
    let chacha = cluster(Suite::ChaCha20Poly1305);
    let mut opener = Opener::new(plan(Mode::Encrypt, Some(chacha.server.clone())), SEQUENCER, None);
    assert_eq!(open(&mut opener, &frame).unwrap_err(), Dropped::Foreign);
}

#[test]
fn sessions_grow_across_restarts_through_the_session_file() {
    let dir = std::env::temp_dir().join(format!("sam-session-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("session");
    let far = now_ms() + 3_600_000;
    std::fs::write(&file, far.to_string()).unwrap();
    let c = cluster(Suite::Aes256Gcm);
    let p = SecurityPlan { session_file: Some(file.clone()), ..plan(Mode::Encrypt, Some(c.server.clone())) };
    let s = Sealer::new(p, SEQUENCER).unwrap();
    assert!(s.session().time_ms > far, "a session never goes below the last one stored");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), s.session().time_ms.to_string());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn members_and_checkpoint_servers_may_send_only_what_their_role_sends() {
    use sam_core::message::{Accepted, Fetch, Heartbeat, Ping};
    use sam_core::{Chain, Epoch, Seq};
    let heartbeat = Message::Heartbeat(Heartbeat {
        epoch: Epoch(1),
        sequencer: Pid(1),
        committed: Seq(1),
        chain: Chain::GENESIS,
        checkpoint: None,
        signature: None,
    });
    let accepted = Message::Accepted(Accepted { epoch: Epoch(1), upto: Seq(1) });
    let fetch = Message::Fetch(Fetch { mids: vec![] });
    let ping = Message::Ping(Ping { nonce: 1 });
    for msg in [&heartbeat, &accepted] {
        assert!(!Authority::Member.permits(msg) && !Authority::Checkpoint.permits(msg), "{msg:?}");
        assert!(Authority::Server.permits(msg));
    }
    for msg in [&fetch, &ping] {
        assert!(Authority::Member.permits(msg) && Authority::Checkpoint.permits(msg));
    }
}

mod fuzz {
    //! The unseal-and-decode path never panics, whatever arrives (DESIGN section 12: "Fuzz the
    //! unseal-and-decode path"): random datagrams, and valid frames with bytes changed.
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn opener_and_frame() -> (Opener, Bytes) {
        let c = cluster(Suite::Aes256Gcm);
        let mut alice = Sealer::new(plan(Mode::Encrypt, Some(c.alice.clone())), alice_pid(&c)).unwrap();
        let payload = sam_core::wire::encode_frame(&[Message::Ping(sam_core::message::Ping { nonce: 3 })]);
        let frame = alice.seal(SealFor::Pid(SEQUENCER), &payload);
        (Opener::new(plan(Mode::Encrypt, Some(c.server.clone())), SEQUENCER, None), frame)
    }

    proptest! {
        #[test]
        fn random_datagrams_never_panic(bytes in vec(any::<u8>(), 0..400)) {
            let (mut opener, _) = opener_and_frame();
            let datagram = Bytes::from(bytes);
            let _ = opener.open(now_ms(), &datagram);
            let _ = envelope::unwrap_relayed(&datagram);
        }

        #[test]
        fn changed_frames_are_refused_and_never_panic(edits in vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
            let (mut opener, frame) = opener_and_frame();
            let mut bytes = frame.to_vec();
            for (at, value) in &edits {
                let i = at % bytes.len();
                bytes[i] = *value;
            }
            bytes.truncate(bytes.len() - cut % 3);
            let changed = bytes != frame.to_vec();
            match opener.open(now_ms(), &Bytes::from(bytes)) {
                Ok(opened) => {
                    prop_assert!(!changed, "a changed frame opened");
                    let _ = sam_core::wire::decode_datagram(&opened.payload);
                }
                Err(_) => prop_assert!(changed, "the frame as sealed must open"),
            }
        }
    }
}

#[test]
fn a_renewal_that_fails_keeps_the_session_and_its_counter() {
    let dir = std::env::temp_dir().join(format!("sam-renew-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = cluster(Suite::Aes256Gcm);
    let p = SecurityPlan { session_file: Some(dir.join("session")), ..plan(Mode::Encrypt, Some(c.server.clone())) };
    let mut s = Sealer::new(p, SEQUENCER).unwrap();
    let mut server = Opener::new(plan(Mode::Encrypt, Some(c.server.clone())), SEQUENCER, None);
    assert!(open(&mut server, &s.seal(SealFor::Channel(Channel::Commit), b"one")).is_ok());
    let (session, counter) = (s.session(), s.counter);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(s.renew().is_err(), "the session file cannot be written");
    assert_eq!((s.session(), s.counter), (session, counter), "nothing changed");
    let next = s.seal(SealFor::Channel(Channel::Commit), b"two");
    assert_eq!(Header::decode(&next).unwrap().counter, counter, "the counter goes on, never back");
    assert!(open(&mut server, &next).is_ok(), "and the frame still opens under the old session");
}
