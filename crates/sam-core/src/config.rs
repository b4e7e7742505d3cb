//! The group's configuration: who the servers are, how much redundancy each kind has, and
//! every bound and timer of the protocol (DESIGN section 10 gives the defaults).

use thiserror::Error;

use crate::ids::{Pid, Seq};

/// Deliberately broken protocol variants. Test-only: they can be switched on only with the
/// `mutations` feature, so that tests can show each checker catches the bug it is meant to catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Commit servers reply `Accepted` before their write is durable.
    AcceptBeforeDurable,
    /// Members never ask for what they missed (no NACK recovery).
    NoGapRecovery,
    /// The sequencer ignores its de-duplication history and numbers a mid again.
    NoDeduplication,
    /// Senders never retransmit.
    NoRetransmission,
    /// A candidate takes office with `n_commit - k_commit` promises, one too few.
    PromiseTooFew,
    /// A candidate recovers each number's entry of the lowest epoch instead of the highest.
    KeepLowestEpoch,
    /// Commit servers accept `Assign`s of epochs below their promise (no fencing).
    AcceptOldEpoch,
}

impl Mutation {
    /// Every variant.
    pub const ALL: [Mutation; 7] = [
        Mutation::AcceptBeforeDurable,
        Mutation::NoGapRecovery,
        Mutation::NoDeduplication,
        Mutation::NoRetransmission,
        Mutation::PromiseTooFew,
        Mutation::KeepLowestEpoch,
        Mutation::AcceptOldEpoch,
    ];

    /// Its name in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Mutation::AcceptBeforeDurable => "accept-before-durable",
            Mutation::NoGapRecovery => "no-gap-recovery",
            Mutation::NoDeduplication => "no-deduplication",
            Mutation::NoRetransmission => "no-retransmission",
            Mutation::PromiseTooFew => "promise-too-few",
            Mutation::KeepLowestEpoch => "keep-lowest-epoch",
            Mutation::AcceptOldEpoch => "accept-old-epoch",
        }
    }
}

/// The configuration every role of one group shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Commit servers in rank order; rank 0 runs the first epoch's sequencer.
    pub commit_servers: Vec<Pid>,
    /// Data servers in rank order.
    pub data_servers: Vec<Pid>,
    /// Checkpoint servers in rank order.
    pub checkpoint_servers: Vec<Pid>,
    /// Acceptances needed to commit a number.
    pub k_commit: usize,
    /// Data servers that must hold a message before it is numbered.
    pub k_data: usize,
    /// Checkpoint servers that must report a checkpoint before it is advertised.
    pub k_checkpoint: usize,
    /// Every assignment of a message lies in `(ts, ts + max_lifetime]`.
    pub max_lifetime: u64,
    /// A sender's limit of uncommitted messages in flight (`W`).
    pub sender_window: usize,
    /// The sequencer's limit of assigned but uncommitted numbers (`W_s`).
    pub sequencer_window: usize,
    /// How often the sequencer sends a heartbeat.
    pub heartbeat_interval_us: u64,
    /// Missing heartbeats for this long means the sequencer is presumed failed.
    pub failure_timeout_us: u64,
    /// How long a sender waits before retransmitting an uncommitted message.
    pub retransmit_us: u64,
    /// The upper bound of the random delay before a member asks for what it missed.
    pub nack_delay_us: u64,
    /// How long a member waits for a server's answer before asking another server.
    pub request_timeout_us: u64,
    /// How long the sequencer waits for an `Accepted` before sending an `Assign` again.
    pub assign_resend_us: u64,
    /// At most this many numbers (or mids) in one NACK query.
    pub nack_batch: usize,
    /// At most this many entries in one `Commit`, `Assign`, `Entries` or `Order` message.
    pub batch_entries: usize,
    /// How many of the latest committed numbers each heartbeat repeats.
    pub heartbeat_recent: usize,
    /// The bytes of uncommitted data a member buffers before it drops and fetches later.
    pub member_buffer_bytes: usize,
    /// The bytes of uncommitted data a data server holds for one sender pid (all its
    /// incarnations); beyond it, that sender's new messages wait for its retransmissions.
    pub data_sender_bytes_max: usize,
    /// The bytes of uncommitted data a data server holds in all.
    pub data_uncommitted_bytes_max: usize,
    /// Checkpoints fall at the multiples of this number (DESIGN section 5).
    pub checkpoint_every: u64,
    /// A member more than this many numbers behind the committed prefix catches up from the
    /// advertised checkpoint rather than from the log (it also does when the log it needs is
    /// gone). Two checkpoint intervals by default: a member that caught up, and lags by the
    /// interval that passed meanwhile, goes on from the log.
    pub catch_up_after: u64,
    /// With signed frames (DESIGN section 12): the least time between two heartbeats the
    /// sequencer sends to vouch for new commits, and members deliver a number only once a
    /// (signed) heartbeat's chain covers it. `None`: frames are not signed, and members
    /// deliver what they learn.
    pub signed_heartbeat_us: Option<u64>,
    /// A broken variant of the protocol, for checker tests only.
    #[cfg(feature = "mutations")]
    pub mutation: Option<Mutation>,
}

