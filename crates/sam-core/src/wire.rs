//! The wire format: how protocol [`Message`]s travel in datagrams.
//!
//! Every datagram carries exactly one *frame*, and a frame carries zero or more messages back to
//! back. This comment is the specification: it says everything needed to write an encoder or a
//! decoder in another language. Version 1 is described.
//!
//! # Frame
//!
//! A frame is a 12-byte header followed by the body. Fixed-width integers are little-endian.
//!
//! | bytes    | field       | contents                                                        |
//! |----------|-------------|-----------------------------------------------------------------|
//! | `0..2`   | magic       | the ASCII bytes `S` `M` (`0x53 0x4D`), see [`MAGIC`]            |
//! | `2`      | version     | `3` ([`VERSION`]); a decoder rejects every other value          |
//! | `3`      | flags       | what the body holds (below)                                     |
//! | `4..8`   | body length | `u32`: the number of bytes after the header                     |
//! | `8..12`  | checksum    | `u32`: CRC32C of header bytes `0..8` followed by the body       |
//! | `12..`   | body        | the messages, back to back (possibly none)                      |
//!
//! The body length must equal the datagram's length minus [`HEADER_LEN`] exactly: a datagram
//! with missing or extra bytes is rejected. The checksum is CRC-32C (Castagnoli): polynomial
//! `0x1EDC6F41` (reflected `0x82F63B78`), initial value `0xFFFFFFFF`, input and output reflected,
//! final XOR `0xFFFFFFFF` — the CRC of iSCSI and SSE 4.2's `crc32` instruction, whose check value
//! for the ASCII string `123456789` is `0xE3069283`. It covers bytes `0..8` of the header and then
//! the whole body; the checksum field itself is not covered.
//!
//! A decoder checks, in this order: length at least 12, magic, version, flags, body length,
//! checksum, then the body. A frame with no messages (12 bytes) is valid.
//!
//! # Flags
//!
//! The flags byte is either [`FLAG_REGISTER`] (`8`) alone, or any combination of these bits;
//! a decoder rejects every other value (`4`, the relayed flag of earlier versions, included):
//!
//! | bit | name              | meaning                                                          |
//! |-----|-------------------|------------------------------------------------------------------|
//! | `1` | [`FLAG_FRAGMENT`] | the body is one fragment of a message (below), not messages     |
//! | `2` | [`FLAG_GLOBAL`]   | unicast mode: sent on the global channel, to be relayed          |
//!
//! In unicast mode (DESIGN section 7) a member registers with one data server, which relays
//! to it every frame it receives flagged global, byte for byte inside the sealed frame's relay
//! envelope (`sam_net::security::envelope`: the sealed header names the sender). A
//! *register* frame's body is one varint: the lease in milliseconds a member asks for, or the
//! one a data server grants in reply, then any number of zero bytes: padding, so that a
//! registration is never shorter than the cookie challenge a relay may answer it with.
//!
//! # Fragments
//!
//! A message too long for one datagram travels as a *series* of fragment frames (flags `1`),
//! whose bodies are:
//!
//! | field  | encoding                                                                     |
//! |--------|------------------------------------------------------------------------------|
//! | series | varint: chosen by the sender, distinct among its series in flight            |
//! | index  | u32 varint: this fragment's place, from 0                                    |
//! | count  | u32 varint: the fragments in the series, at least 1; `index < count`         |
//! | chunk  | the rest of the body                                                         |
//!
//! The chunks, in index order, are the bytes of a frame body (kind, length, fields of each
//! message, as above); a sender puts one message in it. A receiver keeps each series, by sender and series number, until all of
//! it arrived, within bounds of its own on size and time, and drops what does not complete:
//! the protocol retransmits as it does for any lost datagram.
//!
//! # Message
//!
//! Each message in the body is:
//!
//! | field    | encoding                                                            |
//! |----------|---------------------------------------------------------------------|
//! | kind     | one byte: the kind's index in [`Kind::ALL`] (table below)           |
//! | length   | varint: the number of bytes of the fields that follow               |
//! | fields   | exactly `length` bytes, laid out according to the kind (below)      |
//!
//! A decoder rejects an unknown kind (21 or above), a length running past the end of the body,
//! fields that need more than `length` bytes, and fields that leave some of the `length` bytes
//! unread. The length lets a reader skip a message, but this version has no optional fields: a
//! version 1 decoder rejects every message it cannot fully read.
//!
//! # Primitive encodings
//!
//! * **varint**: an unsigned integer of at most 64 bits as unsigned LEB128: 7 bits per byte,
//!   least significant group first, the high bit (`0x80`) set on every byte but the last. At
//!   most 10 bytes; the 10th byte, when present, must be `0x00` or `0x01` (anything else is
//!   longer than 10 bytes or overflows 64 bits). The encoding must be minimal: a last byte of
//!   `0x00` is rejected unless it is the only byte. So 0 is `00`, 127 is `7F`, 128 is `80 01`,
//!   and `u64::MAX` is `FF FF FF FF FF FF FF FF FF 01`.
//! * **u32 fields** (block indexes) are varints whose value must not exceed `u32::MAX`.
//! * [`Seq`], [`Epoch`], [`Pid`], message counters, list counts and byte-string lengths:
//!   varint of the inner `u64`.
//! * [`Incarnation`]: 8 bytes, `u64` little-endian.
//! * [`Digest`]: 32 bytes (SHA-256) as they are.
//! * [`Chain`]: 32 bytes as they are; [`Signature`]: 64 bytes as they are.
//! * **bytes**: varint length, then that many raw bytes.
//! * [`SeqRange`]: `first` as a varint, then `last - first` as a varint. A decoder rejects a
//!   range whose `first + (last - first)` overflows 64 bits.
//! * **mid** (a [`Mid`] given in full): source pid (varint), source incarnation (8 bytes),
//!   counter (varint).
//! * **list**: element count (varint), then the elements. Every element takes at least one byte,
//!   so a decoder rejects a count larger than the bytes left in the message before it allocates
//!   anything (this implementation uses the minimum size of an element, given below).
//!
//! ## Run-compressed message ids
//!
//! Message ids in lists are usually runs from one sender, so each element that holds a mid
//! starts with a *tag* byte:
//!
//! | tag | meaning                                                                              |
//! |-----|--------------------------------------------------------------------------------------|
//! | `0` | no message (`Noop`); allowed only where the element may be a `Noop`                  |
//! | `1` | a mid given in full follows                                                          |
//! | `2` | *continuing*: the mid has the source of the previous mid of this list and its counter plus one; no mid bytes follow |
//!
//! "The previous mid of this list" is the last mid decoded earlier in the same list, however
//! many `Noop` elements came in between. A decoder rejects tag `2` on the first mid of a list
//! and when the previous counter is `u64::MAX`; any other tag is rejected. An encoder uses tag
//! `2` whenever it applies (decoders also accept `1` there).
//!
//! Tagged elements, by the type they decode to (minimum sizes in brackets):
//!
//! * [`Entry`] \[1\]: tag `0` (`Noop`), or tag `1` + mid + digest, or tag `2` + digest.
//! * [`Mid`] in [`Fetch`] \[1\]: tag `1` + mid, or tag `2` (tag `0` is an error).
//! * [`OrderItem`] \[34\]: tag `1` + mid, or tag `2` (tag `0` is an error); then `ts` (varint)
//!   and `digest` (32 bytes).
//! * [`Slot`] \[2\]: `epoch` (varint), then the entry, tagged as for [`Entry`].
//! * [`PromisedSlot`] \[3\]: the distance of `seq` from the previous element's `seq` (from
//!   `first` for the first element) as a varint, then the [`Slot`]. A decoder rejects a `seq`
//!   that overflows 64 bits.
//!
//! Other list elements: [`SeqRange`] \[2\], block index (u32 varint) \[1\].
//!
//! # Message kinds and their fields
//!
//! Fields in the order written, which is their declaration order in [`crate::message`].
//!
//! | tag | kind                 | fields                                                                                              |
//! |-----|----------------------|-----------------------------------------------------------------------------------------------------|
//! | 0   | [`Data`]             | `mid` (mid, untagged), `ts` (varint), `payload` (bytes)                                              |
//! | 1   | [`Order`]            | `items` (list of [`OrderItem`], tagged)                                                              |
//! | 2   | [`Assign`]           | `epoch` (varint), `epoch_first` (varint), `first` (varint), `entries` (list of [`Entry`], tagged)   |
//! | 3   | [`Accepted`]         | `epoch` (varint), `upto` (varint)                                                                    |
//! | 4   | [`Rejected`]         | `promised` (varint)                                                                                  |
//! | 5   | [`Commit`]           | `epoch` (varint), `first` (varint), `entries` (list of [`Entry`], tagged)                            |
//! | 6   | [`Heartbeat`]        | `epoch` (varint), `sequencer` (varint pid), `committed` (varint), `chain` (32 bytes), `checkpoint` (optional checkpoint), `signature` (a byte `0`, or `1` and 64 bytes) |
//! | 7   | [`QueryEntries`]     | `ranges` (list of [`SeqRange`])                                                                      |
//! | 8   | [`Entries`]          | `first` (varint), `slots` (list of [`Slot`], entries tagged)                                         |
//! | 9   | [`Fetch`]            | `mids` (list of [`Mid`], tagged)                                                                     |
//! | 10  | [`FetchBlocks`]      | `seq` (varint), `blocks` (list of u32 varints)                                                       |
//! | 11  | [`Block`]            | `seq` (varint), `index` (u32 varint), `digest` (32 bytes), `bytes` (bytes)                           |
//! | 12  | [`Prepare`]          | `epoch` (varint), `from_seq` (varint)                                                                |
//! | 13  | [`Promise`]          | `epoch` (varint), `first`..`last` (as a [`SeqRange`]), `highest` (varint), `floor` (varint), `checkpoint` (optional checkpoint), `slots` (list of [`PromisedSlot`]) |
//! | 14  | [`PreVote`]          | `epoch` (varint)                                                                                     |
//! | 15  | [`PreVoteGranted`]   | `epoch` (varint)                                                                                     |
//! | 16  | [`Message::CheckpointReport`] | the checkpoint                                                                              |
//! | 17  | [`Forgotten`]        | `floor` (varint), `checkpoint` (optional checkpoint)                                                 |
//! | 18  | [`Message::Dropped`] | as [`Forgotten`]                                                                                     |
//! | 19  | [`Ping`]             | `nonce` (varint)                                                                                     |
//! | 20  | [`Pong`]             | `nonce` (varint), `committed` (varint), `alarms` (a byte: bit 0 storage full, 1 replay table full, 2 duplicate pid, 3 derivations throttled; others `0`) |
//!
//! A *checkpoint* ([`CheckpointInfo`]) is `seq` (varint), `size` (varint), `blocks` (u32 varint),
//! `digest` (32 bytes), `chain` (32 bytes); an *optional checkpoint* is a byte `0` (none) or `1` followed by one.
//!
//! # Example
//!
//! A frame with one `Accepted { epoch: Epoch(65536), upto: Seq(5) }` (epoch round 1, rank 0):
//!
//! ```text
//! 53 4D 03 00 06 00 00 00 55 8D 04 7C | 03 04 80 80 04 05
//! magic ver fl body len=6 crc32c      | kind=3 len=4 epoch=65536 upto=5
//! ```
//!
//! A `Commit { epoch: Epoch(65536), first: Seq(10), entries }` whose entries are the mid with
//! pid 7, incarnation `0x0102030405060708` and counter 1 with digest `D1` (32 bytes), then the
//! same source's counter 2 with `D2`, `Noop`, and counter 3 with `D3` (which continues counter
//! 2 across the `Noop`), has the body
//!
//! ```text
//! 05 73 80 80 04 0A 04 01 07 08 07 06 05 04 03 02 01 01 D1 02 D2 00 02 D3
//! kind=5 len=115 epoch first count=4 [1 pid incarnation counter digest] [2 digest] [0] [2 digest]
//! ```
//!
//! # Size and safety
//!
//! Decoding never panics and never allocates more than a constant factor of the frame's
//! length. [`Data::payload`] and [`Block::bytes`] are zero-copy slices of the decoded buffer.
//! [`FramePacker`] packs messages into as few frames as fit a maximum datagram size.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::chain::{Chain, Signature};
use crate::ids::{Digest, Epoch, Incarnation, Mid, Pid, Seq, SeqRange, Source};
use crate::message::{
    Accepted, Alarms, Assign, Block, CheckpointInfo, Commit, Data, Entries, Entry, Fetch, FetchBlocks, Forgotten,
    Heartbeat, Kind, Message, Order, OrderItem, Ping, Pong, PreVote, PreVoteGranted, Prepare, Promise, PromisedSlot,
    QueryEntries, Rejected, Slot,
};

