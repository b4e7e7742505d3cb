//! Real nodes on loopback (DESIGN sections 4 and 7): three processes each holding a commit and
//! a data server elect a sequencer, and two members deliver what a third sends, in one order,
//! with every write fsync'd before it is acknowledged.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sam_core::{Channel, Config, DeliverFrom, Incarnation, Pid, Roles, Seq};
use sam_net::security::envelope::Mode;
use sam_net::security::keys::{ClusterId, Keyring, Suite};
use sam_net::security::{SecurityPlan, ServerKeys};
use sam_net::{Group, NetPlan, TransportPlan};
use sam_node::client::{Client, SendFailure};
use sam_node::node::{Event, Node, NodeError, NodeSpec, StorageStart};
use sam_store::Durability;

const SERVERS: [u64; 3] = [1, 2, 3];
/// The checkpoint server of the compaction test.
const CHECKPOINT_SERVER: u64 = 4;

/// Each test runs on a site of its own: ports and groups no other test uses.
#[derive(Clone, Copy)]
struct Site(u16);

impl Site {
    fn server_addr(self, pid: u64) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 45_100 + self.0 * 20 + pid as u16)
    }
}

const CLUSTER: ClusterId = ClusterId(0xC0FFEE);

/// Every test's cluster seals frames (mode encrypt) with keys made once.
fn keys(member: bool) -> Arc<Keyring> {
    static KEYS: std::sync::OnceLock<(Arc<Keyring>, Arc<Keyring>)> = std::sync::OnceLock::new();
    let (server, member_ring) = KEYS.get_or_init(|| {
        let server = Keyring::generate_server(CLUSTER, Suite::Aes256Gcm).expect("keys");
        let member = Keyring::member_from(&server, "tests");
        (Arc::new(server), Arc::new(member))
    });
    if member {
        member_ring.clone()
    } else {
        server.clone()
    }
}

/// A member's pid: one of the test credential's.
fn member_pid(i: u64) -> Pid {
    Pid(keys(true).member.expect("a member credential").0 | i)
}

fn plan(site: Site, unicast: SocketAddrV4, listen: Vec<Channel>) -> NetPlan {
    let member = unicast.port() == 0;
    let servers: Vec<Pid> = SERVERS.iter().chain([&CHECKPOINT_SERVER]).map(|p| Pid(*p)).collect();
    let server_keys = servers.iter().map(|p| (*p, ServerKeys::Server)).collect();
    let security =
        SecurityPlan { mode: Mode::Encrypt, keys: Some(keys(member)), ..SecurityPlan::off(CLUSTER, server_keys) };
    let group = |i: u16| Group {
        addr: SocketAddrV4::new(Ipv4Addr::new(239, 255, 78 + site.0 as u8, i as u8 + 1), 45_110 + site.0 * 20 + i),
        interface: Ipv4Addr::LOCALHOST,
        ttl: 0,
    };
    let channels = [Channel::Global, Channel::Data, Channel::Commit, Channel::Checkpoint];
    NetPlan {
        pid: Pid(0),
        security,
        unicast,
        transport: TransportPlan::Multicast {
            groups: channels.iter().enumerate().map(|(i, c)| (*c, group(i as u16))).collect::<HashMap<_, _>>(),
            listen,
        },
        servers: SERVERS.iter().chain([&CHECKPOINT_SERVER]).map(|p| (Pid(*p), site.server_addr(*p))).collect(),
        max_datagram_bytes: 60_000,
        max_message_bytes: 1 << 20,
        faults: Default::default(),
    }
}

fn spec(cfg: &Arc<Config>, pid: Pid, roles: Roles, net: NetPlan, dir: Option<&std::path::Path>) -> NodeSpec {
    NodeSpec {
        cfg: cfg.clone(),
        pid,
        roles,
        net,
        dir: dir.map(|d| d.join(pid.0.to_string())),
        durability: Durability::Fsync,
        start: StorageStart::Fresh,
        state_machine: None,
        seed: pid.0,
        deliver_from: DeliverFrom::Start,
        segment_bytes: sam_store::SEGMENT_SIZE_BYTES_DEFAULT,
        deliveries: true,
    }
}

/// Starts the commit and data servers of `SERVERS` on `site`, each with the member `client`
/// gives it, if any.
async fn start_servers(
    site: Site,
    cfg: &Arc<Config>,
    dir: &std::path::Path,
    client: impl Fn(Pid) -> Option<Incarnation>,
) -> Vec<Node> {
    let mut servers = Vec::new();
    for pid in SERVERS.map(Pid) {
        let roles = Roles { commit: true, data: true, client: client(pid), ..Roles::default() };
        let net = plan(site, site.server_addr(pid.0), vec![Channel::Global, Channel::Data, Channel::Commit]);
        servers.push(Node::start(spec(cfg, pid, roles, net, Some(dir))).await.expect("server starts"));
    }
    servers
}

