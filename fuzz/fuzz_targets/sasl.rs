//! The broker's SASL server on arbitrary login messages: a SCRAM client-first and client-final
//! and a PLAIN message of any bytes. Each is an error or a login, never a panic; no SCRAM
//! login passes without the password's proof.
#![no_main]

use std::sync::OnceLock;

use cloud_broker::security::scram::{self, Credential, Mechanism, ScramServer};
use libfuzzer_sys::fuzz_target;

fn credential() -> &'static Credential {
    static C: OnceLock<Credential> = OnceLock::new();
    C.get_or_init(|| Credential::new(Mechanism::ScramSha256, "pw", scram::MIN_ITERATIONS).unwrap())
}

fuzz_target!(|data: &[u8]| {
    // [split byte, client-first ..., client-final ...]
    let Some((&at, rest)) = data.split_first() else {
        return;
    };
    let (first, last) = rest.split_at(usize::from(at).min(rest.len()));
    for mech in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
        let lookup = |u: &str| (u == "u" && mech == Mechanism::ScramSha256).then(|| credential().clone());
        if let Ok((server, _)) = ScramServer::start(mech, first, lookup, b"decoy") {
            // A proof made without the password cannot pass.
            assert!(server.finish(last).is_err());
        }
    }
    // PLAIN's parse (its PBKDF2 check is too slow to run per input).
    if let Ok((user, password)) = scram::plain(rest) {
        assert!(!user.is_empty() && !user.contains('\0') && !password.contains('\0'));
    }
});