/// Why a configuration cannot be used.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A server kind has no servers.
    #[error("{kind} has no servers")]
    NoServers {
        /// The server kind.
        kind: &'static str,
    },
    /// A redundancy factor is zero or larger than the number of servers.
    #[error("{key} = {k} must be between 1 and the number of {kind} ({n})")]
    Redundancy {
        /// The config key.
        key: &'static str,
        /// Its value.
        k: usize,
        /// The server kind.
        kind: &'static str,
        /// How many servers of that kind there are.
        n: usize,
    },
    /// A pid appears twice among servers of one kind.
    #[error("{kind} lists pid {pid} twice")]
    DuplicatePid {
        /// The server kind.
        kind: &'static str,
        /// The repeated pid.
        pid: u64,
    },
    /// A value that must be positive is zero.
    #[error("{key} must be greater than zero")]
    Zero {
        /// The config key.
        key: &'static str,
    },
    /// A value is above its limit.
    #[error("{key} = {value} is above the limit {max}")]
    TooLarge {
        /// The config key.
        key: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// There are more servers of one kind than a bitset of votes can count.
    #[error("{kind} has {n} servers; at most {max} are supported")]
    TooManyServers {
        /// The server kind.
        kind: &'static str,
        /// How many were configured.
        n: usize,
        /// The most supported.
        max: usize,
    },
}

/// The largest `max_lifetime`: roles keep up to this many numbers of history.
pub const MAX_LIFETIME: u64 = 1 << 32;
/// The largest sender or sequencer window.
pub const MAX_WINDOW: u64 = 1 << 24;

/// The most servers of one kind (votes are counted in a 64-bit set).
pub const MAX_SERVERS_PER_KIND: usize = 64;

impl Config {
    /// The defaults of DESIGN section 10 for the given servers.
    pub fn new(commit_servers: Vec<Pid>, data_servers: Vec<Pid>, checkpoint_servers: Vec<Pid>) -> Config {
        Config {
            commit_servers,
            data_servers,
            checkpoint_servers,
            k_commit: 2,
            k_data: 2,
            k_checkpoint: 2,
            max_lifetime: 100_000,
            sender_window: 4_096,
            sequencer_window: 65_536,
            heartbeat_interval_us: 20_000,
            failure_timeout_us: 500_000,
            retransmit_us: 200_000,
            nack_delay_us: 5_000,
            request_timeout_us: 50_000,
            assign_resend_us: 20_000,
            nack_batch: 512,
            batch_entries: 512,
            heartbeat_recent: 64,
            member_buffer_bytes: 64 << 20,
            data_sender_bytes_max: 256 << 20,
            data_uncommitted_bytes_max: 1 << 30,
            checkpoint_every: 50_000,
            catch_up_after: 100_000,
            signed_heartbeat_us: None,
            #[cfg(feature = "mutations")]
            mutation: None,
        }
    }

    /// Whether frames are signed (see `signed_heartbeat_us`).
    pub fn signs_frames(&self) -> bool {
        self.signed_heartbeat_us.is_some()
    }

