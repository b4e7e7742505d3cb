//! The replicated state (DESIGN section 5): a deterministic state machine that every member
//! applies committed messages to in number order, and that checkpoint servers snapshot.
//! [`KvTable`] is the built-in one.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::ids::{Digest, Seq};
use crate::wire::{put_bytes, DecodeError, Reader, Sink};

/// A deterministic state machine: equal sequences of `apply` give equal snapshots.
pub trait StateMachine {
    /// Applies the message committed at `seq` (numbers arrive in order, `Noop`s skipped).
    /// A payload the machine cannot read must be ignored the same way by every replica.
    fn apply(&mut self, seq: Seq, payload: &Bytes);
    /// The whole state, canonically encoded: equal states give equal bytes.
    fn snapshot(&self) -> Bytes;
    /// Replaces the state by a snapshot.
    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError>;
    /// The number of the last message applied (or of the checkpoint restored).
    fn applied(&self) -> Seq;
    /// The digest of the state: the digest of its snapshot.
    fn digest(&self) -> Digest {
        Digest::of(&self.snapshot())
    }
}

/// Why a snapshot could not be restored.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RestoreError {
    /// The snapshot is not of this format or version.
    #[error("not a key-value table snapshot (format byte {0:#04x})")]
    Format(u8),
    /// The snapshot's bytes do not decode.
    #[error("malformed snapshot: {0}")]
    Malformed(#[from] DecodeError),
    /// Keys are not in strictly increasing order, so the encoding is not canonical.
    #[error("snapshot keys are not in strictly increasing order")]
    Unordered,
}

/// One operation on a [`KvTable`].
///
/// Encoding (the payload a sender sends): a tag byte, then fields; byte strings are a varint
/// length and the bytes (varints as in the wire format, `crate::wire`):
///
/// | tag | operation | fields |
/// |-----|-----------|--------|
/// | `1` | put       | key, value |
/// | `2` | delete    | key |
/// | `3` | batch     | count (varint), then that many put or delete operations, applied in order |
///
/// A batch inside a batch, an unknown tag, or trailing bytes make the whole payload invalid:
/// every replica ignores it alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Applies the operations in order, as one message.
    Batch(Vec<KvOp>),
}

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_BATCH: u8 = 3;
/// The first byte of a snapshot: format and version.
const SNAPSHOT_FORMAT: u8 = 0x4b;

impl KvOp {
    /// The payload that carries this operation.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.put(&mut buf);
        buf.freeze()
    }

    fn put(&self, buf: &mut BytesMut) {
        match self {
            KvOp::Put { key, value } => {
                buf.byte(TAG_PUT);
                put_bytes(buf, key);
                put_bytes(buf, value);
            }
            KvOp::Delete { key } => {
                buf.byte(TAG_DELETE);
                put_bytes(buf, key);
            }
            KvOp::Batch(ops) => {
                buf.byte(TAG_BATCH);
                buf.varint(ops.len() as u64);
                for op in ops {
                    op.put(buf);
                }
            }
        }
    }

    /// Reads an operation from a payload; `None` if it is not a valid one.
    pub fn decode(payload: &Bytes) -> Option<KvOp> {
        let mut r = Reader::new(payload);
        let op = Self::read(&mut r, true).ok()?;
        (r.remaining() == 0).then_some(op)
    }

    fn read(r: &mut Reader<'_>, batch_allowed: bool) -> Result<KvOp, DecodeError> {
        match r.u8()? {
            TAG_PUT => Ok(KvOp::Put { key: r.bytes()?, value: r.bytes()? }),
            TAG_DELETE => Ok(KvOp::Delete { key: r.bytes()? }),
            TAG_BATCH if batch_allowed => {
                let n = r.count(2)?;
                (0..n).map(|_| Self::read(r, false)).collect::<Result<_, _>>().map(KvOp::Batch)
            }
            tag => Err(DecodeError::BadTag(tag)),
        }
    }
}

/// The built-in replicated key-value table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvTable {
    entries: BTreeMap<Bytes, Bytes>,
    applied: Seq,
}

impl KvTable {
    /// An empty table.
    pub fn new() -> KvTable {
        KvTable::default()
    }

    /// The value of `key` and the number the table reflects.
    pub fn get(&self, key: &[u8]) -> (Option<&Bytes>, Seq) {
        (self.entries.get(key), self.applied)
    }

    /// How many keys the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every key and value, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.entries.iter()
    }

    fn perform(&mut self, op: KvOp) {
        match op {
            KvOp::Put { key, value } => {
                self.entries.insert(key, value);
            }
            KvOp::Delete { key } => {
                self.entries.remove(&key);
            }
            KvOp::Batch(ops) => ops.into_iter().for_each(|op| self.perform(op)),
        }
    }
}

