//! Protocol messages (DESIGN sections 4 and 7). Every batchable message carries a list or a
//! range, never one message per number; many messages travel in one datagram (see
//! [`crate::wire`]).

use bytes::Bytes;

use crate::chain::{Chain, ChainPoint, Signature};
use crate::ids::{Digest, Epoch, Mid, Pid, Seq, SeqRange};

/// What a number is assigned to: a message, or nothing (a `Noop` filled in by recovery).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Assigned {
    /// The message with this id.
    Mid(Mid),
    /// No message: members skip this number.
    Noop,
}

/// An assignment as commit servers store it and `Commit`s announce it: the message with its
/// payload digest, or `Noop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entry {
    /// A data message, identified by id and payload digest.
    Msg {
        /// The message id.
        mid: Mid,
        /// The digest of its payload, against which fetched data is checked.
        digest: Digest,
    },
    /// No message at this number.
    Noop,
}

impl Entry {
    /// The payload digest, for a message.
    pub fn digest(&self) -> Option<Digest> {
        match *self {
            Entry::Msg { digest, .. } => Some(digest),
            Entry::Noop => None,
        }
    }

    /// The entry without its digest.
    pub fn assigned(&self) -> Assigned {
        match *self {
            Entry::Msg { mid, .. } => Assigned::Mid(mid),
            Entry::Noop => Assigned::Noop,
        }
    }
}

/// An entry with the epoch under which it was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The epoch of the `Assign` that stored this entry.
    pub epoch: Epoch,
    /// The entry.
    pub entry: Entry,
}

/// A data message, sent by its sender on the global channel (and relayed, retransmitted or
/// served by data servers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    /// The message id.
    pub mid: Mid,
    /// The logical timestamp: the committed prefix the sender knew when it first sent it.
    pub ts: Seq,
    /// The application's bytes.
    pub payload: Bytes,
}

/// One message a data server holds durably and asks the sequencer to number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderItem {
    /// The message id.
    pub mid: Mid,
    /// The message's logical timestamp.
    pub ts: Seq,
    /// The digest of the payload the data server stored.
    pub digest: Digest,
}

/// Data server → sequencer: "I hold these messages durably; number them".
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Order {
    /// The messages, in the order the data server stored them.
    pub items: Vec<OrderItem>,
}

/// Sequencer → commit servers: the entries for `first..first + entries.len()` under `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assign {
    /// The sequencer's epoch.
    pub epoch: Epoch,
    /// The first number of the epoch: `Accepted::upto` counts from here.
    pub epoch_first: Seq,
    /// The number of the first entry.
    pub first: Seq,
    /// The entries, one per consecutive number.
    pub entries: Vec<Entry>,
}

/// Commit server → sequencer: every number from the epoch's first through `upto` is durably
/// stored at `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The epoch the entries are stored at.
    pub epoch: Epoch,
    /// The highest number of the gap-free durable run.
    pub upto: Seq,
}

/// Commit server → an old sequencer or candidate: "I have promised a higher epoch".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The epoch this server has promised.
    pub promised: Epoch,
}

/// Sequencer → everyone: the numbers `first..first + entries.len()` are committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The epoch under which these numbers were committed.
    pub epoch: Epoch,
    /// The number of the first entry.
    pub first: Seq,
    /// What each consecutive number holds, with the payload digest a member checks the data
    /// against (and chains, DESIGN section 12).
    pub entries: Vec<Entry>,
}

impl Commit {
    /// The numbers this commit covers (`None` when it has no entries).
    pub fn range(&self) -> Option<SeqRange> {
        let n = self.entries.len() as u64;
        (n > 0).then(|| SeqRange { first: self.first, last: self.first.plus(n - 1) })
    }
}

