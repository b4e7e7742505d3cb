//! A member's fetch of a checkpoint (DESIGN section 5): block by block, spread over the
//! checkpoint servers, resumed on another server when one stops answering.
//!
//! Block `i` is asked of server `(i + shift) % n`, so every server serves a share at once and
//! no server holds a member up by itself; a round whose blocks do not all arrive in time moves
//! every missing block to the next server (`shift + 1`), keeping the blocks already received.
//! Each block is checked against its digest as it arrives, and the whole snapshot against the
//! advertised digest at the end. A block's digest is only its server's word, so a snapshot
//! that does not match is fetched again whole from one server, then from the next: one server
//! that holds a different snapshot cannot spoil every attempt.

use bytes::{Bytes, BytesMut};

use crate::action::{Dest, Outbox};
use crate::checkpoint_server::{BLOCK_BYTES, MAX_BLOCKS_PER_FETCH};
use crate::ids::{Digest, Pid, Time};
use crate::message::{Block, CheckpointInfo, FetchBlocks, Message};

/// The most blocks a checkpoint may have (16 GiB at 16 KiB per block): a larger count from
/// the network is refused before anything is allocated.
pub const MAX_CHECKPOINT_BLOCKS: u32 = 1 << 20;

/// One fetch of one checkpoint.
#[derive(Clone, Debug)]
pub(crate) struct CatchUp {
    checkpoint: CheckpointInfo,
    blocks: Vec<Option<Bytes>>,
    missing: usize,
    servers: Vec<Pid>,
    shift: usize,
    /// After a snapshot failed to match: every block comes from the server of this rank.
    whole_from: Option<usize>,
    /// Blocks asked for in the current round and not received yet.
    awaited: usize,
    /// Rounds in a row that timed out without a single block arriving.
    silent_rounds: usize,
    /// Whether a block arrived in the current round.
    heard: bool,
    next_ask: Time,
    timeout_us: u64,
    /// Blocks received, counting those fetched again.
    fetched: u64,
    /// The verified snapshot, once complete (the member may still be resolving its sends).
    ready: Option<Bytes>,
}

impl CatchUp {
    /// Starts fetching `checkpoint` from `servers`; `None` if the checkpoint is malformed
    /// (its block count does not fit its size) or there is no server to ask.
    pub(crate) fn start(checkpoint: CheckpointInfo, servers: Vec<Pid>, now: Time, timeout_us: u64) -> Option<CatchUp> {
        let expected = checkpoint.size.div_ceil(BLOCK_BYTES as u64);
        let empty_but_wrong = checkpoint.blocks == 0 && Digest::of(&[]) != checkpoint.digest;
        let malformed = expected != u64::from(checkpoint.blocks) || checkpoint.blocks > MAX_CHECKPOINT_BLOCKS;
        if servers.is_empty() || malformed || empty_but_wrong {
            return None;
        }
        let n = checkpoint.blocks as usize;
        Some(CatchUp {
            checkpoint,
            blocks: vec![None; n],
            missing: n,
            servers,
            shift: 0,
            whole_from: None,
            awaited: 0,
            silent_rounds: 0,
            heard: false,
            next_ask: now,
            timeout_us,
            fetched: 0,
            ready: (n == 0).then(Bytes::new).filter(|s| Digest::of(s) == checkpoint.digest),
        })
    }

    /// The checkpoint being fetched.
    pub(crate) fn checkpoint(&self) -> CheckpointInfo {
        self.checkpoint
    }

    /// Blocks received so far.
    pub(crate) fn fetched(&self) -> u64 {
        self.fetched
    }

    /// Whether a round went unanswered (a server failed, or no longer holds the checkpoint).
    pub(crate) fn stalled(&self) -> bool {
        self.shift > 0
    }

    /// Whether `2 n` rounds in a row (`n` servers) brought not one block: every server was
    /// asked and stayed silent at least twice, so the checkpoint servers are down or
    /// unreachable, and a member that waits for this fetch to start delivering should not
    /// wait any longer. Slow or lossy fetches, which bring some blocks, never count.
    pub(crate) fn abandoned(&self) -> bool {
        self.silent_rounds >= 2 * self.servers.len()
    }

    /// The verified snapshot, once every block arrived.
    pub(crate) fn ready(&self) -> Option<&Bytes> {
        self.ready.as_ref()
    }

