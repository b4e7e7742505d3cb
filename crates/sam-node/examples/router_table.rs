//! The seed's own application: a routing table that many routers keep identical.
//!
//! Each router is a member of the group holding the built-in key-value table (prefix → next
//! hop; the checkpoint servers hold the same table, so a router that falls behind catches up
//! from a checkpoint). A route change is one message, sent by whichever router learned it; every
//! router applies every change in the one agreed order, so at every number all forwarding
//! tables are the same, with no lock and no leader among the routers.
//!
//! Against a running local cluster (`cargo run --release -- local up` in another terminal):
//!
//! ```sh
//! cargo run --release -p sam-node --example router_table -- sam-local/sam.toml 3 200
//! ```
//!
//! starts 3 routers in this process, has each announce its share of 200 route changes, waits
//! until every router applied all of them, and prints each router's table: the same size and
//! digest everywhere.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sam_core::{KvOp, KvTable, Seq, StateMachine};
use sam_node::config::ClusterConfig;
use sam_node::launch::member_spec;
use sam_node::node::Node;

/// Route change `n`: a /24 announced via one of seven next hops; every fifth withdraws the
/// route of change `n - 4`. Another router may announce that one at the same moment, and then
/// the withdrawal may be ordered first and the route stays: the agreed order decides, and it
/// decides the same for every router.
fn route_change(n: usize) -> KvOp {
    let prefix = |n: usize| Bytes::from(format!("10.{}.{}.0/24", n / 256 % 256, n % 256));
    if n % 5 == 4 {
        KvOp::Delete { key: prefix(n - 4) }
    } else {
        KvOp::Put { key: prefix(n), value: Bytes::from(format!("192.168.0.{}", n % 7 + 1)) }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let config = PathBuf::from(args.next().unwrap_or_else(|| "sam-local/sam.toml".into()));
    let routers: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let changes: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let cluster = ClusterConfig::load(&config)?;
    // Each run's routers are new members: a seed of their own gives each a fresh message id space.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let mut nodes = Vec::new();
    for i in 0..routers {
        let mut spec = member_spec(&cluster, now.wrapping_add(i as u64), true)?;
        // The routers read their table, not a stream of deliveries.
        spec.deliveries = false;
        nodes.push(Node::start(spec).await?);
    }
    // Every router announces its share of the changes; each send resolves to its number.
    let mut announcing = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let client = node.client();
        announcing.push(tokio::spawn(async move {
            let mut last = Seq::ZERO;
            for n in (i..changes).step_by(routers) {
                last = last.max(client.send(route_change(n).encode()).await?);
            }
            Ok::<Seq, sam_node::client::SendFailure>(last)
        }));
    }
    let mut last = Seq::ZERO;
    for task in announcing {
        last = last.max(task.await??);
    }
    println!("{changes} route changes committed, the last at number {last}");
    for (i, node) in nodes.iter().enumerate() {
        while node.progress().await?.is_some_and(|p| p.delivered < last) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut table = KvTable::new();
        table.restore(&node.snapshot().await?.unwrap_or_default())?;
        println!("router {i}: {} routes at number {}, digest {}", table.len(), table.applied(), table.digest());
    }
    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}
