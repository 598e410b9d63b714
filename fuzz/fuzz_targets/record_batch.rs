//! The record-batch validator on arbitrary produce payloads: split, header, offset rewrite.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batches) = cloud_broker::batch::split(data, 1 << 20) {
        for (h, b) in batches {
            let mut owned = b.to_vec();
            cloud_broker::batch::set_base_offset(&mut owned, 1234);
            let again = cloud_broker::batch::header(&owned).expect("a validated batch re-parses");
            assert_eq!(again.base_offset, 1234);
            assert_eq!(again.size, h.size);
        }
    }
    let _ = cloud_broker::batch::iter(data).count();
});
