//! The cluster configuration file: one TOML file, shared by every server and client of a group,
//! that says how the group talks (DESIGN section 7), who its servers are (sections 2 and 3) and
//! how its protocol is tuned (section 10).
//!
//! [`ClusterConfig::load`] parses and validates in one step, so a node never runs on a file it
//! half understood: every table refuses unknown keys (a misspelt key would otherwise silently
//! fall back to its default), and every error names the key path it is about, for example
//! `servers[2].roles[0]: unknown role "comit"` or
//! `protocol.k_commit: 4 is more than the 3 commit servers`.
//!
//! `crates/sam-node/examples/sam.toml` is a commented example of every key.
//!
//! Security (DESIGN section 12) is never implicit: a file names its `cluster_id` and a
//! `[security]` table whose `mode` is required, so that running without protection is a choice
//! written down. The key files it names are read only by [`ClusterConfig::keyring`], by the
//! process that needs them, since a file is validated in places (a client's host, before
//! `sam keygen` ran) where the servers' keys are not.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sam_core::config::{MAX_LIFETIME, MAX_SERVERS_PER_KIND, MAX_WINDOW};
use sam_core::{Channel, Incarnation, Pid};
use sam_net::security::keys::{member_pid, ClusterId, KeyKind, Keyring, Suite};
use sam_net::security::signing::{self, PublicKey};
use sam_store::Durability;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml::de::{DeTable, DeValue};

use crate::credential::{self, CredentialError};

/// The interface a channel uses when the file names none: loopback, so that a cluster written
/// without thinking about networks stays on one host.
pub const DEFAULT_INTERFACE: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The multicast TTL when the file names none: 1 keeps datagrams on the local network.
pub const DEFAULT_TTL: u8 = 1;

/// The default datagram size: larger than any path MTU, which is right on loopback (where the
/// MTU is 64 KiB) and lets the IP layer fragment elsewhere.
pub const DATAGRAM_BYTES_DEFAULT: usize = 65_000;
/// The smallest datagram size: a commit or heartbeat batch must fit in one datagram, and every
/// IPv4 host accepts 576-byte packets.
pub const DATAGRAM_BYTES_MIN: usize = 512;
/// The largest datagram size: the largest UDP payload over IPv4.
pub const DATAGRAM_BYTES_MAX: usize = 65_507;
/// The default limit on one message's payload.
pub const MESSAGE_BYTES_DEFAULT: usize = 1 << 20;
/// The largest message limit: a large message is reassembled in memory from its fragments.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// The smallest log segment: a record larger than a segment gets one of its own, so tiny
/// segments would mean a file per record.
pub const SEGMENT_BYTES_MIN: u64 = 4_096;
/// The default relay lease (unicast mode): a member renews it every second and moves to
/// another data server 1.5 to 2.5 s after its own stopped relaying (half a lease, checked at
/// each renewal), well within the time a member takes to notice a gap anyway.
pub const RELAY_LEASE_MS_DEFAULT: u64 = 3_000;
/// The shortest relay lease: renewals every third of it must not flood the data servers.
pub const RELAY_LEASE_MS_MIN: u64 = 300;
/// The longest relay lease a data server grants.
pub const RELAY_LEASE_MS_MAX: u64 = sam_net::relay::MAX_LEASE.as_millis() as u64;
/// The longest timer, an hour: a longer one is a typo, and keeps microseconds far from overflow.
pub const TIMER_MS_MAX: u64 = 3_600_000;
/// The largest batch of one message (NACK queries, assignments, recent commits): batches have
/// to fit in datagrams.
pub const BATCH_ENTRIES_MAX: usize = 1 << 16;
/// The largest member buffer for uncommitted data.
pub const MEMBER_BUFFER_BYTES_MAX: usize = 1 << 36;

/// The number of processes holding a commit and a data server in the default local cluster.
pub const LOCAL_SERVERS: usize = 3;
/// The number of checkpoint servers in the default local cluster (DESIGN section 10: losing one
/// pauses garbage collection, not delivery).
pub const LOCAL_CHECKPOINT_SERVERS: usize = 2;
/// The first port of the default local cluster, below Linux's ephemeral range so that outgoing
/// sockets never hold it.
pub const LOCAL_BASE_PORT: u16 = 17_400;

/// The member credential that every member process of a local cluster shares (a credential
/// owns 65,536 pids, one per process that uses it).
pub const LOCAL_MEMBER: &str = "local";
/// The directory, under a local cluster's, of its key files.
pub const LOCAL_KEYS_DIR: &str = "keys";
/// With signed frames, the least time between two heartbeats that vouch for new commits: a
/// member waits at most this long, under load, to deliver what committed; a member verifies
/// at most a thousand signatures a second (~55 µs each here).
pub const SIGNED_HEARTBEAT_US: u64 = 1_000;

/// The multicast groups of a local cluster, one per channel, in the site-local scope
/// 239.255.0.0/16 (RFC 2365), which routers do not forward.
const LOCAL_GROUPS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(239, 255, 0, 1),
    Ipv4Addr::new(239, 255, 0, 2),
    Ipv4Addr::new(239, 255, 0, 3),
    Ipv4Addr::new(239, 255, 0, 4),
];

/// Why a configuration file cannot be used. Every message starts with the key path it is about.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The text is not TOML, or toml could not say where its error lies; the message is toml's,
    /// with the line and column.
    #[error("{0}")]
    Toml(toml::de::Error),
    /// A value has the wrong type or spelling, or a key is unknown or missing.
    #[error("{key}: {message} (line {line}, column {column})")]
    Parse {
        /// The key path, e.g. `servers[2].roles[0]` (`(top level)` for the file itself).
        key: String,
        /// What is wrong, as the parser put it.
        message: String,
        /// The line of the offending text, from 1.
        line: usize,
        /// The column of the offending text, from 1, in characters.
        column: usize,
    },
    /// A number is outside its range.
    #[error("{key}: {value} is not between {min} and {max}")]
    OutOfRange {
        /// The key path.
        key: String,
        /// Its value.
        value: u64,
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// A redundancy factor asks for more servers than the role has.
    #[error("{key}: {k} is more than the {n} {role} servers")]
    Redundancy {
        /// The key path, e.g. `protocol.k_commit`.
        key: String,
        /// Its value.
        k: usize,
        /// The role it counts.
        role: Role,
        /// How many servers hold that role.
        n: usize,
    },
    /// No server holds a role the group cannot run without.
    #[error("servers: no server has the role \"{role}\"")]
    NoServers {
        /// The missing role.
        role: Role,
    },
    /// More servers hold a role than a vote set can count.
    #[error("servers: {n} servers have the role \"{role}\"; at most {max} are supported")]
    TooManyServers {
        /// The role.
        role: Role,
        /// How many servers hold it.
        n: usize,
        /// The most supported.
        max: usize,
    },
    /// A server holds no role.
    #[error("{key}: a server needs at least one role")]
    NoRoles {
        /// The key path, e.g. `servers[1].roles`.
        key: String,
    },
    /// A server id in the members' range (2^63 and above), which every process would take for
    /// a member's.
    #[error("{key}: {id} is a member's id; server ids lie below 2^63 (9223372036854775808)")]
    MemberId {
        /// The key path, e.g. `servers[1].id`.
        key: String,
        /// The id.
        id: u64,
    },
    /// Two servers share a pid.
    #[error("{key}: {id} is already the id of servers[{first}]")]
    DuplicateId {
        /// The key path of the second use.
        key: String,
        /// The pid.
        id: u64,
        /// The index of the first server with it.
        first: usize,
    },
    /// Two servers share a unicast address.
    #[error("{key}: {address} is already the address of servers[{first}]")]
    DuplicateAddress {
        /// The key path of the second use.
        key: String,
        /// The address.
        address: SocketAddrV4,
        /// The index of the first server with it.
        first: usize,
    },
    /// A server's address is not one the others can send to.
    #[error("{key}: {address} {problem}")]
    UnusableAddress {
        /// The key path, e.g. `servers[0].address`.
        key: String,
        /// The address.
        address: SocketAddrV4,
        /// What is wrong with it.
        problem: AddressProblem,
    },
    /// A server's unicast port is also a channel's port, so its sockets would steal each
    /// other's datagrams.
    #[error("{key}: port {port} is also the port of channels.{channel}")]
    PortTaken {
        /// The key path, e.g. `servers[0].address`.
        key: String,
        /// The port.
        port: u16,
        /// The channel that uses it.
        channel: ChannelName,
    },
    /// Two servers would share a storage directory.
    #[error("{key}: {} is already the storage directory of servers[{first}]", dir.display())]
    DuplicateDir {
        /// The key path of the second use.
        key: String,
        /// The directory.
        dir: PathBuf,
        /// The index of the first server with it.
        first: usize,
    },
    /// A directory is the empty path.
    #[error("{key}: the directory must not be empty")]
    EmptyDir {
        /// The key path.
        key: String,
    },
    /// Multicast transport without channels.
    #[error("channels: the table is required when transport = \"multicast\"")]
    NoChannels,
    /// A channel's group is not a multicast address.
    #[error("channels.{channel}.group: {group} is not a multicast address (224.0.0.0/4)")]
    NotMulticast {
        /// The channel.
        channel: ChannelName,
        /// The address given.
        group: Ipv4Addr,
    },
    /// `testing.mutation` names no variant.
    #[error("testing.mutation: {name:?} is not one of {known}")]
    UnknownMutation {
        /// The name given.
        name: String,
        /// The names there are.
        known: String,
    },
    /// `testing.mutation` is set in a build without broken variants.
    #[error("testing.mutation: this build has no broken protocol variants (build sam with the `mutations` feature)")]
    NoMutations,
    /// A channel's interface is a multicast address.
    #[error("channels.{channel}.interface: {interface} is a multicast address, not an interface's")]
    MulticastInterface {
        /// The channel.
        channel: ChannelName,
        /// The address given.
        interface: Ipv4Addr,
    },
    /// Two channels share a group and port, so each would receive the other's traffic.
    #[error("channels.{channel}: group {group} port {port} is also channels.{other}'s")]
    SharedChannel {
        /// The later channel.
        channel: ChannelName,
        /// The earlier channel with the same group and port.
        other: ChannelName,
        /// The group.
        group: Ipv4Addr,
        /// The port.
        port: u16,
    },
    /// The failure timeout does not exceed the heartbeat interval, so a healthy sequencer
    /// would be deposed between two heartbeats.
    #[error(
        "protocol.failure_timeout_ms: {failure_timeout_ms} must be more than \
         protocol.heartbeat_interval_ms ({heartbeat_interval_ms})"
    )]
    TimeoutBelowHeartbeat {
        /// The failure timeout.
        failure_timeout_ms: u64,
        /// The heartbeat interval.
        heartbeat_interval_ms: u64,
    },
    /// A message could never be buffered whole by a member.
    #[error(
        "network.max_message_bytes: {max_message_bytes} is more than \
         {key} ({bytes})"
    )]
    MessageAboveBuffer {
        /// The message limit.
        max_message_bytes: usize,
        /// The buffer or cap it exceeds.
        key: &'static str,
        /// Its bytes.
        bytes: usize,
    },
    /// The file has no cluster id.
    #[error(
        "cluster_id: required: the 16 hex digits every frame of the cluster names \
         (`sam keygen --dir DIR` draws one and prints the line)"
    )]
    NoClusterId,
    /// The file has no `[security]` table.
    #[error(
        "security: the table is required: run `sam keygen --dir DIR` and add the lines it prints, \
         or write `[security]` with `mode = \"off\"` to run without protection"
    )]
    NoSecurity,
    /// The security mode needs a key file that the file does not name.
    #[error("{key}: required with mode = \"{mode}\": {hint}")]
    MissingKey {
        /// The key path, e.g. `security.server_key`.
        key: &'static str,
        /// The mode.
        mode: SecurityMode,
        /// How to get the file.
        hint: &'static str,
    },
    /// A path is empty.
    #[error("{key}: the path must not be empty")]
    EmptyPath {
        /// The key path.
        key: String,
    },
    /// A signing key is not 64 hex digits.
    #[error("{key}: {reason}")]
    SigningKey {
        /// The key path, e.g. `security.signing_keys[0]`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Signed frames with the mode off.
    #[error("security.sign_server_frames: needs mode = \"encrypt\" or \"authenticate\" (signing keys come from the server key)")]
    SigningOff,
    /// Signed frames without public keys.
    #[error(
        "security.signing_keys: required with sign_server_frames = true: \
         `sam keygen --dir DIR --signing-keys` prints the line"
    )]
    NoSigningKeys,
    /// A revoked name is no member name.
    #[error("{key}: {name:?} is not a member name (1 to {} of A-Z a-z 0-9 . _ -)", credential::MEMBER_NAME_MAX)]
    MemberName {
        /// The key path, e.g. `security.revoked[0]`.
        key: String,
        /// The name given.
        name: String,
    },
    /// A key file could not be read or written.
    #[error("{key}: {source}")]
    KeyFile {
        /// The key path that names the file (`security` for files being written).
        key: &'static str,
        /// What went wrong; it names the file.
        source: CredentialError,
    },
    /// A key file belongs to another cluster.
    #[error("{key}: {} holds keys of cluster {file}, but this file's cluster_id is {config}", path.display())]
    OtherCluster {
        /// The key path.
        key: &'static str,
        /// The key file.
        path: PathBuf,
        /// The cluster id in the key file.
        file: ClusterId,
        /// The cluster id in the configuration.
        config: ClusterId,
    },
    /// A key file lacks keys its reader needs, or holds keys it must not.
    #[error("{key}: {} {problem}", path.display())]
    WrongKeys {
        /// The key path.
        key: &'static str,
        /// The key file.
        path: PathBuf,
        /// What is wrong and which file belongs there.
        problem: String,
    },
    /// This process's member credential is revoked.
    #[error("{key}: {} is the credential of a revoked member (pid {pid}, listed in security.revoked)", path.display())]
    Revoked {
        /// The key path.
        key: &'static str,
        /// The key file.
        path: PathBuf,
        /// The credential's pid.
        pid: u64,
    },
    /// The protocol core refused the configuration (the checks above should have caught it
    /// first; this is the last line of defence).
    #[error("protocol: {0}")]
    Core(#[from] sam_core::ConfigError),
}