/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"SM";

/// The version of the wire format this module writes and reads: 3 since `Commit`s carry
/// payload digests and heartbeats the commit chain (1 before; 2 is the sealed envelope's).
pub const VERSION: u8 = 3;

/// The length of a frame's header, before the body.
pub const HEADER_LEN: usize = 12;

/// Frame flag: the body is one fragment of a message (see the module docs).
pub const FLAG_FRAGMENT: u8 = 1;
/// Frame flag (unicast mode): sent on the global channel; a data server relays it.
pub const FLAG_GLOBAL: u8 = 2;
/// Frame flags value, alone (unicast mode): a member's registration, or a data server's
/// grant; the body is the lease in milliseconds.
pub const FLAG_REGISTER: u8 = 8;

/// The longest fragment header (series, index and count as varints).
pub const FRAGMENT_HEADER_MAX: usize = 10 + 5 + 5;

/// The longest varint: 10 bytes hold 64 bits.
const MAX_VARINT_LEN: usize = 10;

/// Element tag: no message.
const TAG_NOOP: u8 = 0;
/// Element tag: a mid given in full follows.
const TAG_FULL: u8 = 1;
/// Element tag: the previous mid's successor.
const TAG_NEXT: u8 = 2;

/// Why a frame, a body or a stored record ([`crate::record_format`]) could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DecodeError {
    /// The datagram is shorter than a frame header.
    #[error("frame of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// The datagram's length.
        len: usize,
    },
    /// The frame does not start with [`MAGIC`].
    #[error("bad magic {0:02x?}, expected \"SM\"")]
    BadMagic([u8; 2]),
    /// The frame's version is not [`VERSION`].
    #[error("unsupported wire format version {0} (this decoder reads version {VERSION})")]
    UnsupportedVersion(u8),
    /// The flags byte is not one the module docs allow.
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    /// A frame's body has bytes after what its flags say it holds.
    #[error("{unread} unread bytes at the end of a frame")]
    FrameTrailing {
        /// How many bytes were left over.
        unread: usize,
    },
    /// A fragment's index is not below its count (or the count is 0).
    #[error("fragment {index} of a series of {count}")]
    BadFragment {
        /// The fragment's index.
        index: u32,
        /// The series' length.
        count: u32,
    },
    /// A fragment, global or register frame came where plain messages were expected.
    #[error("a frame with flags where plain messages were expected")]
    NotPlain,
    /// The header's body length is not the number of bytes after the header.
    #[error("header declares a {declared}-byte body but {actual} bytes follow it")]
    LengthMismatch {
        /// The body length in the header.
        declared: u32,
        /// The number of bytes after the header.
        actual: usize,
    },
    /// The checksum does not match the frame's contents.
    #[error("checksum mismatch: header says {stored:#010x}, contents give {computed:#010x}")]
    Checksum {
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the header and body as received.
        computed: u32,
    },
    /// A message's kind tag is not the index of any [`Kind`].
    #[error("unknown message kind tag {0}")]
    UnknownKind(u8),
    /// A message, or one of its fields, runs past the end of the bytes that hold it.
    #[error("truncated: a message or field runs past the end of its bytes")]
    Truncated,
    /// A varint is longer than 10 bytes or its value does not fit in 64 bits.
    #[error("varint longer than 10 bytes or larger than 64 bits")]
    VarintOverflow,
    /// A varint is not minimally encoded (it ends in a zero byte).
    #[error("varint is not minimally encoded")]
    VarintOverlong,
    /// A value that must fit in 32 bits does not.
    #[error("value {0} does not fit in 32 bits")]
    U32Overflow(u64),
    /// A message's fields did not use all the bytes its length declared.
    #[error("{unread} unread bytes at the end of a {kind:?} message")]
    Trailing {
        /// The kind of the message.
        kind: Kind,
        /// How many of its bytes were left over.
        unread: usize,
    },
    /// A list element's tag byte is not allowed there.
    #[error("bad element tag {0}")]
    BadTag(u8),
    /// A "continuing" element has no previous message id to continue, or continuing it would
    /// overflow the counter.
    #[error("continuing message id without a previous id, or counter overflow")]
    BadContinuation,
    /// A sequence range whose last number overflows 64 bits.
    #[error("sequence range {first} + {delta} overflows 64 bits")]
    BadRange {
        /// The range's first number.
        first: u64,
        /// The encoded `last - first`.
        delta: u64,
    },
    /// A list count larger than the remaining bytes of its message (or record) can hold.
    #[error("list of {count} elements cannot fit in the {remaining} bytes left in its message or record")]
    BadCount {
        /// The declared number of elements.
        count: u64,
        /// The bytes left in the message or record after the count.
        remaining: usize,
    },
    /// A stored record's tag byte names no [`crate::Record`] variant.
    #[error("unknown record tag {0}")]
    UnknownRecord(u8),
    /// A record of a layout this version no longer reads (see `record_format`).
    #[error(
        "record tag {0} was written before commits were chained (an older version): move this \
         server's data directory aside and start it empty; it rejoins as a server that lost its \
         storage (DESIGN section 6)"
    )]
    ObsoleteRecord(u8),
    /// A stored record's fields did not use all of its bytes.
    #[error("{unread} unread bytes at the end of a record")]
    RecordTrailing {
        /// How many bytes were left over.
        unread: usize,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum EncodeError {
    /// The message does not fit in one datagram of the maximum size, even alone (or, as
    /// fragments, in `u32::MAX` of them).
    #[error("message needs a {len}-byte frame but datagrams are limited to {max} bytes")]
    TooLarge {
        /// The length of a frame holding only this message ([`HEADER_LEN`] plus
        /// [`encoded_len`]).
        len: usize,
        /// The maximum datagram size.
        max: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Where encoded bytes go: a buffer, or a counter that only measures. Encoding is written once,
/// generically, so that measured and written lengths can never disagree.
pub(crate) trait Sink {
    /// Appends bytes.
    fn put(&mut self, bytes: &[u8]);

    /// Appends one byte.
    fn byte(&mut self, b: u8) {
        self.put(&[b]);
    }

    /// Appends a varint.
    fn varint(&mut self, mut v: u64) {
        let mut buf = [0u8; MAX_VARINT_LEN];
        let mut n = 0;
        for slot in buf.iter_mut() {
            n += 1;
            if v < 0x80 {
                *slot = v as u8;
                break;
            }
            *slot = (v & 0x7f) as u8 | 0x80;
            v >>= 7;
        }
        self.put(&buf[..n]);
    }
}

/// A sink that counts bytes.
struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 = self.0.saturating_add(bytes.len());
    }

    fn byte(&mut self, _: u8) {
        self.0 = self.0.saturating_add(1);
    }

    fn varint(&mut self, v: u64) {
        self.0 = self.0.saturating_add(varint_len(v));
    }
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn byte(&mut self, b: u8) {
        self.put_u8(b);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn byte(&mut self, b: u8) {
        self.push(b);
    }
}

/// The number of bytes of `v` as a varint.
fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The wire tag of a kind: its index in [`Kind::ALL`].
fn kind_tag(kind: Kind) -> u8 {
    kind.index() as u8
}

fn put_len<S: Sink>(s: &mut S, len: usize) {
    s.varint(len as u64);
}

pub(crate) fn put_bytes<S: Sink>(s: &mut S, bytes: &[u8]) {
    put_len(s, bytes.len());
    s.put(bytes);
}

fn put_digest<S: Sink>(s: &mut S, d: Digest) {
    s.put(&d.0);
}

fn put_mid<S: Sink>(s: &mut S, mid: Mid) {
    s.varint(mid.source.pid.0);
    s.put(&mid.source.incarnation.0.to_le_bytes());
    s.varint(mid.counter);
}

/// Writes the tag of a mid in a run-compressed list (and the mid itself unless it continues
/// `prev`), and makes it the new `prev`.
fn put_tagged_mid<S: Sink>(s: &mut S, prev: &mut Option<Mid>, mid: Mid) {
    let continues = prev.is_some_and(|p| p.source == mid.source && p.counter.checked_add(1) == Some(mid.counter));
    if continues {
        s.byte(TAG_NEXT);
    } else {
        s.byte(TAG_FULL);
        put_mid(s, mid);
    }
    *prev = Some(mid);
}

/// Writes a list of entries, as `Assign` and `Commit` carry them.
fn put_entries<S: Sink>(s: &mut S, entries: &[Entry]) {
    put_len(s, entries.len());
    let mut prev = None;
    for entry in entries {
        put_entry(s, &mut prev, entry);
    }
}

fn put_entry<S: Sink>(s: &mut S, prev: &mut Option<Mid>, entry: &Entry) {
    match *entry {
        Entry::Noop => s.byte(TAG_NOOP),
        Entry::Msg { mid, digest } => {
            put_tagged_mid(s, prev, mid);
            put_digest(s, digest);
        }
    }
}

/// Writes the fields of a [`Data`]: shared by the `Data` message and the `Data` record, so the
/// two layouts cannot drift apart.
pub(crate) fn put_data<S: Sink>(s: &mut S, d: &Data) {
    put_mid(s, d.mid);
    s.varint(d.ts.0);
    put_bytes(s, &d.payload);
}

/// Writes `first` and a list of slots with run-compressed entries: shared by the `Entries`
/// message and the `Slots` record.
pub(crate) fn put_slots<S: Sink>(s: &mut S, first: Seq, slots: &[Slot]) {
    s.varint(first.0);
    put_len(s, slots.len());
    let mut prev = None;
    for slot in slots {
        s.varint(slot.epoch.0);
        put_entry(s, &mut prev, &slot.entry);
    }
}

/// Writes a floor and its optional checkpoint: shared by `Forgotten`, `Dropped` and the `Floor`
/// record.
pub(crate) fn put_floor<S: Sink>(s: &mut S, floor: Seq, checkpoint: &Option<CheckpointInfo>) {
    s.varint(floor.0);
    put_checkpoint_opt(s, checkpoint);
}

/// Writes a range as `first` and `last - first`. An ill-formed range (`last < first`) is written
/// with the wrapped difference, which every decoder rejects as [`DecodeError::BadRange`].
fn put_range<S: Sink>(s: &mut S, r: &SeqRange) {
    s.varint(r.first.0);
    s.varint(r.last.0.wrapping_sub(r.first.0));
}

/// Writes the fields of a message (without kind tag and length).
fn put_body<S: Sink>(s: &mut S, msg: &Message) {
    match msg {
        Message::Data(d) => put_data(s, d),
        Message::Order(o) => {
            put_len(s, o.items.len());
            let mut prev = None;
            for item in &o.items {
                put_tagged_mid(s, &mut prev, item.mid);
                s.varint(item.ts.0);
                put_digest(s, item.digest);
            }
        }
        Message::Assign(a) => {
            s.varint(a.epoch.0);
            s.varint(a.epoch_first.0);
            s.varint(a.first.0);
            put_entries(s, &a.entries);
        }
        Message::Accepted(a) => {
            s.varint(a.epoch.0);
            s.varint(a.upto.0);
        }
        Message::Rejected(r) => s.varint(r.promised.0),
        Message::Commit(c) => {
            s.varint(c.epoch.0);
            s.varint(c.first.0);
            put_entries(s, &c.entries);
        }
        Message::Heartbeat(h) => {
            s.varint(h.epoch.0);
            s.varint(h.sequencer.0);
            s.varint(h.committed.0);
            s.put(&h.chain.0);
            put_checkpoint_opt(s, &h.checkpoint);
            match &h.signature {
                None => s.byte(0),
                Some(sig) => {
                    s.byte(1);
                    s.put(&sig.0);
                }
            }
        }
        Message::QueryEntries(q) => {
            put_len(s, q.ranges.len());
            for r in &q.ranges {
                put_range(s, r);
            }
        }
        Message::Entries(e) => put_slots(s, e.first, &e.slots),
        Message::Fetch(f) => {
            put_len(s, f.mids.len());
            let mut prev = None;
            for &mid in &f.mids {
                put_tagged_mid(s, &mut prev, mid);
            }
        }
        Message::FetchBlocks(f) => {
            s.varint(f.seq.0);
            put_len(s, f.blocks.len());
            for &b in &f.blocks {
                s.varint(u64::from(b));
            }
        }
        Message::Block(b) => {
            s.varint(b.seq.0);
            s.varint(u64::from(b.index));
            put_digest(s, b.digest);
            put_bytes(s, &b.bytes);
        }
        Message::Prepare(p) => {
            s.varint(p.epoch.0);
            s.varint(p.from_seq.0);
        }
        Message::PreVote(p) => s.varint(p.epoch.0),
        Message::PreVoteGranted(p) => s.varint(p.epoch.0),
        Message::Ping(p) => s.varint(p.nonce),
        Message::Pong(p) => {
            s.varint(p.nonce);
            s.varint(p.committed.0);
            s.byte(p.alarms.bits());
        }
        Message::CheckpointReport(c) => put_checkpoint(s, c),
        Message::Forgotten(f) | Message::Dropped(f) => put_floor(s, f.floor, &f.checkpoint),
        Message::Promise(p) => {
            s.varint(p.epoch.0);
            put_range(s, &SeqRange { first: p.first, last: p.last });
            s.varint(p.highest.0);
            s.varint(p.floor.0);
            put_checkpoint_opt(s, &p.checkpoint);
            put_len(s, p.slots.len());
            let mut prev_seq = p.first;
            let mut prev = None;
            for ps in &p.slots {
                s.varint(ps.seq.0.wrapping_sub(prev_seq.0));
                prev_seq = ps.seq;
                s.varint(ps.slot.epoch.0);
                put_entry(s, &mut prev, &ps.slot.entry);
            }
        }
    }
}

fn put_checkpoint<S: Sink>(s: &mut S, c: &CheckpointInfo) {
    s.varint(c.seq.0);
    s.varint(c.size);
    s.varint(u64::from(c.blocks));
    put_digest(s, c.digest);
    s.put(&c.chain.0);
}

fn put_checkpoint_opt<S: Sink>(s: &mut S, c: &Option<CheckpointInfo>) {
    match c {
        None => s.byte(0),
        Some(c) => {
            s.byte(1);
            put_checkpoint(s, c);
        }
    }
}

/// The length of a message's fields.
fn body_len(msg: &Message) -> usize {
    let mut c = Counter(0);
    put_body(&mut c, msg);
    c.0
}

/// The length of a whole message (kind tag, length, fields) whose fields take `body` bytes.
fn message_len(body: usize) -> usize {
    body.saturating_add(1 + varint_len(body as u64))
}

/// The number of bytes `msg` takes in a frame body: kind tag, length and fields, exactly as
/// [`encode_frame`] and [`FramePacker`] write it.
pub fn encoded_len(msg: &Message) -> usize {
    message_len(body_len(msg))
}

/// Appends a whole message whose fields take `body` bytes (as [`body_len`] computed).
fn put_message(buf: &mut BytesMut, msg: &Message, body: usize) {
    buf.reserve(message_len(body));
    buf.byte(kind_tag(msg.kind()));
    put_len(buf, body);
    let start = buf.len();
    put_body(buf, msg);
    debug_assert_eq!(buf.len() - start, body, "measured and written lengths differ");
}

/// Starts a frame in an empty buffer: a header to be filled in by [`seal`].
fn start_frame(buf: &mut BytesMut) {
    buf.put_slice(&[0u8; HEADER_LEN]);
}

/// Fills in the header of the frame in `buf` (started by [`start_frame`]) and takes it out,
/// leaving `buf` empty.
///
/// # Panics
///
/// If the body is longer than `u32::MAX` bytes.
fn seal(buf: &mut BytesMut) -> Bytes {
    seal_with(buf, 0)
}

/// [`seal`] with the given flags byte.
fn seal_with(buf: &mut BytesMut, flags: u8) -> Bytes {
    let body = buf.len() - HEADER_LEN;
    let body = u32::try_from(body).expect("frame body longer than u32::MAX bytes");
    buf[0..2].copy_from_slice(&MAGIC);
    buf[2] = VERSION;
    buf[3] = flags;
    buf[4..8].copy_from_slice(&body.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[0..8]), &buf[HEADER_LEN..]);
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    buf.split().freeze()
}

/// Encodes `msgs` as one frame, however long.
///
/// # Panics
///
/// If the body would be longer than `u32::MAX` bytes; use [`FramePacker`] to respect a
/// datagram size.
pub fn encode_frame(msgs: &[Message]) -> Bytes {
    let bodies: usize = msgs.iter().map(encoded_len).fold(0, usize::saturating_add);
    let mut buf = BytesMut::with_capacity(HEADER_LEN.saturating_add(bodies));
    start_frame(&mut buf);
    for msg in msgs {
        put_message(&mut buf, msg, body_len(msg));
    }
    seal(&mut buf)
}

/// Packs a sequence of messages into as few frames as possible, each no longer than a maximum
/// datagram size. Messages keep their order: each frame holds the next run of messages that
/// fits, and a frame is closed only when the next message does not fit in it.
///
/// ```ignore
/// let mut packer = FramePacker::new(1400);
/// for msg in &msgs {
///     if let Some(frame) = packer.push(msg)? {
///         send(frame);
///     }
/// }
/// if let Some(frame) = packer.finish() {
///     send(frame);
/// }
/// ```
#[derive(Debug)]
pub struct FramePacker {
    /// The maximum frame length.
    max: usize,
    /// The frame being filled: empty, or a header placeholder followed by whole messages.
    buf: BytesMut,
    /// The flags of its frames.
    flags: u8,
}

impl FramePacker {
    /// A packer whose frames are at most `max_datagram` bytes long (header included). Values
    /// beyond the largest possible frame (`HEADER_LEN + u32::MAX`) are lowered to it.
    pub fn new(max_datagram: usize) -> Self {
        Self::with_flags(max_datagram, 0)
    }

    /// A packer whose frames carry `flags` (such as [`FLAG_GLOBAL`]).
    pub fn with_flags(max_datagram: usize, flags: u8) -> Self {
        let largest = usize::try_from(u64::from(u32::MAX) + HEADER_LEN as u64).unwrap_or(usize::MAX);
        FramePacker { max: max_datagram.min(largest), buf: BytesMut::new(), flags }
    }

    /// The maximum frame length.
    pub fn max_datagram(&self) -> usize {
        self.max
    }

    /// Whether no message is waiting in the current frame.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Adds a message. When it does not fit in the current frame, that frame is finished and
    /// returned, and the message starts the next one.
    ///
    /// # Errors
    ///
    /// [`EncodeError::TooLarge`] when the message does not fit in a datagram even alone; the
    /// packer is then left as it was.
    pub fn push(&mut self, msg: &Message) -> Result<Option<Bytes>, EncodeError> {
        let body = body_len(msg);
        let len = message_len(body);
        let alone = HEADER_LEN.saturating_add(len);
        if alone > self.max {
            return Err(EncodeError::TooLarge { len: alone, max: self.max });
        }
        let done = if !self.buf.is_empty() && self.buf.len().saturating_add(len) > self.max {
            Some(seal_with(&mut self.buf, self.flags))
        } else {
            None
        };
        if self.buf.is_empty() {
            self.buf.reserve(self.max.min(alone.max(1024)));
            start_frame(&mut self.buf);
        }
        put_message(&mut self.buf, msg, body);
        Ok(done)
    }

    /// Finishes and returns the current frame, or `None` if no message is waiting.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| seal_with(&mut self.buf, self.flags))
    }
}

