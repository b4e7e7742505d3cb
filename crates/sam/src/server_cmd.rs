//! `sam server`: one server process of a cluster, until SIGINT or SIGTERM.

use anyhow::{Context, Result};
use clap::Args;
use sam_core::Pid;
use sam_node::config::{ClusterConfig, SecurityMode};
use sam_node::launch::server_spec;
use sam_node::metrics::MetricsServer;
use sam_node::node::{Event, Node, StorageStart};

/// Run one server process of the cluster a configuration file describes.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  sam server --config /etc/sam/sam.toml --id 1 --init   # a new server's first start\n  sam server --config /etc/sam/sam.toml --id 1          # every later start"
)]
pub struct ServerArgs {
    #[command(flatten)]
    config: crate::config_arg::ConfigArg,
    /// This server's id (its `id` in the file).
    #[arg(long)]
    id: u64,
    /// This server is new to the group: empty storage is expected. Without it, empty storage
    /// means it was lost, and a commit server rejoins by the rule of DESIGN section 6.
    #[arg(long)]
    init: bool,
}

/// Runs the server until a signal asks it to stop.
pub fn execute(args: ServerArgs) -> Result<std::process::ExitCode> {
    let config_path = args.config.path()?;
    let cluster = ClusterConfig::load(&config_path)?;
    let start = if args.init { StorageStart::Fresh } else { StorageStart::Recover };
    let spec = server_spec(&cluster, Pid(args.id), start, rand::random())?;
    let dir = spec.dir.clone().unwrap_or_default();
    // One thread runs the node: the network is read on its task, and a wake that crossed
    // to a second worker thread would cost a futex call and a context switch per datagram.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut node = Node::start(spec).await.with_context(|| format!("server {} in {}", args.id, dir.display()))?;
        let metrics_at = cluster.server(Pid(args.id)).and_then(|s| s.metrics);
        // Stops serving when dropped, after the node stopped.
        let _metrics = match metrics_at {
            Some(at) => {
                let server = MetricsServer::start(at.into(), node.metrics())?;
                tracing::info!("metrics at http://{}/metrics", server.addr());
                Some(server)
            }
            None => None,
        };
        let (addr, recovered) = (node.local_addr(), node.recovered());
        let mode = cluster.security.mode;
        let roles = roles_of(&cluster, args.id);
        tracing::info!(
            "server {} ({roles}) running on {addr}, storage in {} ({recovered} records recovered), security {mode}, cluster {}",
            args.id,
            dir.display(),
            cluster.cluster_id
        );
        if let Some(torn) = node.torn_tail() {
            tracing::warn!(
                "recovery dropped a torn tail: {} bytes at byte {} of {} (a write a crash cut short, never acknowledged)",
                torn.bytes,
                torn.offset,
                torn.path.display()
            );
        }
        if mode == SecurityMode::Off {
            tracing::warn!("security.mode is \"off\": anyone who can reach this network can forge, replay and read the group's traffic");
        }
        loop {
            tokio::select! {
                event = node.next_event() => match event {
                    Some(Event::StorageFull { full: true }) => {
                        tracing::error!("alarm: storage in {} is full: writes wait, nothing new is accepted until there is room", dir.display());
                    }
                    Some(Event::StorageFull { full: false }) => {
                        tracing::info!("storage in {} has room again: accepting", dir.display());
                    }
                    Some(Event::CheckpointMismatch { seq, server }) => {
                        tracing::error!("checkpoint {seq}: server {} has a snapshot that differs from the agreed one", server.0);
                    }
                    Some(_) => {}
                    None => break,
                },
                () = crate::stop_signal() => break,
            }
        }
        node.stop().await.context("stopping")?;
        Ok(std::process::ExitCode::SUCCESS)
    })
}

/// The roles of server `id`, as the configuration names them.
fn roles_of(cluster: &ClusterConfig, id: u64) -> String {
    let roles = cluster.server(Pid(id)).map(|s| s.roles.iter().map(|r| r.name()).collect::<Vec<_>>());
    roles.unwrap_or_default().join(", ")
}
