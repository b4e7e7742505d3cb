//! The driver on loopback multicast (DESIGN section 7): channels reach every listener, the
//! sender included; unicast reaches one process; garbage is counted and dropped.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use sam_core::message::{Data, Heartbeat};
use sam_core::{Chain, Channel, Dest, Epoch, Incarnation, Message, Mid, Pid, Seq, Source};
use sam_net::security::envelope::Mode;
use sam_net::security::keys::{ClusterId, Keyring, Suite};
use sam_net::security::{SecurityPlan, ServerKeys};
use sam_net::{Incoming, Net, NetPlan, RelayRole, TransportPlan, UnicastPlan};

const CLUSTER: ClusterId = ClusterId(0xBEEF);

/// A heartbeat of epoch 1 from `sequencer`, committed through `committed`.
fn heartbeat(sequencer: Pid, committed: Seq) -> Message {
    Message::Heartbeat(Heartbeat {
        epoch: Epoch(1),
        sequencer,
        committed,
        chain: Chain::GENESIS,
        checkpoint: None,
        signature: None,
    })
}

/// Keys made once for every test: the servers', and a member credential's.
fn keyring(member: bool) -> std::sync::Arc<Keyring> {
    static KEYS: std::sync::OnceLock<(std::sync::Arc<Keyring>, std::sync::Arc<Keyring>)> = std::sync::OnceLock::new();
    let (server, m) = KEYS.get_or_init(|| {
        let server = Keyring::generate_server(CLUSTER, Suite::Aes256Gcm).expect("keys");
        let member = Keyring::member_from(&server, "loopback");
        (std::sync::Arc::new(server), std::sync::Arc::new(member))
    });
    if member {
        m.clone()
    } else {
        server.clone()
    }
}

/// A member's pid under the test credential.
fn member_pid(i: u64) -> Pid {
    Pid(keyring(true).member.expect("a member credential").0 | i)
}

/// Mode encrypt, as `pid` (a member when it is not one of `servers`).
fn sealed(pid: Pid, servers: &[(Pid, SocketAddrV4)]) -> (Pid, SecurityPlan) {
    let is_server = servers.iter().any(|(p, _)| *p == pid);
    let server_keys = servers.iter().map(|(p, _)| (*p, ServerKeys::Server)).collect();
    (
        pid,
        SecurityPlan {
            mode: Mode::Encrypt,
            keys: Some(keyring(!is_server)),
            ..SecurityPlan::off(CLUSTER, server_keys)
        },
    )
}

/// Each test uses its own groups and ports (tests run in parallel).
fn plan(test: u8, me: u16, listen: Vec<Channel>) -> NetPlan {
    let group = |channel: u8| sam_net::Group {
        addr: SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, test), 47_000 + u16::from(test) * 10 + u16::from(channel)),
        interface: Ipv4Addr::LOCALHOST,
        ttl: 0,
    };
    let groups = HashMap::from([
        (Channel::Global, group(0)),
        (Channel::Data, group(1)),
        (Channel::Commit, group(2)),
        (Channel::Checkpoint, group(3)),
    ]);
    let server =
        |i: u16| (Pid(u64::from(i)), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 46_000 + u16::from(test) * 10 + i));
    let servers = vec![server(1), server(2)];
    let pid = if me == 0 { member_pid(1) } else { Pid(u64::from(me)) };
    let (pid, security) = sealed(pid, &servers);
    NetPlan {
        pid,
        security,
        unicast: server(me).1,
        transport: TransportPlan::Multicast { groups, listen },
        servers,
        max_datagram_bytes: 1_400,
        max_message_bytes: 100_000,
        faults: Default::default(),
    }
}

fn data(counter: u64, len: usize) -> Message {
    let mid = Mid { source: Source { pid: Pid(9), incarnation: Incarnation(3) }, counter };
    Message::Data(Data { mid, ts: Seq(0), payload: Bytes::from(vec![counter as u8; len]) })
}

async fn next(net: &mut Net) -> Incoming {
    tokio::time::timeout(Duration::from_secs(5), net.recv()).await.expect("a datagram within 5 s")
}

