//! The data server (DESIGN sections 2 and 4, step 2).
//!
//! It stores every data message it hears durably, and only then asks the sequencer to number
//! it with an `Order` (batched: one `Order` carries everything that one durable write covered).
//! A sender's retransmission of a message it already holds, uncommitted, makes it ask again,
//! so a lost `Order` costs one retransmission interval and no timer of its own. It serves the
//! messages members missed (`Fetch`), and follows heartbeats to know where the sequencer is.
//!
//! Bounds (DESIGN section 12): a message whose timestamp lies outside what can still be
//! numbered (more than `max_lifetime` above the committed prefix heard, or so old that its
//! lifetime ended) is refused, and so is one that would lift the uncommitted bytes held for
//! its sender's credential above its cap, or those held in all above theirs — where a sender
//! holding less than a fair share still gets in, so that a few senders filling the server do
//! not stop everyone. Bytes count until their message is committed or its lifetime ends at
//! the committed prefix heard; the sender's retransmission brings a refused message again.
//!
//! Garbage collection (DESIGN section 5): once a checkpoint is advertised, it drops every
//! message committed at or below the checkpoint before it, `c`, and every message whose
//! lifetime ends at or below `c` (never committed, or committed where this server missed the
//! `Commit`: either way at or below `c`). A message whose lifetime ends later may still be
//! numbered, so it stays. Keeping the last interval spares members that lag a little behind
//! the newest checkpoint a catch-up: they recover from the log.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::action::{Dest, Outbox, Record, WriteId};
use crate::config::Config;
use crate::ids::{Digest, Epoch, Mid, Pid, Seq};
use crate::message::{CheckpointInfo, Commit, Data, Entry, Fetch, Forgotten, Heartbeat, Message, Order, OrderItem};

/// One message held.
#[derive(Clone, Debug)]
struct Held {
    ts: Seq,
    digest: Digest,
    payload: Bytes,
    durable: bool,
    /// The number it was committed at, once a `Commit` said so.
    committed: Option<Seq>,
    /// Whether its bytes count against its sender's cap (until committed or expired).
    counted: bool,
}

/// A data server.
#[derive(Debug)]
pub struct DataServer {
    cfg: Arc<Config>,
    held: FxHashMap<Mid, Held>,
    /// Writes not yet durable, oldest first.
    unsynced: VecDeque<(WriteId, Mid)>,
    /// Orders to send at the end of the current input.
    orders: Vec<OrderItem>,
    sequencer: Pid,
    epoch: Epoch,
    /// The latest advertised checkpoint heard of.
    checkpoint: Option<CheckpointInfo>,
    /// The checkpoint before it: what it covers is garbage here.
    floor: Seq,
    /// The highest committed prefix heard in a heartbeat.
    committed: Seq,
    /// Uncommitted payload bytes held, per sender credential and in all.
    uncommitted_by_credential: FxHashMap<Pid, usize>,
    /// The counted messages by the end of their lifetime: uncounted once the committed
    /// prefix passes it.
    expiring: std::collections::BTreeMap<Seq, Vec<Mid>>,
    uncommitted_bytes: usize,
    /// Data messages refused by the bounds.
    refused: u64,
}

impl DataServer {
    /// A data server holding nothing, that sends its orders to the first epoch's sequencer
    /// until a heartbeat names another.
    pub fn new(cfg: Arc<Config>) -> DataServer {
        let sequencer = cfg.commit_servers[0];
        DataServer {
            cfg,
            held: FxHashMap::default(),
            unsynced: VecDeque::new(),
            orders: Vec::new(),
            sequencer,
            epoch: Epoch::NONE,
            checkpoint: None,
            floor: Seq::ZERO,
            committed: Seq::ZERO,
            uncommitted_by_credential: FxHashMap::default(),
            expiring: std::collections::BTreeMap::new(),
            uncommitted_bytes: 0,
            refused: 0,
        }
    }

    /// Data messages refused by the bounds: a timestamp beyond what can be numbered, or a
    /// sender (or the server) over its cap of uncommitted bytes.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Uncommitted payload bytes held.
    pub fn uncommitted_bytes(&self) -> usize {
        self.uncommitted_bytes
    }

    /// Counts `len` uncommitted bytes of `pid`'s credential in (`held`) or out.
    fn account(&mut self, pid: Pid, len: usize, held: bool) {
        let pid = pid.credential();
        let of_pid = self.uncommitted_by_credential.entry(pid).or_default();
        if held {
            *of_pid += len;
            self.uncommitted_bytes += len;
        } else {
            debug_assert!(*of_pid >= len && self.uncommitted_bytes >= len, "uncommitted bytes counted out twice");
            *of_pid -= len;
            self.uncommitted_bytes -= len;
            if *of_pid == 0 {
                self.uncommitted_by_credential.remove(&pid);
            }
        }
    }

