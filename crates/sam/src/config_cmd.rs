//! `sam config init`: the configuration and keys of a cluster on real hosts.
//!
//! It lays the cluster out as `sam local up` does, on the addresses given: the commit and data
//! servers first (the first runs the first sequencer), then the checkpoint servers; keys under
//! `DIR/keys`, private; every server serving metrics on one port of its host. The file is
//! validated as `sam server` will read it. `docs/operations.md` says which file goes to which
//! host.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use sam_node::config::{ClusterConfig, Transport};

use crate::local_cmd::TransportArg;

/// Write a cluster's configuration.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Write DIR/sam.toml and DIR/keys/ for a cluster on the hosts given (copy DIR to the same
    /// path on every host, then run `sam server --config DIR/sam.toml --id N --init` on each).
    Init(InitArgs),
}

/// The hosts and how they talk.
#[derive(Args, Debug)]
#[command(after_help = "Example: three hosts each holding a commit and a data server, two checkpoint servers:\n  \
    sam config init --dir /etc/sam --servers 10.0.0.1:17404,10.0.0.2:17404,10.0.0.3:17404 \\\n    \
    --checkpoint-servers 10.0.0.4:17404,10.0.0.5:17404 --storage /var/lib/sam")]
pub struct InitArgs {
    /// Where to write sam.toml and keys/ (refused if sam.toml is there already).
    #[arg(long)]
    dir: PathBuf,
    /// The processes holding a commit and a data server, IPv4 address:port each (the unicast
    /// socket), in rank order: the first runs the first sequencer.
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<SocketAddrV4>,
    /// The processes holding a checkpoint server.
    #[arg(long, value_delimiter = ',')]
    checkpoint_servers: Vec<SocketAddrV4>,
    /// How datagrams travel: IP multicast (groups 239.255.0.1-4), or unicast fan-out for
    /// networks without multicast (clouds).
    #[arg(long, value_enum, default_value = "multicast")]
    transport: TransportArg,
    /// The first of the four channel ports (multicast).
    #[arg(long, default_value_t = 17_400)]
    channel_port: u16,
    /// The interface that joins the groups and sends to them (multicast); 0.0.0.0 lets each
    /// host take the one its routes give.
    #[arg(long, default_value_t = Ipv4Addr::UNSPECIFIED)]
    interface: Ipv4Addr,
    /// The TCP port of each server's metrics endpoint, on its own address.
    #[arg(long, default_value_t = 9464)]
    metrics_port: u16,
    /// The storage directory on each host (each server keeps STORAGE/server-ID).
    #[arg(long, default_value = "/var/lib/sam")]
    storage: PathBuf,
    /// Sign frames: members deliver only what the sequencer's signed heartbeats vouch for.
    #[arg(long)]
    sign_server_frames: bool,
}

/// Runs `sam config init`.
pub fn execute(command: ConfigCommand) -> Result<std::process::ExitCode> {
    let ConfigCommand::Init(args) = command;
    init(&args)?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn init(args: &InitArgs) -> Result<()> {
    let path = args.dir.join("sam.toml");
    if path.exists() {
        bail!("{} exists already: a cluster's configuration is never overwritten", path.display());
    }
    let mut cluster = layout(args)?;
    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    cluster.with_local_keys(&args.dir).context("writing the cluster's keys")?;
    cluster.security.sign_server_frames = args.sign_server_frames;
    let text = cluster.to_toml_string()?;
    // What `sam server` will read: refused here rather than on the hosts.
    ClusterConfig::from_toml_str(&text).context("the configuration written would not load")?;
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

/// The cluster on the addresses given.
fn layout(args: &InitArgs) -> Result<ClusterConfig> {
    let (servers, checkpoints) = (&args.servers, &args.checkpoint_servers);
    let Some(last_channel_port) = args.channel_port.checked_add(3) else {
        bail!("--channel-port {} leaves no room for the four channels", args.channel_port);
    };
    // Laid out on any ports, then given the ones asked for.
    let mut cluster = ClusterConfig::local(servers.len(), checkpoints.len(), 17_400, &args.storage);
    cluster.storage.dir = args.storage.clone();
    for (server, address) in cluster.servers.iter_mut().zip(servers.iter().chain(checkpoints)) {
        server.address = *address;
        server.metrics = Some(SocketAddrV4::new(*address.ip(), args.metrics_port));
    }
    match (args.transport, cluster.channels.as_mut()) {
        (TransportArg::Unicast, _) => {
            cluster.transport = Transport::Unicast;
            cluster.channels = None;
        }
        (TransportArg::Multicast, Some(channels)) => {
            let all = [&mut channels.global, &mut channels.data, &mut channels.commit, &mut channels.checkpoint];
            for (channel, port) in all.into_iter().zip(args.channel_port..=last_channel_port) {
                channel.interface = args.interface;
                channel.port = port;
            }
        }
        (TransportArg::Multicast, None) => {}
    }
    cluster.validate()?;
    Ok(cluster)
}
