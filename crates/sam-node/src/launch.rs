//! From a cluster's configuration file to the [`NodeSpec`] of one of its processes: a server
//! by its id, or a member (`sam send`, `sam tail`) on a port of its own.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use sam_core::{Channel, DeliverFrom, Incarnation, KvTable, Pid, StateMachine};
use sam_net::{Group, NetPlan};

use crate::config::{ClusterConfig, Role, Transport};
use crate::node::{NodeSpec, StorageStart};

/// Why a process of the cluster cannot be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No server has this id.
    #[error("no server has id {0} in the configuration")]
    UnknownServer(u64),
    /// The transport is not implemented by this build.
    #[error("transport \"unicast\" is not supported yet: use \"multicast\"")]
    Unsupported,
}

/// The channels a process with these roles listens to.
fn listens(commit: bool, data: bool, checkpoint: bool) -> Vec<Channel> {
    let mut channels = vec![Channel::Global];
    channels.extend(data.then_some(Channel::Data));
    channels.extend(commit.then_some(Channel::Commit));
    channels.extend(checkpoint.then_some(Channel::Checkpoint));
    channels
}

fn net_plan(cluster: &ClusterConfig, unicast: SocketAddrV4, listen: Vec<Channel>) -> Result<NetPlan, LaunchError> {
    let (Transport::Multicast, Some(channels)) = (cluster.transport, &cluster.channels) else {
        return Err(LaunchError::Unsupported);
    };
    let groups = [Channel::Global, Channel::Data, Channel::Commit, Channel::Checkpoint]
        .into_iter()
        .map(|channel| {
            let c = channels.get(channel);
            let group =
                Group { addr: SocketAddrV4::new(c.group, c.port), interface: c.interface, ttl: u32::from(c.ttl) };
            (channel, group)
        })
        .collect();
    Ok(NetPlan {
        unicast,
        groups,
        listen,
        servers: cluster.servers.iter().map(|s| (s.id, s.address)).collect(),
        max_datagram_bytes: cluster.network.max_datagram_bytes,
        max_message_bytes: cluster.network.max_message_bytes,
    })
}

/// The spec of server `id`. A checkpoint server runs the built-in key-value table.
pub fn server_spec(cluster: &ClusterConfig, id: Pid, start: StorageStart, seed: u64) -> Result<NodeSpec, LaunchError> {
    let server = cluster.server(id).ok_or(LaunchError::UnknownServer(id.0))?;
    let checkpoint = server.roles.contains(Role::Checkpoint);
    let client = checkpoint.then_some(Incarnation(seed));
    let roles = server.roles.to_core(client);
    let listen = listens(roles.commit, roles.data, checkpoint);
    let state_machine = checkpoint.then(|| Box::new(KvTable::new()) as Box<dyn StateMachine + Send>);
    Ok(NodeSpec {
        cfg: Arc::new(cluster.core()),
        pid: id,
        roles,
        net: net_plan(cluster, server.address, listen)?,
        dir: Some(cluster.server_dir(server)),
        durability: cluster.storage.durability,
        start,
        state_machine,
        seed,
        deliver_from: DeliverFrom::Start,
    })
}

/// The spec of a member that sends and delivers, on a free port of `interface`; its pid is
/// the one its address gives it (see `sam_net::peer`), so it is fixed once bound. `seed`
/// gives its incarnation: a restarted member never reuses a message id (DESIGN section 3).
pub fn member_spec(cluster: &ClusterConfig, seed: u64, table: bool) -> Result<NodeSpec, LaunchError> {
    let interface = cluster.channels.as_ref().map_or(Ipv4Addr::LOCALHOST, |c| c.global.interface);
    let roles = sam_core::Roles { client: Some(Incarnation(seed)), ..sam_core::Roles::default() };
    let state_machine = table.then(|| Box::new(KvTable::new()) as Box<dyn StateMachine + Send>);
    Ok(NodeSpec {
        cfg: Arc::new(cluster.core()),
        pid: Pid(seed | sam_net::ADDRESS_PIDS),
        roles,
        net: net_plan(cluster, SocketAddrV4::new(interface, 0), vec![Channel::Global])?,
        dir: None,
        durability: cluster.storage.durability,
        start: StorageStart::Fresh,
        state_machine,
        seed,
        deliver_from: DeliverFrom::Start,
    })
}
