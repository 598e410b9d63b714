//! The broker's request decoder (framing checks + kafka-protocol) on arbitrary frames: an
//! error is fine; a panic or an abort (e.g. on a huge claimed array) is a bug. Runs with the
//! broker's own global allocator, as the broker does.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: cloud_broker::alloc::LazyHuge = cloud_broker::alloc::LazyHuge;

fuzz_target!(|data: &[u8]| {
    let _ = cloud_broker::protocol::decode(bytes::Bytes::copy_from_slice(data));
});