/// What makes an address unusable as a server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressProblem {
    /// Port 0 asks the operating system for any port, which nobody else could know.
    PortZero,
    /// The unspecified address `0.0.0.0` is not one anyone can send to.
    Unspecified,
    /// A multicast address is a group, not one server.
    Multicast,
}

impl fmt::Display for AddressProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressProblem::PortZero => "has port 0, which the other processes could not know",
            AddressProblem::Unspecified => "is the unspecified address, which nobody can send to",
            AddressProblem::Multicast => "is a multicast address, not one server's",
        })
    }
}

/// How datagrams reach a group (DESIGN section 7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Every channel is an IP multicast group.
    #[default]
    Multicast,
    /// For networks without multicast: server channels become unicast fan-out, and members
    /// register with a data server that relays the global channel to them.
    Unicast,
}

/// A server role of DESIGN section 2. The sequencer is not one: the commit servers elect it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Stores assignments and stands for sequencer.
    Commit,
    /// Stores messages and serves them.
    Data,
    /// Snapshots the replicated state and serves it.
    Checkpoint,
}

impl Role {
    /// Every role, in the canonical order the file is written in.
    pub const ALL: [Role; 3] = [Role::Commit, Role::Data, Role::Checkpoint];

    /// The name in the file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Commit => "commit",
            Role::Data => "data",
            Role::Checkpoint => "checkpoint",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("unknown role \"{0}\" (the roles are \"commit\", \"data\" and \"checkpoint\")")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(name: &str) -> Result<Role, UnknownRole> {
        Role::ALL.into_iter().find(|r| r.name() == name).ok_or_else(|| UnknownRole(name.to_string()))
    }
}

impl Serialize for Role {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(de::Error::custom)
    }
}

/// The set of roles one server process holds: a set, so that a role listed twice is refused
/// when parsing rather than counted twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServerRoles(u8);

impl ServerRoles {
    /// No role (refused by validation: a server needs one).
    pub const NONE: ServerRoles = ServerRoles(0);

    /// Whether the set holds `role`.
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Adds `role`; false if it was there already.
    pub fn insert(&mut self, role: Role) -> bool {
        let new = !self.contains(role);
        self.0 |= role.bit();
        new
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles, in canonical order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// The core's view of these roles; `client` makes the process a member too, which a
    /// checkpoint server must be (its state machine runs on the member's deliveries).
    pub fn to_core(self, client: Option<Incarnation>) -> sam_core::Roles {
        sam_core::Roles {
            commit: self.contains(Role::Commit),
            data: self.contains(Role::Data),
            checkpoint: self.contains(Role::Checkpoint),
            client,
        }
    }
}

impl FromIterator<Role> for ServerRoles {
    fn from_iter<I: IntoIterator<Item = Role>>(roles: I) -> ServerRoles {
        let mut set = ServerRoles::NONE;
        for role in roles {
            set.insert(role);
        }
        set
    }
}

impl Serialize for ServerRoles {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for role in self.iter() {
            seq.serialize_element(&role)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for ServerRoles {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ServerRoles, D::Error> {
        struct RolesVisitor;
        impl<'de> Visitor<'de> for RolesVisitor {
            type Value = ServerRoles;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of roles: \"commit\", \"data\", \"checkpoint\"")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ServerRoles, A::Error> {
                let mut roles = ServerRoles::NONE;
                while let Some(role) = seq.next_element::<Role>()? {
                    if !roles.insert(role) {
                        return Err(de::Error::custom(format!("role \"{role}\" is listed twice")));
                    }
                }
                Ok(roles)
            }
        }
        d.deserialize_seq(RolesVisitor)
    }
}

/// The name of one of the four channels, for error messages and iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelName(pub Channel);

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Channel::Global => "global",
            Channel::Data => "data",
            Channel::Commit => "commit",
            Channel::Checkpoint => "checkpoint",
        })
    }
}

/// One channel's multicast group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The IPv4 multicast group.
    pub group: Ipv4Addr,
    /// The UDP port every subscriber binds.
    pub port: u16,
    /// The local interface that joins the group and sends to it.
    #[serde(default = "default_interface")]
    pub interface: Ipv4Addr,
    /// How many routers a datagram may cross.
    #[serde(default = "default_ttl")]
    pub ttl: u8,
}

fn default_interface() -> Ipv4Addr {
    DEFAULT_INTERFACE
}

fn default_ttl() -> u8 {
    DEFAULT_TTL
}

/// The four channels of DESIGN section 7.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channels {
    /// Everyone: senders, members and every server.
    pub global: ChannelConfig,
    /// The data servers.
    pub data: ChannelConfig,
    /// The commit servers.
    pub commit: ChannelConfig,
    /// The checkpoint servers.
    pub checkpoint: ChannelConfig,
}

impl Channels {
    /// The group of a channel the core addresses.
    pub fn get(&self, channel: Channel) -> &ChannelConfig {
        match channel {
            Channel::Global => &self.global,
            Channel::Data => &self.data,
            Channel::Commit => &self.commit,
            Channel::Checkpoint => &self.checkpoint,
        }
    }

    /// Every channel with its name, in the order of the file.
    pub fn iter(&self) -> impl Iterator<Item = (ChannelName, &ChannelConfig)> {
        [Channel::Global, Channel::Data, Channel::Commit, Channel::Checkpoint]
            .into_iter()
            .map(move |c| (ChannelName(c), self.get(c)))
    }
}

/// One server process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Its pid. The order of the servers in the file is their rank order: the first commit
    /// server runs the first epoch's sequencer.
    #[serde(with = "pid_as_u64")]
    pub id: Pid,
    /// The roles it holds.
    pub roles: ServerRoles,
    /// Its unicast socket (IPv4, like the channels): replies, and in unicast mode the server
    /// channels too.
    pub address: SocketAddrV4,
    /// Its storage directory; `storage.dir/server-ID` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Where it serves its Prometheus metrics over HTTP (`GET /metrics`); none when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddrV4>,
}

/// The protocol's tunables (DESIGN section 10 gives the defaults, taken from
/// [`sam_core::Config::new`]). Timers are in milliseconds here and microseconds in the core.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolConfig {
    /// Acceptances needed to commit a number.
    pub k_commit: usize,
    /// Data servers that must hold a message before it is numbered.
    pub k_data: usize,
    /// Checkpoint servers that must report a checkpoint before it is advertised.
    pub k_checkpoint: usize,
    /// Every assignment of a message lies in `(ts, ts + max_lifetime]`.
    pub max_lifetime: u64,
    /// A sender's limit of uncommitted messages in flight.
    pub sender_window: usize,
    /// The sequencer's limit of assigned but uncommitted numbers.
    pub sequencer_window: usize,
    /// How often the sequencer sends a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Missing heartbeats for this long means the sequencer is presumed failed.
    pub failure_timeout_ms: u64,
    /// How long a sender waits before retransmitting an uncommitted message.
    pub retransmit_ms: u64,
    /// The upper bound of the random delay before a member asks for what it missed.
    pub nack_delay_ms: u64,
    /// How long a member waits for a server's answer before asking another.
    pub request_timeout_ms: u64,
    /// How long the sequencer waits for an acceptance before sending an assignment again.
    pub assign_resend_ms: u64,
    /// At most this many numbers (or mids) in one NACK query.
    pub nack_batch: usize,
    /// At most this many entries in one batched protocol message.
    pub batch_entries: usize,
    /// How many of the latest committed numbers each heartbeat repeats.
    pub heartbeat_recent: usize,
    /// The bytes of uncommitted data a member buffers before it drops and fetches later.
    pub member_buffer_bytes: usize,
    /// The bytes of uncommitted data a data server holds for one sender pid.
    pub data_sender_bytes_max: usize,
    /// The bytes of uncommitted data a data server holds in all.
    pub data_uncommitted_bytes_max: usize,
    /// Checkpoints fall at the multiples of this number.
    pub checkpoint_every: u64,
    /// A member further behind than this catches up from a checkpoint rather than the log.
    pub catch_up_after: u64,
}

