//! The MQTT frame check and packet parser on arbitrary bytes.
#![no_main]

use firmware::mqtt::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(n)) = codec::frame_len(rest) {
        if n > rest.len() {
            break;
        }
        let _ = codec::parse(&rest[..n]);
        rest = &rest[n..];
    }
    let _ = codec::parse(data);
});