    /// Asks for the missing blocks when a round is answered or timed out.
    pub(crate) fn handle_tick(&mut self, now: Time, out: &mut Outbox) {
        if self.ready.is_some() || now < self.next_ask {
            return;
        }
        if self.awaited > 0 {
            self.silent_rounds = if self.heard { 0 } else { self.silent_rounds + 1 };
            self.shift += 1;
            if let Some(k) = self.whole_from {
                // A whole snapshot comes from one server: what the silent one sent is dropped.
                self.whole_from = Some((k + 1) % self.servers.len());
                self.forget_blocks();
            }
        }
        let n = self.servers.len();
        let mut asks: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (i, _) in self.blocks.iter().enumerate().filter(|(_, b)| b.is_none()) {
            let ask = &mut asks[self.whole_from.unwrap_or((i + self.shift) % n)];
            if ask.len() < MAX_BLOCKS_PER_FETCH {
                ask.push(i as u32);
            }
        }
        self.awaited = asks.iter().map(Vec::len).sum();
        self.heard = false;
        for (j, blocks) in asks.into_iter().enumerate().filter(|(_, b)| !b.is_empty()) {
            let fetch = FetchBlocks { seq: self.checkpoint.seq, blocks };
            out.send(Dest::Pid(self.servers[j]), Message::FetchBlocks(fetch));
        }
        self.next_ask = now.plus_us(self.timeout_us);
    }

    /// Takes a block; once the last one arrives, verifies the whole snapshot (see
    /// [`CatchUp::ready`]), or starts over on another server if it does not match.
    pub(crate) fn handle_block(&mut self, now: Time, from: Pid, block: &Block) {
        let other_server = self.whole_from.is_some_and(|k| self.servers[k] != from);
        if block.seq != self.checkpoint.seq || self.ready.is_some() || other_server || !self.fits(block) {
            return;
        }
        let Some(slot) = self.blocks.get_mut(block.index as usize).filter(|b| b.is_none()) else { return };
        *slot = Some(block.bytes.clone());
        self.missing -= 1;
        self.fetched += 1;
        (self.heard, self.silent_rounds) = (true, 0);
        self.awaited = self.awaited.saturating_sub(1);
        if self.awaited == 0 {
            self.next_ask = now;
        }
        if self.missing == 0 {
            self.assemble();
        }
    }

    /// Whether a block is the right length and matches its digest.
    fn fits(&self, block: &Block) -> bool {
        let start = u64::from(block.index) * BLOCK_BYTES as u64;
        let len = self.checkpoint.size.saturating_sub(start).min(BLOCK_BYTES as u64);
        block.index < self.checkpoint.blocks
            && block.bytes.len() as u64 == len
            && Digest::of(&block.bytes) == block.digest
    }

    fn assemble(&mut self) {
        let mut whole = BytesMut::with_capacity(self.checkpoint.size as usize);
        for block in self.blocks.iter().flatten() {
            whole.extend_from_slice(block);
        }
        let whole = whole.freeze();
        if Digest::of(&whole) == self.checkpoint.digest {
            self.ready = Some(whole);
            self.blocks = Vec::new();
        } else {
            self.forget_blocks();
            self.shift += 1;
            let n = self.servers.len();
            self.whole_from = Some(self.whole_from.map_or(self.shift % n, |k| (k + 1) % n));
        }
    }

    /// Drops every block received: the next round fetches the snapshot again.
    fn forget_blocks(&mut self) {
        self.blocks.iter_mut().for_each(|b| *b = None);
        self.missing = self.blocks.len();
    }

