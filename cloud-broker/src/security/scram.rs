//! SASL mechanisms on the server side: SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677)
//! and PLAIN (RFC 4616), checked against stored SCRAM credentials.
//!
//! A credential holds what RFC 5802 lets a server keep: a salt, an iteration count, `StoredKey`
//! and `ServerKey`, never the password. PLAIN derives the same keys from the password it is
//! given and compares them, so one credential serves both. A SCRAM exchange for an unknown
//! user goes on with a made-up credential and fails at the proof, as for a wrong password: the
//! exchange does not tell which names exist. Channel binding is not offered (`n` or `y` flags
//! only); Kafka's `tokenauth` extension (delegation tokens) is refused.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// The iteration count new credentials get (Kafka's `kafka-configs` default is 4096; PLAIN
/// pays it once per login).
pub const DEFAULT_ITERATIONS: u32 = 8192;
/// The least iteration count accepted (RFC 7677 asks at least 4096).
pub const MIN_ITERATIONS: u32 = 4096;
/// The most iteration count accepted: a login costs the server this many HMACs under PLAIN.
pub const MAX_ITERATIONS: u32 = 1 << 20;
/// The longest SASL message read (a SCRAM message is under 300 bytes).
pub const MAX_MESSAGE: usize = 4096;

/// A SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mechanism {
    /// Username and password in the clear (use over TLS only).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Mechanism {
    /// Every mechanism, in the order offered.
    pub const ALL: [Mechanism; 3] = [Mechanism::ScramSha256, Mechanism::ScramSha512, Mechanism::Plain];

    /// The IANA name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism of an IANA name.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    fn hash(self) -> Hash {
        match self {
            Mechanism::ScramSha512 => Hash::Sha512,
            Mechanism::ScramSha256 | Mechanism::Plain => Hash::Sha256,
        }
    }
}

/// The hash of a SCRAM credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Hash::Sha256 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
                parts.iter().for_each(|p| m.update(p));
                m.finalize().into_bytes().to_vec()
            }
            Hash::Sha512 => {
                let mut m = <Hmac<Sha512> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
                parts.iter().for_each(|p| m.update(p));
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Hash::Sha256 => pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations).to_vec(),
            Hash::Sha512 => pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(password, salt, iterations).to_vec(),
        }
    }
}

/// What the server keeps of a password for one SCRAM hash (RFC 5802 §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// The salt, base64.
    pub salt: String,
    /// `H(ClientKey)`, base64.
    pub stored_key: String,
    /// `HMAC(SaltedPassword, "Server Key")`, base64.
    pub server_key: String,
}

/// A credential's keys, decoded.
struct Keys {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Credential {
    /// Makes the credential of `password` for `mechanism`'s hash with a new random salt.
    pub fn new(mechanism: Mechanism, password: &str, iterations: u32) -> anyhow::Result<Credential> {
        let mut salt = [0u8; 24];
        getrandom::getrandom(&mut salt).map_err(|e| anyhow::anyhow!("no random salt from the OS: {e}"))?;
        Ok(Credential::with_salt(mechanism, password, &salt, iterations))
    }

    fn with_salt(mechanism: Mechanism, password: &str, salt: &[u8], iterations: u32) -> Credential {
        let h = mechanism.hash();
        let salted = h.salted_password(password.as_bytes(), salt, iterations);
        let client_key = h.hmac(&salted, &[b"Client Key"]);
        Credential {
            iterations,
            salt: B64.encode(salt),
            stored_key: B64.encode(h.digest(&client_key)),
            server_key: B64.encode(h.hmac(&salted, &[b"Server Key"])),
        }
    }

    fn keys(&self) -> Option<Keys> {
        let k = Keys {
            iterations: self.iterations,
            salt: B64.decode(&self.salt).ok()?,
            stored_key: B64.decode(&self.stored_key).ok()?,
            server_key: B64.decode(&self.server_key).ok()?,
        };
        ((MIN_ITERATIONS..=MAX_ITERATIONS).contains(&k.iterations) && !k.salt.is_empty()).then_some(k)
    }

