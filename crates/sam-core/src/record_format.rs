//! The on-disk format of a [`Record`]: how a role's durable state is written to the log and read
//! back at restart (DESIGN section 8).
//!
//! The log (`sam-store`) stores opaque byte records and already checksums every one of them, and
//! discards a torn tail after a crash, so this format has no checksum, length or magic of its
//! own: a record is exactly the bytes the log hands back. Like [`crate::wire`], this comment is
//! the specification.
//!
//! # Record
//!
//! | field  | encoding                                                          |
//! |--------|-------------------------------------------------------------------|
//! | tag    | one byte: the variant (table below)                               |
//! | fields | the variant's fields, in the order of the table, to the last byte |
//!
//! There is no length: the fields must use every byte of the record. A decoder rejects an
//! unknown tag ([`DecodeError::UnknownRecord`]), fields running past the end
//! ([`DecodeError::Truncated`]) and bytes left after the fields
//! ([`DecodeError::RecordTrailing`]).
//!
//! Fields use the primitive encodings of the wire format (see "Primitive encodings" in
//! [`crate::wire`]): varints, mids, bytes, lists with a count checked against the bytes left, and
//! run-compressed entries whose continuation tags refer to the previous mid of the same list.
//!
//! # Variants and their fields
//!
//! | tag | variant                 | fields                                                                    | as in message |
//! |-----|-------------------------|---------------------------------------------------------------------------|---------------|
//! | 0   | [`Record::Data`]        | `mid` (mid, untagged), `ts` (varint), `payload` (bytes)                   | `Data`        |
//! | 1   | [`Record::Promise`]     | the epoch (varint)                                                        |               |
//! | 2   | obsolete                | `Slots` with 128-bit digests: refused, see below                          |               |
//! | 3   | [`Record::StorageLost`] | none                                                                      |               |
//! | 4   | [`Record::Committed`]   | the number (varint)                                                       |               |
//! | 5   | obsolete                | `Floor` before checkpoints had a chain: refused, see below                |               |
//! | 6   | [`Record::Diverged`]    | the number (varint)                                                       |               |
//! | 7   | obsolete                | `Checkpoint` before checkpoints had a chain: refused, see below           |               |
//! | 8   | [`Record::Floor`]       | `floor` (varint), `checkpoint` (optional checkpoint)                      | `Forgotten`   |
//! | 9   | [`Record::Checkpoint`]  | `seq` (varint), `chain` (32 bytes), `snapshot` (bytes)                    |               |
//! | 10  | [`Record::Slots`]       | `first` (varint), `slots` (list of [`Slot`](crate::Slot), entries tagged) | `Entries`     |
//!
//! Where a record has the fields of a message (last column), the same code writes and reads
//! both, so the two layouts cannot drift apart. A tag is never reused: a variant whose layout
//! changes takes a new tag and keeps reading the old one, so that a log written by an older
//! version still replays — unless what the old layout lacks cannot be made up. Tags 2, 5 and 7
//! are such: slots whose digests are 128 bits cannot be chained as their peers chain them, a
//! checkpoint without its commit chain is one nobody can go on from, and a commit server whose
//! log is garbage-collected below it could not tell its sequencer where the chain stands. They are refused ([`DecodeError::ObsoleteRecord`]) with the way back: start
//! the server empty, and it rejoins by the lost-storage rule of DESIGN section 6.
//!
//! # Example
//!
//! `Record::Promise(Epoch(65536))` (round 1, rank 0) is `01 80 80 04`; `Record::StorageLost` is
//! the single byte `03`; `Record::Floor { floor: Seq(7), checkpoint: None }` is `08 07 00`.
//!
//! # Size and safety
//!
//! Decoding never panics and never allocates more than a constant factor of the record's
//! length: one copy of the input, of which payloads and snapshots are zero-copy slices, and
//! lists no longer than the bytes left can hold.

use bytes::Bytes;

use crate::action::Record;
use crate::wire::{put_bytes, put_data, put_floor, put_slots, DecodeError, Reader, Sink};

