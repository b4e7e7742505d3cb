//! `sam table`: the built-in replicated key-value table (DESIGN section 5).
//!
//! Writes are messages to the group (a `KvOp` each); reads join as a member, deliver up to the
//! committed prefix the first heartbeat announced (catching up from a checkpoint when far
//! behind), and read the member's own replica, so a read reflects every write committed before
//! it started and says which number it reflects.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use sam_core::{KvOp, KvTable, StateMachine};
use sam_node::config::ClusterConfig;
use sam_node::launch::member_spec;
use sam_node::node::Node;

/// Read or write the replicated key-value table.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  sam table put color blue\n  sam table get color                       # 'blue (at N)': the number it reflects\n  sam table dump"
)]
pub struct TableArgs {
    #[command(flatten)]
    config: crate::config_arg::ConfigArg,
    /// Give up after this many seconds without the cluster.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    op: TableOp,
}

/// What to do with the table.
#[derive(Subcommand, Debug)]
pub enum TableOp {
    /// Set KEY to VALUE; prints the number it was committed at.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Remove KEY; prints the number it was committed at.
    Delete {
        /// The key.
        key: String,
    },
    /// Print KEY's value and the number the table reflects.
    Get {
        /// The key.
        key: String,
    },
    /// Print every key and value, in key order.
    Dump,
}

/// Runs one table operation.
pub fn execute(args: TableArgs) -> Result<std::process::ExitCode> {
    let config_path = args.config.path()?;
    let cluster = ClusterConfig::load(&config_path)?;
    let spec = member_spec(&cluster, rand::random(), true)?;
    let timeout = Duration::from_secs(args.timeout);
    crate::runtime()?.block_on(async move {
        let mut node = Node::start(spec).await.context("starting a member")?;
        let write = |op: KvOp| vec![op.encode()];
        let code = match &args.op {
            TableOp::Put { key, value } => {
                let op = KvOp::Put { key: Bytes::from(key.clone()), value: Bytes::from(value.clone()) };
                written(crate::send_cmd::send_all(&mut node, write(op), timeout).await?)
            }
            TableOp::Delete { key } => written(
                crate::send_cmd::send_all(&mut node, write(KvOp::Delete { key: Bytes::from(key.clone()) }), timeout)
                    .await?,
            ),
            TableOp::Get { key } => {
                let table = read(&node, timeout).await?;
                let (value, seq) = table.get(key.as_bytes());
                match value {
                    Some(v) => println!("{} (at {seq})", String::from_utf8_lossy(v)),
                    None => eprintln!("{key} is not in the table (at {seq})"),
                }
                if value.is_some() {
                    0
                } else {
                    1
                }
            }
            TableOp::Dump => {
                let table = read(&node, timeout).await?;
                for (key, value) in table.iter() {
                    println!("{}\t{}", String::from_utf8_lossy(key), String::from_utf8_lossy(value));
                }
                eprintln!("{} keys (at {})", table.len(), table.applied());
                0
            }
        };
        node.stop().await?;
        Ok(std::process::ExitCode::from(code))
    })
}

fn written(sent: crate::send_cmd::Sent) -> u8 {
    sent.report_interruption();
    sent.exit_code()
}

/// The member's replica once it delivered everything committed when it first heard the
/// sequencer.
async fn read(node: &Node, timeout: Duration) -> Result<KvTable> {
    let start = Instant::now();
    let mut target = None;
    loop {
        let progress = node.progress().await?.context("the member has no state")?;
        if progress.sequencer.is_some() {
            let target = *target.get_or_insert(progress.committed);
            if progress.delivered >= target {
                break;
            }
        }
        if start.elapsed() > timeout {
            bail!("the table did not catch up within {} s: is the cluster running?", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let snapshot = node.snapshot().await?.context("the member has no state")?;
    let mut table = KvTable::new();
    table.restore(&snapshot).context("reading the member's table")?;
    Ok(table)
}