async fn deliveries(node: &mut Node, count: usize) -> Vec<(Seq, Bytes)> {
    let mut got = Vec::new();
    while got.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(20), node.next_event()).await.expect("event in time");
        if let Some(Event::Deliver { seq, payload, .. }) = event {
            got.push((seq, payload));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_and_three_members_deliver_one_order_over_loopback_multicast() {
    const SITE: Site = Site(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let pids: Vec<Pid> = SERVERS.iter().map(|p| Pid(*p)).collect();
    let mut cfg = Config::new(pids.clone(), pids.clone(), vec![]);
    cfg.k_checkpoint = 1;
    let cfg = Arc::new(cfg);
    let servers = start_servers(SITE, &cfg, dir.path(), |_| None).await;
    let member = |i: u64| {
        let roles = Roles { client: Some(Incarnation(100 + i)), ..Roles::default() };
        let net = plan(SITE, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), vec![Channel::Global]);
        spec(&cfg, member_pid(1_000 + i), roles, net, None)
    };
    let sender = Node::start(member(0)).await.expect("sender starts");
    let mut tails = Vec::new();
    for i in 1..=2 {
        tails.push(Node::start(member(i)).await.expect("member starts"));
    }
    // Half one at a time, half handed over at once (more than one turn's worth of requests).
    // The sender reads no events meanwhile, which must not stop the node from answering them.
    const MESSAGES: usize = 6_000;
    let one_at_a_time = async {
        for i in 0..MESSAGES / 2 {
            sender.send(Bytes::from(format!("message {i}"))).await.expect("send");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), one_at_a_time).await.expect("the node answers every send");
    let batch = (MESSAGES / 2..MESSAGES).map(|i| Bytes::from(format!("message {i}")));
    assert_eq!(sender.send_batch(batch).await.expect("send a batch").len(), MESSAGES / 2);
    // A client's send resolves to the number every member delivers it at.
    let fated = Bytes::from_static(b"a send that waits for its fate");
    let seq = sender.client().send(fated.clone()).await.expect("committed");
    let refused = servers[0].client().send(fated.clone()).await;
    assert!(matches!(refused, Err(SendFailure::Node(NodeError::NotAMember))), "{refused:?}");
    let mut orders = Vec::new();
    for tail in &mut tails {
        let mut order = deliveries(tail, MESSAGES + 1).await;
        assert!(order.contains(&(seq, fated.clone())), "delivered at the number the send resolved to");
        order.retain(|(_, p)| *p != fated);
        orders.push(order);
    }
    assert_eq!(orders[0], orders[1], "one order");
    let seqs: Vec<u64> = orders[0].iter().map(|(s, _)| s.0).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "increasing numbers");
    let mut payloads: Vec<Bytes> = orders[0].iter().map(|(_, p)| p.clone()).collect();
    payloads.sort();
    let mut sent: Vec<Bytes> = (0..MESSAGES).map(|i| Bytes::from(format!("message {i}"))).collect();
    sent.sort();
    assert_eq!(payloads, sent, "every message, once");
    for node in tails.into_iter().chain([sender]).chain(servers) {
        node.stop().await.expect("clean stop");
    }
}

/// An application that never reads its events stalls neither its own sends nor the group:
/// a send-only member turns deliveries off, and a server whose application is
/// `EVENTS_HELD` behind goes on serving and reports the deliveries it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_that_never_read_events_stall_neither_their_sends_nor_the_group() {
    const SITE: Site = Site(1);
    const MESSAGES: usize = sam_node::node::EVENTS_HELD + 4_464;
    let dir = tempfile::tempdir().expect("tempdir");
    let pids: Vec<Pid> = SERVERS.iter().map(|p| Pid(*p)).collect();
    let cfg = Arc::new(Config::new(pids.clone(), pids.clone(), vec![]));
    // Server 1 also delivers, to an application that reads nothing until the end.
    let mut servers = start_servers(SITE, &cfg, dir.path(), |pid| (pid.0 == 1).then_some(Incarnation(7))).await;
    let roles = Roles { client: Some(Incarnation(100)), ..Roles::default() };
    let net = plan(SITE, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), vec![Channel::Global]);
    let mut sender_spec = spec(&cfg, member_pid(1_000), roles, net, None);
    sender_spec.deliveries = false;
    let sender = Node::start(sender_spec).await.expect("sender starts");
    let client = sender.client();
    let all_sent = send_each(&client, (0..MESSAGES).map(|i| Bytes::from(format!("message {i}"))));
    tokio::time::timeout(Duration::from_secs(120), all_sent).await.expect("every send resolves");

    // No message expires and no number is a no-op here: numbers and deliveries agree.
    let (delivered, missed) = delivered_and_missed(&mut servers[0], MESSAGES as u64).await;
    assert!(missed > 0, "the application was behind");
    assert!(delivered >= sam_node::node::EVENTS_HELD as u64, "what it held, it was given");
    for node in [sender].into_iter().chain(servers) {
        node.stop().await.expect("clean stop");
    }
}

