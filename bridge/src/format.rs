//! Readings in the cloud in the configured [`ValueFormat`]: as stored (postcard), as JSON, or
//! in Confluent's wire format with the reading's JSON Schema registered at the schema
//! registry. Only `telemetry` values are rewritten; a value that is not a reading goes as it is.

use std::time::{Duration, Instant};

use tracing::{info, warn};
use vocab::json::{ReadingJson, CONFLUENT_MAGIC, READING_SCHEMA};
use vocab::wire::ReadingRecord;

use crate::config::{BridgeConfig, ValueFormat};

/// How long a registration may take (it runs on the bridge's thread).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after a failed registration the next is tried.
const REGISTER_RETRY: Duration = Duration::from_secs(10);

/// Where the schema registry is, from `http://[user:password@]host:port[/base]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Registry {
    /// `host:port`.
    pub addr: String,
    /// `/base` without a trailing slash, or empty.
    pub base: String,
    /// `Basic ...` for the URL's `user:password` (the cloud broker's HTTP token with any user
    /// name, or a Confluent registry's credentials).
    pub authorization: Option<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("base", &self.base)
            .field("authorization", &self.authorization.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

/// Parses `http://[user:password@]host:port[/base]`.
pub fn registry_address(url: &str) -> Option<Registry> {
    use base64::Engine as _;
    let rest = url.strip_prefix("http://")?;
    let (authority, base) = rest.split_once('/').map_or((rest, ""), |(a, b)| (a, b));
    let (userinfo, addr) = match authority.rsplit_once('@') {
        Some((u, a)) => (Some(u), a),
        None => (None, authority),
    };
    let (host, port) = addr.rsplit_once(':')?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return None;
    }
    let authorization = match userinfo {
        Some(u) if u.contains(':') => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(u)
        )),
        Some(_) => return None,
        None => None,
    };
    let base = base.trim_end_matches('/');
    Some(Registry {
        addr: addr.to_string(),
        base: if base.is_empty() {
            String::new()
        } else {
            format!("/{base}")
        },
        authorization,
    })
}

/// `url` without its `user:password@`, for messages.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let mut out = format!("{scheme}://{host}");
            if let Some(p) = path {
                out.push('/');
                out.push_str(p);
            }
            out
        }
        None => url.rsplit_once('@').map_or(url, |(_, h)| h).to_string(),
    }
}

/// The reading could not be written yet: the schema is not registered (the registry is
/// unreachable). The record waits at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unregistered;

/// Rewrites readings into the configured format.
#[derive(Debug)]
pub struct Encoder {
    format: ValueFormat,
    registry: Option<Registry>,
    schema_id: Option<u32>,
    next_try: Option<Instant>,
}

impl Encoder {
    /// For `cfg`'s `value_format`.
    pub fn new(cfg: &BridgeConfig) -> Encoder {
        Encoder {
            format: cfg.value_format,
            registry: cfg.schema_registry_url.as_deref().and_then(registry_address),
            schema_id: None,
            next_try: None,
        }
    }

    /// An encoder for tests: registry framing with a known id.
    pub fn with_id(format: ValueFormat, id: Option<u32>) -> Encoder {
        Encoder {
            format,
            registry: None,
            schema_id: id,
            next_try: None,
        }
    }

    /// Whether readings are rewritten at all.
    pub fn rewrites(&self) -> bool {
        self.format != ValueFormat::Postcard
    }

    /// The reading schema's id, registering it (as `<cloud_topic>-value`) if need be.
    fn schema_id(&mut self, cloud_topic: &str) -> Result<u32, Unregistered> {
        if let Some(id) = self.schema_id {
            return Ok(id);
        }
        if self.next_try.is_some_and(|t| Instant::now() < t) {
            return Err(Unregistered);
        }
        let Some(registry) = self.registry.clone() else {
            return Err(Unregistered);
        };
        let subject = format!("{cloud_topic}-value");
        match register(&registry, &subject) {
            Ok(id) => {
                info!(subject, id, "the reading's JSON Schema is registered");
                self.schema_id = Some(id);
                Ok(id)
            }
            Err(e) => {
                warn!(subject, error = %e, "registering the reading's schema failed; readings wait at the edge");
                self.next_try = Some(Instant::now() + REGISTER_RETRY);
                Err(Unregistered)
            }
        }
    }