/// Encodes `msg` as a series of fragment frames of at most `max_datagram` bytes each (for a
/// message [`FramePacker::push`] refuses as too large), with `flags` besides
/// [`FLAG_FRAGMENT`].
///
/// # Errors
///
/// [`EncodeError::TooLarge`] when `max_datagram` leaves no room for a chunk, or the message
/// would need more than `u32::MAX` fragments.
pub fn encode_fragments(msg: &Message, series: u64, max_datagram: usize, flags: u8) -> Result<Vec<Bytes>, EncodeError> {
    let len = encoded_len(msg);
    let too_large = EncodeError::TooLarge { len: HEADER_LEN.saturating_add(len), max: max_datagram };
    let chunk =
        max_datagram.checked_sub(HEADER_LEN + FRAGMENT_HEADER_MAX).filter(|c| *c > 0).ok_or(too_large.clone())?;
    let count = u32::try_from(len.div_ceil(chunk)).map_err(|_| too_large)?;
    let mut whole = BytesMut::with_capacity(len);
    put_message(&mut whole, msg, body_len(msg));
    let mut frames = Vec::with_capacity(count as usize);
    let mut buf = BytesMut::with_capacity(max_datagram);
    for (index, piece) in whole.chunks(chunk).enumerate() {
        start_frame(&mut buf);
        buf.varint(series);
        buf.varint(index as u64);
        buf.varint(u64::from(count));
        buf.extend_from_slice(piece);
        frames.push(seal_with(&mut buf, flags | FLAG_FRAGMENT));
    }
    Ok(frames)
}

