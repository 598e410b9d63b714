//! The provisioning record's decoder on arbitrary sector bytes: an error is fine, a panic is a
//! bug. What decodes is valid and re-encodes to a record that decodes to the same value.
#![no_main]

use firmware::provision::{Provision, SECTOR};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Provision::decode(data) {
        assert!(p.validate().is_ok());
        let mut sector = [0u8; SECTOR];
        p.encode(&mut sector).expect("a decoded record re-encodes");
        assert_eq!(Provision::decode(&sector), Ok(p));
    }
});
