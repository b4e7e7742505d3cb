//! Real nodes on loopback (DESIGN sections 4 and 7): three processes each holding a commit and
//! a data server elect a sequencer, and two members deliver what a third sends, in one order,
//! with every write fsync'd before it is acknowledged.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sam_core::{Channel, Config, DeliverFrom, Incarnation, Pid, Roles, Seq};
use sam_net::{Group, NetPlan, TransportPlan};
use sam_node::client::SendFailure;
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

fn plan(site: Site, unicast: SocketAddrV4, listen: Vec<Channel>) -> NetPlan {
    let group = |i: u16| Group {
        addr: SocketAddrV4::new(Ipv4Addr::new(239, 255, 78 + site.0 as u8, i as u8 + 1), 45_110 + site.0 * 20 + i),
        interface: Ipv4Addr::LOCALHOST,
        ttl: 0,
    };
    let channels = [Channel::Global, Channel::Data, Channel::Commit, Channel::Checkpoint];
    NetPlan {
        unicast,
        transport: TransportPlan::Multicast {
            groups: channels.iter().enumerate().map(|(i, c)| (*c, group(i as u16))).collect::<HashMap<_, _>>(),
            listen,
        },
        servers: SERVERS.iter().chain([&CHECKPOINT_SERVER]).map(|p| (Pid(*p), site.server_addr(*p))).collect(),
        max_datagram_bytes: 60_000,
        max_message_bytes: 1 << 20,
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
    }
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
    let mut servers = Vec::new();
    for pid in &pids {
        let roles = Roles { commit: true, data: true, ..Roles::default() };
        let net = plan(SITE, SITE.server_addr(pid.0), vec![Channel::Global, Channel::Data, Channel::Commit]);
        servers.push(Node::start(spec(&cfg, *pid, roles, net, Some(dir.path()))).await.expect("server starts"));
    }
    let member = |i: u64| {
        let roles = Roles { client: Some(Incarnation(100 + i)), ..Roles::default() };
        let net = plan(SITE, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), vec![Channel::Global]);
        spec(&cfg, Pid(1_000 + i), roles, net, None)
    };
    let sender = Node::start(member(0)).await.expect("sender starts");
    let mut tails = Vec::new();
    for i in 1..=2 {
        tails.push(Node::start(member(i)).await.expect("member starts"));
    }
    // Half one at a time, half handed over at once (more than one turn's worth of requests).
    // The sender reads no events meanwhile: enough sends to fill its event queue, which must
    // not stop the node from answering them.
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
