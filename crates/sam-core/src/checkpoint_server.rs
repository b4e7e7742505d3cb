//! The checkpoint server (DESIGN section 5).
//!
//! A checkpoint server is a member whose state machine is snapshotted at every multiple of
//! `checkpoint_every` (its client role takes the snapshots as it delivers). This role stores
//! each snapshot durably in fixed-size blocks, each with its digest, reports it to the
//! sequencer once it is durable, and serves any block on request, so that a member catching up
//! fetches a checkpoint block by block, spread over the checkpoint servers, and no server
//! blocks while serving. It keeps the previous checkpoint too, so a fetch is not lost when a
//! newer one is advertised mid-way.
//!
//! When the sequencer advertises a checkpoint whose digest differs from this server's at the
//! same number, this server's state has diverged: it raises the error, drops its checkpoints
//! from that number on, and its member restores from the advertised one.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::action::{Action, Dest, Outbox, Record, WriteId};
use crate::chain::Chain;
use crate::ids::{Digest, Pid, Seq, Time};
use crate::message::{Block, CheckpointInfo, FetchBlocks, Heartbeat, Message};

/// The size of a checkpoint block (the last one may be shorter).
pub const BLOCK_BYTES: usize = 16 * 1024;
/// How many of the checkpoints it took a server keeps: the latest and the one before (plus
/// the advertised one, while it is older: members may be fetching it).
pub const KEPT_CHECKPOINTS: usize = 2;
/// The most blocks served for one request.
pub const MAX_BLOCKS_PER_FETCH: usize = 64;

/// A snapshot of the replicated state at a number, in blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every number up to this one is reflected in the snapshot.
    pub seq: Seq,
    /// The snapshot's size in bytes.
    pub size: u64,
    /// The digest of the whole snapshot.
    pub digest: Digest,
    /// The commit chain after `seq`.
    pub chain: Chain,
    /// The blocks with their digests.
    pub blocks: Vec<(Digest, Bytes)>,
}

impl Checkpoint {
    /// Splits `snapshot`, taken after `seq` where the chain is `chain`, into blocks of
    /// [`BLOCK_BYTES`].
    pub fn new(seq: Seq, chain: Chain, snapshot: Bytes) -> Checkpoint {
        let blocks = (0..snapshot.len().div_ceil(BLOCK_BYTES))
            .map(|i| snapshot.slice(i * BLOCK_BYTES..snapshot.len().min((i + 1) * BLOCK_BYTES)))
            .map(|b| (Digest::of(&b), b))
            .collect();
        Checkpoint { seq, size: snapshot.len() as u64, digest: Digest::of(&snapshot), chain, blocks }
    }

    /// What a report or an advertisement says about this checkpoint.
    pub fn info(&self) -> CheckpointInfo {
        CheckpointInfo {
            seq: self.seq,
            size: self.size,
            blocks: self.blocks.len() as u32,
            digest: self.digest,
            chain: self.chain,
        }
    }
}

/// What an advertised checkpoint means to this server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Agrees,
    /// This server's checkpoint at the advertised number differs: its state has diverged and
    /// must be restored from the advertised checkpoint.
    Diverged(CheckpointInfo),
}

/// A checkpoint server's store of checkpoints and its block service.
#[derive(Debug, Default)]
pub struct CheckpointServer {
    kept: VecDeque<Checkpoint>,
    /// Checkpoints written but not durable yet.
    writing: VecDeque<(WriteId, Checkpoint)>,
    /// The checkpoint the latest heartbeat advertised: a later one of this server's is
    /// reported (also to a new sequencer that does not know it yet).
    heard: Option<CheckpointInfo>,
    /// The highest checkpoint ever advertised, kept while members may fetch it.
    advertised: Seq,
    sequencer: Option<Pid>,
    next_report: Time,
}

impl CheckpointServer {
    /// A server with no checkpoint yet.
    pub fn new() -> CheckpointServer {
        CheckpointServer::default()
    }