    /// Whether a new message fits the bounds.
    fn admits(&self, data: &Data) -> bool {
        let len = held_cost(&data.payload);
        let of_sender = self.uncommitted_by_credential.get(&data.mid.source.pid.credential()).copied().unwrap_or(0);
        let numberable =
            data.ts <= self.committed.plus(self.cfg.max_lifetime) && self.cfg.lifetime_end(data.ts) > self.committed;
        let total_cap = self.cfg.data_uncommitted_bytes_max;
        let fair_share = total_cap / (self.uncommitted_by_credential.len() + 1);
        let total = self.uncommitted_bytes + len;
        let room = total <= total_cap || (of_sender + len <= fair_share && total <= 2 * total_cap);
        numberable && of_sender + len <= self.cfg.data_sender_bytes_max && room
    }

    /// Stops counting a message (committed, expired or dropped), once.
    fn uncount(&mut self, mid: &Mid) {
        let Some(h) = self.held.get_mut(mid).filter(|h| h.counted) else { return };
        h.counted = false;
        let len = held_cost(&h.payload);
        self.account(mid.source.pid, len, false);
    }

    /// Whether this server holds `mid` (a host's store may drop the others).
    pub fn holds(&self, mid: &Mid) -> bool {
        self.held.contains_key(mid)
    }

    /// The latest advertised checkpoint this server heard of.
    pub fn checkpoint(&self) -> Option<CheckpointInfo> {
        self.checkpoint
    }