/// Tag of [`Record::Data`].
const TAG_DATA: u8 = 0;
/// Tag of [`Record::Promise`].
const TAG_PROMISE: u8 = 1;
/// Tag of `Slots` with 128-bit digests (refused).
const TAG_SLOTS_SHORT_DIGESTS: u8 = 2;
/// Tag of [`Record::StorageLost`].
const TAG_STORAGE_LOST: u8 = 3;
/// Tag of [`Record::Committed`].
const TAG_COMMITTED: u8 = 4;
/// Tag of a `Floor` written before checkpoints had a chain (refused).
const TAG_FLOOR_UNCHAINED: u8 = 5;
/// Tag of [`Record::Diverged`].
const TAG_DIVERGED: u8 = 6;
/// Tag of a `Checkpoint` written before checkpoints had a chain (refused).
const TAG_CHECKPOINT_UNCHAINED: u8 = 7;
/// Tag of [`Record::Floor`].
const TAG_FLOOR: u8 = 8;
/// Tag of [`Record::Checkpoint`] with its chain.
const TAG_CHECKPOINT: u8 = 9;
/// Tag of [`Record::Slots`].
const TAG_SLOTS: u8 = 10;
/// The tags written, in order.
#[cfg(test)]
const WRITTEN: [u8; 8] =
    [TAG_DATA, TAG_PROMISE, TAG_STORAGE_LOST, TAG_COMMITTED, TAG_DIVERGED, TAG_FLOOR, TAG_CHECKPOINT, TAG_SLOTS];

/// The tag of a record's variant. The match is exhaustive so that a new variant cannot be
/// written without being given a tag.
fn tag(record: &Record) -> u8 {
    match record {
        Record::Data(_) => TAG_DATA,
        Record::Promise(_) => TAG_PROMISE,
        Record::Slots { .. } => TAG_SLOTS,
        Record::StorageLost => TAG_STORAGE_LOST,
        Record::Committed(_) => TAG_COMMITTED,
        Record::Floor { .. } => TAG_FLOOR,
        Record::Diverged(_) => TAG_DIVERGED,
        Record::Checkpoint { .. } => TAG_CHECKPOINT,
    }
}

/// Appends the encoding of `record` to `out`, so that a host can batch many records in one
/// buffer and reuse it; nothing else is allocated.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    out.byte(tag(record));
    match record {
        Record::Data(d) => put_data(out, d),
        Record::Promise(epoch) => out.varint(epoch.0),
        Record::Slots { first, slots } => put_slots(out, *first, slots),
        Record::StorageLost => {}
        Record::Committed(seq) | Record::Diverged(seq) => out.varint(seq.0),
        Record::Floor { floor, checkpoint } => put_floor(out, *floor, checkpoint),
        Record::Checkpoint { seq, chain, snapshot } => {
            out.varint(seq.0);
            out.put(&chain.0);
            put_bytes(out, snapshot);
        }
    }
}

/// Decodes one record, as [`encode_record`] wrote it, from exactly `bytes`.
///
/// # Errors
///
/// Any [`DecodeError`] about fields, [`DecodeError::UnknownRecord`] or
/// [`DecodeError::RecordTrailing`]; never panics.
pub fn decode_record(bytes: &[u8]) -> Result<Record, DecodeError> {
    // One copy lets payloads and snapshots share it instead of each allocating its own.
    let src = Bytes::copy_from_slice(bytes);
    let mut r = Reader::new(&src);
    let record = read_record(&mut r)?;
    match r.remaining() {
        0 => Ok(record),
        unread => Err(DecodeError::RecordTrailing { unread }),
    }
}

