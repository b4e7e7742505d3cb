//! The checkpoint server, serving side (DESIGN section 5).
//!
//! It keeps the snapshots it was given in fixed-size blocks, each with its digest, and serves
//! any block on request, so that a member catching up fetches a checkpoint block by block,
//! spread over the checkpoint servers, and no server blocks while serving. It keeps the
//! previous checkpoint too, so a fetch is not lost when a newer one arrives mid-way. Making
//! snapshots and reporting them to the sequencer builds on this (checkpoint issue).

use std::collections::VecDeque;

use bytes::Bytes;

use crate::action::{Dest, Outbox};
use crate::ids::{Digest, Pid, Seq};
use crate::message::{Block, FetchBlocks, Message};

/// The size of a checkpoint block (the last one may be shorter).
pub const BLOCK_BYTES: usize = 16 * 1024;
/// How many checkpoints a server keeps: the latest and the one before.
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
    /// The blocks with their digests.
    pub blocks: Vec<(Digest, Bytes)>,
}

impl Checkpoint {
    /// Splits `snapshot` into blocks of [`BLOCK_BYTES`].
    pub fn new(seq: Seq, snapshot: Bytes) -> Checkpoint {
        let blocks = (0..snapshot.len().div_ceil(BLOCK_BYTES))
            .map(|i| snapshot.slice(i * BLOCK_BYTES..snapshot.len().min((i + 1) * BLOCK_BYTES)))
            .map(|b| (Digest::of(&b), b))
            .collect();
        Checkpoint { seq, size: snapshot.len() as u64, digest: Digest::of(&snapshot), blocks }
    }
}

/// A checkpoint server's store of checkpoints and its block service.
#[derive(Debug, Default)]
pub struct CheckpointServer {
    kept: VecDeque<Checkpoint>,
}

impl CheckpointServer {
    /// A server with no checkpoint yet.
    pub fn new() -> CheckpointServer {
        CheckpointServer::default()
    }

    /// Keeps a new checkpoint, forgetting all but the latest [`KEPT_CHECKPOINTS`].
    pub fn install(&mut self, checkpoint: Checkpoint) {
        if self.kept.back().is_some_and(|c| c.seq >= checkpoint.seq) {
            return;
        }
        self.kept.push_back(checkpoint);
        while self.kept.len() > KEPT_CHECKPOINTS {
            self.kept.pop_front();
        }
    }

    /// The latest checkpoint kept.
    pub fn latest(&self) -> Option<&Checkpoint> {
        self.kept.back()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;

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
        server.install(Checkpoint::new(Seq(100), snapshot.clone()));
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
            server.install(Checkpoint::new(Seq(seq), Bytes::from_static(b"state")));
        }
        assert!(served(&server, 10, vec![0]).is_empty());
        assert_eq!(served(&server, 20, vec![0]).len(), 1);
        assert_eq!(served(&server, 30, vec![0]).len(), 1);
    }
}
