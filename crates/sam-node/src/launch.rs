//! From a cluster's configuration file to the [`NodeSpec`] of one of its processes: a server
//! by its id, or a member (`sam send`, `sam tail`) on a port of its own.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sam_core::{Channel, DeliverFrom, Incarnation, KvTable, Pid, StateMachine};
use sam_net::security::keys::{Keyring, MEMBER_INSTANCE_BITS, MEMBER_PIDS};
use sam_net::security::signing::PublicKey;
use sam_net::security::{SecurityPlan, ServerKeys, REPLAY_SENDERS_DEFAULT};
use sam_net::{Group, NetPlan, RelayRole, TransportPlan, UnicastPlan};

use crate::config::{ClusterConfig, ConfigError, KeyUser, Role, Transport};
use crate::node::{NodeSpec, StorageStart};

/// Why a process of the cluster cannot be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No server has this id.
    #[error("no server has id {0} in the configuration")]
    UnknownServer(u64),
    /// Multicast transport without channels (a configuration built in code, not loaded).
    #[error("transport \"multicast\" needs the [channels] table")]
    NoChannels,
    /// The keys could not be read.
    #[error(transparent)]
    Keys(#[from] ConfigError),
    /// With signed frames, this server's signing key is not among the configured ones:
    /// members would drop its heartbeats.
    #[error(
        "security.signing_keys: this server signs under {0}, which is not listed \
         (`sam keygen --dir DIR --signing-keys` prints the keys of the server key file)"
    )]
    SigningKeyNotListed(PublicKey),
}

/// Which process a plan is for.
enum Who {
    /// A server holding these roles.
    Server { commit: bool, data: bool, checkpoint: bool },
    /// A member that is not a server.
    Member,
}

impl Who {
    /// The channels it listens to (multicast mode).
    fn listens(&self) -> Vec<Channel> {
        let mut channels = vec![Channel::Global];
        if let Who::Server { commit, data, checkpoint } = *self {
            channels.extend(data.then_some(Channel::Data));
            channels.extend(commit.then_some(Channel::Commit));
            channels.extend(checkpoint.then_some(Channel::Checkpoint));
        }
        channels
    }
}

/// The file in a server's directory that keeps its latest session's time, so that its
/// sessions only grow across restarts (DESIGN section 12).
pub const SESSION_FILE: &str = "session";

const CHANNELS: [Channel; 4] = [Channel::Global, Channel::Data, Channel::Commit, Channel::Checkpoint];

/// What seals and opens this process's frames.
fn security_plan(cluster: &ClusterConfig, keys: Option<Keyring>, session_file: Option<PathBuf>) -> SecurityPlan {
    let servers = cluster
        .servers
        .iter()
        .map(|s| {
            let keys = match KeyUser::server(s.roles) {
                KeyUser::Server { checkpoint_only: true } => ServerKeys::Checkpoint,
                _ => ServerKeys::Server,
            };
            (s.id, keys)
        })
        .collect();
    SecurityPlan {
        mode: cluster.security.mode.wire(),
        cluster: cluster.cluster_id,
        keys: keys.map(Arc::new),
        servers,
        revoked: cluster.security.revoked_pids().collect(),
        session_file,
        replay_senders_max: REPLAY_SENDERS_DEFAULT,
        signing_keys: cluster.security.signing_keys(),
    }
}

fn net_plan(
    cluster: &ClusterConfig,
    pid: Pid,
    security: SecurityPlan,
    unicast: SocketAddrV4,
    who: Who,
) -> Result<NetPlan, LaunchError> {
    let transport = match cluster.transport {
        Transport::Multicast => multicast(cluster, who.listens())?,
        Transport::Unicast => TransportPlan::Unicast(unicast_plan(cluster, &who)),
    };
    Ok(NetPlan {
        pid,
        security,
        unicast,
        transport,
        servers: cluster.servers.iter().map(|s| (s.id, s.address)).collect(),
        max_datagram_bytes: cluster.network.max_datagram_bytes,
        max_message_bytes: cluster.network.max_message_bytes,
        faults: cluster.testing.faults(),
    })
}

fn multicast(cluster: &ClusterConfig, listen: Vec<Channel>) -> Result<TransportPlan, LaunchError> {
    let channels = cluster.channels.as_ref().ok_or(LaunchError::NoChannels)?;
    let groups = CHANNELS
        .into_iter()
        .map(|channel| {
            let c = channels.get(channel);
            let group =
                Group { addr: SocketAddrV4::new(c.group, c.port), interface: c.interface, ttl: u32::from(c.ttl) };
            (channel, group)
        })
        .collect();
    Ok(TransportPlan::Multicast { groups, listen })
}