impl StateMachine for KvTable {
    fn apply(&mut self, seq: Seq, payload: &Bytes) {
        if let Some(op) = KvOp::decode(payload) {
            self.perform(op);
        }
        self.applied = seq;
    }

    /// Format byte, applied number, count, then every key and value in key order.
    fn snapshot(&self) -> Bytes {
        let mut buf = BytesMut::new();
        buf.byte(SNAPSHOT_FORMAT);
        buf.varint(self.applied.0);
        buf.varint(self.entries.len() as u64);
        for (k, v) in &self.entries {
            put_bytes(&mut buf, k);
            put_bytes(&mut buf, v);
        }
        buf.freeze()
    }

    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError> {
        let mut r = Reader::new(snapshot);
        let format = r.u8()?;
        if format != SNAPSHOT_FORMAT {
            return Err(RestoreError::Format(format));
        }
        let applied = Seq(r.varint()?);
        let n = r.count(2)?;
        let mut entries = BTreeMap::new();
        let mut last: Option<Bytes> = None;
        for _ in 0..n {
            let (k, v) = (r.bytes()?, r.bytes()?);
            if last.as_ref().is_some_and(|l| *l >= k) {
                return Err(RestoreError::Unordered);
            }
            last = Some(k.clone());
            entries.insert(k, v);
        }
        if r.remaining() != 0 {
            return Err(RestoreError::Malformed(DecodeError::Truncated));
        }
        *self = KvTable { entries, applied };
        Ok(())
    }

    fn applied(&self) -> Seq {
        self.applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn put(k: &str, v: &str) -> KvOp {
        KvOp::Put { key: Bytes::copy_from_slice(k.as_bytes()), value: Bytes::copy_from_slice(v.as_bytes()) }
    }

    #[test]
    fn puts_deletes_and_batches_apply_in_order_and_reads_say_where_they_stand() {
        let mut t = KvTable::new();
        t.apply(Seq(1), &put("a", "1").encode());
        t.apply(Seq(2), &KvOp::Batch(vec![put("b", "2"), KvOp::Delete { key: Bytes::from_static(b"a") }]).encode());
        t.apply(Seq(4), &Bytes::from_static(b"\xffnot an operation"));
        assert_eq!(t.get(b"a"), (None, Seq(4)));
        assert_eq!(t.get(b"b"), (Some(&Bytes::from_static(b"2")), Seq(4)));
    }

    #[test]
    fn a_nested_batch_or_trailing_bytes_make_the_payload_invalid() {
        let nested = KvOp::Batch(vec![KvOp::Batch(vec![])]).encode();
        assert_eq!(KvOp::decode(&nested), None);
        let mut trailing = put("a", "1").encode().to_vec();
        trailing.push(0);
        assert_eq!(KvOp::decode(&Bytes::from(trailing)), None);
    }

    #[test]
    fn a_snapshot_restores_the_same_table_and_rejects_garbage() {
        let mut t = KvTable::new();
        t.apply(Seq(7), &KvOp::Batch(vec![put("x", "1"), put("a", "2")]).encode());
        let mut u = KvTable::new();
        u.restore(&t.snapshot()).unwrap();
        assert_eq!((u.clone(), u.digest()), (t.clone(), t.digest()));
        assert_eq!(u.restore(&Bytes::from_static(b"\x00")), Err(RestoreError::Format(0)));
        assert!(u.restore(&t.snapshot().slice(..5)).is_err());
        assert_eq!(u, t, "a failed restore changes nothing");
    }

    proptest! {
        #[test]
        fn equal_tables_have_equal_digests_whatever_the_order_of_puts(
            pairs in prop::collection::btree_map("[a-z]{1,4}", "[a-z]{0,4}", 0..20),
        ) {
            let (mut fwd, mut rev) = (KvTable::new(), KvTable::new());
            for (i, (k, v)) in pairs.iter().enumerate() {
                fwd.apply(Seq(i as u64 + 1), &put(k, v).encode());
            }
            for (i, (k, v)) in pairs.iter().rev().enumerate() {
                rev.apply(Seq(i as u64 + 1), &put(k, v).encode());
            }
            prop_assert_eq!(fwd.digest(), rev.digest());
        }

        #[test]
        fn random_payloads_and_snapshots_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let bytes = Bytes::from(bytes);
            let mut t = KvTable::new();
            t.apply(Seq(1), &bytes);
            let _ = t.restore(&bytes);
        }
    }
}