    /// Checks that the credential is whole for `mechanism` (decodable, iterations in range,
    /// keys of the hash's length).
    pub fn check(&self, mechanism: Mechanism) -> anyhow::Result<()> {
        let k = self
            .keys()
            .ok_or_else(|| anyhow::anyhow!("a malformed {} credential", mechanism.name()))?;
        let len = mechanism.hash().digest(b"").len();
        anyhow::ensure!(
            k.stored_key.len() == len && k.server_key.len() == len,
            "a {} credential with keys of the wrong length",
            mechanism.name()
        );
        Ok(())
    }

    /// Whether `password` is the one this credential was made from (PLAIN's check).
    pub fn verify_password(&self, mechanism: Mechanism, password: &str) -> bool {
        let Some(k) = self.keys() else { return false };
        let h = mechanism.hash();
        let salted = h.salted_password(password.as_bytes(), &k.salt, k.iterations);
        let stored = h.digest(&h.hmac(&salted, &[b"Client Key"]));
        bool::from(stored.ct_eq(&k.stored_key))
    }
}

/// Why an exchange failed. The message goes to the client (Kafka's `SaslAuthenticate` error
/// message) and to the log: it never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The credentials did not match (or the user is unknown: not told apart).
    #[error("authentication failed: invalid username or password")]
    BadCredentials,
    /// The message broke the mechanism's grammar.
    #[error("malformed {0} message: {1}")]
    Malformed(&'static str, &'static str),
}

/// A SCRAM exchange waiting for the client's final message.
#[derive(Debug)]
pub struct ScramServer {
    mechanism: Mechanism,
    user: String,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// None: an unknown user, failed at the proof.
    credential: Option<(Vec<u8>, Vec<u8>)>,
}

/// Undoes SCRAM's `saslname` escaping (`=2C` is `,`, `=3D` is `=`).
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// A printable nonce of 24 random bytes.
fn new_nonce() -> Result<String, SaslError> {
    let mut raw = [0u8; 24];
    getrandom::getrandom(&mut raw).map_err(|_| SaslError::Malformed("SCRAM", "no randomness"))?;
    Ok(B64.encode(raw))
}