/// Unicast mode: every server hears the global channel, each role's servers its channel, and
/// the data servers relay the global channel to the members.
fn unicast_plan(cluster: &ClusterConfig, who: &Who) -> UnicastPlan {
    let holding = |role: Option<Role>| -> Vec<(Pid, SocketAddrV4)> {
        cluster.servers.iter().filter(|s| role.is_none_or(|r| s.roles.contains(r))).map(|s| (s.id, s.address)).collect()
    };
    let addresses = |role| holding(role).into_iter().map(|(_, a)| a).collect::<Vec<_>>();
    let listeners = CHANNELS
        .into_iter()
        .map(|channel| {
            let role = match channel {
                Channel::Global => None,
                Channel::Data => Some(Role::Data),
                Channel::Commit => Some(Role::Commit),
                Channel::Checkpoint => Some(Role::Checkpoint),
            };
            (channel, addresses(role))
        })
        .collect();
    let role = match who {
        Who::Server { data: true, .. } => RelayRole::Relay,
        Who::Server { .. } => RelayRole::None,
        Who::Member => RelayRole::Member(holding(Some(Role::Data))),
    };
    UnicastPlan { listeners, role, lease: Duration::from_millis(cluster.network.relay_lease_ms) }
}

/// The spec of server `id`; its application takes no deliveries. A checkpoint server runs
/// the built-in key-value table.
pub fn server_spec(cluster: &ClusterConfig, id: Pid, start: StorageStart, seed: u64) -> Result<NodeSpec, LaunchError> {
    let server = cluster.server(id).ok_or(LaunchError::UnknownServer(id.0))?;
    let checkpoint = server.roles.contains(Role::Checkpoint);
    let client = checkpoint.then_some(Incarnation(seed));
    let roles = server.roles.to_core(client);
    let who = Who::Server { commit: roles.commit, data: roles.data, checkpoint };
    let dir = cluster.server_dir(server);
    let keys = cluster.keyring(KeyUser::server(server.roles))?;
    let security = security_plan(cluster, keys, Some(dir.join(SESSION_FILE)));
    if let Some(own) = security.signer(id).map(|s| s.public()) {
        if !security.signing_keys.contains(&own) {
            return Err(LaunchError::SigningKeyNotListed(own));
        }
    }
    let state_machine = checkpoint.then(|| Box::new(KvTable::new()) as Box<dyn StateMachine + Send>);
    Ok(NodeSpec {
        cfg: Arc::new(cluster.core()),
        pid: id,
        roles,
        net: net_plan(cluster, id, security, server.address, who)?,
        dir: Some(dir),
        durability: cluster.storage.durability,
        start,
        state_machine,
        seed,
        deliver_from: DeliverFrom::Start,
        segment_bytes: cluster.storage.segment_bytes,
        deliveries: false,
    })
}

/// The interface a member sends from: the global channel's in multicast mode; in unicast
/// mode loopback when every server is on this host, else any (the route to the servers picks).
fn member_interface(cluster: &ClusterConfig) -> Ipv4Addr {
    match (&cluster.channels, cluster.transport) {
        (Some(c), Transport::Multicast) => c.global.interface,
        _ if cluster.servers.iter().all(|s| s.address.ip().is_loopback()) => Ipv4Addr::LOCALHOST,
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

/// The spec of a member that sends and delivers, on a free port of its interface. Its pid is
/// one of its credential's (the low bits from `seed`, so that processes sharing a credential
/// differ), or with security off one in the member range drawn from `seed`. `seed` also gives
/// its incarnation: a restarted member never reuses a message id (DESIGN section 3).
pub fn member_spec(cluster: &ClusterConfig, seed: u64, table: bool) -> Result<NodeSpec, LaunchError> {
    let roles = sam_core::Roles { client: Some(Incarnation(seed)), ..sam_core::Roles::default() };
    let keys = cluster.keyring(KeyUser::Member)?;
    let pid = match keys.as_ref().and_then(|k| k.member) {
        Some(credential) => Pid(credential.0 | (seed & ((1 << MEMBER_INSTANCE_BITS) - 1))),
        None => Pid(seed | MEMBER_PIDS),
    };
    let security = security_plan(cluster, keys, None);
    let unicast = SocketAddrV4::new(member_interface(cluster), 0);
    let state_machine = table.then(|| Box::new(KvTable::new()) as Box<dyn StateMachine + Send>);
    Ok(NodeSpec {
        cfg: Arc::new(cluster.core()),
        pid,
        roles,
        net: net_plan(cluster, pid, security, unicast, Who::Member)?,
        dir: None,
        durability: cluster.storage.durability,
        start: StorageStart::Fresh,
        state_machine,
        seed,
        deliver_from: DeliverFrom::Start,
        segment_bytes: cluster.storage.segment_bytes,
        deliveries: true,
    })
}