/// Reads events until `total` numbers were delivered or reported missed (`Event::Lagged`),
/// checking they come in order; returns how many of each.
async fn delivered_and_missed(node: &mut Node, total: u64) -> (u64, u64) {
    let (mut delivered, mut missed, mut last) = (0, 0, Seq::ZERO);
    while delivered + missed < total {
        let event = tokio::time::timeout(Duration::from_secs(20), node.next_event()).await.expect("event in time");
        match event.expect("running") {
            Event::Deliver { seq, .. } => {
                assert!(seq > last, "in order after what was missed");
                (delivered, last) = (delivered + 1, seq);
            }
            Event::Lagged { first, last: to } => {
                assert!(first > last && to >= first, "the missed numbers follow the last delivered");
                (missed, last) = (missed + to.0 - first.0 + 1, to);
            }
            _ => {}
        }
    }
    (delivered, missed)
}

/// The bytes of the segment files in `dir`, and whether the first segment is still there.
fn segments(dir: &std::path::Path) -> (u64, bool) {
    let mut bytes = 0;
    let mut first = false;
    for entry in std::fs::read_dir(dir).expect("log dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().into_string().expect("utf-8 name");
        if name.ends_with(".seg") {
            // A segment retired meanwhile has no size any more.
            bytes += entry.metadata().map_or(0, |m| m.len());
            first |= name.trim_end_matches(".seg").trim_start_matches('0').is_empty();
        }
    }
    (bytes, first)
}

/// Log compaction (DESIGN section 5, garbage collection): with small segments and a
/// checkpoint every 100 numbers, a server's log retires what checkpoints cover, so its disk
/// stays far below what it wrote; the server restarts from the compacted log, and the group
/// commits with it while another server is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_log_retires_what_checkpoints_cover_and_restarts_from_what_is_left() {
    const SITE: Site = Site(2);
    const MESSAGES: usize = 6_000;
    const PAYLOAD: usize = 200;
    const SEGMENT: u64 = 16 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let pids: Vec<Pid> = SERVERS.iter().map(|p| Pid(*p)).collect();
    let mut cfg = Config::new(pids.clone(), pids.clone(), vec![Pid(CHECKPOINT_SERVER)]);
    cfg.k_checkpoint = 1;
    cfg.checkpoint_every = 100;
    cfg.max_lifetime = 200;
    cfg.catch_up_after = 200;
    let cfg = Arc::new(cfg);
    let server_spec = |pid: Pid, start: StorageStart| {
        let roles = Roles { commit: true, data: true, ..Roles::default() };
        let net = plan(SITE, SITE.server_addr(pid.0), vec![Channel::Global, Channel::Data, Channel::Commit]);
        let mut s = spec(&cfg, pid, roles, net, Some(dir.path()));
        (s.start, s.segment_bytes) = (start, SEGMENT);
        s
    };
    let mut servers = Vec::new();
    for pid in &pids {
        servers.push(Node::start(server_spec(*pid, StorageStart::Fresh)).await.expect("server starts"));
    }
    let roles = Roles { checkpoint: true, client: Some(Incarnation(40)), ..Roles::default() };
    let net = plan(SITE, SITE.server_addr(CHECKPOINT_SERVER), vec![Channel::Global, Channel::Checkpoint]);
    let mut checkpoint_spec = spec(&cfg, Pid(CHECKPOINT_SERVER), roles, net, Some(dir.path()));
    checkpoint_spec.state_machine = Some(Box::new(sam_core::KvTable::new()));
    let checkpoint = Node::start(checkpoint_spec).await.expect("checkpoint server starts");
    let roles = Roles { client: Some(Incarnation(100)), ..Roles::default() };
    let member_net = || plan(SITE, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), vec![Channel::Global]);
    let mut sender_spec = spec(&cfg, member_pid(1_000), roles, member_net(), None);
    sender_spec.deliveries = false;
    let sender = Node::start(sender_spec).await.expect("sender starts");
    let client = sender.client();
    let payload = |i: usize| Bytes::from(format!("{i:0PAYLOAD$}"));
    // At most 100 in flight: a message numbered more than `max_lifetime` after its
    // timestamp expires.
    let mut last = Seq::ZERO;
    for first in (0..MESSAGES).step_by(100) {
        last = send_each(&client, (first..first + 100).map(payload)).await;
    }
    // Each server logged every message once at least: 6,000 × 200 bytes and more.
    let log = dir.path().join("1");
    let written = (MESSAGES * PAYLOAD) as u64;
    let compacted = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (bytes, first) = segments(&log);
            if !first && bytes < written / 4 {
                return bytes;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the log is compacted");
    assert!(compacted > 0, "what is still needed is kept");

    let restarted = servers.remove(0);
    restarted.stop().await.expect("clean stop");
    let restarted = Node::start(server_spec(pids[0], StorageStart::Recover)).await.expect("restart");
    assert!(restarted.recovered() > 0, "the compacted log has records");
    servers.remove(0).stop().await.expect("server 2 stops");
    // Servers 1 and 3 are the commit quorum now: the restarted one must take part.
    let more = tokio::time::timeout(Duration::from_secs(30), client.send(payload(MESSAGES))).await;
    let seq = more.expect("in time").expect("committed with the restarted server");
    assert!(seq > last);
    for node in [sender, restarted, checkpoint].into_iter().chain(servers) {
        node.stop().await.expect("clean stop");
    }
}