    /// Checks every rule a usable configuration follows.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let kinds = [
            ("commit_servers", "k_commit", &self.commit_servers, self.k_commit),
            ("data_servers", "k_data", &self.data_servers, self.k_data),
            ("checkpoint_servers", "k_checkpoint", &self.checkpoint_servers, self.k_checkpoint),
        ];
        for (kind, key, pids, k) in kinds {
            validate_kind(kind, key, pids, k, kind == "checkpoint_servers")?;
        }
        let positive = [
            ("max_lifetime", self.max_lifetime),
            ("sender_window", self.sender_window as u64),
            ("sequencer_window", self.sequencer_window as u64),
            ("heartbeat_interval_us", self.heartbeat_interval_us),
            ("failure_timeout_us", self.failure_timeout_us),
            ("retransmit_us", self.retransmit_us),
            ("request_timeout_us", self.request_timeout_us),
            ("assign_resend_us", self.assign_resend_us),
            ("nack_batch", self.nack_batch as u64),
            ("batch_entries", self.batch_entries as u64),
            ("member_buffer_bytes", self.member_buffer_bytes as u64),
            ("data_sender_bytes_max", self.data_sender_bytes_max as u64),
            ("data_uncommitted_bytes_max", self.data_uncommitted_bytes_max as u64),
            ("checkpoint_every", self.checkpoint_every),
            ("catch_up_after", self.catch_up_after),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Zero { key });
        }
        let bounded = [
            ("max_lifetime", self.max_lifetime, MAX_LIFETIME),
            ("sequencer_window", self.sequencer_window as u64, MAX_WINDOW),
            ("sender_window", self.sender_window as u64, MAX_WINDOW),
        ];
        match bounded.iter().find(|(_, v, max)| v > max) {
            Some(&(key, value, max)) => Err(ConfigError::TooLarge { key, value, max }),
            None => Ok(()),
        }
    }

    /// The last number a message with timestamp `ts` may be assigned: every assignment lies in
    /// `(ts, ts + max_lifetime]` (saturating: timestamps come from the network).
    pub fn lifetime_end(&self, ts: Seq) -> Seq {
        ts.plus(self.max_lifetime)
    }

    /// The rank of `pid` among the commit servers.
    pub fn commit_rank(&self, pid: Pid) -> Option<usize> {
        self.commit_servers.iter().position(|p| *p == pid)
    }

    /// The rank of `pid` among the data servers.
    pub fn data_rank(&self, pid: Pid) -> Option<usize> {
        self.data_servers.iter().position(|p| *p == pid)
    }

    /// The rank of `pid` among the checkpoint servers.
    pub fn checkpoint_rank(&self, pid: Pid) -> Option<usize> {
        self.checkpoint_servers.iter().position(|p| *p == pid)
    }

    /// Whether `seq` is a checkpoint number.
    pub fn is_checkpoint(&self, seq: Seq) -> bool {
        seq.0 > 0 && seq.0.is_multiple_of(self.checkpoint_every)
    }

    /// Whether a broken variant is switched on (always false without the `mutations` feature).
    #[allow(unused_variables)]
    pub(crate) fn mutated(&self, which: Mutation) -> bool {
        #[cfg(feature = "mutations")]
        return self.mutation == Some(which);
        #[cfg(not(feature = "mutations"))]
        false
    }
}

fn validate_kind(
    kind: &'static str,
    key: &'static str,
    pids: &[Pid],
    k: usize,
    may_be_empty: bool,
) -> Result<(), ConfigError> {
    if pids.is_empty() {
        return if may_be_empty { Ok(()) } else { Err(ConfigError::NoServers { kind }) };
    }
    if pids.len() > MAX_SERVERS_PER_KIND {
        return Err(ConfigError::TooManyServers { kind, n: pids.len(), max: MAX_SERVERS_PER_KIND });
    }
    if k == 0 || k > pids.len() {
        return Err(ConfigError::Redundancy { key, k, kind, n: pids.len() });
    }
    let mut sorted = pids.to_vec();
    sorted.sort();
    match sorted.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(ConfigError::DuplicatePid { kind, pid: w[0].0 }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pids(r: std::ops::Range<u64>) -> Vec<Pid> {
        r.map(Pid).collect()
    }

    #[test]
    fn defaults_are_valid() {
        Config::new(pids(1..4), pids(4..7), pids(7..9)).validate().unwrap();
    }

    #[test]
    fn redundancy_above_servers_is_named() {
        let mut c = Config::new(pids(1..4), pids(4..7), vec![]);
        c.k_data = 4;
        assert_eq!(c.validate(), Err(ConfigError::Redundancy { key: "k_data", k: 4, kind: "data_servers", n: 3 }));
    }

    #[test]
    fn duplicate_pid_is_named() {
        let c = Config::new(vec![Pid(1), Pid(2), Pid(1)], pids(4..7), vec![]);
        assert_eq!(c.validate(), Err(ConfigError::DuplicatePid { kind: "commit_servers", pid: 1 }));
    }

    #[test]
    fn zero_timer_is_named() {
        let mut c = Config::new(pids(1..4), pids(4..7), vec![]);
        c.retransmit_us = 0;
        assert_eq!(c.validate(), Err(ConfigError::Zero { key: "retransmit_us" }));
    }
}