/// Sequencer → everyone, periodically: who sequences and how far the group has committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sequencer's epoch.
    pub epoch: Epoch,
    /// The sequencer's process id (where `Order`s go).
    pub sequencer: Pid,
    /// Every number up to this one is committed.
    pub committed: Seq,
    /// The commit chain after `committed` ([`crate::chain`]).
    pub chain: Chain,
    /// The advertised checkpoint: `k_checkpoint` checkpoint servers reported it alike.
    pub checkpoint: Option<CheckpointInfo>,
    /// With signed frames, the sequencer's signature over every field above (the network
    /// layer makes and checks it); `None` otherwise.
    pub signature: Option<Signature>,
}

/// A checkpoint as reported and advertised (DESIGN section 5): the snapshot of the replicated
/// state after every number up to `seq`, in `blocks` blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CheckpointInfo {
    /// Every number up to this one is reflected (a multiple of `checkpoint_every`).
    pub seq: Seq,
    /// The snapshot's size in bytes.
    pub size: u64,
    /// How many blocks it is stored in.
    pub blocks: u32,
    /// The digest of the whole snapshot.
    pub digest: Digest,
    /// The commit chain after `seq`, from which a member that restores the snapshot goes on.
    pub chain: Chain,
}

impl CheckpointInfo {
    /// The point of the commit chain it restores to.
    pub fn chain_point(&self) -> ChainPoint {
        ChainPoint { seq: self.seq, chain: self.chain }
    }
}

#[cfg(test)]
impl CheckpointInfo {
    /// A checkpoint at `seq` of nothing in particular, for tests that only need its number.
    pub(crate) fn at(seq: Seq) -> CheckpointInfo {
        CheckpointInfo { seq, size: 0, blocks: 0, digest: Digest::default(), chain: Chain::GENESIS }
    }
}

/// Commit server → asker: "every number up to `floor` is committed and no longer kept here";
/// a member behind it catches up from `checkpoint`, a commit server skips to it. A data server
/// says the same of messages as [`Message::Dropped`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forgotten {
    /// The highest number forgotten.
    pub floor: Seq,
    /// The advertised checkpoint the server knows, which covers `floor`.
    pub checkpoint: Option<CheckpointInfo>,
}

/// Member → commit server: "which entries hold these (committed) numbers?"
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct QueryEntries {
    /// The numbers asked for.
    pub ranges: Vec<SeqRange>,
}

/// Commit server → member or peer: committed entries for consecutive numbers from `first`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entries {
    /// The number of the first slot.
    pub first: Seq,
    /// The committed slots.
    pub slots: Vec<Slot>,
}

/// Member → data server: "send me these messages".
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Fetch {
    /// The message ids asked for.
    pub mids: Vec<Mid>,
}

/// Member → checkpoint server: "send me these blocks of the checkpoint at `seq`".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchBlocks {
    /// The checkpoint's number.
    pub seq: Seq,
    /// The indexes of the blocks asked for.
    pub blocks: Vec<u32>,
}

/// Checkpoint server → member: one block of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The checkpoint's number.
    pub seq: Seq,
    /// The block's index.
    pub index: u32,
    /// The block's digest.
    pub digest: Digest,
    /// The block's bytes.
    pub bytes: Bytes,
}

/// Candidate → commit servers: "promise me `epoch`, and tell me what you hold from
/// `from_seq` on" (DESIGN section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepare {
    /// The candidate's epoch.
    pub epoch: Epoch,
    /// The candidate's committed prefix plus one.
    pub from_seq: Seq,
}

/// Candidate → commit servers, before its ballot: "would you grant `epoch`?" Answering
/// changes nothing durable, so a candidate cut off on its own never raises a promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreVote {
    /// The epoch the candidate would stand with.
    pub epoch: Epoch,
}

/// Commit server → candidate: "I miss the sequencer too, and my promise is below `epoch`".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreVoteGranted {
    /// The epoch asked about.
    pub epoch: Epoch,
}

/// Anyone → any process: "are you there, and how far are you?" (an operator's status, not
/// part of the protocol); answered with a [`Pong`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    /// Echoed in the answer.
    pub nonce: u64,
}

/// Process → pinger: the answer to a [`Ping`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pong {
    /// The ping's nonce.
    pub nonce: u64,
    /// How far it is: a commit server's committed prefix, else its member's delivered prefix
    /// (zero for a process with neither).
    pub committed: Seq,
    /// What it raises for an operator to see.
    pub alarms: Alarms,
}