impl ScramServer {
    /// Reads the client's first message and answers with the server's first. `lookup` gives
    /// the user's credential for this mechanism; `decoy_key` keys the salt made up for names
    /// without one (so a repeated try sees the same salt).
    pub fn start(
        mechanism: Mechanism,
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<Credential>,
        decoy_key: &[u8],
    ) -> Result<(ScramServer, Vec<u8>), SaslError> {
        const M: &str = "SCRAM client-first";
        if client_first.len() > MAX_MESSAGE {
            return Err(SaslError::Malformed(M, "too long"));
        }
        let msg = std::str::from_utf8(client_first).map_err(|_| SaslError::Malformed(M, "not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(SaslError::Malformed(M, "no GS2 header"))?;
        if flag != "n" && flag != "y" {
            return Err(SaslError::Malformed(M, "channel binding is not supported"));
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(SaslError::Malformed(M, "no GS2 header"))?;
        let mut attrs = bare.split(',');
        let user = attrs
            .next()
            .and_then(|a| a.strip_prefix("n="))
            .and_then(unescape)
            .filter(|u| !u.is_empty())
            .ok_or(SaslError::Malformed(M, "no username"))?;
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(SaslError::Malformed(M, "no nonce"))?;
        if attrs.any(|a| a.starts_with("tokenauth")) {
            return Err(SaslError::Malformed(M, "delegation tokens are not supported"));
        }
        if let Some(id) = authzid.strip_prefix("a=") {
            if unescape(id).as_deref() != Some(user.as_str()) {
                return Err(SaslError::BadCredentials);
            }
        } else if !authzid.is_empty() {
            return Err(SaslError::Malformed(M, "bad authorization id"));
        }
        let h = mechanism.hash();
        let found = lookup(&user).and_then(|c| c.keys());
        let (salt, iterations, credential) = match found {
            Some(k) => (k.salt, k.iterations, Some((k.stored_key, k.server_key))),
            None => (
                h.hmac(decoy_key, &[user.as_bytes()])[..24].to_vec(),
                DEFAULT_ITERATIONS,
                None,
            ),
        };
        let nonce = format!("{client_nonce}{}", new_nonce()?);
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        let out = server_first.clone().into_bytes();
        Ok((
            ScramServer {
                mechanism,
                gs2_header: format!("{flag},{authzid},"),
                client_first_bare: bare.to_string(),
                user,
                server_first,
                nonce,
                credential,
            },
            out,
        ))
    }

    /// Checks the client's final message; on success, the user and the server's final
    /// message (its signature, which the client checks in turn).
    pub fn finish(self, client_final: &[u8]) -> Result<(String, Vec<u8>), SaslError> {
        const M: &str = "SCRAM client-final";
        if client_final.len() > MAX_MESSAGE {
            return Err(SaslError::Malformed(M, "too long"));
        }
        let msg = std::str::from_utf8(client_final).map_err(|_| SaslError::Malformed(M, "not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(SaslError::Malformed(M, "no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(SaslError::Malformed(M, "no channel binding"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(SaslError::Malformed(
                M,
                "channel binding differs from the GS2 header",
            ));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(SaslError::Malformed(M, "no nonce"))?;
        // RFC 5802 wants the nonce back exactly. librdkafka before 2.1 (Debian's kcat) sends
        // its own part twice; Kafka accepts any nonce that ends with the server's (its
        // freshness is what matters), and so does this. The proof covers what was sent.
        if !nonce.ends_with(&self.nonce) {
            return Err(SaslError::BadCredentials);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| SaslError::Malformed(M, "proof is not base64"))?;
        let Some((stored_key, server_key)) = self.credential else {
            return Err(SaslError::BadCredentials);
        };
        let h = self.mechanism.hash();
        let auth_message = [
            self.client_first_bare.as_bytes(),
            b",",
            self.server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let signature = h.hmac(&stored_key, &auth_message);
        if proof.len() != signature.len() {
            return Err(SaslError::BadCredentials);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        if !bool::from(h.digest(&client_key).ct_eq(&stored_key)) {
            return Err(SaslError::BadCredentials);
        }
        let server_signature = h.hmac(&server_key, &auth_message);
        Ok((
            self.user,
            format!("v={}", B64.encode(server_signature)).into_bytes(),
        ))
    }
}

/// Reads a PLAIN message (`authzid NUL authcid NUL password`): the user and the password. An
/// authorization id other than the user's own is refused.
pub fn plain(message: &[u8]) -> Result<(String, String), SaslError> {
    const M: &str = "PLAIN";
    if message.len() > MAX_MESSAGE {
        return Err(SaslError::Malformed(M, "too long"));
    }
    let msg = std::str::from_utf8(message).map_err(|_| SaslError::Malformed(M, "not UTF-8"))?;
    let mut parts = msg.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(M, "not three NUL-separated fields"));
    };
    if user.is_empty() || (!authzid.is_empty() && authzid != user) {
        return Err(SaslError::BadCredentials);
    }
    Ok((user.to_string(), password.to_string()))
}

/// The client side of SCRAM, for the broker's own clients and tests.
#[derive(Debug)]
pub struct ScramClient {
    mechanism: Mechanism,
    password: String,
    client_first_bare: String,
    nonce: String,
    server_key: Option<Vec<u8>>,
    auth_message: Option<String>,
}

impl ScramClient {
    /// The client's first message.
    pub fn start(
        mechanism: Mechanism,
        user: &str,
        password: &str,
    ) -> Result<(ScramClient, Vec<u8>), SaslError> {
        let nonce = new_nonce()?;
        let name = user.replace('=', "=3D").replace(',', "=2C");
        let bare = format!("n={name},r={nonce}");
        let first = format!("n,,{bare}").into_bytes();
        Ok((
            ScramClient {
                mechanism,
                password: password.to_string(),
                client_first_bare: bare,
                nonce,
                server_key: None,
                auth_message: None,
            },
            first,
        ))
    }

    /// Answers the server's first message with the client's final one.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SaslError> {
        const M: &str = "SCRAM server-first";
        let msg = std::str::from_utf8(server_first).map_err(|_| SaslError::Malformed(M, "not UTF-8"))?;
        let mut attrs = msg.split(',');
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|n| n.starts_with(&self.nonce))
            .ok_or(SaslError::Malformed(M, "bad nonce"))?;
        let salt = attrs
            .next()
            .and_then(|a| a.strip_prefix("s="))
            .and_then(|s| B64.decode(s).ok())
            .ok_or(SaslError::Malformed(M, "bad salt"))?;
        let iterations: u32 = attrs
            .next()
            .and_then(|a| a.strip_prefix("i="))
            .and_then(|i| i.parse().ok())
            .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
            .ok_or(SaslError::Malformed(M, "bad iteration count"))?;
        let h = self.mechanism.hash();
        let salted = h.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = h.hmac(&salted, &[b"Client Key"]);
        let stored_key = h.digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{msg},{without_proof}", self.client_first_bare);
        let signature = h.hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        self.server_key = Some(h.hmac(&salted, &[b"Server Key"]));
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server's signature: a server that does not hold the credential cannot make it.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), SaslError> {
        let (Some(key), Some(am)) = (&self.server_key, &self.auth_message) else {
            return Err(SaslError::Malformed("SCRAM server-final", "out of order"));
        };
        let expected = format!(
            "v={}",
            B64.encode(self.mechanism.hash().hmac(key, &[am.as_bytes()]))
        );
        if server_final == expected.as_bytes() {
            Ok(())
        } else {
            Err(SaslError::BadCredentials)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3's example, server side, with its salt and the server nonce fixed.
    #[test]
    fn the_rfc_7677_exchange_verifies() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let cred = Credential::with_salt(Mechanism::ScramSha256, "pencil", &salt, 4096);
        let (mut server, first) = ScramServer::start(
            Mechanism::ScramSha256,
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            |u| (u == "user").then(|| cred.clone()),
            b"k",
        )
        .unwrap();
        assert!(String::from_utf8(first)
            .unwrap()
            .ends_with(",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"));
        // The RFC's server nonce, so the RFC's proof and signature apply.
        server.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        server.server_first = format!("r={},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", server.nonce);
        let (user, last) = server
            .finish(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(user, "user");
        assert_eq!(last, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    fn exchange(mech: Mechanism, cred: &Credential, user: &str, password: &str) -> Result<String, SaslError> {
        let (mut client, first) = ScramClient::start(mech, user, password)?;
        let (server, server_first) = ScramServer::start(
            mech,
            &first,
            |u| (u == "bridge,1=x").then(|| cred.clone()),
            b"key",
        )?;
        let last = client.respond(&server_first)?;
        let (who, server_final) = server.finish(&last)?;
        client.verify(&server_final)?;
        Ok(who)
    }

    #[test]
    fn both_hashes_accept_the_password_and_refuse_others_alike() {
        for mech in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
            let cred = Credential::new(mech, "s3cret", MIN_ITERATIONS).unwrap();
            cred.check(mech).unwrap();
            assert_eq!(
                exchange(mech, &cred, "bridge,1=x", "s3cret").unwrap(),
                "bridge,1=x"
            );
            assert_eq!(
                exchange(mech, &cred, "bridge,1=x", "s3cret!"),
                Err(SaslError::BadCredentials)
            );
            // An unknown user fails the same way, at the same step.
            assert_eq!(
                exchange(mech, &cred, "nobody", "s3cret"),
                Err(SaslError::BadCredentials)
            );
            assert!(cred.verify_password(mech, "s3cret"));
            assert!(!cred.verify_password(mech, "s3cre"));
        }
        let wrong_hash = Credential::new(Mechanism::ScramSha256, "pw", MIN_ITERATIONS).unwrap();
        assert!(wrong_hash.check(Mechanism::ScramSha512).is_err());
    }

    /// librdkafka 2.0.2's client-final repeats its nonce before the server's: taken, as Kafka
    /// takes it, with the proof over what it sent; a nonce not ending in the server's is not.
    #[test]
    fn a_final_nonce_ending_in_the_servers_is_taken() {
        let cred = Credential::new(Mechanism::ScramSha256, "pw", MIN_ITERATIONS).unwrap();
        let h = Mechanism::ScramSha256.hash();
        let salted = h.salted_password(b"pw", &B64.decode(&cred.salt).unwrap(), cred.iterations);
        let client_key = h.hmac(&salted, &[b"Client Key"]);
        let stored = h.digest(&client_key);
        let final_with = |server: &ScramServer, nonce: &str| {
            let without = format!("c=biws,r={nonce}");
            let am = format!("{},{},{without}", server.client_first_bare, server.server_first);
            let sig = h.hmac(&stored, &[am.as_bytes()]);
            let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
            format!("{without},p={}", B64.encode(proof))
        };
        let start = || {
            ScramServer::start(
                Mechanism::ScramSha256,
                b"n,,n=u,r=abc",
                |_| Some(cred.clone()),
                b"k",
            )
            .unwrap()
            .0
        };
        let s = start();
        let msg = final_with(&s, "x");
        assert_eq!(s.finish(msg.as_bytes()).unwrap_err(), SaslError::BadCredentials);
        let s = start();
        let doubled = format!("abc{}", s.nonce);
        let msg = final_with(&s, &doubled);
        assert_eq!(s.finish(msg.as_bytes()).unwrap().0, "u");
    }

    #[test]
    fn an_unknown_user_gets_the_same_salt_each_time() {
        let salt = |key: &[u8]| {
            let (_, first) =
                ScramServer::start(Mechanism::ScramSha256, b"n,,n=ghost,r=abc", |_| None, key).unwrap();
            String::from_utf8(first)
                .unwrap()
                .split(',')
                .nth(1)
                .unwrap()
                .to_string()
        };
        assert_eq!(salt(b"k1"), salt(b"k1"));
        assert_ne!(salt(b"k1"), salt(b"k2"));
    }

    #[test]
    fn malformed_messages_are_errors_never_panics() {
        let lookup = |_: &str| None;
        for bad in [
            &b""[..],
            b"n",
            b"p=tls-unique,,n=u,r=x",
            b"n,,r=x",
            b"n,,n=,r=x",
            b"n,,n=u",
            b"n,,n=u=zz,r=x",
            b"n,,n=u,r=x,tokenauth=true",
            b"n,b=x,n=u,r=x",
            &[0xff, 0xfe],
        ] {
            assert!(
                ScramServer::start(Mechanism::ScramSha256, bad, lookup, b"k").is_err(),
                "{bad:?}"
            );
        }
        let cred = Credential::new(Mechanism::ScramSha256, "pw", MIN_ITERATIONS).unwrap();
        for bad in [
            &b""[..],
            b"c=biws",
            b"c=xx,r=y,p=z",
            b"c=biws,r=wrong,p=AAAA",
            b"c=biws,r=x,p=!!",
        ] {
            let (server, _) = ScramServer::start(
                Mechanism::ScramSha256,
                b"n,,n=u,r=x",
                |_| Some(cred.clone()),
                b"k",
            )
            .unwrap();
            assert!(server.finish(bad).is_err(), "{bad:?}");
        }
        // Another user's authorization id.
        assert_eq!(
            ScramServer::start(Mechanism::ScramSha256, b"n,a=admin,n=u,r=x", lookup, b"k").unwrap_err(),
            SaslError::BadCredentials
        );
    }

    #[test]
    fn plain_reads_three_fields() {
        assert_eq!(plain(b"\0u\0pw").unwrap(), ("u".into(), "pw".into()));
        assert_eq!(plain(b"u\0u\0pw").unwrap(), ("u".into(), "pw".into()));
        assert_eq!(plain(b"admin\0u\0pw"), Err(SaslError::BadCredentials));
        assert!(plain(b"u\0pw").is_err());
        assert!(plain(b"\0u\0pw\0x").is_err());
        assert!(plain(b"\0\0pw").is_err());
    }

    #[test]
    fn mechanism_names_round_trip() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::from_name("GSSAPI"), None);
    }
}
