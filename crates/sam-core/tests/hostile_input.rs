//! Nothing received from the network may panic a process or make it allocate without bound
//! (DESIGN section 7). Every role of one process is fed messages whose numbers are extreme.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use sam_core::message::{
    Accepted, Assign, Block, CheckpointInfo, Commit, Data, Entries, Fetch, FetchBlocks, Forgotten, Heartbeat, Order,
    OrderItem, Ping, Pong, PreVote, PreVoteGranted, Prepare, Promise, PromisedSlot, QueryEntries, Rejected,
};
use sam_core::{
    Alarms, Chain, Config, Digest, Entry, Epoch, Incarnation, Message, Mid, Pid, Process, Roles, Seq, SeqRange, Slot,
    Source, Time,
};

fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(1), Just(2), 0..1_000u64, Just(1 << 40), Just(u64::MAX - 1), Just(u64::MAX), any::<u64>()]
}

fn seq() -> impl Strategy<Value = Seq> {
    extreme().prop_map(Seq)
}

fn epoch() -> impl Strategy<Value = Epoch> {
    extreme().prop_map(Epoch)
}

fn mid() -> impl Strategy<Value = Mid> {
    (0..4u64, extreme())
        .prop_map(|(pid, counter)| Mid { source: Source { pid: Pid(pid), incarnation: Incarnation(1) }, counter })
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        Just(Entry::Noop),
        (mid(), any::<[u8; 32]>()).prop_map(|(mid, d)| Entry::Msg { mid, digest: Digest(d) })
    ]
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec(entry(), 0..20)
}

fn checkpoint() -> impl Strategy<Value = CheckpointInfo> {
    (seq(), prop_oneof![0u64..100_000, any::<u64>()], any::<u32>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(
        |(seq, size, blocks, d, chain)| CheckpointInfo { seq, size, blocks, digest: Digest(d), chain: Chain(chain) },
    )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (mid(), seq(), prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(mid, ts, p)| Message::Data(Data {
            mid,
            ts,
            payload: Bytes::from(p)
        })),
        prop::collection::vec((mid(), seq(), any::<[u8; 32]>()), 0..20).prop_map(|items| Message::Order(Order {
            items: items.into_iter().map(|(mid, ts, d)| OrderItem { mid, ts, digest: Digest(d) }).collect()
        })),
        (epoch(), seq(), seq(), entries()).prop_map(|(epoch, epoch_first, first, entries)| Message::Assign(Assign {
            epoch,
            epoch_first,
            first,
            entries
        })),
        (epoch(), seq()).prop_map(|(epoch, upto)| Message::Accepted(Accepted { epoch, upto })),
        epoch().prop_map(|promised| Message::Rejected(Rejected { promised })),
        (epoch(), seq(), entries()).prop_map(|(epoch, first, entries)| Message::Commit(Commit {
            epoch,
            first,
            entries
        })),
        (epoch(), seq(), any::<[u8; 32]>(), prop::option::of(checkpoint())).prop_map(
            |(epoch, committed, chain, checkpoint)| {
                let chain = Chain(chain);
                Message::Heartbeat(Heartbeat {
                    epoch,
                    sequencer: Pid(1),
                    committed,
                    chain,
                    checkpoint,
                    signature: None,
                })
            }
        ),
        checkpoint().prop_map(Message::CheckpointReport),
        (seq(), prop::option::of(checkpoint()))
            .prop_map(|(floor, checkpoint)| Message::Forgotten(Forgotten { floor, checkpoint })),
        (seq(), prop::option::of(checkpoint()))
            .prop_map(|(floor, checkpoint)| Message::Dropped(Forgotten { floor, checkpoint })),
        prop::collection::vec((seq(), seq()), 0..4).prop_map(|r| Message::QueryEntries(QueryEntries {
            ranges: r.into_iter().map(|(first, last)| SeqRange { first, last }).collect()
        })),
        (seq(), prop::collection::vec((epoch(), entry()), 0..20)).prop_map(|(first, s)| Message::Entries(Entries {
            first,
            slots: s.into_iter().map(|(epoch, entry)| Slot { epoch, entry }).collect()
        })),
        prop::collection::vec(mid(), 0..20).prop_map(|mids| Message::Fetch(Fetch { mids })),
        (seq(), prop::collection::vec(any::<u32>(), 0..8))
            .prop_map(|(seq, blocks)| Message::FetchBlocks(FetchBlocks { seq, blocks })),
        (seq(), any::<u32>()).prop_map(|(seq, index)| Message::Block(Block {
            seq,
            index,
            digest: Digest([0; 32]),
            bytes: Bytes::new()
        })),
        (epoch(), seq()).prop_map(|(epoch, from_seq)| Message::Prepare(Prepare { epoch, from_seq })),
        epoch().prop_map(|epoch| Message::PreVote(PreVote { epoch })),
        epoch().prop_map(|epoch| Message::PreVoteGranted(PreVoteGranted { epoch })),
        any::<u64>().prop_map(|nonce| Message::Ping(Ping { nonce })),
        (any::<u64>(), seq(), 0u8..16).prop_map(|(nonce, committed, bits)| Message::Pong(Pong {
            nonce,
            committed,
            alarms: Alarms::from_bits(bits).expect("known bits")
        })),
        (epoch(), seq(), (seq(), seq(), seq()), prop::collection::vec((seq(), epoch(), entry()), 0..20)).prop_map(
            |(epoch, first, (last, highest, floor), s)| Message::Promise(Promise {
                epoch,
                first,
                last,
                highest,
                floor,
                checkpoint: None,
                slots: s
                    .into_iter()
                    .map(|(seq, epoch, entry)| PromisedSlot { seq, slot: Slot { epoch, entry } })
                    .collect()
            })
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_process_with_every_role_survives_hostile_messages(
        msgs in prop::collection::vec((0..4u64, message()), 1..30),
    ) {
        let mut cfg = Config::new(vec![Pid(1), Pid(2), Pid(3)], vec![Pid(1), Pid(2), Pid(3)], vec![Pid(1)]);
        cfg.k_checkpoint = 1;
        let roles = Roles { commit: true, data: true, checkpoint: true, client: Some(Incarnation(9)) };
        let mut p = Process::start(Arc::new(cfg), Pid(1), roles, 5, Time(0), &[]);
        let mut now = Time(0);
        for (i, (from, msg)) in msgs.iter().enumerate() {
            now = now.plus_us(1_000);
            p.handle(now, Pid(*from), msg);
            if i % 3 == 0 {
                p.handle_tick(now);
                p.handle_durable(now, sam_core::WriteId(u64::MAX));
            }
            let actions = p.drain_actions().count();
            prop_assert!(actions < 100_000, "{actions} actions from one message");
        }
    }
}