/// The zero bytes a register frame carries after its lease.
pub const REGISTER_PADDING: usize = 16;

/// A register frame asking for, or granting, a lease of `lease_ms` milliseconds.
pub fn register_frame(lease_ms: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + MAX_VARINT_LEN + REGISTER_PADDING);
    start_frame(&mut buf);
    buf.varint(lease_ms);
    buf.put_bytes(0, REGISTER_PADDING);
    seal_with(&mut buf, FLAG_REGISTER)
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// A cursor over `src[pos..end]`. Invariant: `pos <= end <= src.len()`.
pub(crate) struct Reader<'a> {
    src: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(src: &'a Bytes) -> Self {
        Reader { src, pos: 0, end: src.len() }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    /// Takes the next `n` bytes, as a range of `src`.
    fn take(&mut self, n: usize) -> Result<Range<usize>, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let start = self.pos;
        self.pos += n;
        Ok(start..self.pos)
    }

    /// Splits off a reader over the next `n` bytes.
    fn sub(&mut self, n: usize) -> Result<Reader<'a>, DecodeError> {
        let r = self.take(n)?;
        Ok(Reader { src: self.src, pos: r.start, end: r.end })
    }

    fn slice(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let r = self.take(n)?;
        self.src.get(r).ok_or(DecodeError::Truncated)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.slice(N)?.try_into().map_err(|_| DecodeError::Truncated)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..MAX_VARINT_LEN {
            let b = self.u8()?;
            if i == MAX_VARINT_LEN - 1 && b > 1 {
                // More than 10 bytes, or bits beyond the 64th.
                return Err(DecodeError::VarintOverflow);
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(DecodeError::VarintOverlong);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| DecodeError::U32Overflow(v))
    }

    /// A varint length of at most the remaining bytes.
    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        usize::try_from(n).ok().filter(|&n| n <= self.remaining()).ok_or(DecodeError::Truncated)
    }

    /// A list count, checked against the remaining bytes: each element takes at least
    /// `min_elem` (≥ 1) bytes.
    pub(crate) fn count(&mut self, min_elem: usize) -> Result<usize, DecodeError> {
        let count = self.varint()?;
        let remaining = self.remaining();
        let fits = remaining / min_elem.max(1);
        usize::try_from(count).ok().filter(|&c| c <= fits).ok_or(DecodeError::BadCount { count, remaining })
    }

    /// The next `n` bytes as a zero-copy slice of the source.
    pub(crate) fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.len()?;
        let r = self.take(n)?;
        Ok(self.src.slice(r))
    }

    pub(crate) fn seq(&mut self) -> Result<Seq, DecodeError> {
        self.varint().map(Seq)
    }

    pub(crate) fn epoch(&mut self) -> Result<Epoch, DecodeError> {
        self.varint().map(Epoch)
    }

    fn digest(&mut self) -> Result<Digest, DecodeError> {
        self.array::<32>().map(Digest)
    }

    fn mid(&mut self) -> Result<Mid, DecodeError> {
        let pid = Pid(self.varint()?);
        let incarnation = Incarnation(u64::from_le_bytes(self.array::<8>()?));
        let counter = self.varint()?;
        Ok(Mid { source: Source { pid, incarnation }, counter })
    }

    /// The mid of a run-compressed list element whose tag (1 or 2) was just read.
    fn tagged_mid(&mut self, tag: u8, prev: &mut Option<Mid>) -> Result<Mid, DecodeError> {
        let mid = match tag {
            TAG_FULL => self.mid()?,
            TAG_NEXT => prev
                .and_then(|p| Some(Mid { source: p.source, counter: p.counter.checked_add(1)? }))
                .ok_or(DecodeError::BadContinuation)?,
            other => return Err(DecodeError::BadTag(other)),
        };
        *prev = Some(mid);
        Ok(mid)
    }

    /// A run-compressed mid with no `Noop` allowed.
    fn list_mid(&mut self, prev: &mut Option<Mid>) -> Result<Mid, DecodeError> {
        let tag = self.u8()?;
        self.tagged_mid(tag, prev)
    }

    fn entry(&mut self, prev: &mut Option<Mid>) -> Result<Entry, DecodeError> {
        match self.u8()? {
            TAG_NOOP => Ok(Entry::Noop),
            tag => {
                let mid = self.tagged_mid(tag, prev)?;
                Ok(Entry::Msg { mid, digest: self.digest()? })
            }
        }
    }

    /// A list of entries, as [`put_entries`] writes it.
    fn entries(&mut self) -> Result<Vec<Entry>, DecodeError> {
        let mut prev = None;
        self.list(1, |r| r.entry(&mut prev))
    }

    pub(crate) fn chain(&mut self) -> Result<Chain, DecodeError> {
        self.array::<32>().map(Chain)
    }

    fn signature_opt(&mut self) -> Result<Option<Signature>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.array::<64>().map(|b| Some(Signature(b))),
            tag => Err(DecodeError::BadTag(tag)),
        }
    }

    fn checkpoint(&mut self) -> Result<CheckpointInfo, DecodeError> {
        Ok(CheckpointInfo {
            seq: self.seq()?,
            size: self.varint()?,
            blocks: self.u32()?,
            digest: self.digest()?,
            chain: self.chain()?,
        })
    }

    /// A byte of known alarm bits.
    fn alarms(&mut self) -> Result<Alarms, DecodeError> {
        let bits = self.u8()?;
        Alarms::from_bits(bits).ok_or(DecodeError::BadTag(bits))
    }

    fn checkpoint_opt(&mut self) -> Result<Option<CheckpointInfo>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.checkpoint().map(Some),
            tag => Err(DecodeError::BadTag(tag)),
        }
    }

    /// A floor and its optional checkpoint, as [`put_floor`] writes them.
    pub(crate) fn forgotten(&mut self) -> Result<Forgotten, DecodeError> {
        Ok(Forgotten { floor: self.seq()?, checkpoint: self.checkpoint_opt()? })
    }

    fn range(&mut self) -> Result<SeqRange, DecodeError> {
        let first = self.varint()?;
        let delta = self.varint()?;
        let last = first.checked_add(delta).ok_or(DecodeError::BadRange { first, delta })?;
        Ok(SeqRange { first: Seq(first), last: Seq(last) })
    }

    /// A list of `count` elements (each at least `min_elem` bytes) read by `elem`.
    fn list<T>(
        &mut self,
        min_elem: usize,
        mut elem: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.count(min_elem)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(elem(self)?);
        }
        Ok(out)
    }

    /// The fields of a [`Data`], as [`put_data`] writes them.
    pub(crate) fn data(&mut self) -> Result<Data, DecodeError> {
        Ok(Data { mid: self.mid()?, ts: self.seq()?, payload: self.bytes()? })
    }

    /// `first` and a list of slots, as [`put_slots`] writes them.
    pub(crate) fn slots(&mut self) -> Result<(Seq, Vec<Slot>), DecodeError> {
        let first = self.seq()?;
        let mut prev = None;
        let slots = self.list(2, |r| Ok(Slot { epoch: r.epoch()?, entry: r.entry(&mut prev)? }))?;
        Ok((first, slots))
    }

    /// The fields of a message of `kind`.
    fn fields(&mut self, kind: Kind) -> Result<Message, DecodeError> {
        Ok(match kind {
            Kind::Data => Message::Data(self.data()?),
            Kind::Order => {
                let mut prev = None;
                Message::Order(Order {
                    items: self.list(34, |r| {
                        Ok(OrderItem { mid: r.list_mid(&mut prev)?, ts: r.seq()?, digest: r.digest()? })
                    })?,
                })
            }
            Kind::Assign => {
                let epoch = self.epoch()?;
                let epoch_first = self.seq()?;
                let first = self.seq()?;
                Message::Assign(Assign { epoch, epoch_first, first, entries: self.entries()? })
            }
            Kind::Accepted => Message::Accepted(Accepted { epoch: self.epoch()?, upto: self.seq()? }),
            Kind::Rejected => Message::Rejected(Rejected { promised: self.epoch()? }),
            Kind::Commit => {
                let epoch = self.epoch()?;
                Message::Commit(Commit { epoch, first: self.seq()?, entries: self.entries()? })
            }
            Kind::Heartbeat => Message::Heartbeat(Heartbeat {
                epoch: self.epoch()?,
                sequencer: Pid(self.varint()?),
                committed: self.seq()?,
                chain: self.chain()?,
                checkpoint: self.checkpoint_opt()?,
                signature: self.signature_opt()?,
            }),
            Kind::QueryEntries => Message::QueryEntries(QueryEntries { ranges: self.list(2, Self::range)? }),
            Kind::Entries => {
                let (first, slots) = self.slots()?;
                Message::Entries(Entries { first, slots })
            }
            Kind::Fetch => {
                let mut prev = None;
                Message::Fetch(Fetch { mids: self.list(1, |r| r.list_mid(&mut prev))? })
            }
            Kind::FetchBlocks => {
                let seq = self.seq()?;
                let blocks = self.list(1, Self::u32)?;
                Message::FetchBlocks(FetchBlocks { seq, blocks })
            }
            Kind::Block => Message::Block(Block {
                seq: self.seq()?,
                index: self.u32()?,
                digest: self.digest()?,
                bytes: self.bytes()?,
            }),
            Kind::Prepare => Message::Prepare(Prepare { epoch: self.epoch()?, from_seq: self.seq()? }),
            Kind::PreVote => Message::PreVote(PreVote { epoch: self.epoch()? }),
            Kind::PreVoteGranted => Message::PreVoteGranted(PreVoteGranted { epoch: self.epoch()? }),
            Kind::Ping => Message::Ping(Ping { nonce: self.varint()? }),
            Kind::Pong => Message::Pong(Pong { nonce: self.varint()?, committed: self.seq()?, alarms: self.alarms()? }),
            Kind::CheckpointReport => Message::CheckpointReport(self.checkpoint()?),
            Kind::Forgotten => Message::Forgotten(self.forgotten()?),
            Kind::Dropped => Message::Dropped(self.forgotten()?),
            Kind::Promise => {
                let epoch = self.epoch()?;
                let range = self.range()?;
                let highest = self.seq()?;
                let floor = self.seq()?;
                let checkpoint = self.checkpoint_opt()?;
                let mut prev_seq = range.first;
                let mut prev = None;
                let slots = self.list(3, |r| {
                    let delta = r.varint()?;
                    let seq =
                        prev_seq.0.checked_add(delta).ok_or(DecodeError::BadRange { first: prev_seq.0, delta })?;
                    prev_seq = Seq(seq);
                    Ok(PromisedSlot { seq: Seq(seq), slot: Slot { epoch: r.epoch()?, entry: r.entry(&mut prev)? } })
                })?;
                Message::Promise(Promise {
                    epoch,
                    first: range.first,
                    last: range.last,
                    highest,
                    floor,
                    checkpoint,
                    slots,
                })
            }
        })
    }

    /// One whole message: kind tag, length, and exactly that many bytes of fields.
    fn message(&mut self) -> Result<Message, DecodeError> {
        let tag = self.u8()?;
        let kind = *Kind::ALL.get(usize::from(tag)).ok_or(DecodeError::UnknownKind(tag))?;
        let len = self.len()?;
        let mut fields = self.sub(len)?;
        let msg = fields.fields(kind)?;
        match fields.remaining() {
            0 => Ok(msg),
            unread => Err(DecodeError::Trailing { kind, unread }),
        }
    }
}