impl Default for ProtocolConfig {
    fn default() -> ProtocolConfig {
        let c = sam_core::Config::new(Vec::new(), Vec::new(), Vec::new());
        ProtocolConfig {
            k_commit: c.k_commit,
            k_data: c.k_data,
            k_checkpoint: c.k_checkpoint,
            max_lifetime: c.max_lifetime,
            sender_window: c.sender_window,
            sequencer_window: c.sequencer_window,
            heartbeat_interval_ms: c.heartbeat_interval_us / 1_000,
            failure_timeout_ms: c.failure_timeout_us / 1_000,
            retransmit_ms: c.retransmit_us / 1_000,
            nack_delay_ms: c.nack_delay_us / 1_000,
            request_timeout_ms: c.request_timeout_us / 1_000,
            assign_resend_ms: c.assign_resend_us / 1_000,
            nack_batch: c.nack_batch,
            batch_entries: c.batch_entries,
            heartbeat_recent: c.heartbeat_recent,
            member_buffer_bytes: c.member_buffer_bytes,
            data_sender_bytes_max: c.data_sender_bytes_max,
            data_uncommitted_bytes_max: c.data_uncommitted_bytes_max,
            checkpoint_every: c.checkpoint_every,
            catch_up_after: c.catch_up_after,
        }
    }
}

/// Where and how servers store their state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// When a write counts as durable: `"fsync"` survives a power failure, `"os"` only a crash
    /// of the process (faster, for tests and benchmarks).
    #[serde(with = "durability_by_name")]
    pub durability: Durability,
    /// The directory under which each server without a `dir` of its own gets `server-ID`.
    pub dir: PathBuf,
    /// The size at which a server's log starts a new segment; old segments are compacted
    /// away whole once what checkpoints cover is garbage.
    pub segment_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            durability: Durability::Fsync,
            dir: PathBuf::from("data"),
            segment_bytes: sam_store::SEGMENT_SIZE_BYTES_DEFAULT,
        }
    }
}

/// Bounds on what goes over the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// The largest datagram a process sends; many messages are packed into one.
    pub max_datagram_bytes: usize,
    /// The largest payload a sender may multicast; larger ones than a datagram are fragmented.
    pub max_message_bytes: usize,
    /// Unicast mode: the lease a member asks of the data server that relays to it; it renews
    /// every third of it and moves to another data server after half of it in silence.
    pub relay_lease_ms: u64,
}

impl Default for NetworkConfig {
    fn default() -> NetworkConfig {
        NetworkConfig {
            max_datagram_bytes: DATAGRAM_BYTES_DEFAULT,
            max_message_bytes: MESSAGE_BYTES_DEFAULT,
            relay_lease_ms: RELAY_LEASE_MS_DEFAULT,
        }
    }
}

/// Faults and broken variants for tests of the real program; absent in production.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingConfig {
    /// Received datagrams dropped, per thousand (at most 500).
    pub drop_per_mille: u16,
    /// Received datagrams taken twice, per thousand (at most 500).
    pub duplicate_per_mille: u16,
    /// A deliberately broken protocol variant, by name (such as `"no-deduplication"`): only
    /// builds with the `mutations` feature accept one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutation: Option<String>,
}

impl TestingConfig {
    /// Whether nothing is injected or broken.
    pub fn is_off(&self) -> bool {
        *self == TestingConfig::default()
    }

    /// The faults the network driver injects.
    pub fn faults(&self) -> sam_net::InjectedFaults {
        sam_net::InjectedFaults { drop_per_mille: self.drop_per_mille, duplicate_per_mille: self.duplicate_per_mille }
    }

    /// The broken variant named, if any.
    #[cfg(feature = "mutations")]
    pub fn mutation(&self) -> Result<Option<sam_core::Mutation>, ConfigError> {
        let Some(name) = &self.mutation else { return Ok(None) };
        let all = sam_core::Mutation::ALL;
        match all.into_iter().find(|m| m.name() == name) {
            Some(m) => Ok(Some(m)),
            None => {
                let known = all.map(sam_core::Mutation::name).join(", ");
                Err(ConfigError::UnknownMutation { name: name.clone(), known })
            }
        }
    }

    /// The broken variant named: none in this build, which refuses a name.
    #[cfg(not(feature = "mutations"))]
    pub fn mutation(&self) -> Result<Option<std::convert::Infallible>, ConfigError> {
        match self.mutation {
            Some(_) => Err(ConfigError::NoMutations),
            None => Ok(None),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let max = u64::from(sam_net::injected::MAX_PER_MILLE);
        check_ranges(
            "testing",
            &[
                ("drop_per_mille", u64::from(self.drop_per_mille), 0, max),
                ("duplicate_per_mille", u64::from(self.duplicate_per_mille), 0, max),
            ],
        )?;
        self.mutation().map(drop)
    }
}

/// How frames are protected (DESIGN section 12). There is no default: `"off"` has to be
/// written down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    /// No seal: only the cluster id and the sanity bounds protect the group. For closed test
    /// networks; announced at start.
    Off,
    /// Every frame is sealed with an empty plaintext and its body as associated data: forged
    /// and replayed frames are dropped, payloads stay readable on the wire.
    Authenticate,
    /// Every frame is sealed: authenticated and encrypted.
    Encrypt,
}

impl SecurityMode {
    /// The network driver's mode: what seals and opens frames (its byte is bound into every
    /// seal).
    pub fn wire(self) -> sam_net::security::envelope::Mode {
        use sam_net::security::envelope::Mode;
        match self {
            SecurityMode::Off => Mode::Off,
            SecurityMode::Authenticate => Mode::Authenticate,
            SecurityMode::Encrypt => Mode::Encrypt,
        }
    }

    /// Its name in the file.
    pub fn name(self) -> &'static str {
        self.wire().name()
    }
}

impl fmt::Display for SecurityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `[security]` table: the mode, and where this host's key files are. Paths name files
/// that may exist only on some hosts (the server key on servers, a member credential on a
/// member's host); only [`ClusterConfig::keyring`] reads them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// How frames are protected.
    pub mode: SecurityMode,
    /// The servers' key file (server, group and member-master keys): required unless the mode
    /// is off, since every cluster has servers that need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_key: Option<PathBuf>,
    /// The checkpoint servers' key file (derived from the server key), read by servers that
    /// hold only the checkpoint role; required when there is one and the mode is not off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_key: Option<PathBuf>,
    /// This host's member credential, read by members; [`ClusterConfig::keyring`] refuses to
    /// run a member without one unless the mode is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_key: Option<PathBuf>,
    /// Member names whose credentials servers refuse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
    /// Signed frames (DESIGN section 12): the sequencer signs its heartbeats, and members
    /// deliver only what a signed commit chain covers, so that no member credential can make
    /// another member deliver what was not committed. Needs a mode other than off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sign_server_frames: bool,
    /// The public keys heartbeats are signed under, 64 hex digits each: one per server key in
    /// use (`sam keygen --dir DIR --signing-keys` prints them). Required with signed frames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<String>,
}

impl SecurityConfig {
    /// No protection and no key files.
    pub fn off() -> SecurityConfig {
        SecurityConfig {
            mode: SecurityMode::Off,
            server_key: None,
            checkpoint_key: None,
            member_key: None,
            revoked: Vec::new(),
            sign_server_frames: false,
            signing_keys: Vec::new(),
        }
    }

    /// With signed frames, the public keys heartbeats are signed under; empty otherwise (a
    /// key that does not parse is refused by validation).
    pub fn signing_keys(&self) -> Vec<PublicKey> {
        if !self.sign_server_frames {
            return Vec::new();
        }
        self.signing_keys.iter().filter_map(|k| k.parse().ok()).collect()
    }

    /// The credential pids of the revoked members.
    pub fn revoked_pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.revoked.iter().map(|name| member_pid(name))
    }

    /// The key file `who` reads.
    pub fn path(&self, who: KeyUser) -> Option<&PathBuf> {
        match who {
            KeyUser::Server { checkpoint_only: false } => self.server_key.as_ref(),
            KeyUser::Server { checkpoint_only: true } => self.checkpoint_key.as_ref(),
            KeyUser::Member => self.member_key.as_ref(),
        }
    }

    /// Every key file's path, to resolve relative ones.
    fn paths_mut(&mut self) -> [&mut Option<PathBuf>; 3] {
        [&mut self.server_key, &mut self.checkpoint_key, &mut self.member_key]
    }
}

/// Which process reads its keys, and so which key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUser {
    /// A server: the server key file, or, for a server that holds only the checkpoint role,
    /// the checkpoint key file (DESIGN section 12: checkpoint servers hold a key of their own).
    Server {
        /// The server holds the checkpoint role and no other.
        checkpoint_only: bool,
    },
    /// A member (sender, tail, table client): its member credential.
    Member,
}

impl KeyUser {
    /// Every key user.
    pub const ALL: [KeyUser; 3] =
        [KeyUser::Server { checkpoint_only: false }, KeyUser::Server { checkpoint_only: true }, KeyUser::Member];

    /// The key user a server holding `roles` is.
    pub fn server(roles: ServerRoles) -> KeyUser {
        KeyUser::Server { checkpoint_only: roles.iter().eq([Role::Checkpoint]) }
    }

    /// The key path of the file it reads.
    fn key(self) -> &'static str {
        match self {
            KeyUser::Server { checkpoint_only: false } => "security.server_key",
            KeyUser::Server { checkpoint_only: true } => "security.checkpoint_key",
            KeyUser::Member => "security.member_key",
        }
    }

    /// How to get the file it reads.
    fn hint(self) -> &'static str {
        match self {
            KeyUser::Server { checkpoint_only: false } => {
                "`sam keygen --dir DIR` writes the servers' key file DIR/server.key"
            }
            KeyUser::Server { checkpoint_only: true } => {
                "`sam keygen --dir DIR` writes DIR/checkpoint.key, for the servers that hold only the checkpoint role"
            }
            KeyUser::Member => "`sam keygen --dir DIR --member NAME` writes a member credential DIR/member-NAME.key",
        }
    }

    /// Whether `ring` holds what this user needs and nothing it must not; the problem names
    /// the file that belongs there.
    fn check(self, ring: &Keyring) -> Result<(), String> {
        let (needs, refuses, file): (&[KeyKind], &[KeyKind], &str) = match self {
            KeyUser::Server { checkpoint_only: false } => {
                (&[KeyKind::Server, KeyKind::Group, KeyKind::MemberMaster], &[], "the servers' server.key")
            }
            KeyUser::Server { checkpoint_only: true } => {
                (&[KeyKind::Checkpoint, KeyKind::Group, KeyKind::MemberMaster], &[KeyKind::Server], "checkpoint.key")
            }
            KeyUser::Member => (&[KeyKind::Member, KeyKind::Group], &[], "a member-NAME.key"),
        };
        let is_member = ring.member.is_some();
        if is_member != (self == KeyUser::Member) {
            let what = if is_member { "is a member credential" } else { "is no member credential" };
            return Err(format!("{what}; name {file} here"));
        }
        if let Some(kind) = needs.iter().find(|&&k| ring.sealing(k).is_none()) {
            return Err(format!("holds no {} key that seals; name {file} here", kind.name()));
        }
        if let Some(kind) = refuses.iter().find(|&&k| ring.of_kind(k).next().is_some()) {
            return Err(format!("holds {} keys, which a checkpoint server must not; name {file} here", kind.name()));
        }
        Ok(())
    }
}

