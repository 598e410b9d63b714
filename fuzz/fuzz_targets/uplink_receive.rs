//! A connected uplink fed arbitrary broker bytes in arbitrary chunks: it may close the
//! session, but never panics, and never loses a reading it did not get an Ack for.
#![no_main]

use firmware::buffer::OverflowPolicy;
use firmware::mqtt::{Action, Config, Uplink};
use firmware::wire::Reading;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let cfg = Config::new("fuzz", 1).unwrap();
    let mut u: Uplink<[Reading; 8], 512> =
        Uplink::new(cfg, [Reading::default(); 8], OverflowPolicy::DropOldest, 0, 0);
    assert_eq!(u.poll(0), Action::Connect);
    u.on_connected(0);
    for i in 0..4 {
        u.push(
            Reading {
                channel: 0,
                timestamp_ms: i,
                value: 0.0,
            },
            0,
        )
        .unwrap();
    }
    for (t, piece) in data.chunks(chunk).enumerate() {
        u.on_received(piece, t as u64);
        while let Action::Transmit = u.poll(t as u64) {
            let n = u.transmit().len();
            u.consume_tx(n);
        }
    }
    let b = u.buffer();
    assert_eq!(b.len() as u64 + u.counters().acked + b.dropped(), 4);
});