    /// Device `key`'s reading `value` in the configured format, into `out`: `Ok(true)` when
    /// `out` holds it, `Ok(false)` when the value goes as it is (postcard, or not a reading).
    pub fn reading(
        &mut self,
        cloud_topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, Unregistered> {
        if !self.rewrites() {
            return Ok(false);
        }
        let (Some(id), Ok(r)) = (
            key.and_then(|k| std::str::from_utf8(k).ok()),
            vocab::wire::decode::<ReadingRecord>(value),
        ) else {
            return Ok(false);
        };
        out.clear();
        if self.format == ValueFormat::Registry {
            let schema = self.schema_id(cloud_topic)?;
            out.push(CONFLUENT_MAGIC);
            out.extend_from_slice(&schema.to_be_bytes());
        }
        if serde_json::to_writer(&mut *out, &ReadingJson::new(id, &r)).is_err() {
            return Ok(false);
        }
        Ok(true)
    }
}

/// Registers the reading's JSON Schema under `subject`; its id.
fn register(r: &Registry, subject: &str) -> Result<u32, String> {
    let body = serde_json::json!({ "schema": READING_SCHEMA, "schemaType": "JSON" }).to_string();
    let (status, answer) = foundation::http::request_authorized(
        &r.addr,
        "POST",
        &format!("{}/subjects/{subject}/versions", r.base),
        Some(("application/vnd.schemaregistry.v1+json", body.as_bytes())),
        r.authorization.as_deref(),
        REGISTER_TIMEOUT,
    )
    .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("HTTP {status}: {answer}"));
    }
    serde_json::from_str::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v["id"].as_u64())
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| format!("no id in the answer {answer:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vocab::wire::Reading;

    fn value(seq: u64) -> Vec<u8> {
        let r = ReadingRecord {
            boot_id: 3,
            seq,
            reading: Reading {
                channel: 1,
                timestamp_ms: 1_760_000_000_123,
                value: 21.5,
            },
        };
        let mut buf = [0u8; 64];
        vocab::wire::encode(&r, &mut buf).unwrap().to_vec()
    }

    #[test]
    fn readings_become_json_or_confluent_framed_json() {
        let mut out = Vec::new();
        let mut e = Encoder::with_id(ValueFormat::Json, None);
        assert_eq!(
            e.reading("telemetry", Some(b"dev-1"), &value(9), &mut out),
            Ok(true)
        );
        let j: ReadingJson = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (j.device_id.as_str(), j.boot_id, j.seq, j.value),
            ("dev-1", 3, 9, 21.5)
        );
        let mut e = Encoder::with_id(ValueFormat::Registry, Some(258));
        assert_eq!(
            e.reading("telemetry", Some(b"dev-1"), &value(9), &mut out),
            Ok(true)
        );
        assert_eq!(&out[..5], &[0, 0, 0, 1, 2]);
        let (id, json) = vocab::json::json_part(&out).unwrap();
        assert_eq!(id, Some(258));
        assert_eq!(
            serde_json::from_slice::<ReadingJson>(json).unwrap().record().seq,
            9
        );
        // Not a reading, or postcard: as it is.
        assert_eq!(
            e.reading("telemetry", Some(b"dev-1"), b"junk", &mut out),
            Ok(false)
        );
        let mut p = Encoder::with_id(ValueFormat::Postcard, None);
        assert_eq!(
            p.reading("telemetry", Some(b"dev-1"), &value(1), &mut out),
            Ok(false)
        );
        // Registry format with no registry reachable: held, and not retried at once.
        let mut u = Encoder::with_id(ValueFormat::Registry, None);
        u.registry = registry_address("http://127.0.0.1:1");
        assert_eq!(
            u.reading("telemetry", Some(b"dev-1"), &value(1), &mut out),
            Err(Unregistered)
        );
        assert!(u.next_try.is_some());
        assert_eq!(
            u.reading("telemetry", Some(b"dev-1"), &value(1), &mut out),
            Err(Unregistered)
        );
    }

    #[test]
    fn registry_urls_parse() {
        let r = |addr: &str, base: &str, auth: Option<&str>| {
            Some(Registry {
                addr: addr.into(),
                base: base.into(),
                authorization: auth.map(str::to_string),
            })
        };
        assert_eq!(registry_address("http://h:8080"), r("h:8080", "", None));
        assert_eq!(registry_address("http://h:8080/sr/"), r("h:8080", "/sr", None));
        // "gw:s3cret" in base64.
        assert_eq!(
            registry_address("http://gw:s3cret@h:8080/sr"),
            r("h:8080", "/sr", Some("Basic Z3c6czNjcmV0"))
        );
        for bad in [
            "h:8080",
            "https://h:1",
            "http://h",
            "http://:1",
            "http://h:x",
            "http://nopass@h:1",
        ] {
            assert_eq!(registry_address(bad), None, "{bad}");
        }
        let shown = format!("{:?}", registry_address("http://gw:s3cret@h:8080").unwrap());
        assert!(!shown.contains("s3cret") && !shown.contains("Z3c6"), "{shown}");
        assert_eq!(redacted("http://gw:s3cret@h:8080/sr"), "http://h:8080/sr");
        assert_eq!(redacted("gw:s3cret@h:8080"), "h:8080");
    }
}
