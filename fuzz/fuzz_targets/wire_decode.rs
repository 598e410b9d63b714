//! Every wire decoder on arbitrary bytes: an error is fine, a panic is a bug. What decodes
//! must re-encode within the documented maximum and decode back to the same value (postcard
//! accepts over-long varints, so the bytes themselves need not match).
#![no_main]

use firmware::wire::{self, Ack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = wire::decode_batch(data) {
        let mut buf = [0u8; wire::MAX_BATCH_ENCODED];
        let out = wire::encode(&b, &mut buf).expect("a decoded batch fits the max size");
        let again = wire::decode_batch(out).expect("re-encoded batch decodes");
        assert_eq!(again.device_id, b.device_id);
        assert_eq!(
            (again.boot_id, again.first_seq, again.low_seq),
            (b.boot_id, b.first_seq, b.low_seq)
        );
        assert_eq!(again.readings.len(), b.readings.len());
    }
    if let Ok(s) = wire::decode_status(data) {
        let mut buf = [0u8; wire::MAX_STATUS_ENCODED];
        assert!(wire::encode(&s, &mut buf).is_ok());
    }
    if let Ok(a) = wire::decode::<Ack>(data) {
        let mut buf = [0u8; wire::MAX_ACK_ENCODED];
        assert!(wire::encode(&a, &mut buf).is_ok());
    }
});