/// The whole configuration file of one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// How datagrams travel.
    #[serde(default)]
    pub transport: Transport,
    /// The cluster's id, named by every frame so that clusters sharing groups and ports never
    /// hear each other; 16 hex digits in the file.
    #[serde(with = "cluster_id_hex")]
    pub cluster_id: ClusterId,
    /// The multicast groups; required with multicast transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Channels>,
    /// The server processes, in rank order.
    pub servers: Vec<ServerConfig>,
    /// How frames are protected, and the key files.
    pub security: SecurityConfig,
    /// The protocol's tunables.
    #[serde(default)]
    pub protocol: ProtocolConfig,
    /// Where and how servers store their state.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Bounds on datagrams and messages.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Faults injected for tests (none unless the file asks).
    #[serde(default, skip_serializing_if = "TestingConfig::is_off")]
    pub testing: TestingConfig,
}

impl ClusterConfig {
    /// Reads and validates the file at `path`. Relative directories in it are taken relative
    /// to the file's own directory, so that the file means the same from any working directory.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config = ClusterConfig::parse(&text)?;
        let base = path.parent().unwrap_or(Path::new(""));
        // An empty directory stays empty, for validation to refuse it.
        let resolve = |dir: &mut PathBuf| {
            if !dir.as_os_str().is_empty() {
                *dir = base.join(&*dir);
            }
        };
        resolve(&mut config.storage.dir);
        config.servers.iter_mut().filter_map(|s| s.dir.as_mut()).for_each(resolve);
        config.security.paths_mut().into_iter().filter_map(Option::as_mut).for_each(resolve);
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates a file's text; relative directories stay relative to the working
    /// directory.
    pub fn from_toml_str(text: &str) -> Result<ClusterConfig, ConfigError> {
        let config = ClusterConfig::parse(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The file's text: loading it gives this configuration back.
    pub fn to_toml_string(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// A cluster on loopback: `servers` processes each holding a commit and a data server,
    /// then `checkpoint_servers` processes holding a checkpoint server, with pids from 1. The
    /// channels take ports `base_port..base_port + 4`, the servers the UDP ports after and
    /// their metrics endpoints the TCP ports after those; storage goes under `dir/data`. Redundancy factors are the defaults, lowered to the number of
    /// servers when there are fewer. The cluster id is fresh; security is off
    /// ([`ClusterConfig::with_local_keys`] turns it on).
    ///
    /// # Panics
    ///
    /// If the ports would run past 65535, or the operating system's random number generator
    /// fails (nothing secure can run then).
    pub fn local(servers: usize, checkpoint_servers: usize, base_port: u16, dir: &Path) -> ClusterConfig {
        let port = |offset: usize| -> u16 {
            u16::try_from(usize::from(base_port) + offset)
                .unwrap_or_else(|_| panic!("base port {base_port} leaves no room for {offset} more ports"))
        };
        let channel = |i: usize| ChannelConfig {
            group: LOCAL_GROUPS[i],
            port: port(i),
            interface: DEFAULT_INTERFACE,
            ttl: DEFAULT_TTL,
        };
        let channels = Channels { global: channel(0), data: channel(1), commit: channel(2), checkpoint: channel(3) };
        let roles_of = |i: usize| {
            if i < servers {
                [Role::Commit, Role::Data].into_iter().collect()
            } else {
                [Role::Checkpoint].into_iter().collect()
            }
        };
        let count = servers + checkpoint_servers;
        let servers_list = (0..count)
            .map(|i| ServerConfig {
                id: Pid(i as u64 + 1),
                roles: roles_of(i),
                address: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port(LOCAL_GROUPS.len() + i)),
                dir: None,
                // TCP ports after the servers' UDP ones.
                metrics: Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port(LOCAL_GROUPS.len() + count + i))),
            })
            .collect();
        let mut protocol = ProtocolConfig::default();
        protocol.k_commit = protocol.k_commit.min(servers);
        protocol.k_data = protocol.k_data.min(servers);
        if checkpoint_servers > 0 {
            protocol.k_checkpoint = protocol.k_checkpoint.min(checkpoint_servers);
        }
        ClusterConfig {
            transport: Transport::Multicast,
            cluster_id: ClusterId::generate().expect("the operating system's random number generator failed"),
            channels: Some(channels),
            servers: servers_list,
            security: SecurityConfig::off(),
            protocol,
            storage: StorageConfig { dir: dir.join("data"), ..StorageConfig::default() },
            network: NetworkConfig::default(),
            testing: TestingConfig::default(),
        }
    }

    /// Turns security on with new keys: writes `dir/keys/server.key`, `checkpoint.key` and the
    /// member credential `member-local.key` (shared by every member process of a local
    /// cluster), sets mode `"encrypt"` and names the three files by absolute path (so that the
    /// configuration file may be written anywhere). It lists the heartbeat signing key too, so
    /// that signed frames are one switch away.
    pub fn with_local_keys(&mut self, dir: &Path) -> Result<(), ConfigError> {
        let keys = dir.join(LOCAL_KEYS_DIR);
        let failed = |source| ConfigError::KeyFile { key: "security", source };
        let keys = std::path::absolute(&keys)
            .map_err(|source| failed(CredentialError::Write { path: keys.clone(), source }))?;
        let server = credential::write_cluster_keys(&keys, self.cluster_id, Suite::Aes256Gcm).map_err(failed)?;
        let member_path = keys.join(credential::member_file(LOCAL_MEMBER));
        credential::save(&Keyring::member_from(&server, LOCAL_MEMBER), &member_path, Some(LOCAL_MEMBER))
            .map_err(failed)?;
        let signing_keys = server.of_kind(KeyKind::Server).map(|k| signing::public_key(k, server.cluster).to_string());
        self.security = SecurityConfig {
            mode: SecurityMode::Encrypt,
            server_key: Some(keys.join(credential::SERVER_FILE)),
            checkpoint_key: Some(keys.join(credential::CHECKPOINT_FILE)),
            member_key: Some(member_path),
            revoked: Vec::new(),
            sign_server_frames: false,
            signing_keys: signing_keys.collect(),
        };
        Ok(())
    }

    /// The keys `who` seals and opens with: `None` when the mode is off. Reads the key file
    /// (refused unless private to this user), and checks that it is of this cluster, holds the
    /// keys `who` needs (and, for a checkpoint server, no server key), and, for a member, that
    /// its credential is not revoked.
    pub fn keyring(&self, who: KeyUser) -> Result<Option<Keyring>, ConfigError> {
        let s = &self.security;
        if s.mode == SecurityMode::Off {
            return Ok(None);
        }
        let key = who.key();
        let Some(path) = s.path(who) else {
            return Err(ConfigError::MissingKey { key, mode: s.mode, hint: who.hint() });
        };
        let ring = credential::load(path).map_err(|source| ConfigError::KeyFile { key, source })?;
        if ring.cluster != self.cluster_id {
            return Err(ConfigError::OtherCluster {
                key,
                path: path.clone(),
                file: ring.cluster,
                config: self.cluster_id,
            });
        }
        who.check(&ring).map_err(|problem| ConfigError::WrongKeys { key, path: path.clone(), problem })?;
        if let Some(pid) = ring.member.filter(|pid| s.revoked_pids().any(|r| r == *pid)) {
            return Err(ConfigError::Revoked { key, path: path.clone(), pid: pid.0 });
        }
        Ok(Some(ring))
    }

    /// The protocol core's configuration: each role's pids in file order, and the tunables.
    pub fn core(&self) -> sam_core::Config {
        let pids = |role| self.servers_with(role).map(|s| s.id).collect();
        let mut c = sam_core::Config::new(pids(Role::Commit), pids(Role::Data), pids(Role::Checkpoint));
        let p = &self.protocol;
        let us = |ms: u64| ms.saturating_mul(1_000);
        c.k_commit = p.k_commit;
        c.k_data = p.k_data;
        c.k_checkpoint = p.k_checkpoint;
        c.max_lifetime = p.max_lifetime;
        c.sender_window = p.sender_window;
        c.sequencer_window = p.sequencer_window;
        c.heartbeat_interval_us = us(p.heartbeat_interval_ms);
        c.failure_timeout_us = us(p.failure_timeout_ms);
        c.retransmit_us = us(p.retransmit_ms);
        c.nack_delay_us = us(p.nack_delay_ms);
        c.request_timeout_us = us(p.request_timeout_ms);
        c.assign_resend_us = us(p.assign_resend_ms);
        c.nack_batch = p.nack_batch;
        c.batch_entries = p.batch_entries;
        c.heartbeat_recent = p.heartbeat_recent;
        c.member_buffer_bytes = p.member_buffer_bytes;
        c.data_sender_bytes_max = p.data_sender_bytes_max;
        c.data_uncommitted_bytes_max = p.data_uncommitted_bytes_max;
        c.checkpoint_every = p.checkpoint_every;
        c.catch_up_after = p.catch_up_after;
        c.signed_heartbeat_us = self.security.sign_server_frames.then_some(SIGNED_HEARTBEAT_US);
        #[cfg(feature = "mutations")]
        {
            // Validation refused an unknown name.
            c.mutation = self.testing.mutation().ok().flatten();
        }
        c
    }