/// Decodes a frame body: the messages after the header. Does no header or checksum check (see
/// [`decode_frame`]).
///
/// # Errors
///
/// Any [`DecodeError`] about messages and fields; never panics.
pub fn decode_body(body: &Bytes) -> Result<Vec<Message>, DecodeError> {
    let mut r = Reader::new(body);
    let mut out = Vec::new();
    while r.remaining() > 0 {
        out.push(r.message()?);
    }
    Ok(out)
}

/// One piece of a message too long for a datagram (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// The sender's series number.
    pub series: u64,
    /// This piece's place in the series, from 0.
    pub index: u32,
    /// The pieces in the series.
    pub count: u32,
    /// Its bytes (a zero-copy slice of the datagram).
    pub chunk: Bytes,
}

/// What one datagram carries, and how it travelled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Sent on the global channel in unicast mode ([`FLAG_GLOBAL`]): a data server relays it.
    pub global: bool,
    /// Its contents.
    pub body: Body,
}

/// The contents of a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Whole messages.
    Messages(Vec<Message>),
    /// A fragment of one message.
    Fragment(Fragment),
    /// A registration asking for, or a grant of, a lease in milliseconds.
    Register {
        /// The lease.
        lease_ms: u64,
    },
}

/// Decodes a whole frame (one datagram) that carries messages: checks the header, that the
/// body length is exactly the rest of the buffer, and the checksum, then decodes the messages.
///
/// # Errors
///
/// Any [`DecodeError`] ([`DecodeError::NotPlain`] for any other frame); never panics.
pub fn decode_frame(frame: &Bytes) -> Result<Vec<Message>, DecodeError> {
    match decode_datagram(frame)? {
        Datagram { global: false, body: Body::Messages(msgs) } => Ok(msgs),
        _ => Err(DecodeError::NotPlain),
    }
}

/// Decodes a whole frame (one datagram) as [`decode_frame`] does, accepting every flag.
///
/// # Errors
///
/// Any [`DecodeError`]; never panics.
pub fn decode_datagram(frame: &Bytes) -> Result<Datagram, DecodeError> {
    let header: &[u8; HEADER_LEN] =
        frame.get(..HEADER_LEN).and_then(|h| h.try_into().ok()).ok_or(DecodeError::TooShort { len: frame.len() })?;
    let [m0, m1, version, flags, l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    if [m0, m1] != MAGIC {
        return Err(DecodeError::BadMagic([m0, m1]));
    }
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let unknown = flags & !(FLAG_FRAGMENT | FLAG_GLOBAL) != 0;
    if flags != FLAG_REGISTER && unknown {
        return Err(DecodeError::UnknownFlags(flags));
    }
    let declared = u32::from_le_bytes([l0, l1, l2, l3]);
    let actual = frame.len() - HEADER_LEN;
    if usize::try_from(declared).ok() != Some(actual) {
        return Err(DecodeError::LengthMismatch { declared, actual });
    }
    let stored = u32::from_le_bytes([c0, c1, c2, c3]);
    let body = frame.slice(HEADER_LEN..);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&header[..8]), &body);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    let mut r = Reader::new(&body);
    if flags == FLAG_REGISTER {
        let lease_ms = r.varint()?;
        let padding = body.get(r.pos..).unwrap_or_default();
        return match padding.iter().filter(|b| **b != 0).count() {
            0 => Ok(Datagram { global: false, body: Body::Register { lease_ms } }),
            unread => Err(DecodeError::FrameTrailing { unread }),
        };
    }
    let rest = body.slice(r.pos..);
    let contents = if flags & FLAG_FRAGMENT != 0 {
        Body::Fragment(decode_fragment(&rest)?)
    } else {
        Body::Messages(decode_body(&rest)?)
    };
    Ok(Datagram { global: flags & FLAG_GLOBAL != 0, body: contents })
}

fn decode_fragment(body: &Bytes) -> Result<Fragment, DecodeError> {
    let mut r = Reader::new(body);
    let series = r.varint()?;
    let index = r.u32()?;
    let count = r.u32()?;
    if index >= count {
        return Err(DecodeError::BadFragment { index, count });
    }
    Ok(Fragment { series, index, count, chunk: body.slice(r.pos..) })
}

