//! Who may say what (DESIGN section 12, "Authorization by role" and "Sanity bounds"): a
//! message is believed only from a process whose role sends it, and only within bounds no
//! correct server leaves. The network driver checks which key vouched for a frame; this
//! checks, for every message, that the pid it came from holds the role — so the rules hold in
//! the simulator and with security off, and a leaked key of one tier does not make its holder
//! every role.

use crate::config::Config;
use crate::ids::{Epoch, Pid, Time};
use crate::message::{Message, Slot};

/// No epoch beyond this round is believed: far above what ballots reach (one per failover),
/// far enough below the 48 bits of a round that the next epoch never wraps.
pub const EPOCH_ROUND_MAX: u64 = 1 << 40;
/// No message lifts the highest round believed by more than this at once...
pub const EPOCH_ROUNDS_AHEAD_MAX: u64 = 1 << 16;
/// ...and all messages together lift it by at most this many rounds a second beyond that, so
/// that a stream of frames each a little ahead (which, with security off, anyone who can
/// spoof a server's address may send) takes decades to climb to [`EPOCH_ROUND_MAX`]; a ballot
/// climbs one round.
pub const EPOCH_ROUNDS_LIFT_PER_S: u64 = 1 << 10;

/// Why a message was not believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unbelieved {
    /// Its sender does not hold the role that sends it (or does not own the epoch it names).
    NotItsRole,
    /// It names an epoch beyond the bounds.
    EpochOutOfBounds,
    /// A heartbeat advertising a checkpoint above what it says is committed.
    CheckpointAboveCommitted,
}

/// What a process remembers to judge senders: the highest epoch round it believed, and how
/// far it may still be lifted.
#[derive(Clone, Debug)]
pub struct Senders {
    highest_round: u64,
    /// Rounds the highest may still be lifted by, as of `lift_at`.
    lift: u64,
    lift_at: Time,
}

impl Default for Senders {
    fn default() -> Senders {
        Senders::new(Epoch::NONE)
    }
}

impl Senders {
    /// Judging from a process that has believed epochs up to `known` (its durable promise).
    pub fn new(known: Epoch) -> Senders {
        Senders { highest_round: known.round(), lift: EPOCH_ROUNDS_AHEAD_MAX, lift_at: Time(0) }
    }

    /// Rounds the highest may be lifted by at `now`.
    fn lift_at(&self, now: Time) -> u64 {
        let earned = now.since_us(self.lift_at).saturating_mul(EPOCH_ROUNDS_LIFT_PER_S) / 1_000_000;
        self.lift.saturating_add(earned).min(EPOCH_ROUNDS_AHEAD_MAX)
    }

    /// Whether `msg` from `from` at `now` is believed; believing it may raise the highest round.
    pub fn believes(&mut self, cfg: &Config, now: Time, from: Pid, msg: &Message) -> Result<(), Unbelieved> {
        role_may_send(cfg, from, msg)?;
        if let Message::Heartbeat(h) = msg {
            if h.checkpoint.is_some_and(|c| c.seq > h.committed) {
                return Err(Unbelieved::CheckpointAboveCommitted);
            }
        }
        let lift = self.lift_at(now);
        let mut highest = 0;
        for epoch in epochs(msg) {
            let round = epoch.round();
            let ahead = self.highest_round > 0 && round > self.highest_round.saturating_add(lift);
            if round > EPOCH_ROUND_MAX || ahead {
                return Err(Unbelieved::EpochOutOfBounds);
            }
            highest = highest.max(round);
        }
        if highest > self.highest_round {
            // The first epoch a process hears is taken whole: it knew none to judge it by.
            let lifted = if self.highest_round == 0 { 0 } else { highest - self.highest_round };
            self.lift = lift - lifted;
            self.lift_at = now;
            self.highest_round = highest;
        }
        Ok(())
    }
}

/// The pid-and-role rule of each kind.
fn role_may_send(cfg: &Config, from: Pid, msg: &Message) -> Result<(), Unbelieved> {
    let commit = cfg.commit_rank(from).is_some();
    let data = cfg.data_rank(from).is_some();
    let owns = |epoch: Epoch| cfg.commit_servers.get(usize::from(epoch.rank())) == Some(&from);
    let allowed = match msg {
        // A sender's own messages, or a data server's answer to a fetch.
        Message::Data(d) => d.mid.source.pid == from || data,
        Message::Order(_) | Message::Dropped(_) => data,
        Message::Assign(m) => owns(m.epoch),
        // A commit server repeats the Commits it heard to whoever asks for their entries.
        Message::Commit(m) => owns(m.epoch) || commit,
        // A commit server that lost its storage asks its peers' promises with a Prepare of no
        // epoch, which changes nothing.
        Message::Prepare(m) => owns(m.epoch) || (m.epoch == Epoch::NONE && commit),
        Message::PreVote(m) => owns(m.epoch),
        Message::Heartbeat(m) => owns(m.epoch) && m.sequencer == from,
        Message::Accepted(_)
        | Message::Rejected(_)
        | Message::Promise(_)
        | Message::PreVoteGranted(_)
        | Message::Entries(_)
        | Message::Forgotten(_) => commit,
        Message::Block(_) | Message::CheckpointReport(_) => cfg.checkpoint_rank(from).is_some(),
        Message::QueryEntries(_)
        | Message::Fetch(_)
        | Message::FetchBlocks(_)
        | Message::Ping(_)
        | Message::Pong(_) => true,
    };
    if allowed {
        Ok(())
    } else {
        Err(Unbelieved::NotItsRole)
    }
}