    /// When the next round is due (`None` once complete).
    pub(crate) fn deadline(&self) -> Option<Time> {
        self.ready.is_none().then_some(self.next_ask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::chain::Chain;
    use crate::checkpoint_server::{Checkpoint, CheckpointServer};
    use crate::ids::Seq;

    fn asks(out: &mut Outbox) -> Vec<(Pid, FetchBlocks)> {
        out.drain()
            .filter_map(|a| match a {
                Action::Send { to: Dest::Pid(p), msg: Message::FetchBlocks(f) } => Some((p, f)),
                _ => None,
            })
            .collect()
    }

    fn serve(server: &CheckpointServer, fetch: &FetchBlocks) -> Vec<Block> {
        let mut out = Outbox::new();
        server.handle_fetch_blocks(Pid(50), fetch, &mut out);
        out.drain()
            .filter_map(|a| match a {
                Action::Send { msg: Message::Block(b), .. } => Some(b),
                _ => None,
            })
            .collect()
    }

    /// Blocks are spread over the servers; when one stops answering, its blocks move to the
    /// other and the blocks already received are kept.
    #[test]
    fn spreads_blocks_over_servers_and_resumes_after_one_fails() {
        let snapshot: Bytes = (0..BLOCK_BYTES * 5 + 7).map(|i| (i % 253) as u8).collect::<Vec<_>>().into();
        let cp = Checkpoint::new(Seq(100), Chain::GENESIS, snapshot.clone());
        let mut server = CheckpointServer::new();
        server.install(cp.clone());
        let mut fetch = CatchUp::start(cp.info(), vec![Pid(1), Pid(2)], Time(0), 1_000).unwrap();
        let mut out = Outbox::new();
        fetch.handle_tick(Time(0), &mut out);
        let round = asks(&mut out);
        assert_eq!(round.len(), 2, "both servers asked at once");
        for (pid, ask) in &round {
            if *pid == Pid(1) {
                serve(&server, ask).iter().for_each(|b| fetch.handle_block(Time(1), *pid, b));
            }
        }
        assert!(fetch.ready().is_none(), "server 2 never answered");
        fetch.handle_tick(Time(500), &mut out);
        assert!(asks(&mut out).is_empty(), "not before the timeout");
        fetch.handle_tick(Time(1_000), &mut out);
        let retry = asks(&mut out);
        assert!(retry.iter().all(|(pid, _)| *pid == Pid(1)), "only the missing blocks, now asked of server 1");
        assert_eq!(retry.iter().map(|(_, f)| f.blocks.len()).sum::<usize>(), 3);
        for (_, ask) in &retry {
            serve(&server, ask).iter().for_each(|b| fetch.handle_block(Time(1_001), Pid(1), b));
        }
        assert_eq!(fetch.ready(), Some(&snapshot));
        assert_eq!(fetch.fetched(), 6);
    }

    /// A lossy fetch that brings one block a round is never abandoned, however many rounds
    /// time out; `2 n` rounds in which nothing comes abandon it.
    #[test]
    fn only_rounds_that_bring_nothing_abandon_a_fetch() {
        let snapshot: Bytes = (0..BLOCK_BYTES * 12).map(|i| (i % 241) as u8).collect::<Vec<_>>().into();
        let cp = Checkpoint::new(Seq(100), Chain::GENESIS, snapshot);
        let mut server = CheckpointServer::new();
        server.install(cp.clone());
        let mut fetch = CatchUp::start(cp.info(), vec![Pid(1), Pid(2)], Time(0), 1_000).unwrap();
        let mut out = Outbox::new();
        let mut now = 0;
        for _ in 0..8 {
            fetch.handle_tick(Time(now), &mut out);
            let round = asks(&mut out);
            let (pid, ask) = &round[0];
            let one = FetchBlocks { seq: ask.seq, blocks: ask.blocks[..1].to_vec() };
            serve(&server, &one).iter().for_each(|b| fetch.handle_block(Time(now + 1), *pid, b));
            now += 1_000;
            assert!(!fetch.abandoned(), "a block came in every round");
        }
        for _ in 0..4 {
            fetch.handle_tick(Time(now), &mut out);
            out.drain().for_each(drop);
            now += 1_000;
        }
        assert!(!fetch.abandoned(), "three silent rounds so far: the last one is not over");
        fetch.handle_tick(Time(now), &mut out);
        assert!(fetch.abandoned(), "four silent rounds with two servers");
    }

    /// A server whose snapshot differs (its blocks match their own digests) spoils the first
    /// attempt; the next takes every block from one server in turn and succeeds.
    #[test]
    fn one_server_with_a_different_snapshot_cannot_spoil_every_attempt() {
        let good: Bytes = (0..BLOCK_BYTES * 3).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
        let mut bad = good.to_vec();
        (0..3).for_each(|b| bad[BLOCK_BYTES * b + 5] ^= 1);
        let (mut honest, mut odd) = (CheckpointServer::new(), CheckpointServer::new());
        honest.install(Checkpoint::new(Seq(100), Chain::GENESIS, good.clone()));
        odd.install(Checkpoint::new(Seq(100), Chain::GENESIS, Bytes::from(bad)));
        // Three blocks over three servers: spread, every attempt has a block of the odd one.
        let servers = [(Pid(1), &honest), (Pid(2), &odd), (Pid(3), &honest)];
        let info = Checkpoint::new(Seq(100), Chain::GENESIS, good.clone()).info();
        let mut fetch = CatchUp::start(info, vec![Pid(1), Pid(2), Pid(3)], Time(0), 1_000).unwrap();
        let mut out = Outbox::new();
        for round in 0..4u64 {
            fetch.handle_tick(Time(round * 1_000), &mut out);
            for (pid, ask) in asks(&mut out) {
                let server = servers.iter().find(|(p, _)| *p == pid).unwrap().1;
                serve(server, &ask).iter().for_each(|b| fetch.handle_block(Time(round * 1_000 + 1), pid, b));
            }
        }
        assert_eq!(fetch.ready(), Some(&good));
    }

    #[test]
    fn a_block_that_does_not_match_its_digest_or_length_is_refused() {
        let cp = Checkpoint::new(Seq(10), Chain::GENESIS, Bytes::from_static(b"state"));
        let mut fetch = CatchUp::start(cp.info(), vec![Pid(1)], Time(0), 1_000).unwrap();
        let bad = Block { seq: Seq(10), index: 0, digest: Digest::of(b"other"), bytes: Bytes::from_static(b"other") };
        fetch.handle_block(Time(1), Pid(1), &bad);
        assert!(fetch.ready().is_none());
        let lying = CheckpointInfo { blocks: 9, ..cp.info() };
        assert!(CatchUp::start(lying, vec![Pid(1)], Time(0), 1_000).is_none(), "block count must fit the size");
    }
}