    /// The server with pid `id`.
    pub fn server(&self, id: Pid) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.id == id)
    }

    /// The servers holding `role`, in rank order.
    pub fn servers_with(&self, role: Role) -> impl Iterator<Item = &ServerConfig> {
        self.servers.iter().filter(move |s| s.roles.contains(role))
    }

    /// Where `server` keeps its state.
    pub fn server_dir(&self, server: &ServerConfig) -> PathBuf {
        match &server.dir {
            Some(dir) => dir.clone(),
            None => self.storage.dir.join(format!("server-{}", server.id.0)),
        }
    }

    /// Checks every rule of a usable configuration, ending with the core's own.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_servers()?;
        self.validate_roles()?;
        self.validate_protocol()?;
        if let Some(channels) = &self.channels {
            self.validate_channels(channels)?;
        } else if self.transport == Transport::Multicast {
            return Err(ConfigError::NoChannels);
        }
        self.validate_network()?;
        self.validate_security()?;
        self.testing.validate()?;
        let segment = self.storage.segment_bytes;
        check_ranges("storage", &[("segment_bytes", segment, SEGMENT_BYTES_MIN, sam_store::SEGMENT_SIZE_BYTES_MAX)])?;
        self.core().validate()?;
        Ok(())
    }

    /// Parses without validating, naming the key of any error.
    fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        // Parsing the bare document first separates syntax errors (toml's message is best)
        // from errors in values, and gives the spans that turn an error's place into a key path.
        let root = DeTable::parse(text).map_err(ConfigError::Toml)?;
        toml::from_str(text).map_err(|e| match e.span() {
            // A required table or key missing at the top level: say how to get it. Serde
            // reports missing fields only once every value present parsed, in field order.
            _ if e.message() == "missing field `cluster_id`" && !has_top_level(&root, "cluster_id") => {
                ConfigError::NoClusterId
            }
            _ if e.message() == "missing field `security`" && !has_top_level(&root, "security") => {
                ConfigError::NoSecurity
            }
            Some(span) => {
                let (line, column) = line_and_column(text, span.start);
                let key = key_path_at(root.get_ref(), span.clone());
                ConfigError::Parse { key, message: e.message().to_string(), line, column }
            }
            None => ConfigError::Toml(e),
        })
    }

    fn validate_servers(&self) -> Result<(), ConfigError> {
        let mut ids = HashMap::new();
        let mut addresses = HashMap::new();
        let mut dirs = HashMap::new();
        for (i, server) in self.servers.iter().enumerate() {
            if server.roles.is_empty() {
                return Err(ConfigError::NoRoles { key: format!("servers[{i}].roles") });
            }
            if server.id.is_member() {
                return Err(ConfigError::MemberId { key: format!("servers[{i}].id"), id: server.id.0 });
            }
            if let Some(&first) = ids.get(&server.id) {
                return Err(ConfigError::DuplicateId { key: format!("servers[{i}].id"), id: server.id.0, first });
            }
            ids.insert(server.id, i);
            let key = format!("servers[{i}].address");
            let address = server.address;
            let problem = if address.port() == 0 {
                Some(AddressProblem::PortZero)
            } else if address.ip().is_unspecified() {
                Some(AddressProblem::Unspecified)
            } else if address.ip().is_multicast() {
                Some(AddressProblem::Multicast)
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(ConfigError::UnusableAddress { key, address, problem });
            }
            if let Some(&first) = addresses.get(&address) {
                return Err(ConfigError::DuplicateAddress { key, address, first });
            }
            addresses.insert(address, i);
            if server.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
                return Err(ConfigError::EmptyDir { key: format!("servers[{i}].dir") });
            }
            let dir = self.server_dir(server);
            if let Some(&first) = dirs.get(&dir) {
                return Err(ConfigError::DuplicateDir { key: format!("servers[{i}].dir"), dir, first });
            }
            dirs.insert(dir, i);
        }
        if self.storage.dir.as_os_str().is_empty() {
            return Err(ConfigError::EmptyDir { key: "storage.dir".to_string() });
        }
        Ok(())
    }

    fn validate_roles(&self) -> Result<(), ConfigError> {
        let p = &self.protocol;
        for (role, key, k) in [
            (Role::Commit, "protocol.k_commit", p.k_commit),
            (Role::Data, "protocol.k_data", p.k_data),
            (Role::Checkpoint, "protocol.k_checkpoint", p.k_checkpoint),
        ] {
            let n = self.servers_with(role).count();
            if n == 0 {
                // Without checkpoint servers the group runs without checkpoints.
                if role == Role::Checkpoint {
                    continue;
                }
                return Err(ConfigError::NoServers { role });
            }
            if n > MAX_SERVERS_PER_KIND {
                return Err(ConfigError::TooManyServers { role, n, max: MAX_SERVERS_PER_KIND });
            }
            if k == 0 {
                return Err(ConfigError::OutOfRange { key: key.to_string(), value: 0, min: 1, max: n as u64 });
            }
            if k > n {
                return Err(ConfigError::Redundancy { key: key.to_string(), k, role, n });
            }
        }
        Ok(())
    }

    fn validate_protocol(&self) -> Result<(), ConfigError> {
        let p = &self.protocol;
        let batch = BATCH_ENTRIES_MAX as u64;
        let ranges = [
            ("max_lifetime", p.max_lifetime, 1, MAX_LIFETIME),
            ("sender_window", p.sender_window as u64, 1, MAX_WINDOW),
            ("sequencer_window", p.sequencer_window as u64, 1, MAX_WINDOW),
            ("heartbeat_interval_ms", p.heartbeat_interval_ms, 1, TIMER_MS_MAX),
            ("failure_timeout_ms", p.failure_timeout_ms, 1, TIMER_MS_MAX),
            ("retransmit_ms", p.retransmit_ms, 1, TIMER_MS_MAX),
            // Zero is no jitter: fine on a small group, where NACK storms cannot happen.
            ("nack_delay_ms", p.nack_delay_ms, 0, TIMER_MS_MAX),
            ("request_timeout_ms", p.request_timeout_ms, 1, TIMER_MS_MAX),
            ("assign_resend_ms", p.assign_resend_ms, 1, TIMER_MS_MAX),
            ("nack_batch", p.nack_batch as u64, 1, batch),
            ("batch_entries", p.batch_entries as u64, 1, batch),
            ("heartbeat_recent", p.heartbeat_recent as u64, 0, batch),
            ("member_buffer_bytes", p.member_buffer_bytes as u64, 1, MEMBER_BUFFER_BYTES_MAX as u64),
            ("data_sender_bytes_max", p.data_sender_bytes_max as u64, 1, MEMBER_BUFFER_BYTES_MAX as u64),
            ("data_uncommitted_bytes_max", p.data_uncommitted_bytes_max as u64, 1, MEMBER_BUFFER_BYTES_MAX as u64),
            ("checkpoint_every", p.checkpoint_every, 1, u64::MAX),
            ("catch_up_after", p.catch_up_after, 1, u64::MAX),
        ];
        check_ranges("protocol", &ranges)?;
        if p.failure_timeout_ms <= p.heartbeat_interval_ms {
            return Err(ConfigError::TimeoutBelowHeartbeat {
                failure_timeout_ms: p.failure_timeout_ms,
                heartbeat_interval_ms: p.heartbeat_interval_ms,
            });
        }
        Ok(())
    }

    fn validate_channels(&self, channels: &Channels) -> Result<(), ConfigError> {
        let mut seen: Vec<(ChannelName, &ChannelConfig)> = Vec::new();
        for (channel, c) in channels.iter() {
            if !c.group.is_multicast() {
                return Err(ConfigError::NotMulticast { channel, group: c.group });
            }
            if c.port == 0 {
                return Err(ConfigError::OutOfRange {
                    key: format!("channels.{channel}.port"),
                    value: 0,
                    min: 1,
                    max: u16::MAX.into(),
                });
            }
            if c.interface.is_multicast() {
                return Err(ConfigError::MulticastInterface { channel, interface: c.interface });
            }
            if let Some((other, _)) = seen.iter().find(|(_, o)| o.group == c.group && o.port == c.port) {
                return Err(ConfigError::SharedChannel { channel, other: *other, group: c.group, port: c.port });
            }
            seen.push((channel, c));
        }
        // Every server binds the global channel's port at least; a unicast socket on a channel's
        // port would take some of that channel's datagrams.
        for (i, server) in self.servers.iter().enumerate() {
            let port = server.address.port();
            if let Some((channel, _)) = channels.iter().find(|(_, c)| c.port == port) {
                return Err(ConfigError::PortTaken { key: format!("servers[{i}].address"), port, channel });
            }
        }
        Ok(())
    }

    /// The security table's rules; the key files themselves are [`ClusterConfig::keyring`]'s.
    fn validate_security(&self) -> Result<(), ConfigError> {
        let s = &self.security;
        for who in KeyUser::ALL {
            if s.path(who).is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::EmptyPath { key: who.key().to_string() });
            }
        }
        if let Some((i, name)) = s.revoked.iter().enumerate().find(|(_, n)| !credential::is_member_name(n)) {
            return Err(ConfigError::MemberName { key: format!("security.revoked[{i}]"), name: name.clone() });
        }
        self.validate_signing()?;
        if s.mode == SecurityMode::Off {
            return Ok(());
        }
        // Every cluster has servers that read the server key; members are checked when they
        // start, since a server's host needs no member credential.
        let checkpoint_only = KeyUser::Server { checkpoint_only: true };
        let has_checkpoint_only = self.servers.iter().any(|server| KeyUser::server(server.roles) == checkpoint_only);
        let mut users = vec![KeyUser::Server { checkpoint_only: false }];
        users.extend(has_checkpoint_only.then_some(checkpoint_only));
        match users.into_iter().find(|&who| s.path(who).is_none()) {
            Some(who) => Err(ConfigError::MissingKey { key: who.key(), mode: s.mode, hint: who.hint() }),
            None => Ok(()),
        }
    }

    /// Signed frames need keys to seal with and the public keys to check against.
    fn validate_signing(&self) -> Result<(), ConfigError> {
        let s = &self.security;
        for (i, key) in s.signing_keys.iter().enumerate() {
            if let Err(reason) = key.parse::<PublicKey>() {
                return Err(ConfigError::SigningKey { key: format!("security.signing_keys[{i}]"), reason });
            }
        }
        if !s.sign_server_frames {
            return Ok(());
        }
        if s.mode == SecurityMode::Off {
            return Err(ConfigError::SigningOff);
        }
        if s.signing_keys.is_empty() {
            return Err(ConfigError::NoSigningKeys);
        }
        Ok(())
    }

    fn validate_network(&self) -> Result<(), ConfigError> {
        let n = &self.network;
        check_ranges(
            "network",
            &[
                (
                    "max_datagram_bytes",
                    n.max_datagram_bytes as u64,
                    DATAGRAM_BYTES_MIN as u64,
                    DATAGRAM_BYTES_MAX as u64,
                ),
                ("max_message_bytes", n.max_message_bytes as u64, 1, MESSAGE_BYTES_MAX as u64),
                ("relay_lease_ms", n.relay_lease_ms, RELAY_LEASE_MS_MIN, RELAY_LEASE_MS_MAX),
            ],
        )?;
        let p = &self.protocol;
        let smallest = [
            ("protocol.member_buffer_bytes", p.member_buffer_bytes),
            ("protocol.data_sender_bytes_max", p.data_sender_bytes_max),
            ("protocol.data_uncommitted_bytes_max", p.data_uncommitted_bytes_max),
        ];
        if let Some((key, bytes)) = smallest.into_iter().find(|(_, bytes)| n.max_message_bytes > *bytes) {
            return Err(ConfigError::MessageAboveBuffer { max_message_bytes: n.max_message_bytes, key, bytes });
        }
        Ok(())
    }
}

fn check_ranges(table: &str, ranges: &[(&str, u64, u64, u64)]) -> Result<(), ConfigError> {
    match ranges.iter().find(|(_, value, min, max)| value < min || value > max) {
        Some(&(key, value, min, max)) => {
            Err(ConfigError::OutOfRange { key: format!("{table}.{key}"), value, min, max })
        }
        None => Ok(()),
    }
}

/// Whether the document has the top-level key `key`.
fn has_top_level(root: &toml::Spanned<DeTable<'_>>, key: &str) -> bool {
    root.get_ref().iter().any(|(k, _)| k.get_ref() == key)
}

/// The 1-based line and character column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    // toml's spans fall on character boundaries; a stray one still yields a position.
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// The key path of the innermost key or value whose text holds the `error` span: toml reports
/// where an error lies, and this turns that into the names a user wrote. An error that spans
/// more than any key or value, or none of the text (toml's way to report a key missing from the
/// top level), is about the top level.
fn key_path_at(root: &DeTable<'_>, error: Range<usize>) -> String {
    if error.is_empty() {
        return "(top level)".to_string();
    }
    let mut best: Option<(usize, String)> = None;
    walk_table(root, "", &error, &mut best);
    match best {
        Some((_, path)) => path,
        None => "(top level)".to_string(),
    }
}

