//! Header names the bridge adds to every forwarded record, and their values, and the ones the
//! edge agent sets on the records it logs.

/// The record's identity at the edge: `<gateway id>/<edge topic>/<edge partition>/<edge
/// offset>` (one header rather than four: every header costs an allocation in the producer
/// and ~20 bytes on the wire, per record).
pub const EDGE: &str = "edge";
/// A device reading's `<boot id>/<seq>`.
pub const READING: &str = "reading";
/// Present on records re-sent by a replay job; the value is the job id.
pub const REPLAY: &str = "replay";

/// On a `device-status` record: `1` when the device is online, `0` when its last will said
/// it went away.
pub const ONLINE: &str = "online";
/// On a `dead-letter` record: why the message was refused.
pub const REASON: &str = "reason";
/// On a `dead-letter` record: the MQTT topic the refused message came on.
pub const MQTT_TOPIC: &str = "mqtt_topic";

/// The start of an [`EDGE`] value for records of `topic` partition `partition` of gateway
/// `gateway` (the offset follows).
#[cfg(feature = "alloc")]
pub fn edge_prefix(gateway: &str, topic: &str, partition: u32) -> alloc::string::String {
    alloc::format!("{gateway}/{topic}/{partition}/")
}

/// Splits a [`READING`] value into (boot id, seq).
pub fn parse_reading(v: &[u8]) -> Option<(u32, u64)> {
    let (boot, seq) = core::str::from_utf8(v).ok()?.split_once('/')?;
    Some((boot.parse().ok()?, seq.parse().ok()?))
}

/// Splits an [`EDGE`] value into (gateway, topic, partition, offset). Topic names cannot
/// contain `/`, so a gateway id may.
pub fn parse_edge(v: &[u8]) -> Option<(&str, &str, u32, u64)> {
    let v = core::str::from_utf8(v).ok()?;
    let mut it = v.rsplitn(4, '/');
    let offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let topic = it.next()?;
    let gateway = it.next()?;
    Some((gateway, topic, partition, offset))
}

/// Decimal digits of `n` in `buf` (header values without an allocation).
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// `<boot>/<seq>` in `v`; returns the used part.
pub fn reading(boot: u32, seq: u64, v: &mut [u8; 41]) -> &[u8] {
    let mut b = [0u8; 20];
    let boot = decimal(u64::from(boot), &mut b);
    let n = boot.len();
    v[..n].copy_from_slice(boot);
    v[n] = b'/';
    let seq = decimal(seq, &mut b);
    v[n + 1..n + 1 + seq.len()].copy_from_slice(seq);
    &v[..n + 1 + seq.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_headers_parse_back() {
        let mut v = [0u8; 41];
        let written = reading(u32::MAX, u64::MAX, &mut v);
        assert_eq!(parse_reading(written), Some((u32::MAX, u64::MAX)));
        assert_eq!(parse_reading(b"7/0"), Some((7, 0)));
        for bad in [&b"7"[..], b"/3", b"x/3", b"7/", b"7/3/1"] {
            assert_eq!(parse_reading(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn edge_headers_parse_back() {
        assert_eq!(
            parse_edge(b"gw-1/telemetry/3/12345"),
            Some(("gw-1", "telemetry", 3, 12345))
        );
        assert_eq!(
            parse_edge(b"site/a/gw/dead-letter/0/0"),
            Some(("site/a/gw", "dead-letter", 0, 0))
        );
        for bad in [&b""[..], b"gw/t/x/1", b"gw/t/1/-1", b"t/1/2", b"\xff/t/1/2"] {
            assert_eq!(parse_edge(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Header bytes come from the cloud, written by anyone: parsing never panics, and
        /// whatever the bridge writes parses back to itself.
        #[test]
        fn edge_header_parsing_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                                        gw in "[a-z0-9/_-]{1,20}", topic in "[a-z._-]{1,20}", p in 0u32..1024, o in 0u64..u64::MAX) {
            let _ = parse_edge(&bytes);
            let v = format!("{gw}/{topic}/{p}/{o}");
            proptest::prop_assert_eq!(parse_edge(v.as_bytes()), Some((gw.as_str(), topic.as_str(), p, o)));
        }
    }

    #[test]
    fn decimal_and_reading_digits() {
        let mut b = [0u8; 20];
        for n in [0, 7, 10, 99, 1_000_000, u64::MAX] {
            assert_eq!(decimal(n, &mut b), n.to_string().as_bytes());
        }
        let mut v = [0u8; 41];
        assert_eq!(
            reading(u32::MAX, u64::MAX, &mut v),
            format!("{}/{}", u32::MAX, u64::MAX).as_bytes()
        );
        assert_eq!(reading(0, 0, &mut v), b"0/0");
    }
}