/// Strategies for arbitrary protocol values, shared by the tests of every format built on
/// these primitives (messages here, records in [`crate::record_format`]).
#[cfg(test)]
pub(crate) mod arb {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// A u64 that is often small, sometimes anything, sometimes at the varint edges.
    pub(crate) fn arb_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => 0u64..300,
            3 => any::<u64>(),
            1 => prop::sample::select(vec![127u64, 128, 16_383, 16_384, u64::MAX - 1, u64::MAX]),
        ]
    }

    pub(crate) fn arb_seq() -> impl Strategy<Value = Seq> {
        arb_u64().prop_map(Seq)
    }

    pub(crate) fn arb_epoch() -> impl Strategy<Value = Epoch> {
        arb_u64().prop_map(Epoch)
    }

    pub(crate) fn arb_pid() -> impl Strategy<Value = Pid> {
        prop_oneof![0u64..8, any::<u64>()].prop_map(Pid)
    }

    pub(crate) fn arb_digest() -> impl Strategy<Value = Digest> {
        any::<[u8; 32]>().prop_map(Digest)
    }

    pub(crate) fn arb_mid() -> impl Strategy<Value = Mid> {
        (arb_pid(), prop_oneof![0u64..3, any::<u64>()], prop_oneof![1u64..100, arb_u64()])
            .prop_map(|(pid, inc, counter)| Mid { source: Source { pid, incarnation: Incarnation(inc) }, counter })
    }

    pub(crate) fn arb_payload() -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 0..200).prop_map(Bytes::from)
    }

    /// Mid list elements, before folding: 0 = none (a `Noop` where allowed), 1 = this fresh
    /// mid, 2.. = continue the previous mid (when it can be continued).
    pub(crate) fn arb_choices() -> impl Strategy<Value = Vec<(u8, Mid)>> {
        vec((0u8..6, arb_mid()), 0..40)
    }

    /// Folds choices into a list where most mids continue the previous one; `None` is a `Noop`.
    pub(crate) fn fold_mids(choices: Vec<(u8, Mid)>, noops: bool) -> Vec<Option<Mid>> {
        let mut prev: Option<Mid> = None;
        choices
            .into_iter()
            .map(|(c, fresh)| {
                if c == 0 && noops {
                    return None;
                }
                let mid = match prev {
                    Some(p) if c >= 2 && p.counter < u64::MAX => p.next(),
                    _ => fresh,
                };
                prev = Some(mid);
                Some(mid)
            })
            .collect()
    }

    pub(crate) fn arb_mids() -> impl Strategy<Value = Vec<Mid>> {
        arb_choices().prop_map(|c| fold_mids(c, false).into_iter().flatten().collect())
    }

    pub(crate) fn arb_entries() -> impl Strategy<Value = Vec<Entry>> {
        (arb_choices(), vec(arb_digest(), 40)).prop_map(|(c, digests)| {
            fold_mids(c, true)
                .into_iter()
                .zip(digests)
                .map(|(m, digest)| match m {
                    Some(mid) => Entry::Msg { mid, digest },
                    None => Entry::Noop,
                })
                .collect()
        })
    }

    pub(crate) fn arb_range() -> impl Strategy<Value = SeqRange> {
        (arb_u64(), arb_u64()).prop_map(|(a, b)| SeqRange { first: Seq(a.min(b)), last: Seq(a.max(b)) })
    }

    pub(crate) fn arb_u32() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..200, any::<u32>(), Just(u32::MAX)]
    }

    pub(crate) fn arb_data() -> impl Strategy<Value = Data> {
        (arb_mid(), arb_seq(), arb_payload()).prop_map(|(mid, ts, payload)| Data { mid, ts, payload })
    }

    pub(crate) fn arb_data_msg() -> impl Strategy<Value = Message> {
        arb_data().prop_map(Message::Data)
    }

    pub(crate) fn arb_order() -> impl Strategy<Value = Message> {
        (arb_mids(), vec((arb_seq(), arb_digest()), 40)).prop_map(|(mids, rest)| {
            let items = mids.into_iter().zip(rest).map(|(mid, (ts, digest))| OrderItem { mid, ts, digest }).collect();
            Message::Order(Order { items })
        })
    }

    pub(crate) fn arb_assign() -> impl Strategy<Value = Message> {
        (arb_epoch(), arb_seq(), arb_seq(), arb_entries()).prop_map(|(epoch, epoch_first, first, entries)| {
            Message::Assign(Assign { epoch, epoch_first, first, entries })
        })
    }

    pub(crate) fn arb_accepted() -> impl Strategy<Value = Message> {
        (arb_epoch(), arb_seq()).prop_map(|(epoch, upto)| Message::Accepted(Accepted { epoch, upto }))
    }

    pub(crate) fn arb_rejected() -> impl Strategy<Value = Message> {
        arb_epoch().prop_map(|promised| Message::Rejected(Rejected { promised }))
    }

    pub(crate) fn arb_commit() -> impl Strategy<Value = Message> {
        (arb_epoch(), arb_seq(), arb_choices()).prop_map(|(epoch, first, c)| {
            let entries = fold_mids(c, true)
                .into_iter()
                .map(|m| {
                    m.map_or(Entry::Noop, |mid| Entry::Msg { mid, digest: Digest::of(&mid.counter.to_le_bytes()) })
                })
                .collect();
            Message::Commit(Commit { epoch, first, entries })
        })
    }

    pub(crate) fn arb_checkpoint() -> impl Strategy<Value = CheckpointInfo> {
        (arb_seq(), arb_u64(), arb_u32(), arb_digest(), any::<[u8; 32]>()).prop_map(
            |(seq, size, blocks, digest, chain)| CheckpointInfo { seq, size, blocks, digest, chain: Chain(chain) },
        )
    }

    pub(crate) fn arb_heartbeat() -> impl Strategy<Value = Message> {
        let signature = proptest::option::of(proptest::collection::vec(any::<u8>(), 64));
        (arb_epoch(), arb_pid(), arb_seq(), any::<[u8; 32]>(), proptest::option::of(arb_checkpoint()), signature)
            .prop_map(|(epoch, sequencer, committed, chain, checkpoint, signature)| {
                let signature = signature.map(|s| Signature(s.try_into().expect("64 bytes")));
                Message::Heartbeat(Heartbeat {
                    epoch,
                    sequencer,
                    committed,
                    chain: Chain(chain),
                    checkpoint,
                    signature,
                })
            })
    }

    pub(crate) fn arb_checkpoint_msgs() -> impl Strategy<Value = Message> {
        prop_oneof![
            arb_checkpoint().prop_map(Message::CheckpointReport),
            (arb_seq(), proptest::option::of(arb_checkpoint()))
                .prop_map(|(floor, checkpoint)| Message::Forgotten(Forgotten { floor, checkpoint })),
            (arb_seq(), proptest::option::of(arb_checkpoint()))
                .prop_map(|(floor, checkpoint)| Message::Dropped(Forgotten { floor, checkpoint })),
            any::<u64>().prop_map(|nonce| Message::Ping(Ping { nonce })),
            (any::<u64>(), arb_seq(), 0u8..16).prop_map(|(nonce, committed, bits)| Message::Pong(Pong {
                nonce,
                committed,
                alarms: Alarms::from_bits(bits).expect("known bits"),
            })),
        ]
    }

    pub(crate) fn arb_query_entries() -> impl Strategy<Value = Message> {
        vec(arb_range(), 0..40).prop_map(|ranges| Message::QueryEntries(QueryEntries { ranges }))
    }

    /// Slots whose entries are mostly runs, as a commit server stores them.
    pub(crate) fn arb_slots() -> impl Strategy<Value = Vec<Slot>> {
        (arb_entries(), vec(arb_epoch(), 40)).prop_map(|(entries, epochs)| {
            entries.into_iter().zip(epochs).map(|(entry, epoch)| Slot { epoch, entry }).collect()
        })
    }

    pub(crate) fn arb_entries_msg() -> impl Strategy<Value = Message> {
        (arb_seq(), arb_slots()).prop_map(|(first, slots)| Message::Entries(Entries { first, slots }))
    }

    pub(crate) fn arb_fetch() -> impl Strategy<Value = Message> {
        arb_mids().prop_map(|mids| Message::Fetch(Fetch { mids }))
    }

    pub(crate) fn arb_fetch_blocks() -> impl Strategy<Value = Message> {
        (arb_seq(), vec(arb_u32(), 0..40)).prop_map(|(seq, blocks)| Message::FetchBlocks(FetchBlocks { seq, blocks }))
    }

    pub(crate) fn arb_block() -> impl Strategy<Value = Message> {
        (arb_seq(), arb_u32(), arb_digest(), arb_payload())
            .prop_map(|(seq, index, digest, bytes)| Message::Block(Block { seq, index, digest, bytes }))
    }

    pub(crate) fn arb_prepare() -> impl Strategy<Value = Message> {
        (arb_epoch(), arb_seq()).prop_map(|(epoch, from_seq)| Message::Prepare(Prepare { epoch, from_seq }))
    }

    pub(crate) fn arb_promise() -> impl Strategy<Value = Message> {
        let numbers = (arb_seq(), arb_seq(), proptest::option::of(arb_checkpoint()));
        (arb_epoch(), arb_range(), numbers, arb_entries(), vec((0..5u64, arb_epoch()), 40)).prop_map(
            |(epoch, range, (highest, floor, checkpoint), entries, gaps)| {
                let mut seq = range.first;
                let slots = entries
                    .into_iter()
                    .zip(gaps)
                    .map_while(|(entry, (gap, e))| {
                        seq = Seq(seq.0.checked_add(gap)?);
                        Some(PromisedSlot { seq, slot: Slot { epoch: e, entry } })
                    })
                    .collect();
                Message::Promise(Promise {
                    epoch,
                    first: range.first,
                    last: range.last,
                    highest,
                    floor,
                    checkpoint,
                    slots,
                })
            },
        )
    }

    pub(crate) fn arb_pre_vote() -> impl Strategy<Value = Message> {
        prop_oneof![
            arb_epoch().prop_map(|epoch| Message::PreVote(PreVote { epoch })),
            arb_epoch().prop_map(|epoch| Message::PreVoteGranted(PreVoteGranted { epoch })),
        ]
    }

    pub(crate) fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            arb_pre_vote(),
            arb_prepare(),
            arb_promise(),
            arb_data_msg(),
            arb_order(),
            arb_assign(),
            arb_accepted(),
            arb_rejected(),
            arb_commit(),
            arb_heartbeat(),
            arb_query_entries(),
            arb_entries_msg(),
            arb_fetch(),
            arb_fetch_blocks(),
            arb_block(),
            arb_checkpoint_msgs(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::arb::*;
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    // ---- helpers ----------------------------------------------------------------------------

    /// Checks that `msgs` survive a frame round trip, and that `encoded_len` is exact.
    fn assert_round_trip(msgs: &[Message]) -> Result<(), TestCaseError> {
        let frame = encode_frame(msgs);
        let expected: usize = HEADER_LEN + msgs.iter().map(encoded_len).sum::<usize>();
        prop_assert_eq!(frame.len(), expected);
        let decoded = decode_frame(&frame);
        prop_assert_eq!(decoded.as_deref(), Ok(msgs));
        let body = frame.slice(HEADER_LEN..);
        let decoded = decode_body(&body);
        prop_assert_eq!(decoded.as_deref(), Ok(msgs));
        Ok(())
    }

    /// A frame around an arbitrary body, with a correct header and checksum.
    fn frame_around(body: &[u8]) -> Bytes {
        let mut buf = BytesMut::new();
        start_frame(&mut buf);
        buf.put_slice(body);
        seal(&mut buf)
    }

    fn varint_bytes(v: u64) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.varint(v);
        buf.to_vec()
    }

    /// Decodes one varint from `bytes`; returns the value and the bytes it used.
    fn read_varint(bytes: &[u8]) -> Result<(u64, usize), DecodeError> {
        let src = Bytes::copy_from_slice(bytes);
        let mut r = Reader::new(&src);
        let v = r.varint()?;
        Ok((v, r.pos))
    }

    /// A body holding one message of `kind` whose fields are `fields`.
    fn body_of(kind: Kind, fields: &[u8]) -> Bytes {
        let mut b = vec![kind_tag(kind)];
        b.extend(varint_bytes(fields.len() as u64));
        b.extend_from_slice(fields);
        Bytes::from(b)
    }

    // ---- round trips ------------------------------------------------------------------------

    macro_rules! round_trip_kind {
        ($($name:ident => $strategy:expr;)*) => {
            proptest! {
                $(
                    #[test]
                    fn $name(msg in $strategy) {
                        assert_round_trip(std::slice::from_ref(&msg))?;
                    }
                )*
            }
        };
    }

    round_trip_kind! {
        round_trip_data => arb_data_msg();
        round_trip_order => arb_order();
        round_trip_assign => arb_assign();
        round_trip_accepted => arb_accepted();
        round_trip_rejected => arb_rejected();
        round_trip_commit => arb_commit();
        round_trip_heartbeat => arb_heartbeat();
        round_trip_query_entries => arb_query_entries();
        round_trip_entries => arb_entries_msg();
        round_trip_fetch => arb_fetch();
        round_trip_fetch_blocks => arb_fetch_blocks();
        round_trip_block => arb_block();
        round_trip_prepare => arb_prepare();
        round_trip_promise => arb_promise();
        round_trip_pre_vote => arb_pre_vote();
    }

    proptest! {
        #[test]
        fn round_trip_many(msgs in vec(arb_message(), 0..8)) {
            assert_round_trip(&msgs)?;
        }

        #[test]
        fn packer_splits_into_fitting_minimal_frames(
            msgs in vec(arb_message(), 0..30),
            max in prop_oneof![0usize..300, 300usize..6000],
        ) {
            let mut packer = FramePacker::new(max);
            let mut frames = Vec::new();
            let mut expected = Vec::new();
            for msg in &msgs {
                let alone = HEADER_LEN + encoded_len(msg);
                match packer.push(msg) {
                    Ok(done) => {
                        prop_assert!(alone <= max);
                        expected.push(msg.clone());
                        frames.extend(done);
                    }
                    Err(e) => {
                        prop_assert!(alone > max);
                        prop_assert_eq!(e, EncodeError::TooLarge { len: alone, max });
                    }
                }
            }
            frames.extend(packer.finish());
            prop_assert!(packer.finish().is_none());
            prop_assert!(packer.is_empty());

            let mut decoded_frames = Vec::new();
            for frame in &frames {
                prop_assert!(frame.len() <= max);
                let decoded = decode_frame(frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(!decoded.is_empty());
                decoded_frames.push(decoded);
            }
            // Greedy, hence minimal: each frame was closed only because the next message did
            // not fit in it.
            for (frame, next) in frames.iter().zip(decoded_frames.iter().skip(1)) {
                prop_assert!(frame.len() + encoded_len(&next[0]) > max);
            }
            let all: Vec<Message> = decoded_frames.into_iter().flatten().collect();
            prop_assert_eq!(all, expected);
        }
    }

    proptest! {
        /// A message split into fragments comes back whole from its chunks in index order;
        /// every fragment fits the datagram size and says its place in the series.
        #[test]
        fn fragments_reassemble_into_the_message(msg in arb_message(), max in 40usize..400, series in any::<u64>()) {
            let frames = encode_fragments(&msg, series, max, 0).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut whole = Vec::new();
            for (i, frame) in frames.iter().enumerate() {
                prop_assert!(frame.len() <= max);
                prop_assert_eq!(decode_frame(frame), Err(DecodeError::NotPlain));
                let Ok(Datagram { body: Body::Fragment(f), .. }) = decode_datagram(frame) else {
                    return Err(TestCaseError::fail("not a fragment"));
                };
                prop_assert_eq!((f.series, f.index as usize, f.count as usize), (series, i, frames.len()));
                whole.extend_from_slice(&f.chunk);
            }
            prop_assert_eq!(decode_body(&Bytes::from(whole)), Ok(vec![msg]));
        }
    }

    #[test]
    fn fragment_errors() {
        let data = Message::Data(Data {
            mid: Mid { source: Source { pid: Pid(1), incarnation: Incarnation(2) }, counter: 3 },
            ts: Seq(0),
            payload: Bytes::from(vec![7u8; 100]),
        });
        let too_small = encode_fragments(&data, 1, HEADER_LEN + FRAGMENT_HEADER_MAX, 0);
        assert!(matches!(too_small, Err(EncodeError::TooLarge { .. })));
        let frame = encode_fragments(&data, 1, 64, 0).expect("fragments")[0].to_vec();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = frame.clone();
            f(&mut v);
            let crc = crc32c::crc32c_append(crc32c::crc32c(&v[0..8]), &v[HEADER_LEN..]);
            v[8..12].copy_from_slice(&crc.to_le_bytes());
            decode_datagram(&Bytes::from(v))
        };
        // Series 1, index 0, count 4: make the index 4, then the count 0.
        assert_eq!(with(&|v| v[13] = 4), Err(DecodeError::BadFragment { index: 4, count: 4 }));
        assert_eq!(with(&|v| v[14] = 0), Err(DecodeError::BadFragment { index: 0, count: 0 }));
        assert_eq!(with(&|v| v[3] = 16), Err(DecodeError::UnknownFlags(16)));
        assert_eq!(with(&|v| v[3] = FLAG_REGISTER | FLAG_GLOBAL), Err(DecodeError::UnknownFlags(10)));
        assert_eq!(with(&|v| v[3] = FLAG_GLOBAL | 4), Err(DecodeError::UnknownFlags(6)), "the old relayed flag");
    }

    /// Unicast mode: a global frame says so and keeps its contents, also as fragments; a
    /// register frame carries its lease.
    #[test]
    fn global_and_register_frames() {
        let data = Message::Data(Data {
            mid: Mid { source: Source { pid: Pid(1), incarnation: Incarnation(2) }, counter: 3 },
            ts: Seq(0),
            payload: Bytes::from(vec![7u8; 100]),
        });
        let mut packer = FramePacker::with_flags(1_000, FLAG_GLOBAL);
        assert_eq!(packer.push(&data), Ok(None));
        let global = packer.finish().expect("a frame");
        let decoded = decode_datagram(&global).expect("decodes");
        assert_eq!(decoded, Datagram { global: true, body: Body::Messages(vec![data.clone()]) });
        assert_eq!(decode_frame(&global), Err(DecodeError::NotPlain), "not a plain frame");

        let fragments = encode_fragments(&data, 9, 64, FLAG_GLOBAL).expect("fragments");
        let fragment = decode_datagram(&fragments[1]).expect("decodes");
        assert!(fragment.global);
        assert!(matches!(fragment.body, Body::Fragment(Fragment { series: 9, index: 1, .. })));

        let register = decode_datagram(&register_frame(3_000)).expect("decodes");
        assert_eq!(register.body, Body::Register { lease_ms: 3_000 });
        let mut long = register_frame(3_000).to_vec();
        long.push(1);
        long[4] += 1;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&long[0..8]), &long[HEADER_LEN..]);
        long[8..12].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_datagram(&Bytes::from(long)), Err(DecodeError::FrameTrailing { unread: 1 }));
    }

    // ---- robustness -------------------------------------------------------------------------

    proptest! {
        #[test]
        fn random_frames_never_panic(bytes in vec(any::<u8>(), 0..300)) {
            let _ = decode_frame(&Bytes::from(bytes));
        }

        #[test]
        fn random_bodies_never_panic(bytes in vec(any::<u8>(), 0..300)) {
            let body = Bytes::from(bytes);
            let result = decode_body(&body);
            // Past a valid header and checksum, a frame decodes exactly as its body does.
            prop_assert_eq!(decode_frame(&frame_around(&body)), result);
        }

        /// Bodies made of plausible message headers with random (or slightly wrong-length)
        /// contents reach deep into the field decoders.
        #[test]
        fn structured_random_bodies_never_panic(
            parts in vec((0u8..14, vec(any::<u8>(), 0..60), -2i64..3), 0..6),
        ) {
            let mut body = Vec::new();
            for (tag, fields, skew) in parts {
                body.push(tag);
                body.extend(varint_bytes((fields.len() as i64 + skew).max(0) as u64));
                body.extend(fields);
            }
            check_decode_is_stable(&Bytes::from(body))?;
        }

        /// Valid bodies with a few random bytes overwritten.
        #[test]
        fn mutated_bodies_never_panic(
            msgs in vec(arb_message(), 1..4),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let frame = encode_frame(&msgs);
            let mut body = frame[HEADER_LEN..].to_vec();
            for (at, value) in edits {
                let i = at.index(body.len());
                body[i] = value;
            }
            check_decode_is_stable(&Bytes::from(body))?;
        }

        #[test]
        fn every_strict_prefix_of_a_frame_is_an_error(msgs in vec(arb_message(), 1..4)) {
            let frame = encode_frame(&msgs);
            for n in 0..frame.len() {
                prop_assert!(decode_frame(&frame.slice(..n)).is_err(), "prefix of {} bytes", n);
            }
        }

        #[test]
        fn every_strict_prefix_of_a_message_is_an_error(msg in arb_message()) {
            let frame = encode_frame(std::slice::from_ref(&msg));
            let body = frame.slice(HEADER_LEN..);
            for n in 1..body.len() {
                prop_assert!(decode_body(&body.slice(..n)).is_err(), "prefix of {} bytes", n);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn every_bit_flip_is_an_error(msgs in vec(arb_message(), 1..3)) {
            let frame = encode_frame(&msgs).to_vec();
            for i in 0..frame.len() {
                for bit in 0..8 {
                    let mut flipped = frame.clone();
                    flipped[i] ^= 1 << bit;
                    let result = decode_frame(&Bytes::from(flipped));
                    prop_assert!(result.is_err(), "flip of bit {} of byte {}", bit, i);
                }
            }
        }
    }

    /// Decoding `body` does not panic, and when it succeeds, re-encoding and decoding again
    /// gives the same messages.
    fn check_decode_is_stable(body: &Bytes) -> Result<(), TestCaseError> {
        if let Ok(msgs) = decode_body(body) {
            let again = encode_frame(&msgs);
            prop_assert_eq!(decode_frame(&again), Ok(msgs));
        }
        Ok(())
    }

    // ---- unit tests -------------------------------------------------------------------------

    #[test]
    fn varint_edges() {
        for (v, bytes) in [
            (0u64, vec![0x00]),
            (1, vec![0x01]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (300, vec![0xac, 0x02]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (u64::MAX, vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ] {
            assert_eq!(varint_bytes(v), bytes, "encoding {v}");
            assert_eq!(varint_len(v), bytes.len(), "length of {v}");
            assert_eq!(read_varint(&bytes), Ok((v, bytes.len())), "decoding {v}");
        }
        assert_eq!(varint_len(1 << 63), 10);
        assert_eq!(varint_len((1 << 63) - 1), 9);
    }

    #[test]
    fn varint_rejects_bad_input() {
        // 11 bytes: the 10th still has the continuation bit.
        let mut eleven = vec![0x80; 10];
        eleven.push(0x00);
        assert_eq!(read_varint(&eleven), Err(DecodeError::VarintOverflow));
        assert_eq!(read_varint(&[0xff; 11]), Err(DecodeError::VarintOverflow));
        // 10 bytes whose value needs 65 bits.
        let mut big = vec![0xff; 9];
        big.push(0x02);
        assert_eq!(read_varint(&big), Err(DecodeError::VarintOverflow));
        // Overlong: a trailing zero byte.
        assert_eq!(read_varint(&[0x80, 0x00]), Err(DecodeError::VarintOverlong));
        assert_eq!(read_varint(&[0xff, 0x80, 0x00]), Err(DecodeError::VarintOverlong));
        let mut ten_zero = vec![0x80; 9];
        ten_zero.push(0x00);
        assert_eq!(read_varint(&ten_zero), Err(DecodeError::VarintOverlong));
        // Truncated.
        assert_eq!(read_varint(&[]), Err(DecodeError::Truncated));
        assert_eq!(read_varint(&[0x80]), Err(DecodeError::Truncated));
        assert_eq!(read_varint(&[0xff; 9]), Err(DecodeError::Truncated));
    }

    #[test]
    fn kind_tags_are_indexes_in_all() {
        for (i, kind) in Kind::ALL.iter().enumerate() {
            assert_eq!(usize::from(kind_tag(*kind)), i);
        }
        assert_eq!(kind_tag(Kind::Data), 0);
        assert_eq!(kind_tag(Kind::Block), 11);
    }

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn golden_accepted_frame() {
        let msg = Message::Accepted(Accepted { epoch: Epoch::initial(), upto: Seq(5) });
        let frame = encode_frame(std::slice::from_ref(&msg));
        let expected: &[u8] = &[
            0x53, 0x4D, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x55, 0x8D, 0x04, 0x7C, // header
            0x03, 0x04, 0x80, 0x80, 0x04, 0x05, // Accepted
        ];
        assert_eq!(&frame[..], expected, "got {:02X?}", &frame[..]);
        assert_eq!(decode_frame(&frame), Ok(vec![msg]));
    }

    #[test]
    fn golden_commit_body() {
        let m = Mid { source: Source { pid: Pid(7), incarnation: Incarnation(0x0102_0304_0506_0708) }, counter: 1 };
        let msg = Message::Commit(Commit {
            epoch: Epoch::initial(),
            first: Seq(10),
            entries: vec![
                Entry::Msg { mid: m, digest: Digest([0xD1; 32]) },
                Entry::Msg { mid: m.next(), digest: Digest([0xD2; 32]) },
                Entry::Noop,
                Entry::Msg { mid: m.next().next(), digest: Digest([0xD3; 32]) },
            ],
        });
        let frame = encode_frame(std::slice::from_ref(&msg));
        let digest = |d: u8| [d; 32];
        let expected: Vec<u8> = [0x05, 0x73, 0x80, 0x80, 0x04, 0x0A, 0x04, 0x01, 0x07, 0x08, 0x07, 0x06, 0x05, 0x04]
            .into_iter()
            .chain([0x03, 0x02, 0x01, 0x01])
            .chain(digest(0xD1))
            .chain([0x02])
            .chain(digest(0xD2))
            .chain([0x00, 0x02])
            .chain(digest(0xD3))
            .collect();
        assert_eq!(&frame[HEADER_LEN..], &expected[..], "got {:02X?}", &frame[HEADER_LEN..]);
        assert_eq!(decode_frame(&frame), Ok(vec![msg]));
    }

    #[test]
    fn empty_frame() {
        let frame = encode_frame(&[]);
        assert_eq!(frame.len(), HEADER_LEN);
        assert_eq!(decode_frame(&frame), Ok(vec![]));
        assert_eq!(decode_body(&Bytes::new()), Ok(vec![]));
        let mut packer = FramePacker::new(1500);
        assert_eq!(packer.finish(), None);
    }

    #[test]
    fn payloads_are_zero_copy() {
        let payload = Bytes::from(vec![7u8; 100]);
        let msgs = vec![
            Message::Data(Data { mid: Mid::default(), ts: Seq(3), payload: payload.clone() }),
            Message::Block(Block { seq: Seq(9), index: 2, digest: Digest::of(&payload), bytes: payload.clone() }),
        ];
        let frame = encode_frame(&msgs);
        let decoded = decode_frame(&frame).unwrap();
        assert_eq!(decoded, msgs);
        let range = frame.as_ptr_range();
        for msg in &decoded {
            let bytes = match msg {
                Message::Data(d) => &d.payload,
                Message::Block(b) => &b.bytes,
                _ => unreachable!(),
            };
            assert!(range.contains(&bytes.as_ptr()), "payload was copied");
        }
    }

    #[test]
    fn header_errors() {
        let msg = Message::Rejected(Rejected { promised: Epoch(3) });
        let frame = encode_frame(&[msg]).to_vec();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = frame.clone();
            f(&mut v);
            decode_frame(&Bytes::from(v))
        };
        assert_eq!(with(&|v| v.truncate(11)), Err(DecodeError::TooShort { len: 11 }));
        assert_eq!(with(&|v| v[0] = b'X'), Err(DecodeError::BadMagic(*b"XM")));
        assert_eq!(with(&|v| v[2] = 1), Err(DecodeError::UnsupportedVersion(1)));
        assert_eq!(with(&|v| v[3] = 0x80), Err(DecodeError::UnknownFlags(0x80)));
        assert_eq!(with(&|v| v.push(0)), Err(DecodeError::LengthMismatch { declared: 3, actual: 4 }));
        assert_eq!(with(&|v| v[4] = 1), Err(DecodeError::LengthMismatch { declared: 1, actual: 3 }));
        assert!(matches!(with(&|v| v[13] ^= 1), Err(DecodeError::Checksum { .. })));
        assert!(matches!(with(&|v| v[8] ^= 1), Err(DecodeError::Checksum { .. })));
    }

    #[test]
    fn body_errors() {
        let body = |b: &[u8]| decode_body(&Bytes::copy_from_slice(b));
        assert_eq!(body(&[21, 0]), Err(DecodeError::UnknownKind(21)));
        assert_eq!(body(&[255]), Err(DecodeError::UnknownKind(255)));
        // Length past the end of the body.
        assert_eq!(body(&[4, 2, 1]), Err(DecodeError::Truncated));
        // Fields need more than the length.
        assert_eq!(body(&[3, 1, 1, 1]), Err(DecodeError::Truncated));
        // Fields leave bytes over.
        assert_eq!(body(&[4, 2, 1, 1]), Err(DecodeError::Trailing { kind: Kind::Rejected, unread: 1 }));
        // Fetch: continuing with no previous mid; tag 0 where no Noop is allowed; unknown tag.
        assert_eq!(decode_body(&body_of(Kind::Fetch, &[1, 2])), Err(DecodeError::BadContinuation));
        assert_eq!(decode_body(&body_of(Kind::Fetch, &[1, 0])), Err(DecodeError::BadTag(0)));
        assert_eq!(decode_body(&body_of(Kind::Commit, &[1, 1, 1, 3])), Err(DecodeError::BadTag(3)));
        // Continuing a mid whose counter is u64::MAX.
        let mut fields = vec![2, 1, 0];
        fields.extend([0; 8]);
        fields.extend(varint_bytes(u64::MAX));
        fields.push(2);
        assert_eq!(decode_body(&body_of(Kind::Fetch, &fields)), Err(DecodeError::BadContinuation));
        // A range whose last number overflows.
        let mut fields = vec![1];
        fields.extend(varint_bytes(u64::MAX));
        fields.push(1);
        assert_eq!(
            decode_body(&body_of(Kind::QueryEntries, &fields)),
            Err(DecodeError::BadRange { first: u64::MAX, delta: 1 })
        );
        // A block index beyond u32.
        let mut fields = vec![1, 1];
        fields.extend(varint_bytes(1 << 32));
        assert_eq!(decode_body(&body_of(Kind::FetchBlocks, &fields)), Err(DecodeError::U32Overflow(1 << 32)));
    }

    #[test]
    fn ill_formed_range_is_rejected_by_the_receiver() {
        let msg = Message::QueryEntries(QueryEntries { ranges: vec![SeqRange { first: Seq(10), last: Seq(3) }] });
        assert!(matches!(decode_frame(&encode_frame(&[msg])), Err(DecodeError::BadRange { .. })));
    }

    #[test]
    fn huge_counts_are_rejected_before_allocating() {
        // Fields before the count of each kind with a list, then the count u64::MAX.
        let cases: [(Kind, &[u8]); 7] = [
            (Kind::Order, &[]),
            (Kind::Assign, &[1, 1, 1]),
            (Kind::Commit, &[1, 1]),
            (Kind::QueryEntries, &[]),
            (Kind::Entries, &[1]),
            (Kind::Fetch, &[]),
            (Kind::FetchBlocks, &[1]),
        ];
        for (kind, prefix) in cases {
            for count in [u64::MAX, 1 << 40, 1000] {
                let mut fields = prefix.to_vec();
                fields.extend(varint_bytes(count));
                fields.extend([0x01; 20]);
                assert_eq!(
                    decode_body(&body_of(kind, &fields)),
                    Err(DecodeError::BadCount { count, remaining: 20 }),
                    "{kind:?} with count {count}"
                );
            }
        }
        // A count that fits the bytes but whose elements run out is truncated.
        assert_eq!(decode_body(&body_of(Kind::Fetch, &[2, 1, 1])), Err(DecodeError::Truncated));
    }

    #[test]
    fn packer_edge_cases() {
        let small = Message::Rejected(Rejected { promised: Epoch(1) });
        let len = encoded_len(&small);
        assert_eq!(len, 3);
        // A datagram that holds exactly two messages.
        let mut packer = FramePacker::new(HEADER_LEN + 2 * len);
        assert_eq!(packer.push(&small), Ok(None));
        assert_eq!(packer.push(&small), Ok(None));
        let first = packer.push(&small).unwrap().expect("third message starts a new frame");
        assert_eq!(first.len(), HEADER_LEN + 2 * len);
        assert_eq!(decode_frame(&first), Ok(vec![small.clone(), small.clone()]));
        let last = packer.finish().unwrap();
        assert_eq!(decode_frame(&last), Ok(vec![small.clone()]));
        // Too small for anything: the packer is left unchanged.
        let mut tiny = FramePacker::new(HEADER_LEN + len - 1);
        assert_eq!(tiny.push(&small), Err(EncodeError::TooLarge { len: HEADER_LEN + len, max: HEADER_LEN + len - 1 }));
        assert!(tiny.is_empty());
        assert_eq!(tiny.finish(), None);
        // Huge limits are lowered to the largest frame.
        assert_eq!(FramePacker::new(usize::MAX).max_datagram() as u64, u64::from(u32::MAX) + 12);
    }

    #[test]
    fn errors_display() {
        let e = DecodeError::LengthMismatch { declared: 5, actual: 3 };
        assert_eq!(e.to_string(), "header declares a 5-byte body but 3 bytes follow it");
        let e = EncodeError::TooLarge { len: 2000, max: 1500 };
        assert_eq!(e.to_string(), "message needs a 2000-byte frame but datagrams are limited to 1500 bytes");
    }
}