fn read_record(r: &mut Reader<'_>) -> Result<Record, DecodeError> {
    Ok(match r.u8()? {
        TAG_DATA => Record::Data(r.data()?),
        TAG_PROMISE => Record::Promise(r.epoch()?),
        TAG_SLOTS => {
            let (first, slots) = r.slots()?;
            Record::Slots { first, slots }
        }
        TAG_STORAGE_LOST => Record::StorageLost,
        TAG_COMMITTED => Record::Committed(r.seq()?),
        TAG_FLOOR => {
            let f = r.forgotten()?;
            Record::Floor { floor: f.floor, checkpoint: f.checkpoint }
        }
        TAG_DIVERGED => Record::Diverged(r.seq()?),
        TAG_CHECKPOINT => Record::Checkpoint { seq: r.seq()?, chain: r.chain()?, snapshot: r.bytes()? },
        obsolete @ (TAG_SLOTS_SHORT_DIGESTS | TAG_FLOOR_UNCHAINED | TAG_CHECKPOINT_UNCHAINED) => {
            return Err(DecodeError::ObsoleteRecord(obsolete))
        }
        other => return Err(DecodeError::UnknownRecord(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Chain;
    use crate::ids::{Digest, Epoch, Incarnation, Mid, Pid, Seq, Source};
    use crate::message::{CheckpointInfo, Data, Entry, Slot};
    use crate::wire::arb::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// One record of each variant.
    fn arb_every_variant() -> impl Strategy<Value = Vec<Record>> {
        let slots = (arb_seq(), arb_slots()).prop_map(|(first, slots)| Record::Slots { first, slots });
        let floor = (arb_seq(), proptest::option::of(arb_checkpoint()))
            .prop_map(|(floor, checkpoint)| Record::Floor { floor, checkpoint });
        let checkpoint = (arb_seq(), any::<[u8; 32]>(), arb_payload());
        let singles = (arb_epoch(), arb_seq(), arb_seq());
        (arb_data(), slots, floor, checkpoint, singles).prop_map(
            |(data, slots, floor, (seq, chain, snapshot), (e, c, d))| {
                vec![
                    Record::Data(data),
                    Record::Promise(e),
                    slots,
                    Record::StorageLost,
                    Record::Committed(c),
                    Record::Diverged(d),
                    floor,
                    Record::Checkpoint { seq, chain: Chain(chain), snapshot },
                ]
            },
        )
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (arb_every_variant(), any::<prop::sample::Index>()).prop_map(|(all, i)| all[i.index(all.len())].clone())
    }

    fn encode(record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(record, &mut out);
        out
    }

    proptest! {
        #[test]
        fn every_variant_round_trips(records in arb_every_variant()) {
            // The strategy's variants are every tag written (2, 5 and 7 are obsolete).
            let mut tags: Vec<u8> = records.iter().map(tag).collect();
            tags.sort_unstable();
            prop_assert_eq!(tags, WRITTEN.to_vec());
            for record in records {
                prop_assert_eq!(decode_record(&encode(&record)), Ok(record));
            }
        }

        #[test]
        fn encoding_appends_to_what_is_already_there(
            prefix in vec(any::<u8>(), 0..20),
            record in arb_record(),
        ) {
            let mut out = prefix.clone();
            encode_record(&record, &mut out);
            prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
            prop_assert_eq!(&out[prefix.len()..], &encode(&record)[..]);
        }

        #[test]
        fn every_strict_prefix_is_an_error(record in arb_record()) {
            let bytes = encode(&record);
            for n in 0..bytes.len() {
                prop_assert!(decode_record(&bytes[..n]).is_err(), "prefix of {} bytes", n);
            }
        }

        #[test]
        fn trailing_bytes_are_an_error(record in arb_record(), extra in vec(any::<u8>(), 1..5)) {
            let mut bytes = encode(&record);
            bytes.extend_from_slice(&extra);
            prop_assert_eq!(decode_record(&bytes), Err(DecodeError::RecordTrailing { unread: extra.len() }));
        }

        #[test]
        fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..300)) {
            check_decode_is_stable(&bytes)?;
        }

        /// Valid records with a few bytes overwritten reach deep into the field decoders.
        #[test]
        fn mutated_records_never_panic(
            record in arb_record(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encode(&record);
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            check_decode_is_stable(&bytes)?;
        }
    }

    /// Decoding does not panic, and what decodes survives another round trip.
    fn check_decode_is_stable(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(record) = decode_record(bytes) {
            prop_assert_eq!(decode_record(&encode(&record)), Ok(record));
        }
        Ok(())
    }

    #[test]
    fn bad_tags_and_counts_are_errors() {
        assert_eq!(decode_record(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode_record(&[TAG_SLOTS + 1]), Err(DecodeError::UnknownRecord(TAG_SLOTS + 1)));
        assert_eq!(decode_record(&[0xff, 0]), Err(DecodeError::UnknownRecord(0xff)));
        // A slot count of u64::MAX is rejected before anything is allocated for it.
        let mut bytes = vec![TAG_SLOTS, 0x0a];
        bytes.extend([0xff; 9]);
        bytes.push(0x01);
        bytes.extend([0x01; 6]);
        assert_eq!(decode_record(&bytes), Err(DecodeError::BadCount { count: u64::MAX, remaining: 6 }));
        // A snapshot length past the end.
        let mut short = vec![TAG_CHECKPOINT, 5];
        short.extend([0; 32]);
        short.extend([3, 0x61, 0x62]);
        assert_eq!(decode_record(&short), Err(DecodeError::Truncated));
        // An optional checkpoint whose presence byte is neither 0 nor 1.
        assert_eq!(decode_record(&[TAG_FLOOR, 7, 2]), Err(DecodeError::BadTag(2)));
    }

    /// A format change must show up here, because records written before it must still replay.
    #[test]
    fn golden_records() {
        let mid = Mid { source: Source { pid: Pid(7), incarnation: Incarnation(0x0102_0304_0506_0708) }, counter: 1 };
        let mid_bytes = [0x07, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x01];
        let digest_ff = [0xffu8; 32];
        let cases: Vec<(Record, Vec<u8>)> = vec![
            (
                Record::Data(Data { mid, ts: Seq(3), payload: Bytes::from_static(b"hi") }),
                [&[TAG_DATA][..], &mid_bytes, &[0x03, 0x02, 0x68, 0x69]].concat(),
            ),
            (Record::Promise(Epoch(65536)), vec![0x01, 0x80, 0x80, 0x04]),
            (
                Record::Slots {
                    first: Seq(10),
                    slots: vec![
                        Slot { epoch: Epoch(65536), entry: Entry::Msg { mid, digest: Digest([0xff; 32]) } },
                        Slot { epoch: Epoch(65536), entry: Entry::Msg { mid: mid.next(), digest: Digest([0; 32]) } },
                        Slot { epoch: Epoch(65537), entry: Entry::Noop },
                    ],
                },
                [
                    &[0x0a, 0x0a, 0x03][..],
                    &[0x80, 0x80, 0x04, 0x01],
                    &mid_bytes,
                    &digest_ff,
                    &[0x80, 0x80, 0x04, 0x02],
                    &[0; 32],
                    &[0x81, 0x80, 0x04, 0x00],
                ]
                .concat(),
            ),
            (Record::StorageLost, vec![0x03]),
            (Record::Committed(Seq(300)), vec![0x04, 0xac, 0x02]),
            (Record::Floor { floor: Seq(7), checkpoint: None }, vec![0x08, 0x07, 0x00]),
            (
                Record::Floor {
                    floor: Seq(7),
                    checkpoint: Some(CheckpointInfo {
                        seq: Seq(7),
                        size: 2,
                        blocks: 1,
                        digest: Digest([0xff; 32]),
                        chain: Chain([0xcc; 32]),
                    }),
                },
                [&[0x08, 0x07, 0x01, 0x07, 0x02, 0x01][..], &digest_ff, &[0xcc; 32]].concat(),
            ),
            (Record::Diverged(Seq(0)), vec![0x06, 0x00]),
            (
                Record::Checkpoint { seq: Seq(5), chain: Chain([0xcc; 32]), snapshot: Bytes::from_static(b"ab") },
                [&[0x09, 0x05][..], &[0xcc; 32], &[0x02, 0x61, 0x62]].concat(),
            ),
        ];
        for (record, expected) in cases {
            let bytes = encode(&record);
            assert_eq!(bytes, expected, "{record:?} encodes as {bytes:02X?}");
            assert_eq!(decode_record(&expected), Ok(record));
        }
    }

    /// `Slots` with 128-bit digests, and a `Floor` or `Checkpoint` written before checkpoints
    /// had a chain, are refused by name, with the way back.
    #[test]
    fn records_from_before_the_chain_are_refused_with_the_way_back() {
        assert_eq!(decode_record(&[TAG_SLOTS_SHORT_DIGESTS, 0x0a, 0x00]), Err(DecodeError::ObsoleteRecord(2)));
        let floor = [TAG_FLOOR_UNCHAINED, 0x07, 0x00];
        let checkpoint = [TAG_CHECKPOINT_UNCHAINED, 0x05, 0x02, 0x61, 0x62];
        assert_eq!(decode_record(&floor), Err(DecodeError::ObsoleteRecord(5)));
        assert_eq!(decode_record(&checkpoint), Err(DecodeError::ObsoleteRecord(7)));
        let message = DecodeError::ObsoleteRecord(5).to_string();
        assert!(message.contains("start it empty") && message.contains("rejoins"), "{message}");
    }

    #[test]
    fn errors_display() {
        assert_eq!(DecodeError::UnknownRecord(9).to_string(), "unknown record tag 9");
        assert_eq!(DecodeError::RecordTrailing { unread: 2 }.to_string(), "2 unread bytes at the end of a record");
    }
}
