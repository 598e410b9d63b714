//! The node's provisioning record: what one firmware binary needs to serve a whole fleet (the
//! WiFi network, the gateway's address, the device id and its MQTT password, how often to
//! sample), kept in one flash config sector that a host command writes
//! (`edge-agent devices provision`), so nobody edits code or rebuilds per device.
//!
//! # Layout of the sector ([`SECTOR`] bytes)
//! | bytes | what |
//! |---|---|
//! | 4 | magic `IOTP` |
//! | 1 | format version ([`VERSION`]) |
//! | 2 | length `n` of the record, little-endian |
//! | `n` | the [`Provision`], postcard |
//! | 4 | CRC-32 (ISO-HDLC) of everything before it, little-endian |
//! | rest | `0xFF` (erased flash) |
//!
//! A sector that is all `0xFF` is [`Error::Blank`]: the device was never provisioned. Anything
//! else that does not check out is refused with what is wrong, never half-read: a node with a
//! damaged record must not join someone's network with half a password. The decoder borrows its
//! strings from the sector (no copy, no allocation) and never panics on any bytes.

use serde::{Deserialize, Serialize};

/// The config sector's size (one erase block on both the ESP32-C3 and the RP2040).
pub const SECTOR: usize = 4096;
/// The format version this build writes and reads.
pub const VERSION: u8 = 1;
const MAGIC: [u8; 4] = *b"IOTP";
const HEADER: usize = 4 + 1 + 2;
const CRC: usize = 4;
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Where the gateway's MQTT listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway<'a> {
    /// An IPv4 address (`192.168.1.20`) or a host name (resolved by DNS on the node).
    pub host: &'a str,
    /// The MQTT port (1883 by default on the gateway).
    pub port: u16,
}

/// One device's provisioning record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provision<'a> {
    /// The device id: MQTT client id and username, and the topic level (1 to 32 of
    /// `A-Z a-z 0-9 - _ .`).
    pub device_id: &'a str,
    /// The device's MQTT password (`[mqtt] auth = "password"` on the gateway; 8 to 64 bytes).
    pub mqtt_password: &'a str,
    /// The WiFi network's SSID (1 to 32 bytes).
    pub wifi_ssid: &'a str,
    /// The WiFi password (WPA2-Personal: 8 to 63 bytes; empty for an open network).
    pub wifi_password: &'a str,
    /// The gateway.
    #[serde(borrow)]
    pub gateway: Gateway<'a>,
    /// Time between two samples, ms (100 ms to 1 h).
    pub sample_period_ms: u32,
    /// Most readings per publish (1 to 64).
    pub batch: u8,
}

/// Why a sector holds no usable record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// All `0xFF`: never provisioned.
    Blank,
    /// Not a provisioning record (wrong magic).
    NotProvisioning,
    /// Written by another format version.
    Version(u8),
    /// The length field points past the sector.
    Length,
    /// The checksum does not match: the sector is damaged or half-written.
    Checksum,
    /// The record does not decode.
    Malformed,
    /// A field is out of its range (named).
    Invalid(&'static str),
    /// The record does not fit the sector (only when writing).
    TooLarge,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Blank => f.write_str("the config sector is blank: the device is not provisioned"),
            Error::NotProvisioning => f.write_str("the config sector holds no provisioning record"),
            Error::Version(v) => write!(f, "provisioning format version {v}, this build reads {VERSION}"),
            Error::Length => f.write_str("the provisioning record's length is past the sector"),
            Error::Checksum => f.write_str("the provisioning record's checksum does not match (damaged)"),
            Error::Malformed => f.write_str("the provisioning record does not decode"),
            Error::Invalid(what) => write!(f, "provisioning: {what}"),
            Error::TooLarge => f.write_str("the provisioning record does not fit the sector"),
        }
    }
}