    /// Rebuilds the server from its durable records: the checkpoints it stored, less those
    /// found diverged. One more than usual is kept until a heartbeat tells which one is
    /// advertised: it may be older than the last two.
    pub fn recover<'a>(records: impl IntoIterator<Item = &'a Record>) -> CheckpointServer {
        let mut server = CheckpointServer::new();
        for record in records {
            match record {
                Record::Checkpoint { seq, chain, snapshot } => {
                    // In order of number, whatever the order of the records (a log whose
                    // records were copied forward holds an old one after newer ones).
                    let at = server.kept.partition_point(|c| c.seq < *seq);
                    if server.kept.get(at).is_none_or(|c| c.seq != *seq) {
                        server.kept.insert(at, Checkpoint::new(*seq, *chain, snapshot.clone()));
                    }
                    if server.kept.len() > KEPT_CHECKPOINTS + 1 {
                        server.kept.pop_front();
                    }
                }
                Record::Diverged(seq) => server.kept.retain(|c| c.seq < *seq),
                _ => {}
            }
        }
        server
    }

    /// Keeps a new checkpoint, forgetting all but the latest [`KEPT_CHECKPOINTS`] and the
    /// advertised one.
    pub fn install(&mut self, checkpoint: Checkpoint) {
        if self.kept.back().is_some_and(|c| c.seq >= checkpoint.seq) {
            return;
        }
        self.kept.push_back(checkpoint);
        self.trim();
    }

    fn trim(&mut self) {
        let recent = self.kept.len().saturating_sub(KEPT_CHECKPOINTS);
        let advertised = self.advertised;
        let mut i = 0;
        self.kept.retain(|c| {
            i += 1;
            i > recent || c.seq == advertised
        });
    }

    /// The latest checkpoint kept.
    pub fn latest(&self) -> Option<&Checkpoint> {
        self.kept.back()
    }

    /// The checkpoints kept, oldest first.
    pub fn kept(&self) -> impl Iterator<Item = &Checkpoint> {
        self.kept.iter()
    }

    /// Stores the snapshot taken at `seq`, where the chain is `chain`, durably; it is kept and
    /// reported once durable.
    pub fn take(&mut self, seq: Seq, chain: Chain, snapshot: Bytes, out: &mut Outbox) {
        let id = out.persist(Record::Checkpoint { seq, chain, snapshot: snapshot.clone() });
        self.writing.push_back((id, Checkpoint::new(seq, chain, snapshot)));
    }

    /// The host made every write up to `upto` durable: keep and report what it covered.
    pub fn handle_durable(&mut self, now: Time, upto: WriteId, out: &mut Outbox) {
        let mut stored = false;
        while self.writing.front().is_some_and(|(id, _)| *id <= upto) {
            if let Some((_, checkpoint)) = self.writing.pop_front() {
                self.install(checkpoint);
                stored = true;
            }
        }
        if stored {
            self.next_report = now;
            self.report(now, out);
        }
    }

    /// Follows the sequencer and its advertised checkpoint: reports the latest checkpoint
    /// until it is advertised (a new sequencer hears it again), and checks this server's
    /// checkpoint at the advertised number against it.
    pub fn handle_heartbeat(&mut self, now: Time, me: Pid, hb: &Heartbeat, out: &mut Outbox) -> Verdict {
        self.sequencer = Some(hb.sequencer);
        self.heard = hb.checkpoint;
        let verdict = hb.checkpoint.map_or(Verdict::Agrees, |c| self.check(me, c, out));
        if let Some(c) = hb.checkpoint.filter(|c| c.seq > self.advertised) {
            self.advertised = c.seq;
            self.trim();
        }
        self.report(now, out);
        verdict
    }

    /// Compares the advertised checkpoint with this server's at the same number.
    fn check(&mut self, me: Pid, advertised: CheckpointInfo, out: &mut Outbox) -> Verdict {
        let Some(own) = self.kept.iter().find(|c| c.seq == advertised.seq) else { return Verdict::Agrees };
        if own.digest == advertised.digest && own.chain == advertised.chain {
            return Verdict::Agrees;
        }
        let digest = own.digest;
        out.push(Action::CheckpointMismatch { seq: advertised.seq, server: me, digest, expected: advertised.digest });
        self.kept.retain(|c| c.seq < advertised.seq);
        self.writing.clear();
        out.persist(Record::Diverged(advertised.seq));
        Verdict::Diverged(advertised)
    }

    /// Reports the latest checkpoint to the sequencer, at most once per heartbeat interval's
    /// worth of heartbeats (every `REPORT_EVERY_US`).
    fn report(&mut self, now: Time, out: &mut Outbox) {
        let (Some(latest), Some(sequencer)) = (self.latest(), self.sequencer) else { return };
        if now < self.next_report || self.heard.is_some_and(|a| a.seq >= latest.seq) {
            return;
        }
        out.send(Dest::Pid(sequencer), Message::CheckpointReport(latest.info()));
        self.next_report = now.plus_us(REPORT_EVERY_US);
    }

    /// Serves the requested blocks of a kept checkpoint; asks for unknown ones go unanswered
    /// and the member asks another server.
    pub fn handle_fetch_blocks(&self, from: Pid, fetch: &FetchBlocks, out: &mut Outbox) {
        let Some(cp) = self.kept.iter().find(|c| c.seq == fetch.seq) else { return };
        for &index in fetch.blocks.iter().take(MAX_BLOCKS_PER_FETCH) {
            if let Some((digest, bytes)) = cp.blocks.get(index as usize) {
                let block = Block { seq: cp.seq, index, digest: *digest, bytes: bytes.clone() };
                out.send(Dest::Pid(from), Message::Block(block));
            }
        }
    }
}

/// How often a server repeats the report of a checkpoint not yet advertised.
const REPORT_EVERY_US: u64 = 100_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::chain::Chain;

    fn served(server: &CheckpointServer, seq: u64, blocks: Vec<u32>) -> Vec<Block> {
        let mut out = Outbox::new();
        server.handle_fetch_blocks(Pid(5), &FetchBlocks { seq: Seq(seq), blocks }, &mut out);
        out.drain()
            .filter_map(|a| match a {
                Action::Send { to: Dest::Pid(Pid(5)), msg: Message::Block(b) } => Some(b),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn serves_verifiable_blocks_that_reassemble_the_snapshot() {
        let snapshot: Bytes = (0..BLOCK_BYTES * 2 + 100).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
        let mut server = CheckpointServer::new();
        server.install(Checkpoint::new(Seq(100), Chain::GENESIS, snapshot.clone()));
        let blocks = served(&server, 100, vec![0, 1, 2, 3]);
        assert_eq!(blocks.len(), 3, "block 3 does not exist");
        let mut whole = Vec::new();
        for b in &blocks {
            assert_eq!(Digest::of(&b.bytes), b.digest);
            whole.extend_from_slice(&b.bytes);
        }
        assert_eq!(whole, snapshot);
        assert_eq!(server.latest().map(|c| c.digest), Some(Digest::of(&snapshot)));
    }

    #[test]
    fn keeps_the_previous_checkpoint_and_no_older() {
        let mut server = CheckpointServer::new();
        for seq in [10, 20, 30] {
            server.install(Checkpoint::new(Seq(seq), Chain::GENESIS, Bytes::from_static(b"state")));
        }
        assert!(served(&server, 10, vec![0]).is_empty());
        assert_eq!(served(&server, 20, vec![0]).len(), 1);
        assert_eq!(served(&server, 30, vec![0]).len(), 1);
    }
}