fn walk_table(table: &DeTable<'_>, prefix: &str, error: &Range<usize>, best: &mut Option<(usize, String)>) {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() { key.get_ref().to_string() } else { format!("{prefix}.{}", key.get_ref()) };
        consider(key.span(), &path, error, best);
        walk_value(value, &path, error, best);
    }
}

fn walk_value(
    value: &toml::Spanned<DeValue<'_>>,
    path: &str,
    error: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    consider(value.span(), path, error, best);
    match value.get_ref() {
        DeValue::Table(table) => walk_table(table, path, error, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_value(item, &format!("{path}[{i}]"), error, best);
            }
        }
        _ => {}
    }
}

/// Keeps `path` if its span holds `error` and is narrower than the best so far; on a tie the
/// later (deeper) one wins, since it was found inside the earlier.
fn consider(span: Range<usize>, path: &str, error: &Range<usize>, best: &mut Option<(usize, String)>) {
    let holds = span.start <= error.start && error.end <= span.end;
    let width = span.end.saturating_sub(span.start);
    let narrower = match best {
        Some((w, _)) => width <= *w,
        None => true,
    };
    if holds && narrower {
        *best = Some((width, path.to_string()));
    }
}

/// Pids are plain integers in the file.
mod pid_as_u64 {
    use sam_core::Pid;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(pid: &Pid, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(pid.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pid, D::Error> {
        u64::deserialize(d).map(Pid)
    }
}

/// The cluster id as 16 hex digits.
mod cluster_id_hex {
    use sam_net::security::keys::ClusterId;
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &ClusterId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ClusterId, D::Error> {
        let text = String::deserialize(d)?;
        crate::credential::parse_cluster_id(&text)
            .ok_or_else(|| de::Error::custom(format!("{text:?} is not 16 hex digits (such as \"0123456789abcdef\")")))
    }
}

/// The storage layer's durability, by its configuration name.
mod durability_by_name {
    use sam_store::Durability;
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(durability: &Durability, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(durability.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Durability, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(|_| de::Error::custom(format!("unknown durability \"{name}\" (use \"fsync\" or \"os\")")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small valid file; each test breaks one thing in it. Its first line is the cluster id,
    /// so that lines keep their numbers and text before it stays at the top level.
    const VALID: &str = r#"cluster_id = "0123456789abcdef"
[channels]
global = { group = "239.255.0.1", port = 17400 }
data = { group = "239.255.0.2", port = 17401 }
commit = { group = "239.255.0.3", port = 17402 }
checkpoint = { group = "239.255.0.4", port = 17403 }

[[servers]]
id = 1
roles = ["commit", "data"]
address = "127.0.0.1:17404"

[[servers]]
id = 2
roles = ["commit", "data", "checkpoint"]
address = "127.0.0.1:17405"

[[servers]]
id = 3
roles = ["commit", "data", "checkpoint"]
address = "127.0.0.1:17406"

[security]
mode = "off"
"#;

    fn refused(text: &str) -> ConfigError {
        match ClusterConfig::from_toml_str(text) {
            Ok(c) => panic!("accepted a broken file: {c:?}"),
            Err(e) => e,
        }
    }

    /// Asserts the message starts with the key path, as every error's does.
    fn refused_naming(text: &str, key: &str) -> ConfigError {
        let e = refused(text);
        assert!(e.to_string().starts_with(&format!("{key}: ")), "{key:?} not named first in: {e}");
        e
    }

    fn with_protocol(lines: &str) -> String {
        format!("{VALID}\n[protocol]\n{lines}\n")
    }

    /// The testing switch: rates within bounds reach the driver; a rate too high or a broken
    /// variant this build lacks (or that does not exist) is refused by its key.
    #[test]
    fn the_testing_section_is_checked_and_reaches_the_driver() {
        let c = ClusterConfig::from_toml_str(&format!(
            "{VALID}\n[testing]\ndrop_per_mille = 20\nduplicate_per_mille = 5\n"
        ))
        .unwrap();
        assert_eq!(c.testing.faults(), sam_net::InjectedFaults { drop_per_mille: 20, duplicate_per_mille: 5 });
        assert!(ClusterConfig::from_toml_str(VALID).unwrap().testing.is_off());
        refused_naming(&format!("{VALID}\n[testing]\ndrop_per_mille = 600\n"), "testing.drop_per_mille");
        let e = refused_naming(&format!("{VALID}\n[testing]\nmutation = \"no-such-bug\"\n"), "testing.mutation");
        if cfg!(feature = "mutations") {
            assert!(e.to_string().contains("no-deduplication"), "names the known ones: {e}");
        }
    }

    #[test]
    fn the_small_file_is_valid_with_every_default() {
        let c = ClusterConfig::from_toml_str(VALID).unwrap();
        assert_eq!(c.transport, Transport::Multicast);
        assert_eq!(c.protocol, ProtocolConfig::default());
        assert_eq!(c.storage, StorageConfig::default());
        assert_eq!(c.network, NetworkConfig::default());
        let global = &c.channels.as_ref().unwrap().global;
        assert_eq!((global.interface, global.ttl), (Ipv4Addr::LOCALHOST, 1));
        assert_eq!(c.servers[2].roles.iter().collect::<Vec<_>>(), Role::ALL);
    }

    #[test]
    fn protocol_defaults_are_the_cores() {
        let c = ClusterConfig::from_toml_str(VALID).unwrap();
        let pids = |r: std::ops::RangeInclusive<u64>| r.map(Pid).collect::<Vec<_>>();
        assert_eq!(c.core(), sam_core::Config::new(pids(1..=3), pids(1..=3), pids(2..=3)));
    }

    #[test]
    fn core_keeps_file_order_as_rank_and_converts_milliseconds() {
        let text = VALID.replace("id = 1", "id = 9") + "\n[protocol]\nheartbeat_interval_ms = 7\nk_commit = 3\n";
        let core = ClusterConfig::from_toml_str(&text).unwrap().core();
        assert_eq!(core.commit_servers, vec![Pid(9), Pid(2), Pid(3)]);
        assert_eq!(core.checkpoint_servers, vec![Pid(2), Pid(3)]);
        assert_eq!((core.heartbeat_interval_us, core.k_commit), (7_000, 3));
    }

    #[test]
    fn the_local_default_validates_and_round_trips() {
        let c = ClusterConfig::local(LOCAL_SERVERS, LOCAL_CHECKPOINT_SERVERS, LOCAL_BASE_PORT, Path::new("/tmp/sam"));
        c.validate().unwrap();
        assert_eq!(c.servers.len(), 5);
        assert_eq!(c.servers_with(Role::Commit).count(), 3);
        assert_eq!(c.servers_with(Role::Data).count(), 3);
        assert_eq!(c.servers_with(Role::Checkpoint).map(|s| s.id).collect::<Vec<_>>(), vec![Pid(4), Pid(5)]);
        assert_eq!(c.protocol.k_checkpoint, 2);
        assert!(c.channels.as_ref().unwrap().iter().all(|(_, ch)| ch.group.octets()[..2] == [239, 255]));
        let text = c.to_toml_string().unwrap();
        assert_eq!(ClusterConfig::from_toml_str(&text).unwrap(), c, "{text}");
    }

    #[test]
    fn a_local_cluster_smaller_than_the_defaults_lowers_its_redundancy() {
        let c = ClusterConfig::local(1, 0, 20_000, Path::new("d"));
        c.validate().unwrap();
        assert_eq!((c.protocol.k_commit, c.protocol.k_data), (1, 1));
        assert_eq!(c.server_dir(&c.servers[0]), Path::new("d/data/server-1"));
    }

    #[test]
    #[should_panic(expected = "leaves no room")]
    fn a_local_cluster_refuses_ports_past_the_last() {
        ClusterConfig::local(3, 2, 65_530, Path::new("d"));
    }

    #[test]
    fn a_duplicate_server_id_is_refused() {
        let e = refused_naming(&VALID.replace("id = 3", "id = 1"), "servers[2].id");
        assert!(matches!(e, ConfigError::DuplicateId { id: 1, first: 0, .. }), "{e}");
    }

    #[test]
    fn a_server_id_in_the_members_range_is_refused() {
        let e = refused_naming(&VALID.replace("id = 3", "id = 9223372036854775808"), "servers[2].id");
        assert!(matches!(e, ConfigError::MemberId { id: 9_223_372_036_854_775_808, .. }), "{e}");
    }

    #[test]
    fn a_group_without_commit_or_data_servers_is_refused() {
        let text = VALID.replace("\"commit\", ", "");
        assert!(matches!(refused_naming(&text, "servers"), ConfigError::NoServers { role: Role::Commit }));
        let text = VALID.replace("\"commit\", \"data\"", "\"commit\"");
        assert!(matches!(refused_naming(&text, "servers"), ConfigError::NoServers { role: Role::Data }));
    }

    #[test]
    fn a_group_without_checkpoint_servers_runs_without_checkpoints() {
        let text = VALID.replace(", \"checkpoint\"", "");
        let c = ClusterConfig::from_toml_str(&text).unwrap();
        assert!(c.core().checkpoint_servers.is_empty());
    }

    #[test]
    fn redundancy_above_the_servers_of_its_role_is_refused() {
        let e = refused(&with_protocol("k_commit = 4"));
        assert_eq!(e.to_string(), "protocol.k_commit: 4 is more than the 3 commit servers");
        refused_naming(&with_protocol("k_data = 4"), "protocol.k_data");
        let e = refused_naming(&with_protocol("k_checkpoint = 3"), "protocol.k_checkpoint");
        assert!(matches!(e, ConfigError::Redundancy { k: 3, role: Role::Checkpoint, n: 2, .. }));
    }

    #[test]
    fn zero_redundancy_is_refused() {
        let e = refused_naming(&with_protocol("k_data = 0"), "protocol.k_data");
        assert!(matches!(e, ConfigError::OutOfRange { value: 0, min: 1, max: 3, .. }), "{e}");
    }

    #[test]
    fn more_servers_of_a_role_than_votes_can_count_are_refused() {
        let mut c = ClusterConfig::local(MAX_SERVERS_PER_KIND + 1, 0, 1_000, Path::new("d"));
        c.validate().unwrap_err();
        c.protocol.k_commit = 2;
        let e = c.validate().unwrap_err();
        assert!(matches!(e, ConfigError::TooManyServers { role: Role::Commit, n: 65, max: 64 }), "{e}");
    }

    #[test]
    fn a_server_without_roles_is_refused() {
        let text = VALID.replace("roles = [\"commit\", \"data\"]", "roles = []");
        assert!(matches!(refused_naming(&text, "servers[0].roles"), ConfigError::NoRoles { .. }));
    }

    #[test]
    fn an_unknown_role_is_refused_by_name() {
        let text = VALID.replacen("[\"commit\", \"data\", \"checkpoint\"]", "[\"data\", \"comit\"]", 1);
        let e = refused_naming(&text, "servers[1].roles");
        assert!(e.to_string().contains("unknown role \"comit\""), "{e}");
        assert!(matches!(e, ConfigError::Parse { line: 15, .. }), "{e:?}");
    }

    #[test]
    fn a_role_listed_twice_is_refused() {
        let text = VALID.replacen("[\"commit\", \"data\", \"checkpoint\"]", "[\"data\", \"data\"]", 1);
        let e = refused_naming(&text, "servers[1].roles");
        assert!(e.to_string().contains("role \"data\" is listed twice"), "{e}");
    }

    #[test]
    fn a_duplicate_address_is_refused() {
        let e = refused_naming(&VALID.replace("17406", "17404"), "servers[2].address");
        assert!(matches!(e, ConfigError::DuplicateAddress { first: 0, .. }), "{e}");
    }

    #[test]
    fn an_address_nobody_can_send_to_is_refused() {
        for (address, problem) in [
            ("127.0.0.1:0", AddressProblem::PortZero),
            ("0.0.0.0:17406", AddressProblem::Unspecified),
            ("239.1.2.3:17406", AddressProblem::Multicast),
        ] {
            let e = refused_naming(&VALID.replace("127.0.0.1:17406", address), "servers[2].address");
            assert!(matches!(e, ConfigError::UnusableAddress { problem: p, .. } if p == problem), "{e}");
        }
    }

    #[test]
    fn a_malformed_address_is_refused_naming_the_key() {
        refused_naming(&VALID.replace("127.0.0.1:17406", "localhost"), "servers[2].address");
    }

    #[test]
    fn a_server_port_that_is_a_channel_port_is_refused() {
        let e = refused_naming(&VALID.replace("127.0.0.1:17405", "127.0.0.1:17401"), "servers[1].address");
        assert_eq!(e.to_string(), "servers[1].address: port 17401 is also the port of channels.data");
    }

    #[test]
    fn a_group_that_is_not_multicast_is_refused() {
        let e = refused_naming(&VALID.replace("239.255.0.3", "10.0.0.3"), "channels.commit.group");
        assert!(matches!(e, ConfigError::NotMulticast { .. }));
    }

    #[test]
    fn two_channels_on_one_group_and_port_are_refused() {
        let text = VALID.replace("\"239.255.0.4\", port = 17403", "\"239.255.0.2\", port = 17401");
        let e = refused_naming(&text, "channels.checkpoint");
        assert_eq!(e.to_string(), "channels.checkpoint: group 239.255.0.2 port 17401 is also channels.data's");
        let same_group_other_port = VALID.replace("\"239.255.0.4\"", "\"239.255.0.2\"");
        ClusterConfig::from_toml_str(&same_group_other_port).unwrap();
    }

    #[test]
    fn a_zero_channel_port_is_refused() {
        refused_naming(&VALID.replace("port = 17400", "port = 0"), "channels.global.port");
    }

    #[test]
    fn a_multicast_interface_is_refused() {
        let text = VALID.replace("port = 17400 }", "port = 17400, interface = \"224.0.0.1\" }");
        refused_naming(&text, "channels.global.interface");
    }

    #[test]
    fn a_ttl_above_255_is_refused() {
        refused_naming(&VALID.replace("port = 17400 }", "port = 17400, ttl = 300 }"), "channels.global.ttl");
    }

    #[test]
    fn multicast_needs_channels_and_unicast_does_not() {
        let start = VALID.find("[[servers]]").unwrap();
        let without = &format!("cluster_id = \"0123456789abcdef\"\n{}", &VALID[start..]);
        assert!(matches!(refused_naming(without, "channels"), ConfigError::NoChannels));
        let unicast = format!("transport = \"unicast\"\n{without}");
        assert_eq!(ClusterConfig::from_toml_str(&unicast).unwrap().transport, Transport::Unicast);
    }

    #[test]
    fn an_unknown_transport_or_durability_is_refused() {
        refused_naming(&format!("transport = \"broadcast\"\n{VALID}"), "transport");
        let e = refused_naming(&format!("{VALID}\n[storage]\ndurability = \"fsnc\"\n"), "storage.durability");
        assert!(e.to_string().contains("unknown durability \"fsnc\""), "{e}");
        let os = ClusterConfig::from_toml_str(&format!("{VALID}\n[storage]\ndurability = \"os\"\n")).unwrap();
        assert_eq!(os.storage.durability, Durability::Os);
    }

    #[test]
    fn unknown_keys_are_refused_wherever_they_are() {
        refused_naming(&format!("trasport = \"unicast\"\n{VALID}"), "trasport");
        refused_naming(&with_protocol("k_comit = 2"), "protocol.k_comit");
        refused_naming(&VALID.replace("id = 2", "id = 2\nport = 3"), "servers[1].port");
        refused_naming(&VALID.replace("port = 17401 }", "port = 17401, tll = 2 }"), "channels.data.tll");
        refused_naming(&format!("{VALID}\n[network]\nmtu = 1500\n"), "network.mtu");
        refused_naming(&format!("{VALID}\n[storage]\npath = \"x\"\n"), "storage.path");
        refused_naming(&format!("{VALID}\n[logging]\nlevel = 1\n"), "logging");
    }

    #[test]
    fn keys_in_header_tables_are_named_too() {
        let text = VALID.replace("[channels]\nglobal = { group = \"239.255.0.1\", port = 17400 }\n", "").replace(
            "[[servers]]\nid = 1",
            "[channels.global]\ngroup = \"239.255.0.1\"\nport = \"17400\"\n\n[[servers]]\nid = 1",
        );
        refused_naming(&text, "channels.global.port");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_naming_the_key() {
        refused_naming(&VALID.replace("id = 2", "id = \"two\""), "servers[1].id");
        refused_naming(&with_protocol("sender_window = -1"), "protocol.sender_window");
    }

    #[test]
    fn a_missing_key_names_its_table() {
        let e = refused_naming(&VALID.replace("address = \"127.0.0.1:17405\"", ""), "servers[1]");
        assert!(e.to_string().contains("address"), "{e}");
        let no_servers = "transport = \"unicast\"\ncluster_id = \"0123456789abcdef\"\n[security]\nmode = \"off\"\n";
        let e = refused_naming(no_servers, "(top level)");
        assert!(e.to_string().contains("servers"), "{e}");
    }

    #[test]
    fn a_syntax_error_keeps_tomls_line_and_column() {
        let e = refused(&VALID.replace("id = 2", "id = = 2"));
        assert!(matches!(e, ConfigError::Toml(_)), "{e:?}");
        assert!(e.to_string().contains("line 14, column"), "{e}");
    }

    #[test]
    fn timers_out_of_range_are_refused() {
        refused_naming(&with_protocol("retransmit_ms = 0"), "protocol.retransmit_ms");
        let e = refused_naming(&with_protocol("request_timeout_ms = 3600001"), "protocol.request_timeout_ms");
        assert!(matches!(e, ConfigError::OutOfRange { max: TIMER_MS_MAX, .. }));
        ClusterConfig::from_toml_str(&with_protocol("nack_delay_ms = 0")).unwrap();
    }

    #[test]
    fn protocol_bounds_are_refused_with_the_protocol_key() {
        refused_naming(&with_protocol("max_lifetime = 0"), "protocol.max_lifetime");
        refused_naming(&with_protocol("sequencer_window = 16777217"), "protocol.sequencer_window");
        refused_naming(&with_protocol("nack_batch = 0"), "protocol.nack_batch");
        refused_naming(&with_protocol("batch_entries = 65537"), "protocol.batch_entries");
        refused_naming(&with_protocol("checkpoint_every = 0"), "protocol.checkpoint_every");
        refused_naming(&with_protocol("catch_up_after = 0"), "protocol.catch_up_after");
        refused_naming(&with_protocol("member_buffer_bytes = 0"), "protocol.member_buffer_bytes");
    }

    #[test]
    fn a_failure_timeout_within_one_heartbeat_is_refused() {
        let e = refused_naming(&with_protocol("heartbeat_interval_ms = 500"), "protocol.failure_timeout_ms");
        assert!(matches!(
            e,
            ConfigError::TimeoutBelowHeartbeat { failure_timeout_ms: 500, heartbeat_interval_ms: 500 }
        ));
    }

    #[test]
    fn network_sizes_out_of_range_are_refused() {
        let network = |lines: &str| format!("{VALID}\n[network]\n{lines}\n");
        refused_naming(&network("max_datagram_bytes = 100"), "network.max_datagram_bytes");
        refused_naming(&network("max_datagram_bytes = 65508"), "network.max_datagram_bytes");
        refused_naming(&network("max_message_bytes = 0"), "network.max_message_bytes");
        refused_naming(&network("max_message_bytes = 67108865"), "network.max_message_bytes");
        let text = format!("{}max_message_bytes = 2048\n", with_protocol("member_buffer_bytes = 1024\n[network]"));
        assert!(matches!(refused_naming(&text, "network.max_message_bytes"), ConfigError::MessageAboveBuffer { .. }));
    }

    #[test]
    fn two_servers_sharing_a_storage_directory_are_refused() {
        let text = VALID.replace("id = 2", "id = 2\ndir = \"data/server-3\"");
        let e = refused_naming(&text, "servers[2].dir");
        assert!(matches!(e, ConfigError::DuplicateDir { first: 1, .. }), "{e}");
        refused_naming(&VALID.replace("id = 2", "id = 2\ndir = \"\""), "servers[1].dir");
        refused_naming(&format!("{VALID}\n[storage]\ndir = \"\"\n"), "storage.dir");
    }

    #[test]
    fn server_roles_map_onto_the_cores() {
        let roles: ServerRoles = [Role::Checkpoint, Role::Commit].into_iter().collect();
        let core = roles.to_core(Some(Incarnation(7)));
        assert!(core.commit && !core.data && core.checkpoint && core.client == Some(Incarnation(7)));
        assert_eq!("data".parse::<Role>(), Ok(Role::Data));
        assert_eq!("comit".parse::<Role>(), Err(UnknownRole("comit".to_string())));
    }

    /// VALID with its `[security]` table replaced by `lines` (none: no table).
    fn with_security(lines: Option<&str>) -> String {
        let without = VALID.replace("\n[security]\nmode = \"off\"\n", "\n");
        match lines {
            Some(lines) => format!("{without}\n[security]\n{lines}\n"),
            None => without,
        }
    }

    #[test]
    fn a_file_without_security_is_refused_saying_how_to_get_it() {
        let e = refused_naming(&with_security(None), "security");
        assert!(matches!(e, ConfigError::NoSecurity), "{e:?}");
        let message = e.to_string();
        assert!(message.contains("sam keygen") && message.contains("mode = \"off\""), "{message}");
        let e = refused_naming(&with_security(Some("server_key = \"k\"")), "security");
        assert!(e.to_string().contains("missing field `mode`"), "the mode has no default: {e}");
    }

    #[test]
    fn a_file_without_a_cluster_id_or_with_a_malformed_one_is_refused() {
        let e = refused_naming(&VALID.replacen("cluster_id = \"0123456789abcdef\"", "", 1), "cluster_id");
        assert!(matches!(e, ConfigError::NoClusterId) && e.to_string().contains("sam keygen"), "{e}");
        for bad in ["123", "0123456789abcdefa", "0123456789abcdeg", "+123456789abcdef"] {
            let e = refused_naming(&VALID.replacen("0123456789abcdef", bad, 1), "cluster_id");
            assert!(e.to_string().contains("16 hex digits"), "{e}");
        }
        refused_naming(&VALID.replacen("\"0123456789abcdef\"", "81985529216486895", 1), "cluster_id");
        let c = ClusterConfig::from_toml_str(&VALID.replacen("0123456789abcdef", "0123456789ABCDEF", 1)).unwrap();
        assert_eq!(c.cluster_id, ClusterId(0x0123_4567_89ab_cdef));
        assert!(c.to_toml_string().unwrap().contains("cluster_id = \"0123456789abcdef\""));
    }

    #[test]
    fn a_mode_other_than_off_needs_the_key_files_its_servers_read() {
        for mode in ["encrypt", "authenticate"] {
            let e = refused_naming(&with_security(Some(&format!("mode = \"{mode}\""))), "security.server_key");
            assert!(matches!(e, ConfigError::MissingKey { .. }), "{e:?}");
            assert!(e.to_string().contains("sam keygen"), "{e}");
            let c =
                ClusterConfig::from_toml_str(&with_security(Some(&format!("mode = \"{mode}\"\nserver_key = \"s\""))))
                    .unwrap();
            assert_eq!(c.security.mode.name(), mode);
        }
        // A server that holds only the checkpoint role reads the checkpoint key file.
        let mut c = ClusterConfig::local(3, 1, 17_400, Path::new("d"));
        c.security.mode = SecurityMode::Encrypt;
        c.security.server_key = Some(PathBuf::from("s"));
        let e = c.validate().unwrap_err();
        assert!(e.to_string().starts_with("security.checkpoint_key: "), "{e}");
        c.security.checkpoint_key = Some(PathBuf::from("c"));
        c.validate().unwrap();
        c.security.member_key = Some(PathBuf::new());
        assert!(c.validate().unwrap_err().to_string().starts_with("security.member_key: the path must not be empty"));
    }

    #[test]
    fn mode_off_is_accepted_when_written_and_unknown_security_keys_are_not() {
        let c = ClusterConfig::from_toml_str(VALID).unwrap();
        assert_eq!(c.security, SecurityConfig::off());
        refused_naming(&with_security(Some("mode = \"none\"")), "security.mode");
        refused_naming(&with_security(Some("mode = \"off\"\nserver_keys = \"s\"")), "security.server_keys");
        assert_eq!(
            [SecurityMode::Off, SecurityMode::Authenticate, SecurityMode::Encrypt].map(|m| m.wire().code()),
            [0, 1, 2]
        );
    }

    #[test]
    fn revoked_names_are_member_names_and_give_their_pids() {
        let c = ClusterConfig::from_toml_str(&with_security(Some("mode = \"off\"\nrevoked = [\"alice\", \"bob\"]")))
            .unwrap();
        let pids: Vec<Pid> = c.security.revoked_pids().collect();
        assert_eq!(pids, vec![member_pid("alice"), member_pid("bob")]);
        let e = refused_naming(
            &with_security(Some("mode = \"off\"\nrevoked = [\"alice\", \"b o b\"]")),
            "security.revoked[1]",
        );
        assert!(matches!(e, ConfigError::MemberName { .. }), "{e:?}");
    }

    /// Signed frames need a mode that has keys, and the public keys to check heartbeats
    /// against; they switch the core's delivery gate on. A local cluster lists its key, so
    /// that they are one switch away, and a server whose key is not listed does not start.
    #[test]
    fn signed_frames_need_keys_and_switch_the_core_on() {
        let key = "ab".repeat(32);
        let e = refused_naming(
            &with_security(Some("mode = \"off\"\nsign_server_frames = true")),
            "security.sign_server_frames",
        );
        assert!(matches!(e, ConfigError::SigningOff), "{e:?}");
        let encrypt = "mode = \"encrypt\"\nserver_key = \"s\"\ncheckpoint_key = \"c\"\nsign_server_frames = true";
        let e = refused_naming(&with_security(Some(encrypt)), "security.signing_keys");
        assert!(matches!(e, ConfigError::NoSigningKeys) && e.to_string().contains("--signing-keys"), "{e:?}");
        let bad = format!("{encrypt}\nsigning_keys = [\"{key}\", \"xyz\"]");
        refused_naming(&with_security(Some(&bad)), "security.signing_keys[1]");
        let good =
            ClusterConfig::from_toml_str(&with_security(Some(&format!("{encrypt}\nsigning_keys = [\"{key}\"]"))));
        let good = good.unwrap();
        assert_eq!(good.core().signed_heartbeat_us, Some(SIGNED_HEARTBEAT_US));
        assert_eq!(good.security.signing_keys(), vec![key.parse::<PublicKey>().unwrap()]);
        let unsigned = ClusterConfig::from_toml_str(&with_security(Some("mode = \"off\""))).unwrap();
        assert_eq!((unsigned.core().signed_heartbeat_us, unsigned.security.signing_keys()), (None, vec![]));

        let dir = tempfile::tempdir().unwrap();
        let mut local = ClusterConfig::local(3, 2, 17_400, dir.path());
        local.with_local_keys(dir.path()).unwrap();
        let server = local.keyring(KeyUser::server(local.servers[0].roles)).unwrap().unwrap();
        let own = signing::public_key(server.sealing(KeyKind::Server).unwrap(), local.cluster_id);
        assert_eq!(local.security.signing_keys, vec![own.to_string()], "listed, not yet switched on");
        local.security.sign_server_frames = true;
        local.validate().unwrap();
        let start = crate::node::StorageStart::Fresh;
        assert!(crate::launch::server_spec(&local, local.servers[0].id, start, 1).is_ok());
        local.security.signing_keys = vec![key.clone()];
        let Err(e) = crate::launch::server_spec(&local, local.servers[0].id, start, 1) else {
            panic!("a server whose signing key is not listed started")
        };
        assert!(e.to_string().contains(&own.to_string()), "names the key to list: {e}");
    }

    #[test]
    fn local_keys_give_each_user_its_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ClusterConfig::local(3, 2, 17_400, dir.path());
        assert_eq!(c.keyring(KeyUser::Member).unwrap(), None, "security off: no keys");
        c.with_local_keys(dir.path()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.security.mode, SecurityMode::Encrypt);
        let text = c.to_toml_string().unwrap();
        assert_eq!(ClusterConfig::from_toml_str(&text).unwrap(), c, "{text}");
        let server = c.keyring(KeyUser::server(c.servers[0].roles)).unwrap().unwrap();
        assert!(server.sealing(KeyKind::Server).is_some() && server.cluster == c.cluster_id);
        let checkpoint = c.keyring(KeyUser::server(c.servers[4].roles)).unwrap().unwrap();
        assert_eq!(checkpoint, Keyring::checkpoint_from(&server));
        let member = c.keyring(KeyUser::Member).unwrap().unwrap();
        assert_eq!(member.member, Some(member_pid(LOCAL_MEMBER)));
        assert_eq!(member, Keyring::member_from(&server, LOCAL_MEMBER));
        let e = c.clone().with_local_keys(dir.path()).unwrap_err();
        assert!(e.to_string().contains("exists already"), "keys are never overwritten: {e}");
    }

    #[test]
    fn keyring_refuses_a_file_of_another_cluster_or_of_the_wrong_kind() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ClusterConfig::local(3, 2, 17_400, dir.path());
        c.with_local_keys(dir.path()).unwrap();
        let ours = c.cluster_id;
        let mut other = c.clone();
        other.cluster_id = ClusterId(ours.0 ^ 1);
        let e = other.keyring(KeyUser::Member).unwrap_err();
        assert!(matches!(e, ConfigError::OtherCluster { .. }), "{e:?}");
        let message = e.to_string();
        assert!(message.starts_with("security.member_key: "), "{message}");
        assert!(message.contains(&ours.to_string()) && message.contains(&other.cluster_id.to_string()), "{message}");
        let server_key = c.security.server_key.clone();
        let mut wrong = c.clone();
        wrong.security.member_key.clone_from(&server_key);
        let e = wrong.keyring(KeyUser::Member).unwrap_err();
        assert!(e.to_string().contains("is no member credential"), "{e}");
        wrong.security.checkpoint_key.clone_from(&server_key);
        let e = wrong.keyring(KeyUser::Server { checkpoint_only: true }).unwrap_err();
        assert!(e.to_string().contains("holds no checkpoint key that seals; name checkpoint.key here"), "{e}");
        let server = c.keyring(KeyUser::Server { checkpoint_only: false }).unwrap().unwrap();
        let mut both = Keyring::checkpoint_from(&server);
        both.keys.extend(server.of_kind(KeyKind::Server).cloned());
        let both_path = dir.path().join("both.key");
        credential::save(&both, &both_path, None).unwrap();
        wrong.security.checkpoint_key = Some(both_path);
        let e = wrong.keyring(KeyUser::Server { checkpoint_only: true }).unwrap_err();
        assert!(e.to_string().contains("holds server keys, which a checkpoint server must not"), "{e}");
        wrong.security.server_key.clone_from(&c.security.member_key);
        let e = wrong.keyring(KeyUser::Server { checkpoint_only: false }).unwrap_err();
        assert!(e.to_string().starts_with("security.server_key: ") && e.to_string().contains("is a member credential"));
        wrong.security.member_key = None;
        let e = wrong.keyring(KeyUser::Member).unwrap_err();
        assert!(
            e.to_string().starts_with("security.member_key: required") && e.to_string().contains("--member"),
            "{e}"
        );
        let mut revoked = c.clone();
        revoked.security.revoked = vec![LOCAL_MEMBER.to_string()];
        assert!(matches!(revoked.keyring(KeyUser::Member).unwrap_err(), ConfigError::Revoked { .. }));
        let mut missing = c.clone();
        missing.security.server_key = Some(dir.path().join("nowhere.key"));
        let e = missing.keyring(KeyUser::Server { checkpoint_only: false }).unwrap_err();
        assert!(matches!(e, ConfigError::KeyFile { .. }) && e.to_string().contains("nowhere.key"), "{e}");
    }

    #[test]
    fn key_paths_come_from_offsets() {
        let text = "a = 1\n[b]\nc = [1, { d = 2 }]\n";
        let root = DeTable::parse(text).unwrap();
        let at = |needle: &str| {
            let start = text.find(needle).unwrap();
            key_path_at(root.get_ref(), start..start + 1)
        };
        assert_eq!(at("a ="), "a");
        assert_eq!(at("c ="), "b.c");
        assert_eq!(at("1,"), "b.c[0]");
        assert_eq!(at("d ="), "b.c[1].d");
        assert_eq!(key_path_at(root.get_ref(), 0..text.len()), "(top level)");
        assert_eq!(key_path_at(root.get_ref(), 0..0), "(top level)");
        assert_eq!(at("2 }"), "b.c[1].d");
        assert_eq!(line_and_column(text, text.find("d =").unwrap()), (3, 11));
    }
}