/// Sends every payload at once through `client`, each its own send; returns the highest
/// number they were committed at.
async fn send_each(client: &Client, payloads: impl Iterator<Item = Bytes>) -> Seq {
    let mut sends = tokio::task::JoinSet::new();
    for payload in payloads {
        let client = client.clone();
        sends.spawn(async move { client.send(payload).await });
    }
    let mut last = Seq::ZERO;
    while let Some(fate) = sends.join_next().await {
        last = last.max(fate.expect("task").expect("committed"));
    }
    last
}

/// With no cluster running a send waits for one to commit it; `send_within` gives up after
/// its limit and says the message may still be committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_within_a_limit_gives_up_when_no_cluster_answers() {
    const SITE: Site = Site(3);
    let pids: Vec<Pid> = SERVERS.iter().map(|p| Pid(*p)).collect();
    let cfg = Arc::new(Config::new(pids.clone(), pids, vec![]));
    let roles = Roles { client: Some(Incarnation(7)), ..Roles::default() };
    let net = plan(SITE, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), vec![Channel::Global]);
    let member = Node::start(spec(&cfg, member_pid(3_000), roles, net, None)).await.expect("member starts");
    let limit = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let sent = member.client().send_within(Bytes::from_static(b"anyone?"), limit).await;
    assert!(matches!(sent, Err(SendFailure::TimedOut(l)) if l == limit), "{sent:?}");
    assert!(started.elapsed() >= limit);
    member.stop().await.expect("stops");
}

/// Issue 16's deadlock: a member-only node whose application sends in batches and reads no
/// event until every batch is sent. Once it is `EVENTS_HELD` behind, the node used to stop
/// reading the network, so no commit freed the window the blocked `send_batch` waited on.
/// Now a node whose application waits on its sends reads on, and the deliveries the
/// application could not take are reported as missed, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_blocked_in_a_send_while_behind_is_not_deadlocked() {
    const SITE: Site = Site(4);
    const MESSAGES: usize = sam_node::node::EVENTS_HELD + 4_464;
    let dir = tempfile::tempdir().expect("tempdir");
    let pids: Vec<Pid> = SERVERS.iter().map(|p| Pid(*p)).collect();
    let cfg = Arc::new(Config::new(pids.clone(), pids.clone(), vec![]));
    let servers = start_servers(SITE, &cfg, dir.path(), |_| None).await;
    let roles = Roles { client: Some(Incarnation(200)), ..Roles::default() };
    let net = plan(SITE, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), vec![Channel::Global]);
    // Deliveries on, and read only at the end.
    let mut member = Node::start(spec(&cfg, member_pid(2_000), roles, net, None)).await.expect("member starts");
    let payloads: Vec<Bytes> = (0..MESSAGES).map(|i| Bytes::from(format!("message {i}"))).collect();
    let all_sent = async {
        for batch in payloads.chunks(1_000) {
            member.send_batch(batch.iter().cloned()).await.expect("sent");
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all_sent).await.expect("no deadlock: every batch is sent");
    let (_, missed) = delivered_and_missed(&mut member, MESSAGES as u64).await;
    assert!(missed > 0, "the application was behind while it sent");
    for node in [member].into_iter().chain(servers) {
        node.stop().await.expect("clean stop");
    }
}