/// The next datagram's messages at `net` while `other` reads too: a driver answers (grants,
/// challenges, relays, requests sent again) only when its owner reads it.
async fn next_driving(net: &mut Net, other: &mut Net) -> Incoming {
    let both = async {
        loop {
            tokio::select! {
                incoming = net.recv() => return incoming,
                _ = other.recv() => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), both).await.expect("a datagram within 5 s")
}

/// Reads `net` for `time`, answering what asks for an answer.
async fn drive(net: &mut Net, time: Duration) {
    let _ = tokio::time::timeout(time, async {
        loop {
            net.recv().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_multicast_reaches_every_listener_and_its_sender_packed_in_few_datagrams() {
    let mut a = Net::bind(&plan(1, 1, vec![Channel::Global])).expect("bind a");
    let mut b = Net::bind(&plan(1, 2, vec![Channel::Global, Channel::Data])).expect("bind b");
    let msgs: Vec<Message> = (0..40).map(|i| data(i, 100)).collect();
    for msg in &msgs {
        a.queue(Dest::Channel(Channel::Global), msg).expect("queue");
    }
    a.flush().await;
    let sent = a.stats().datagrams_out.load(Ordering::Relaxed);
    assert!((3..=5).contains(&sent), "40 messages of ~130 bytes in 1,400-byte datagrams: {sent}");
    for net in [&mut a, &mut b] {
        let mut got = Vec::new();
        while got.len() < msgs.len() {
            let incoming = next(net).await;
            assert_eq!(incoming.from, Pid(1), "the sender is named by its sealed frame");
            got.extend(incoming.msgs);
        }
        assert_eq!(got, msgs);
    }
}

#[tokio::test]
async fn unicast_reaches_one_process_and_a_member_is_answered_at_its_address() {
    let mut server = Net::bind(&plan(2, 1, vec![])).expect("bind server");
    let stranger_plan = NetPlan { unicast: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), ..plan(2, 0, vec![]) };
    let mut stranger = Net::bind(&stranger_plan).expect("bind stranger");
    let hb = heartbeat(Pid(1), Seq(7));
    let ping = Message::Ping(sam_core::message::Ping { nonce: 5 });
    // A member's heartbeat is refused (a server-role message); its ping is not.
    stranger.queue(Dest::Pid(Pid(1)), &hb).expect("queue");
    stranger.queue(Dest::Pid(Pid(1)), &ping).expect("queue");
    stranger.flush().await;
    let incoming = next(&mut server).await;
    assert_eq!(incoming.from, member_pid(1), "the member's pid, from its sealed frame");
    assert_eq!(incoming.msgs, vec![ping]);
    assert_eq!(server.stats().refused.load(Ordering::Relaxed), 1);
    server.queue(Dest::Pid(incoming.from), &hb).expect("queue");
    server.flush().await;
    assert_eq!(next(&mut stranger).await.msgs, vec![hb]);
}

/// What a process sends itself (one of its roles to another) comes back at once, without a
/// datagram.
#[tokio::test]
async fn a_message_to_this_process_itself_comes_back_without_a_datagram() {
    let mut server = Net::bind(&plan(7, 1, vec![])).expect("bind");
    server.queue(Dest::Pid(Pid(1)), &data(1, 10)).expect("queue");
    server.flush().await;
    let incoming = next(&mut server).await;
    assert_eq!((incoming.from, incoming.msgs), (Pid(1), vec![data(1, 10)]));
    assert_eq!(server.stats().datagrams_out.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn garbage_is_counted_and_dropped_and_the_driver_goes_on() {
    let mut server = Net::bind(&plan(3, 1, vec![])).expect("bind");
    let raw = std::net::UdpSocket::bind("127.0.0.1:0").expect("raw socket");
    raw.send_to(b"not a frame at all", server.local_addr()).expect("send garbage");
    raw.send_to(&sam_core::wire::encode_frame(&[data(1, 10)]), server.local_addr()).expect("send an unsealed frame");
    let mut member_net = Net::bind(&plan(3, 0, vec![])).expect("bind member");
    member_net.queue(Dest::Pid(Pid(1)), &data(2, 10)).expect("queue");
    member_net.flush().await;
    assert_eq!(next(&mut server).await.msgs, vec![data(2, 10)]);
    assert_eq!(server.stats().malformed.load(Ordering::Relaxed), 2);
}

/// DESIGN section 7: a message longer than a datagram travels as fragments and arrives
/// whole; one longer than the receiver's message limit is dropped and counted, and the driver
/// goes on.
#[tokio::test]
async fn a_message_larger_than_a_datagram_arrives_whole_and_one_over_the_limit_is_dropped() {
    let mut sender = Net::bind(&plan(4, 1, vec![])).expect("bind");
    let mut receiver = Net::bind(&plan(4, 2, vec![Channel::Global])).expect("bind");
    let global = Dest::Channel(Channel::Global);
    sender.queue(global, &data(1, 10)).expect("queue");
    sender.queue(global, &data(2, 50_000)).expect("queue");
    sender.queue(global, &data(3, 200_000)).expect("queue");
    sender.flush().await;
    sender.queue(global, &data(4, 10)).expect("queue");
    sender.flush().await;
    let datagrams = sender.stats().datagrams_out.load(Ordering::Relaxed);
    assert!(datagrams > 150, "fragments of at most 1,400 bytes");
    #[cfg(target_os = "linux")]
    assert!(sender.stats().send_calls.load(Ordering::Relaxed) <= 6, "sendmmsg: {datagrams} datagrams in a few calls");
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(next(&mut receiver).await.msgs);
    }
    assert_eq!(got, vec![data(1, 10), data(2, 50_000), data(4, 10)]);
    assert!(receiver.stats().malformed.load(Ordering::Relaxed) >= 1, "the message over the limit is counted");
    sender.queue(Dest::Pid(Pid(77)), &data(1, 10)).expect("queue");
    assert_eq!(sender.stats().unroutable.load(Ordering::Relaxed), 1);
}

fn unicast_plan(
    unicast: SocketAddrV4,
    role: RelayRole,
    listeners: &HashMap<Channel, Vec<SocketAddrV4>>,
    servers: &[(Pid, SocketAddrV4)],
    lease_ms: u64,
) -> NetPlan {
    let pid = servers.iter().find(|(_, a)| *a == unicast).map_or(member_pid(unicast.port().into()), |(p, _)| *p);
    let (pid, security) = sealed(pid, servers);
    NetPlan {
        pid,
        security,
        unicast,
        transport: TransportPlan::Unicast(UnicastPlan {
            listeners: listeners.clone(),
            role,
            lease: Duration::from_millis(lease_ms),
        }),
        servers: servers.to_vec(),
        max_datagram_bytes: 1_400,
        max_message_bytes: 100_000,
        faults: Default::default(),
    }
}

/// Unicast mode (DESIGN section 7): a channel is its listeners; a member registers with a data
/// server, which relays the global channel to it byte for byte; a relayed frame is believed
/// for its seal, never for the relay, and a forged one is refused.
#[tokio::test]
async fn unicast_mode_fans_channels_out_and_a_data_server_relays_the_global_channel() {
    let addr = |port: u16| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let (relay, plain) = (addr(46_101), addr(46_102));
    let servers = vec![(Pid(1), relay), (Pid(2), plain)];
    let listeners = HashMap::from([
        (Channel::Global, vec![relay, plain]),
        (Channel::Data, vec![relay]),
        (Channel::Commit, vec![plain]),
        (Channel::Checkpoint, vec![]),
    ]);
    let plan = |unicast: SocketAddrV4, role: RelayRole| unicast_plan(unicast, role, &listeners, &servers, 600);
    let mut relay_net = Net::bind(&plan(relay, RelayRole::Relay)).expect("bind relay");
    let mut plain_net = Net::bind(&plan(plain, RelayRole::None)).expect("bind plain");
    let mut member = Net::bind(&plan(addr(0), RelayRole::Member(vec![(Pid(1), relay)]))).expect("bind member");
    // The member registers at once; the relay challenges it, then grants it.
    let wait = Duration::from_millis(100);
    tokio::join!(drive(&mut relay_net, wait), drive(&mut member, wait));
    let hb = heartbeat(Pid(2), Seq(7));
    plain_net.queue(Dest::Channel(Channel::Global), &hb).expect("queue");
    plain_net.queue(Dest::Channel(Channel::Global), &data(1, 5_000)).expect("queue a fragmented message");
    plain_net.flush().await;
    for net in [&mut relay_net, &mut plain_net, &mut member] {
        let mut got = Vec::new();
        while got.len() < 2 {
            let incoming = next(net).await;
            assert_eq!(incoming.from, Pid(2), "the origin, not the relay");
            got.extend(incoming.msgs);
        }
        assert_eq!(got, vec![hb.clone(), data(1, 5_000)]);
        // The relay passes them on with its next flush.
        net.flush().await;
    }
    assert!(relay_net.stats().relayed.load(Ordering::Relaxed) >= 2);
    member.queue(Dest::Channel(Channel::Data), &data(2, 10)).expect("queue");
    member.flush().await;
    assert_eq!(next(&mut relay_net).await.msgs, vec![data(2, 10)], "the data channel is the data servers");
    let mut forged = b"SM\x02\x80".to_vec();
    forged.extend_from_slice(&sam_core::wire::encode_frame(&[data(3, 10)]));
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").expect("raw socket");
    stranger.send_to(&forged, member.local_addr()).expect("send");
    drive(&mut member, Duration::from_millis(50)).await;
    assert_eq!(member.stats().malformed.load(Ordering::Relaxed), 1, "a relay envelope around no sealed frame");
}

/// A member whose data server falls silent moves to the next one and hears the global channel
/// again: its port (even) picks the first, silent one.
#[tokio::test]
async fn a_member_whose_data_server_is_silent_registers_with_the_next() {
    let addr = |port: u16| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let (dead, relay) = (addr(46_111), addr(46_112));
    let servers = vec![(Pid(1), dead), (Pid(2), relay)];
    let listeners = HashMap::from([(Channel::Global, vec![dead, relay])]);
    let plan = |unicast: SocketAddrV4, role: RelayRole| unicast_plan(unicast, role, &listeners, &servers, 300);
    let mut relay_net = Net::bind(&plan(relay, RelayRole::Relay)).expect("bind relay");
    let mut member =
        Net::bind(&plan(addr(46_114), RelayRole::Member(vec![(Pid(1), dead), (Pid(2), relay)]))).expect("bind member");
    let hb = heartbeat(Pid(2), Seq(7));
    let heard = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            relay_net.queue(Dest::Channel(Channel::Global), &hb).expect("queue");
            relay_net.flush().await;
            drive(&mut relay_net, Duration::from_millis(1)).await;
            if let Ok(incoming) = tokio::time::timeout(Duration::from_millis(20), member.recv()).await {
                return incoming;
            }
        }
    })
    .await
    .expect("the member reaches the live data server");
    assert_eq!(heard.from, Pid(2));
    assert_eq!(heard.msgs, vec![hb]);
}

/// A data server that grants registrations and sends frames of its own but relays nothing
/// (it no longer hears the global channel) is no relay: the member moves to the next one.
#[tokio::test]
async fn a_member_moves_off_a_data_server_that_answers_but_relays_nothing() {
    let addr = |port: u16| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let (mute, relay, source, me) = (addr(46_121), addr(46_122), addr(46_123), addr(46_124));
    let servers = vec![(Pid(1), mute), (Pid(2), relay), (Pid(3), source)];
    let listeners = HashMap::from([(Channel::Global, vec![relay])]);
    let plan = |unicast: SocketAddrV4, role: RelayRole| unicast_plan(unicast, role, &listeners, &servers, 300);
    let mut mute_net = Net::bind(&plan(mute, RelayRole::Relay)).expect("bind mute relay");
    let mut relay_net = Net::bind(&plan(relay, RelayRole::Relay)).expect("bind relay");
    let mut source_net = Net::bind(&plan(source, RelayRole::None)).expect("bind source");
    let mut member =
        Net::bind(&plan(me, RelayRole::Member(vec![(Pid(1), mute), (Pid(2), relay)]))).expect("bind member");
    let hb = heartbeat(Pid(3), Seq(8));
    let relayed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            mute_net.queue(Dest::Pid(member_pid(me.port().into())), &hb).expect("queue");
            mute_net.flush().await;
            source_net.queue(Dest::Channel(Channel::Global), &hb).expect("queue");
            source_net.flush().await;
            drive(&mut mute_net, Duration::from_millis(1)).await;
            drive(&mut relay_net, Duration::from_millis(1)).await;
            while let Ok(incoming) = tokio::time::timeout(Duration::from_millis(20), member.recv()).await {
                if incoming.from == Pid(3) {
                    return incoming;
                }
            }
        }
    })
    .await
    .expect("the member reaches the data server that relays");
    assert_eq!(relayed.msgs, vec![hb]);
}

