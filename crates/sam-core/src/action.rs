//! What a role asks its host to do: effects as data (DESIGN section 8). A role never sends,
//! writes or delivers by itself; it appends [`Action`]s to an [`Outbox`] and the host (the
//! simulator or the real node) carries them out.
//!
//! Durability is a value, not a convention: a role that must not acknowledge before its write
//! is durable emits [`Action::Persist`] with a [`WriteId`], and sends the acknowledgement only
//! when the host reports through `handle_durable` that every write up to that id is durable.

use bytes::Bytes;

use crate::chain::Chain;
use crate::ids::{Digest, Epoch, Mid, Pid, Seq};
use crate::message::{CheckpointInfo, Data, Message, Slot};
use crate::notice::Notice;

/// A multicast channel of DESIGN section 7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Everyone: senders, members and every server.
    Global,
    /// The data servers.
    Data,
    /// The commit servers.
    Commit,
    /// The checkpoint servers.
    Checkpoint,
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dest {
    /// Every subscriber of a channel (the sender included, as with multicast loop-back).
    Channel(Channel),
    /// One process.
    Pid(Pid),
}

/// Identifies a durable write within one run of one process. Ids grow by one per write, and
/// a host confirms writes in id order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WriteId(pub u64);

/// What a role stores durably; replaying a process's records rebuilds its durable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Data server: a message it holds.
    Data(Data),
    /// Commit server: the epoch it promised.
    Promise(Epoch),
    /// Commit server: slots for consecutive numbers from `first` (each slot raises the promise
    /// to its epoch, in the same write).
    Slots {
        /// The number of the first slot.
        first: Seq,
        /// The slots.
        slots: Vec<Slot>,
    },
    /// Commit server: its storage was lost and it is rejoining; until a later `Promise`
    /// record, a restart must keep rejoining (DESIGN section 6).
    StorageLost,
    /// Commit server: every number up to this one is known committed (built from `Commit`s
    /// only). Nothing waits for this write: losing it costs only a refill from peers.
    Committed(Seq),
    /// Commit server: every number up to `floor` is committed and forgotten (covered by a
    /// checkpoint and older than the de-duplication history); earlier slots are garbage.
    Floor {
        /// The highest number forgotten.
        floor: Seq,
        /// The advertised checkpoint that covers it: after a restart this server still knows
        /// it, and a ballot it wins still advertises it (it never goes back).
        checkpoint: Option<CheckpointInfo>,
    },
    /// Checkpoint server: its checkpoints from this number on disagreed with the advertised
    /// one and are void (a restart must not serve or restore them).
    Diverged(Seq),
    /// Checkpoint server: the snapshot of the replicated state after every number up to `seq`.
    Checkpoint {
        /// The checkpoint's number.
        seq: Seq,
        /// The commit chain after `seq`.
        chain: Chain,
        /// The snapshot.
        snapshot: Bytes,
    },
}

/// One effect a role asks its host to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a message.
    Send {
        /// The destination.
        to: Dest,
        /// The message.
        msg: Message,
    },
    /// Store a record durably, then call `handle_durable` with this id (or a later one).
    Persist {
        /// The write's id.
        id: WriteId,
        /// What to store.
        record: Record,
    },
    /// Hand a message to the application, in sequence-number order.
    Deliver {
        /// Its number.
        seq: Seq,
        /// Its id.
        mid: Mid,
        /// Its bytes.
        payload: Bytes,
    },
    /// Tell the application that a message it sent is committed.
    Committed {
        /// The message's id.
        mid: Mid,
        /// The number it got.
        seq: Seq,
    },
    /// Tell the application that a message it sent can never be committed.
    Expired {
        /// The message's id.
        mid: Mid,
    },
    /// Tell the application that the fate of a message it sent cannot be learned: it may or
    /// may not have been committed at a number this member skipped when it caught up from a
    /// checkpoint, in a part of the log that is gone (the replicated state shows it).
    OutcomeUnknown {
        /// The message's id.
        mid: Mid,
    },
    /// The member's state was replaced by the checkpoint at `seq` (it caught up, or its own
    /// state diverged): deliveries continue at `seq + 1`. The state machine, if the process
    /// runs one, is already restored; `snapshot` is for an application that keeps its own.
    Restored {
        /// The checkpoint's number.
        seq: Seq,
        /// The commit chain after `seq`.
        chain: Chain,
        /// The snapshot restored.
        snapshot: Bytes,
    },
    /// A state change an operator should know of (see [`Notice`]).
    Notice(Notice),
    /// A process answered a ping (see [`crate::message::Ping`]).
    Pong {
        /// Who answered.
        from: Pid,
        /// Its answer.
        pong: crate::message::Pong,
    },
    /// An error for the operator: a checkpoint server's snapshot at `seq` has a digest that
    /// differs from another's (the state machine is not deterministic, or a replica is
    /// corrupt). Such a checkpoint is never advertised.
    CheckpointMismatch {
        /// The checkpoint's number.
        seq: Seq,
        /// The server whose digest disagrees.
        server: Pid,
        /// Its digest.
        digest: Digest,
        /// The digest it disagrees with (another server's, or the advertised one).
        expected: Digest,
    },
}

/// The action list a process's roles append to, and the source of write ids.
#[derive(Debug, Default)]
pub struct Outbox {
    actions: Vec<Action>,
    next_write: u64,
}

impl Outbox {
    /// An empty outbox whose first write gets id 1.
    pub fn new() -> Outbox {
        Outbox { actions: Vec::new(), next_write: 1 }
    }

    /// Queues a message.
    pub fn send(&mut self, to: Dest, msg: Message) {
        self.actions.push(Action::Send { to, msg });
    }

    /// Queues a durable write and returns its id.
    pub fn persist(&mut self, record: Record) -> WriteId {
        let id = WriteId(self.next_write);
        self.next_write += 1;
        self.actions.push(Action::Persist { id, record });
        id
    }

    /// Queues any other action.
    pub fn push(&mut self, action: Action) {
        self.actions.push(action);
    }

    /// Takes every queued action, oldest first.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Action> {
        self.actions.drain(..)
    }

    /// How many actions are queued (a mark for [`Outbox::since`]).
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// The actions queued after `mark`.
    pub fn since(&self, mark: usize) -> &[Action] {
        &self.actions[mark.min(self.actions.len())..]
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}