    /// How many messages this server holds (for resource checks).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Rebuilds a data server from its durable records, oldest first. What it holds is
    /// ordered again when its senders retransmit.
    pub fn recover<'a>(cfg: Arc<Config>, records: impl IntoIterator<Item = &'a Record>) -> DataServer {
        let mut server = DataServer::new(cfg);
        for record in records {
            if let Record::Data(data) = record {
                let held = Held {
                    ts: data.ts,
                    digest: Digest::of(&data.payload),
                    payload: data.payload.clone(),
                    durable: true,
                    committed: None,
                    // What was held before a restart does not count: it was admitted already,
                    // and much of it was committed in Commits no longer heard.
                    counted: false,
                };
                server.held.insert(data.mid, held);
            }
        }
        server
    }

    /// Stores a new message durably; asks again for one it holds uncommitted. A message whose
    /// lifetime ended under the checkpoint (a late retransmission of one collected) is garbage
    /// already.
    pub fn handle_data(&mut self, data: &Data, out: &mut Outbox) {
        if self.cfg.lifetime_end(data.ts) <= self.floor {
            return;
        }
        match self.held.get(&data.mid) {
            Some(h) if h.durable && h.committed.is_none() => {
                self.orders.push(OrderItem { mid: data.mid, ts: h.ts, digest: h.digest });
                self.flush_orders(out);
            }
            Some(_) => {}
            None if !self.admits(data) => self.refused += 1,
            None => {
                self.account(data.mid.source.pid, held_cost(&data.payload), true);
                self.expiring.entry(self.cfg.lifetime_end(data.ts)).or_default().push(data.mid);
                let digest = Digest::of(&data.payload);
                let id = out.persist(Record::Data(data.clone()));
                self.unsynced.push_back((id, data.mid));
                let payload = data.payload.clone();
                let held = Held { ts: data.ts, digest, payload, durable: false, committed: None, counted: true };
                self.held.insert(data.mid, held);
            }
        }
    }

    /// The host made every write up to `upto` durable: order what it covered.
    pub fn handle_durable(&mut self, upto: WriteId, out: &mut Outbox) {
        while let Some(&(id, mid)) = self.unsynced.front() {
            if id > upto {
                break;
            }
            self.unsynced.pop_front();
            if let Some(h) = self.held.get_mut(&mid) {
                h.durable = true;
                self.orders.push(OrderItem { mid, ts: h.ts, digest: h.digest });
            }
        }
        self.flush_orders(out);
    }

    fn flush_orders(&mut self, out: &mut Outbox) {
        for chunk in self.orders.chunks(self.cfg.batch_entries) {
            out.send(Dest::Pid(self.sequencer), Message::Order(Order { items: chunk.to_vec() }));
        }
        self.orders.clear();
    }

    /// Notes which held messages are committed (they need no more orders, and count no more
    /// against their sender's cap).
    pub fn handle_commit(&mut self, commit: &Commit) {
        for (i, entry) in commit.entries.iter().enumerate() {
            let Entry::Msg { mid, .. } = entry else { continue };
            let Some(h) = self.held.get_mut(mid) else { continue };
            h.committed = Some(commit.first.plus(i as u64));
            self.uncount(mid);
        }
    }

    /// Follows the highest epoch's sequencer. A new sequencer gets every held, uncommitted
    /// message ordered again (DESIGN section 6): the orders its predecessor counted are lost.
    pub fn handle_heartbeat(&mut self, hb: &Heartbeat, out: &mut Outbox) {
        self.committed = self.committed.max(hb.committed);
        self.uncount_expired();
        if let Some(c) = hb.checkpoint.filter(|c| self.checkpoint.is_none_or(|known| c.seq > known.seq)) {
            self.floor = self.checkpoint.map_or(Seq::ZERO, |known| known.seq);
            self.checkpoint = Some(c);
            self.collect_garbage();
        }
        if hb.epoch < self.epoch {
            return;
        }
        let new_sequencer = hb.epoch > self.epoch;
        self.epoch = hb.epoch;
        self.sequencer = hb.sequencer;
        if new_sequencer {
            let pending = self.held.iter().filter(|(_, h)| h.durable && h.committed.is_none());
            self.orders.extend(pending.map(|(mid, h)| OrderItem { mid: *mid, ts: h.ts, digest: h.digest }));
            self.flush_orders(out);
        }
    }

    /// Stops counting the messages whose lifetime ended at or below the committed prefix:
    /// they will never be numbered (or were, in a Commit this server missed).
    fn uncount_expired(&mut self) {
        while let Some(entry) = self.expiring.first_entry() {
            if *entry.key() > self.committed {
                break;
            }
            for mid in entry.remove() {
                self.uncount(&mid);
            }
        }
    }

    /// Drops what the checkpoint before the latest covers; a write not yet durable stays until
    /// it is.
    fn collect_garbage(&mut self) {
        let (cfg, floor) = (&self.cfg, self.floor);
        let mut freed = Vec::new();
        self.held.retain(|mid, h| {
            let keep = !h.durable || h.committed.unwrap_or(cfg.lifetime_end(h.ts)) > floor;
            if !keep && h.counted {
                freed.push((mid.source.pid, held_cost(&h.payload)));
            }
            keep
        });
        for (pid, len) in freed {
            self.account(pid, len, false);
        }
    }

    /// Serves the messages a member asks for (those it holds). When it lacks the first (the
    /// one the member's delivery waits for) it says so at once, with what it dropped under a
    /// checkpoint: the member asks another server, or needs that checkpoint.
    pub fn handle_fetch(&self, from: Pid, fetch: &Fetch, out: &mut Outbox) {
        let lacks_first = fetch.mids.first().is_some_and(|mid| !self.held.contains_key(mid));
        if lacks_first {
            let dropped = Forgotten { floor: self.floor, checkpoint: self.checkpoint };
            out.send(Dest::Pid(from), Message::Dropped(dropped));
        }
        for mid in fetch.mids.iter().take(self.cfg.nack_batch) {
            if let Some(h) = self.held.get(mid) {
                out.send(Dest::Pid(from), Message::Data(Data { mid: *mid, ts: h.ts, payload: h.payload.clone() }));
            }
        }
    }
}

/// What a held message costs against the caps: its payload and the bookkeeping around it, so
/// that empty payloads are bounded too.
fn held_cost(payload: &Bytes) -> usize {
    payload.len() + HELD_OVERHEAD_BYTES
}

