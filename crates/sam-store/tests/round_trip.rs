//! Property: whatever the record sizes, segment size and flush points, every appended record
//! comes back, in order and at its position, after any number of reopens.

use proptest::prelude::*;
use sam_store::{Durability, Log, LogOptions, Position};

/// One run of the log between two reopens: the records appended, and after which of them to
/// flush.
type Run = Vec<(Vec<u8>, bool)>;

fn runs() -> impl Strategy<Value = Vec<Run>> {
    let record = (prop::collection::vec(any::<u8>(), 0..600), any::<bool>());
    prop::collection::vec(prop::collection::vec(record, 0..40), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_records_survive_reopen(runs in runs(), segment_size_bytes in 64u64..4096, preallocate: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        // Page-cache durability keeps the test fast; the format and recovery are the same.
        let options = LogOptions { durability: Durability::Os, segment_size_bytes, preallocate, ..LogOptions::default() };
        let mut expected: Vec<Vec<u8>> = Vec::new();
        for run in runs {
            let (mut log, recovered) = Log::open(dir.path(), options.clone()).expect("open");
            prop_assert!(recovered.torn_tail.is_none());
            let found: Vec<(Position, Vec<u8>)> =
                recovered.records.iter().map(|(position, body)| (*position, body.to_vec())).collect();
            let wanted: Vec<(Position, Vec<u8>)> =
                expected.iter().enumerate().map(|(index, body)| (Position(index as u64), body.clone())).collect();
            prop_assert_eq!(found, wanted);
            for (body, flush) in run {
                prop_assert_eq!(log.append(&body).expect("append"), Position(expected.len() as u64));
                expected.push(body);
                if flush {
                    log.flush().expect("flush");
                }
            }
        }
    }
}