/// Conditions a process raises for an operator (DESIGN section 12), as a set of bits: `Pong`
/// carries them, `sam status` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Alarms(u8);

impl Alarms {
    /// Nothing raised.
    pub const NONE: Alarms = Alarms(0);
    /// Its storage is full: it accepts nothing new until there is room.
    pub const STORAGE_FULL: Alarms = Alarms(1);
    /// Its replay table was full lately: new senders were refused.
    pub const REPLAY_TABLE_FULL: Alarms = Alarms(2);
    /// Lately two live sessions of one pid were heard (a pid given to two processes, or a
    /// credential's frames captured and replayed).
    pub const DUPLICATE_PID: Alarms = Alarms(4);
    /// Lately too many new sessions asked for key derivations: some were refused.
    pub const DERIVATIONS_THROTTLED: Alarms = Alarms(8);
    /// Every alarm, with what an operator reads for it.
    pub const ALL: [(Alarms, &'static str); 4] = [
        (Alarms::STORAGE_FULL, "storage full: accepting nothing"),
        (Alarms::REPLAY_TABLE_FULL, "replay table full: new senders refused"),
        (Alarms::DUPLICATE_PID, "two live sessions of one pid"),
        (Alarms::DERIVATIONS_THROTTLED, "key derivations throttled: new sessions refused"),
    ];

    /// Whether every alarm of `other` is raised here.
    pub fn contains(self, other: Alarms) -> bool {
        self.0 & other.0 == other.0
    }

    /// This set with `alarm` raised (`on`) or cleared.
    pub fn with(self, alarm: Alarms, on: bool) -> Alarms {
        Alarms(if on { self.0 | alarm.0 } else { self.0 & !alarm.0 })
    }

    /// Its byte on the wire.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set a byte stands for, unless it has bits no alarm has.
    pub fn from_bits(bits: u8) -> Option<Alarms> {
        let known = Alarms::ALL.iter().fold(0, |all, (a, _)| all | a.0);
        (bits & !known == 0).then_some(Alarms(bits))
    }

    /// What an operator reads for each alarm raised.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Alarms::ALL.into_iter().filter(move |(a, _)| self.contains(*a)).map(|(_, name)| name)
    }
}

/// One stored slot reported in a [`Promise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromisedSlot {
    /// Its number.
    pub seq: Seq,
    /// The slot with its epoch.
    pub slot: Slot,
}

/// Commit server → candidate: a durable promise of `epoch`, with the slots it stores in
/// `first..=last` (one part; a promise covers `from_seq..=highest` in one or more parts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promise {
    /// The epoch promised.
    pub epoch: Epoch,
    /// The first number this part covers.
    pub first: Seq,
    /// The last number this part covers.
    pub last: Seq,
    /// The highest number the server stores (below `from_seq` when it stores none above).
    pub highest: Seq,
    /// Every number up to this one is committed and forgotten by the server (garbage
    /// collected under a checkpoint): the candidate recovers from `floor + 1` at the earliest.
    pub floor: Seq,
    /// The advertised checkpoint the server knows: the candidate advertises the highest
    /// reported (the advertised checkpoint never goes back).
    pub checkpoint: Option<CheckpointInfo>,
    /// The stored slots in `first..=last`, in number order; numbers not listed hold nothing.
    pub slots: Vec<PromisedSlot>,
}