/// Every epoch a message names, its stored slots' included.
fn epochs(msg: &Message) -> impl Iterator<Item = Epoch> + '_ {
    let own = match msg {
        Message::Assign(m) => Some(m.epoch),
        Message::Accepted(m) => Some(m.epoch),
        Message::Rejected(m) => Some(m.promised),
        Message::Commit(m) => Some(m.epoch),
        Message::Heartbeat(m) => Some(m.epoch),
        Message::Prepare(m) => Some(m.epoch),
        Message::Promise(m) => Some(m.epoch),
        Message::PreVote(m) => Some(m.epoch),
        Message::PreVoteGranted(m) => Some(m.epoch),
        _ => None,
    };
    let slots: Box<dyn Iterator<Item = &Slot> + '_> = match msg {
        Message::Entries(e) => Box::new(e.slots.iter()),
        Message::Promise(p) => Box::new(p.slots.iter().map(|s| &s.slot)),
        _ => Box::new(std::iter::empty()),
    };
    own.into_iter().chain(slots.map(|s| s.epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Chain;
    use crate::ids::{Incarnation, Mid, Seq, Source};
    use crate::message::{Assign, CheckpointInfo, Data, Heartbeat, Order};

    fn cfg() -> Config {
        Config::new(vec![Pid(1), Pid(2), Pid(3)], vec![Pid(1), Pid(2), Pid(3)], vec![Pid(4)])
    }

    fn heartbeat(epoch: Epoch, sequencer: Pid) -> Message {
        Message::Heartbeat(Heartbeat {
            epoch,
            sequencer,
            committed: Seq(10),
            checkpoint: None,
            chain: Chain::GENESIS,
            signature: None,
        })
    }

    #[test]
    fn server_role_messages_only_from_their_role_and_epoch_owner() {
        let cfg = cfg();
        let mut s = Senders::default();
        let member = Pid(1 << 63 | 5);
        let e = Epoch::new(3, 1); // owned by the commit server of rank 1: pid 2
        assert_eq!(s.believes(&cfg, Time(0), Pid(2), &heartbeat(e, Pid(2))), Ok(()));
        assert_eq!(
            s.believes(&cfg, Time(0), Pid(1), &heartbeat(e, Pid(1))),
            Err(Unbelieved::NotItsRole),
            "not its epoch"
        );
        assert_eq!(
            s.believes(&cfg, Time(0), Pid(2), &heartbeat(e, Pid(3))),
            Err(Unbelieved::NotItsRole),
            "names another"
        );
        assert_eq!(s.believes(&cfg, Time(0), member, &heartbeat(e, member)), Err(Unbelieved::NotItsRole));
        let assign = Message::Assign(Assign { epoch: e, epoch_first: Seq(1), first: Seq(1), entries: vec![] });
        assert_eq!(s.believes(&cfg, Time(0), Pid(2), &assign), Ok(()));
        assert_eq!(s.believes(&cfg, Time(0), Pid(4), &assign), Err(Unbelieved::NotItsRole));
        let order = Message::Order(Order { items: vec![] });
        assert_eq!(s.believes(&cfg, Time(0), Pid(3), &order), Ok(()));
        assert_eq!(s.believes(&cfg, Time(0), member, &order), Err(Unbelieved::NotItsRole));
    }

    #[test]
    fn commit_servers_repeat_commits_and_a_wiped_one_asks_promises_whatever_its_rank() {
        use crate::message::{Commit, Prepare};
        let cfg = cfg();
        let mut s = Senders::default();
        let member = Pid(1 << 63 | 5);
        let repeat = Message::Commit(Commit { epoch: Epoch::new(3, 0), first: Seq(1), entries: vec![] });
        assert_eq!(
            s.believes(&cfg, Time(0), Pid(3), &repeat),
            Ok(()),
            "a commit server answering a query with a Commit"
        );
        assert_eq!(s.believes(&cfg, Time(0), member, &repeat), Err(Unbelieved::NotItsRole));
        let ask = Message::Prepare(Prepare { epoch: Epoch::NONE, from_seq: Seq::ZERO });
        assert_eq!(s.believes(&cfg, Time(0), Pid(2), &ask), Ok(()), "rank 1 rejoining after storage loss");
        assert_eq!(s.believes(&cfg, Time(0), member, &ask), Err(Unbelieved::NotItsRole));
        let stand = Message::Prepare(Prepare { epoch: Epoch::new(4, 0), from_seq: Seq(1) });
        assert_eq!(
            s.believes(&cfg, Time(0), Pid(2), &stand),
            Err(Unbelieved::NotItsRole),
            "a ballot of another's epoch"
        );
    }

    #[test]
    fn data_only_under_its_senders_own_pid_or_from_a_data_server() {
        let cfg = cfg();
        let mut s = Senders::default();
        let member = Pid(1 << 63 | 5);
        let data = |pid| {
            let mid = Mid { source: Source { pid, incarnation: Incarnation(1) }, counter: 1 };
            Message::Data(Data { mid, ts: Seq(0), payload: bytes::Bytes::new() })
        };
        assert_eq!(s.believes(&cfg, Time(0), member, &data(member)), Ok(()));
        assert_eq!(
            s.believes(&cfg, Time(0), member, &data(Pid(1))),
            Err(Unbelieved::NotItsRole),
            "a mid naming server 1"
        );
        assert_eq!(s.believes(&cfg, Time(0), Pid(2), &data(member)), Ok(()), "a data server answering a fetch");
    }

    #[test]
    fn epochs_never_jump_far_nor_near_the_wrap_and_checkpoints_stay_below_committed() {
        let cfg = cfg();
        let mut s = Senders::new(Epoch::new(5, 0));
        let far = Epoch::new(5 + EPOCH_ROUNDS_AHEAD_MAX + 1, 0);
        assert_eq!(s.believes(&cfg, Time(0), Pid(1), &heartbeat(far, Pid(1))), Err(Unbelieved::EpochOutOfBounds));
        let max = Message::Heartbeat(Heartbeat {
            epoch: Epoch(u64::MAX),
            sequencer: Pid(1),
            committed: Seq(1),
            checkpoint: None,
            chain: Chain::GENESIS,
            signature: None,
        });
        assert_eq!(Senders::default().believes(&cfg, Time(0), Pid(1), &max), Err(Unbelieved::NotItsRole), "rank 65535");
        let wrap = Epoch::new(EPOCH_ROUND_MAX + 1, 0);
        assert_eq!(
            Senders::default().believes(&cfg, Time(0), Pid(1), &heartbeat(wrap, Pid(1))),
            Err(Unbelieved::EpochOutOfBounds)
        );
        let near = Epoch::new(5 + EPOCH_ROUNDS_AHEAD_MAX, 0);
        assert_eq!(s.believes(&cfg, Time(0), Pid(1), &heartbeat(near, Pid(1))), Ok(()));
        let checkpoint = CheckpointInfo::at(Seq(11));
        let ahead = Message::Heartbeat(Heartbeat {
            epoch: near,
            sequencer: Pid(1),
            committed: Seq(10),
            checkpoint: Some(checkpoint),
            chain: Chain::GENESIS,
            signature: None,
        });
        assert_eq!(s.believes(&cfg, Time(0), Pid(1), &ahead), Err(Unbelieved::CheckpointAboveCommitted));
    }

    /// DESIGN section 12: no state no ballot can leave. Frames each a little ahead, all believed
    /// with security off from whoever spoofs the owner's address, lift the epoch only so fast.
    #[test]
    fn a_stream_of_frames_each_a_little_ahead_climbs_only_so_fast() {
        let cfg = cfg();
        let mut s = Senders::new(Epoch::new(5, 0));
        let mut round = 5;
        let mut now = Time(1_000_000);
        let step = EPOCH_ROUNDS_AHEAD_MAX / 4;
        let mut believed = 0;
        for _ in 0..1_000 {
            now = now.plus_us(1_000);
            if s.believes(&cfg, now, Pid(1), &heartbeat(Epoch::new(round + step, 0), Pid(1))).is_ok() {
                round += step;
                believed += 1;
            }
        }
        // A second of frames: the burst, then what a second earns.
        let most = (EPOCH_ROUNDS_AHEAD_MAX + EPOCH_ROUNDS_LIFT_PER_S) / step;
        assert!(believed <= most, "{believed} frames lifted the epoch by {step} each in one second");
        assert!(believed >= 4, "the first lifts within the burst are believed");
        let later = now.plus_us(3_600_000_000);
        let next = Epoch::new(round + 1, 0);
        assert_eq!(s.believes(&cfg, later, Pid(1), &heartbeat(next, Pid(1))), Ok(()), "a ballot climbs one round");
        let year_us = 365 * 24 * 3_600 * 1_000_000u64;
        let years = EPOCH_ROUND_MAX / EPOCH_ROUNDS_LIFT_PER_S / (year_us / 1_000_000);
        assert!(years >= 30, "reaching the last round takes {years} years of such frames");
    }
}