/// DESIGN section 12, "No reflection": a request whose answer may be far larger (a fetch) is
/// served only once its sender echoed the cookie the server gave its address; the first is
/// answered with a challenge no larger than itself, and the member's driver sends the request
/// again with the cookie, which it keeps for every later frame to that server.
#[tokio::test]
async fn a_fetch_is_served_only_after_its_sender_echoed_the_servers_cookie() {
    let mut server = Net::bind(&plan(6, 1, vec![])).expect("bind server");
    let member_plan = NetPlan { unicast: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), ..plan(6, 0, vec![]) };
    let mut member = Net::bind(&member_plan).expect("bind member");
    let mid = Mid { source: Source { pid: Pid(9), incarnation: Incarnation(3) }, counter: 1 };
    let fetch = Message::Fetch(sam_core::message::Fetch { mids: vec![mid] });
    let ping = Message::Ping(sam_core::message::Ping { nonce: 1 });
    member.queue(Dest::Pid(Pid(1)), &ping).expect("queue");
    member.flush().await;
    assert_eq!(next(&mut server).await.msgs, vec![ping.clone()], "a ping needs no cookie");
    member.queue(Dest::Pid(Pid(1)), &fetch).expect("queue");
    member.flush().await;
    // Challenged, not served; the member's driver sends it again with the cookie.
    assert_eq!(next_driving(&mut server, &mut member).await.msgs, vec![fetch.clone()], "served once echoed");
    assert_eq!(server.stats().challenges.load(Ordering::Relaxed), 1);
    member.queue(Dest::Pid(Pid(1)), &fetch).expect("queue");
    member.flush().await;
    assert_eq!(next(&mut server).await.msgs, vec![fetch], "the cookie rides on every later frame");
    assert_eq!(server.stats().challenges.load(Ordering::Relaxed), 1, "a current cookie needs no new challenge");
}