/// Every protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`Data`].
    Data(Data),
    /// See [`Order`].
    Order(Order),
    /// See [`Assign`].
    Assign(Assign),
    /// See [`Accepted`].
    Accepted(Accepted),
    /// See [`Rejected`].
    Rejected(Rejected),
    /// See [`Commit`].
    Commit(Commit),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`QueryEntries`].
    QueryEntries(QueryEntries),
    /// See [`Entries`].
    Entries(Entries),
    /// See [`Fetch`].
    Fetch(Fetch),
    /// See [`FetchBlocks`].
    FetchBlocks(FetchBlocks),
    /// See [`Block`].
    Block(Block),
    /// See [`Prepare`].
    Prepare(Prepare),
    /// See [`Promise`].
    Promise(Promise),
    /// See [`PreVote`].
    PreVote(PreVote),
    /// See [`PreVoteGranted`].
    PreVoteGranted(PreVoteGranted),
    /// Checkpoint server → sequencer: a checkpoint it made and holds durably.
    CheckpointReport(CheckpointInfo),
    /// See [`Forgotten`].
    Forgotten(Forgotten),
    /// Data server → member, in answer to a `Fetch` whose first message it does not hold: ask
    /// another server; and messages committed up to `floor` are no longer kept here (a member
    /// missing one catches up from the checkpoint). Only members heed it.
    Dropped(Forgotten),
    /// See [`Ping`].
    Ping(Ping),
    /// See [`Pong`].
    Pong(Pong),
}

/// The kind of a message, for counters and dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// [`Data`]
    Data,
    /// [`Order`]
    Order,
    /// [`Assign`]
    Assign,
    /// [`Accepted`]
    Accepted,
    /// [`Rejected`]
    Rejected,
    /// [`Commit`]
    Commit,
    /// [`Heartbeat`]
    Heartbeat,
    /// [`QueryEntries`]
    QueryEntries,
    /// [`Entries`]
    Entries,
    /// [`Fetch`]
    Fetch,
    /// [`FetchBlocks`]
    FetchBlocks,
    /// [`Block`]
    Block,
    /// [`Prepare`]
    Prepare,
    /// [`Promise`]
    Promise,
    /// [`PreVote`]
    PreVote,
    /// [`PreVoteGranted`]
    PreVoteGranted,
    /// [`Message::CheckpointReport`]
    CheckpointReport,
    /// [`Forgotten`]
    Forgotten,
    /// [`Message::Dropped`]
    Dropped,
    /// [`Ping`]
    Ping,
    /// [`Pong`]
    Pong,
}

impl Kind {
    /// The kind's index in [`Kind::ALL`], which is its wire tag.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every kind, in wire-tag order.
    pub const ALL: [Kind; 21] = [
        Kind::Data,
        Kind::Order,
        Kind::Assign,
        Kind::Accepted,
        Kind::Rejected,
        Kind::Commit,
        Kind::Heartbeat,
        Kind::QueryEntries,
        Kind::Entries,
        Kind::Fetch,
        Kind::FetchBlocks,
        Kind::Block,
        Kind::Prepare,
        Kind::Promise,
        Kind::PreVote,
        Kind::PreVoteGranted,
        Kind::CheckpointReport,
        Kind::Forgotten,
        Kind::Dropped,
        Kind::Ping,
        Kind::Pong,
    ];
}

impl Message {
    /// The message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Data(_) => Kind::Data,
            Message::Order(_) => Kind::Order,
            Message::Assign(_) => Kind::Assign,
            Message::Accepted(_) => Kind::Accepted,
            Message::Rejected(_) => Kind::Rejected,
            Message::Commit(_) => Kind::Commit,
            Message::Heartbeat(_) => Kind::Heartbeat,
            Message::QueryEntries(_) => Kind::QueryEntries,
            Message::Entries(_) => Kind::Entries,
            Message::Fetch(_) => Kind::Fetch,
            Message::FetchBlocks(_) => Kind::FetchBlocks,
            Message::Block(_) => Kind::Block,
            Message::Prepare(_) => Kind::Prepare,
            Message::Promise(_) => Kind::Promise,
            Message::PreVote(_) => Kind::PreVote,
            Message::PreVoteGranted(_) => Kind::PreVoteGranted,
            Message::CheckpointReport(_) => Kind::CheckpointReport,
            Message::Forgotten(_) => Kind::Forgotten,
            Message::Dropped(_) => Kind::Dropped,
            Message::Ping(_) => Kind::Ping,
            Message::Pong(_) => Kind::Pong,
        }
    }
}
