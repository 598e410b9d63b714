//! The monitor's Kafka consumer on arbitrary bytes from a broker: a Fetch response's record
//! set (any codec, any aborted-transaction list) and the group protocol's subscription and
//! assignment payloads. Anything that does not read is an error, never a panic, and the
//! records handed over lie inside the bytes given.
#![no_main]

use bytes::Bytes;
use cloud_broker::client::{group, records};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let fetch_offset = i64::from(data[0]) - 8;
    let aborted: Vec<(i64, i64)> = (0..data[1] % 4)
        .map(|i| (i64::from(data[2] % 3) + i64::from(i), i64::from(i) * 3))
        .collect();
    let set = &data[3..];
    let mut scratch = Vec::new();
    let mut n = 0u64;
    let r = records::walk(set, fetch_offset, &aborted, &mut scratch, |r| {
        n += 1;
        assert!(r.offset >= fetch_offset);
        let _ = r.header("edge");
        let _ = (r.key.map(<[u8]>::len), r.value.map(<[u8]>::len));
    });
    let walked = match r {
        Ok(w) | Err((w, _)) => w,
    };
    assert_eq!(walked.records, n);
    let _ = records::next_offset(set);
    let _ = group::assigned(Bytes::copy_from_slice(set));
    let _ = group::subscribed_topics(Bytes::copy_from_slice(set));
});