impl<'a> Provision<'a> {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), Error> {
        let check = |ok: bool, what: &'static str| if ok { Ok(()) } else { Err(Error::Invalid(what)) };
        check(
            vocab::wire::is_valid_device_id(self.device_id),
            "device_id: 1 to 32 of A-Z a-z 0-9 - _ .",
        )?;
        check(
            (8..=64).contains(&self.mqtt_password.len()),
            "mqtt_password: 8 to 64 bytes",
        )?;
        check(
            (1..=32).contains(&self.wifi_ssid.len()),
            "wifi_ssid: 1 to 32 bytes",
        )?;
        check(
            self.wifi_password.is_empty() || (8..=63).contains(&self.wifi_password.len()),
            "wifi_password: 8 to 63 bytes, or empty for an open network",
        )?;
        check(
            !self.gateway.host.is_empty()
                && self.gateway.host.len() <= 253
                && self
                    .gateway
                    .host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')),
            "gateway host: an IPv4 address or a host name",
        )?;
        check(self.gateway.port != 0, "gateway port: 1 to 65535")?;
        check(
            (100..=3_600_000).contains(&self.sample_period_ms),
            "sample_period_ms: 100 ms to 1 h",
        )?;
        check((1..=64).contains(&self.batch), "batch: 1 to 64 readings")
    }

    /// Writes the record into `sector` (the rest set to `0xFF`, as erased flash), after
    /// checking it.
    pub fn encode(&self, sector: &mut [u8; SECTOR]) -> Result<(), Error> {
        self.validate()?;
        sector.fill(0xFF);
        let body = postcard::to_slice(self, &mut sector[HEADER..SECTOR - CRC])
            .map_err(|_| Error::TooLarge)?
            .len();
        let len = u16::try_from(body).map_err(|_| Error::TooLarge)?;
        sector[..4].copy_from_slice(&MAGIC);
        sector[4] = VERSION;
        sector[5..7].copy_from_slice(&len.to_le_bytes());
        let end = HEADER + body;
        let crc = CRC32.checksum(&sector[..end]);
        sector[end..end + CRC].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Reads the record from `sector` (at least its used part; any length is taken).
    pub fn decode(sector: &'a [u8]) -> Result<Provision<'a>, Error> {
        if sector.iter().all(|&b| b == 0xFF) {
            return Err(Error::Blank);
        }
        if sector.len() < HEADER || sector[..4] != MAGIC {
            return Err(Error::NotProvisioning);
        }
        if sector[4] != VERSION {
            return Err(Error::Version(sector[4]));
        }
        let len = usize::from(u16::from_le_bytes([sector[5], sector[6]]));
        let end = HEADER + len;
        let stored = sector.get(end..end + CRC).ok_or(Error::Length)?;
        let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
        if CRC32.checksum(&sector[..end]) != stored {
            return Err(Error::Checksum);
        }
        let (p, rest): (Provision<'a>, _) =
            postcard::take_from_bytes(&sector[HEADER..end]).map_err(|_| Error::Malformed)?;
        if !rest.is_empty() {
            return Err(Error::Malformed);
        }
        p.validate()?;
        Ok(p)
    }
}

/// The record a board runs with: the one in its config sector (`sector`, as its flash read
/// `read` went), else `built_in` (set at build time, see [`built_in!`](crate::built_in));
/// without either, why not. Every sector that is not used is reported through `report` (the
/// serial log) with its reason; `at` is the sector's address, for those lines.
pub fn choose<'a, E: core::fmt::Debug>(
    read: Result<(), E>,
    sector: &'a [u8; SECTOR],
    at: u32,
    built_in: Option<Provision<'a>>,
    report: fn(core::fmt::Arguments<'_>),
) -> Result<Provision<'a>, &'static str> {
    let why = match read {
        Err(e) => {
            report(format_args!("config sector at {at:#x}: read failed: {e:?}"));
            "unreadable"
        }
        Ok(()) => match Provision::decode(sector) {
            Ok(p) => return Ok(p),
            Err(e) => {
                report(format_args!("config sector at {at:#x}: {e}"));
                "not usable"
            }
        },
    };
    match built_in {
        Some(p) => {
            report(format_args!("using the configuration built in"));
            Ok(p)
        }
        None => Err(why),
    }
}

/// The configuration a board image was built with, from the environment of its build:
/// `NODE_WIFI_SSID` (without it, `None`), `NODE_WIFI_PASSWORD`, `NODE_GATEWAY` (`HOST:PORT`),
/// `NODE_DEVICE_ID` (else the given default), `NODE_MQTT_PASSWORD`, `NODE_SAMPLE_PERIOD_MS`.
/// A build without a password (for an agent with `auth = "none"`) is allowed here only; the
/// device id is checked as a provisioned one is. Expands in the image, so the variables are
/// read when the image is built.
#[macro_export]
macro_rules! built_in {
    ($default_id:expr) => {{
        (|| {
            let ssid = option_env!("NODE_WIFI_SSID")?;
            let (host, port) = option_env!("NODE_GATEWAY")
                .unwrap_or("192.168.1.2:1883")
                .rsplit_once(':')?;
            let p = $crate::provision::Provision {
                device_id: option_env!("NODE_DEVICE_ID").unwrap_or($default_id),
                mqtt_password: option_env!("NODE_MQTT_PASSWORD").unwrap_or(""),
                wifi_ssid: ssid,
                wifi_password: option_env!("NODE_WIFI_PASSWORD").unwrap_or(""),
                gateway: $crate::provision::Gateway {
                    host,
                    port: port.parse().ok()?,
                },
                sample_period_ms: option_env!("NODE_SAMPLE_PERIOD_MS")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(10_000),
                batch: 8,
            };
            $crate::wire::is_valid_device_id(p.device_id).then_some(p)
        })()
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Provision<'static> {
        Provision {
            device_id: "greenhouse-7",
            mqtt_password: "k3Yq-9fVt2LmXw8p",
            wifi_ssid: "plant-floor",
            wifi_password: "wpa2-passphrase",
            gateway: Gateway {
                host: "192.168.10.2",
                port: 1883,
            },
            sample_period_ms: 10_000,
            batch: 8,
        }
    }

    /// A board runs with its sector when it is good, else with what it was built with, else
    /// not at all, and says why each unused sector was passed over.
    #[test]
    fn a_board_chooses_its_sector_then_its_built_in_record_and_reports_why() {
        static LINES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        fn count(_: core::fmt::Arguments<'_>) {
            LINES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let lines = || LINES.load(std::sync::atomic::Ordering::SeqCst);
        let mut good = [0u8; SECTOR];
        sample().encode(&mut good).unwrap();
        let blank = [0xFF; SECTOR];
        let built = Provision {
            device_id: "built-1",
            ..sample()
        };
        assert_eq!(
            choose(Ok::<(), ()>(()), &good, 0, Some(built), count),
            Ok(sample())
        );
        assert_eq!(lines(), 0, "nothing to report");
        assert_eq!(choose(Ok::<(), ()>(()), &blank, 0, Some(built), count), Ok(built));
        assert_eq!(lines(), 2, "the blank sector, then the built-in record");
        assert_eq!(
            choose(Ok::<(), ()>(()), &blank, 0, None, count),
            Err("not usable")
        );
        assert_eq!(choose(Err("bus"), &good, 0, None, count), Err("unreadable"));
        assert_eq!(lines(), 4);
        // Built without `NODE_WIFI_SSID` (as the tests are): nothing built in.
        assert_eq!(crate::built_in!("node-1"), None);
    }

    #[test]
    fn a_record_round_trips_and_leaves_the_rest_erased() {
        let mut s = [0u8; SECTOR];
        sample().encode(&mut s).unwrap();
        assert_eq!(&s[..4], b"IOTP");
        assert_eq!(Provision::decode(&s), Ok(sample()));
        let used = HEADER + usize::from(u16::from_le_bytes([s[5], s[6]])) + CRC;
        assert!(s[used..].iter().all(|&b| b == 0xFF));
        // The used part alone is enough (what a host tool reads back from a file).
        assert_eq!(Provision::decode(&s[..used]), Ok(sample()));
        let open = Provision {
            wifi_password: "",
            gateway: Gateway {
                host: "gateway.local",
                port: 8883,
            },
            ..sample()
        };
        open.encode(&mut s).unwrap();
        assert_eq!(Provision::decode(&s), Ok(open));
    }

    #[test]
    fn a_blank_damaged_or_foreign_sector_is_refused_with_the_reason() {
        assert_eq!(Provision::decode(&[0xFF; SECTOR]), Err(Error::Blank));
        assert_eq!(Provision::decode(&[0; SECTOR]), Err(Error::NotProvisioning));
        let mut s = [0u8; SECTOR];
        sample().encode(&mut s).unwrap();
        let mut v = s;
        v[4] = 2;
        assert_eq!(Provision::decode(&v), Err(Error::Version(2)));
        let mut l = s;
        l[5..7].copy_from_slice(&5000u16.to_le_bytes());
        assert_eq!(Provision::decode(&l), Err(Error::Length));
        // Every single bit flipped in the record is caught.
        let used = HEADER + usize::from(u16::from_le_bytes([s[5], s[6]])) + CRC;
        for i in 7..used {
            for bit in 0..8 {
                let mut d = s;
                d[i] ^= 1 << bit;
                assert!(Provision::decode(&d).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn out_of_range_fields_are_named_and_never_written() {
        let cases: [(Provision<'static>, &str); 8] = [
            (
                Provision {
                    device_id: "bad/id",
                    ..sample()
                },
                "device_id",
            ),
            (
                Provision {
                    mqtt_password: "short",
                    ..sample()
                },
                "mqtt_password",
            ),
            (
                Provision {
                    wifi_ssid: "",
                    ..sample()
                },
                "wifi_ssid",
            ),
            (
                Provision {
                    wifi_password: "1234567",
                    ..sample()
                },
                "wifi_password",
            ),
            (
                Provision {
                    gateway: Gateway {
                        host: "a b",
                        port: 1883,
                    },
                    ..sample()
                },
                "gateway host",
            ),
            (
                Provision {
                    gateway: Gateway { host: "gw", port: 0 },
                    ..sample()
                },
                "gateway port",
            ),
            (
                Provision {
                    sample_period_ms: 50,
                    ..sample()
                },
                "sample_period_ms",
            ),
            (Provision { batch: 0, ..sample() }, "batch"),
        ];
        for (p, field) in cases {
            let mut s = [0xFFu8; SECTOR];
            match p.encode(&mut s) {
                Err(Error::Invalid(what)) => assert!(what.starts_with(field), "{what}"),
                other => panic!("{field}: {other:?}"),
            }
            assert!(s.iter().all(|&b| b == 0xFF), "{field}: nothing written");
        }
    }

    proptest::proptest! {
        /// Any bytes are answered without a panic; what decodes is valid.
        #[test]
        fn any_bytes_are_answered(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Ok(p) = Provision::decode(&bytes) {
                proptest::prop_assert!(p.validate().is_ok());
            }
            let mut s = [0u8; SECTOR];
            sample().encode(&mut s).unwrap();
            let n = bytes.len().min(SECTOR);
            s[..n].copy_from_slice(&bytes[..n]);
            let _ = Provision::decode(&s);
        }
    }
}