/// The bytes a held message costs beyond its payload.
const HELD_OVERHEAD_BYTES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::chain::Chain;
    use crate::ids::{Incarnation, Source};

    fn data(counter: u64) -> Data {
        let mid = Mid { source: Source { pid: Pid(9), incarnation: Incarnation(1) }, counter };
        Data { mid, ts: Seq(0), payload: Bytes::from(vec![counter as u8; 4]) }
    }

    fn orders(out: &mut Outbox) -> Vec<Order> {
        out.drain()
            .filter_map(|a| match a {
                Action::Send { msg: Message::Order(o), .. } => Some(o),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn orders_only_after_the_write_is_durable_and_batches_them() {
        let cfg = Arc::new(Config::new(vec![Pid(1)], vec![Pid(2)], vec![]));
        let mut d = DataServer::new(cfg);
        let mut out = Outbox::new();
        for c in 1..=3 {
            d.handle_data(&data(c), &mut out);
        }
        assert!(orders(&mut out).is_empty(), "no Order may overtake its write");
        d.handle_durable(WriteId(3), &mut out);
        let o = orders(&mut out);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].items.len(), 3);
    }

    #[test]
    fn data_beyond_the_numberable_range_or_over_the_caps_is_refused_until_room_returns() {
        let mut cfg = Config::new(vec![Pid(1)], vec![Pid(2)], vec![]);
        cfg.data_sender_bytes_max = 2 * 68;
        cfg.data_uncommitted_bytes_max = 3 * 68;
        let mut d = DataServer::new(Arc::new(cfg.clone()));
        let mut out = Outbox::new();
        let far = Data { ts: Seq(cfg.max_lifetime + 1), ..data(9) };
        d.handle_data(&far, &mut out);
        assert_eq!((d.held(), d.refused()), (0, 1), "a timestamp nothing can number yet");
        for c in 1..=3 {
            d.handle_data(&data(c), &mut out);
        }
        assert_eq!(
            (d.held(), d.refused(), d.uncommitted_bytes()),
            (2, 2, 2 * 68),
            "4-byte payloads cost 68, two per sender"
        );
        let other = |counter| {
            let mid = Mid { source: Source { pid: Pid(10), incarnation: Incarnation(1) }, counter };
            Data { mid, ts: Seq(0), payload: Bytes::from_static(b"abcd") }
        };
        d.handle_data(&other(1), &mut out);
        d.handle_data(&other(2), &mut out);
        assert_eq!((d.held(), d.refused()), (3, 3), "three messages in all, and pid 10 already holds its fair share");
        let commit = Commit {
            epoch: Epoch::initial(),
            first: Seq(1),
            entries: vec![Entry::Msg { mid: data(1).mid, digest: Digest::of(&data(1).payload) }],
        };
        d.handle_commit(&commit);
        d.handle_commit(&commit);
        assert_eq!(d.uncommitted_bytes(), 2 * 68, "committed bytes count once, and no more");
        d.handle_data(&data(3), &mut out);
        assert_eq!(d.held(), 4, "the retransmission finds room");
        // Once the committed prefix passes their lifetime, the rest stop counting.
        let hb = Heartbeat {
            epoch: Epoch::initial(),
            sequencer: Pid(1),
            committed: Seq(cfg.max_lifetime),
            checkpoint: None,
            chain: Chain::GENESIS,
            signature: None,
        };
        d.handle_heartbeat(&hb, &mut out);
        assert_eq!(d.uncommitted_bytes(), 0, "expired: never numbered now");
        d.handle_data(&data(7), &mut out);
        assert_eq!(d.refused(), 4, "a timestamp whose lifetime ended");
    }

    #[test]
    fn what_a_restart_recovers_does_not_count_and_a_credential_is_one_sender() {
        let mut cfg = Config::new(vec![Pid(1)], vec![Pid(2)], vec![]);
        cfg.data_sender_bytes_max = 2 * 68;
        let cfg = Arc::new(cfg);
        let records: Vec<Record> = (1..=5).map(|c| Record::Data(data(c))).collect();
        let mut d = DataServer::recover(cfg.clone(), &records);
        assert_eq!(d.uncommitted_bytes(), 0);
        let mut out = Outbox::new();
        d.handle_data(&data(6), &mut out);
        assert_eq!((d.held(), d.refused()), (6, 0), "a restarted server takes new data");
        let member = |instance: u64, counter| {
            let pid = Pid(Pid::MEMBER | 7 << Pid::INSTANCE_BITS | instance);
            let mid = Mid { source: Source { pid, incarnation: Incarnation(1) }, counter };
            Data { mid, ts: Seq(0), payload: Bytes::from_static(b"abcd") }
        };
        for instance in 1..=3 {
            d.handle_data(&member(instance, 1), &mut out);
        }
        assert_eq!(d.refused(), 1, "three processes of one credential share its cap of two");
    }

    #[test]
    fn a_retransmission_orders_again_until_committed() {
        let cfg = Arc::new(Config::new(vec![Pid(1)], vec![Pid(2)], vec![]));
        let mut d = DataServer::new(cfg);
        let mut out = Outbox::new();
        d.handle_data(&data(1), &mut out);
        d.handle_durable(WriteId(1), &mut out);
        orders(&mut out);
        d.handle_data(&data(1), &mut out);
        assert_eq!(orders(&mut out).len(), 1);
        let commit = Commit {
            epoch: Epoch::initial(),
            first: Seq(1),
            entries: vec![Entry::Msg { mid: data(1).mid, digest: Digest::of(&data(1).payload) }],
        };
        d.handle_commit(&commit);
        d.handle_data(&data(1), &mut out);
        assert!(orders(&mut out).is_empty());
    }
}
