//! A small MQTT 3.1.1 codec: exactly the packets a sensor node sends and receives.
//!
//! Encoders write into caller-provided slices and fail with [`Error::BufferTooSmall`] rather
//! than truncate. The decoder is split like mini-redis' `Frame::check`/`parse`:
//! [`frame_len`] looks only at the fixed header to tell how many bytes the next packet needs
//! (so the caller can wait, or skip a packet too large to hold), then [`parse`] reads one whole
//! packet. Neither panics on any input; lengths are checked before every read.

use crate::Error;

/// MQTT control packet types used here.
pub mod kind {
    /// Client request to connect.
    pub const CONNECT: u8 = 1;
    /// Connect acknowledgement.
    pub const CONNACK: u8 = 2;
    /// Publish message.
    pub const PUBLISH: u8 = 3;
    /// Publish acknowledgement (QoS 1).
    pub const PUBACK: u8 = 4;
    /// Subscribe request.
    pub const SUBSCRIBE: u8 = 8;
    /// Subscribe acknowledgement.
    pub const SUBACK: u8 = 9;
    /// Ping request.
    pub const PINGREQ: u8 = 12;
    /// Ping response.
    pub const PINGRESP: u8 = 13;
    /// Client is disconnecting.
    pub const DISCONNECT: u8 = 14;
}

/// Largest value the 4-byte remaining-length field can hold.
pub const MAX_REMAINING: usize = 268_435_455;

/// A decoded packet, borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// CONNACK with its return code (0 = accepted).
    ConnAck {
        /// Whether the broker kept a session.
        session_present: bool,
        /// 0 accepted; 1..=5 refused (version, identifier, unavailable, credentials, auth).
        code: u8,
    },
    /// PUBLISH.
    Publish {
        /// Topic name.
        topic: &'a str,
        /// Packet id, present for QoS 1 and 2.
        pid: Option<u16>,
        /// QoS level 0..=2.
        qos: u8,
        /// Retain flag.
        retain: bool,
        /// Application payload.
        payload: &'a [u8],
    },
    /// PUBACK for a QoS 1 publish.
    PubAck {
        /// Packet id being acknowledged.
        pid: u16,
    },
    /// SUBACK with the first return code (0..=2 granted QoS, 0x80 failure).
    SubAck {
        /// Packet id being acknowledged.
        pid: u16,
        /// Granted QoS of the first topic filter, or 0x80.
        code: u8,
    },
    /// PINGRESP.
    PingResp,
    /// A well-framed packet this client has no use for (its type).
    Other(u8),
}

struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let end = self.pos.checked_add(bytes.len()).ok_or(Error::BufferTooSmall)?;
        self.buf
            .get_mut(self.pos..end)
            .ok_or(Error::BufferTooSmall)?
            .copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }
    fn u8(&mut self, b: u8) -> Result<(), Error> {
        self.put(&[b])
    }
    fn u16(&mut self, v: u16) -> Result<(), Error> {
        self.put(&v.to_be_bytes())
    }
    fn bin(&mut self, b: &[u8]) -> Result<(), Error> {
        let n = u16::try_from(b.len()).map_err(|_| Error::BufferTooSmall)?;
        self.u16(n)?;
        self.put(b)
    }
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_varint(w: &mut Writer<'_>, mut n: usize) -> Result<(), Error> {
    if n > MAX_REMAINING {
        return Err(Error::BufferTooSmall);
    }
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        w.u8(b)?;
        if n == 0 {
            return Ok(());
        }
    }
}

/// Writes a packet whose body is produced by `body` after the fixed header.
fn packet(
    buf: &mut [u8],
    first: u8,
    body_len: usize,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), Error>,
) -> Result<usize, Error> {
    let mut w = Writer { buf, pos: 0 };
    w.u8(first)?;
    put_varint(&mut w, body_len)?;
    let start = w.pos;
    body(&mut w)?;
    debug_assert_eq!(w.pos - start, body_len);
    Ok(w.pos)
}

/// The last will carried in CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Will<'a> {
    /// Topic the broker publishes the will on.
    pub topic: &'a str,
    /// The will's payload.
    pub payload: &'a [u8],
    /// QoS of the will publish.
    pub qos: u8,
    /// Whether the broker retains the will.
    pub retain: bool,
}

/// CONNECT options.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    /// Client identifier.
    pub client_id: &'a str,
    /// Keep-alive interval in seconds (0 disables).
    pub keep_alive_s: u16,
    /// Start a clean session.
    pub clean_session: bool,
    /// Optional last will.
    pub will: Option<Will<'a>>,
    /// Optional user name.
    pub username: Option<&'a str>,
    /// Optional password (only sent with a user name).
    pub password: Option<&'a [u8]>,
}

/// Encodes CONNECT; returns the packet length.
pub fn encode_connect(buf: &mut [u8], c: &Connect<'_>) -> Result<usize, Error> {
    let password = c.username.and(c.password);
    let mut flags = 0u8;
    let mut len = 10 + 2 + c.client_id.len();
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos & 3) << 3) | if w.retain { 0x20 } else { 0 };
        len += 2 + w.topic.len() + 2 + w.payload.len();
    }
    if c.clean_session {
        flags |= 0x02;
    }
    if let Some(u) = c.username {
        flags |= 0x80;
        len += 2 + u.len();
    }
    if let Some(p) = password {
        flags |= 0x40;
        len += 2 + p.len();
    }
    packet(buf, kind::CONNECT << 4, len, |w| {
        w.bin(b"MQTT")?;
        w.u8(4)?;
        w.u8(flags)?;
        w.u16(c.keep_alive_s)?;
        w.bin(c.client_id.as_bytes())?;
        if let Some(will) = &c.will {
            w.bin(will.topic.as_bytes())?;
            w.bin(will.payload)?;
        }
        if let Some(u) = c.username {
            w.bin(u.as_bytes())?;
        }
        if let Some(p) = password {
            w.bin(p)?;
        }
        Ok(())
    })
}

/// Encodes PUBLISH whose payload is written in place by `payload`, which gets the free space
/// and returns how many bytes it wrote. Returns the packet's range within `buf` (the fixed
/// header is placed right before the variable header, so nothing is copied twice).
pub fn encode_publish_with(
    buf: &mut [u8],
    topic: &str,
    pid: Option<u16>,
    retain: bool,
    dup: bool,
    payload: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
) -> Result<core::ops::Range<usize>, Error> {
    const RESERVED: usize = 5; // type byte + at most 4 remaining-length bytes
    let mut w = Writer { buf, pos: RESERVED };
    w.bin(topic.as_bytes())?;
    if let Some(p) = pid {
        w.u16(p)?;
    }
    let head_end = w.pos;
    let n = payload(buf.get_mut(head_end..).ok_or(Error::BufferTooSmall)?)?;
    let body = head_end - RESERVED + n;
    if body > MAX_REMAINING {
        return Err(Error::BufferTooSmall);
    }
    let qos = if pid.is_some() { 1 } else { 0 };
    let first = (kind::PUBLISH << 4) | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
    let start = RESERVED - 1 - varint_len(body);
    let mut h = Writer { buf, pos: start };
    h.u8(first)?;
    put_varint(&mut h, body)?;
    debug_assert_eq!(h.pos, RESERVED);
    Ok(start..head_end + n)
}

/// Encodes PUBLISH with a ready payload; returns the packet's range within `buf`.
pub fn encode_publish(
    buf: &mut [u8],
    topic: &str,
    pid: Option<u16>,
    retain: bool,
    payload: &[u8],
) -> Result<core::ops::Range<usize>, Error> {
    encode_publish_with(buf, topic, pid, retain, false, |out| {
        out.get_mut(..payload.len())
            .ok_or(Error::BufferTooSmall)?
            .copy_from_slice(payload);
        Ok(payload.len())
    })
}

/// Encodes SUBSCRIBE for one topic filter; returns the packet length.
pub fn encode_subscribe(buf: &mut [u8], pid: u16, filter: &str, qos: u8) -> Result<usize, Error> {
    packet(
        buf,
        (kind::SUBSCRIBE << 4) | 0x02,
        2 + 2 + filter.len() + 1,
        |w| {
            w.u16(pid)?;
            w.bin(filter.as_bytes())?;
            w.u8(qos & 3)
        },
    )
}

/// Encodes PUBACK; returns the packet length.
pub fn encode_puback(buf: &mut [u8], pid: u16) -> Result<usize, Error> {
    packet(buf, kind::PUBACK << 4, 2, |w| w.u16(pid))
}

/// Encodes PINGREQ; returns the packet length.
pub fn encode_pingreq(buf: &mut [u8]) -> Result<usize, Error> {
    packet(buf, kind::PINGREQ << 4, 0, |_| Ok(()))
}

/// Encodes DISCONNECT; returns the packet length.
pub fn encode_disconnect(buf: &mut [u8]) -> Result<usize, Error> {
    packet(buf, kind::DISCONNECT << 4, 0, |_| Ok(()))
}

/// Length in bytes of the packet at the start of `buf`, once its fixed header is complete.
/// `Ok(None)`: more bytes are needed to know. A remaining length over four bytes is an error.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(None) };
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(1 + i + 1 + value));
        }
    }
    Err(Error::Protocol)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.buf.len() {
            return Err(Error::Protocol);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Parses the one complete packet that fills `frame` (as sized by [`frame_len`]).
pub fn parse(frame: &[u8]) -> Result<Packet<'_>, Error> {
    let total = frame_len(frame)?.ok_or(Error::Protocol)?;
    if total != frame.len() {
        return Err(Error::Protocol);
    }
    let first = frame[0];
    let header_len = (1..=4).find(|i| frame[*i] & 0x80 == 0).ok_or(Error::Protocol)? + 1;
    let mut r = Reader {
        buf: &frame[header_len..],
    };
    let (ty, flags) = (first >> 4, first & 0x0f);
    let packet = match ty {
        kind::CONNACK if flags == 0 => {
            let ack = r.u8()?;
            if ack & 0xfe != 0 {
                return Err(Error::Protocol);
            }
            Packet::ConnAck {
                session_present: ack & 1 == 1,
                code: r.u8()?,
            }
        }
        kind::PUBLISH => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return Err(Error::Protocol);
            }
            let len = usize::from(r.u16()?);
            let topic = core::str::from_utf8(r.take(len)?).map_err(|_| Error::Protocol)?;
            let pid = if qos > 0 { Some(r.u16()?) } else { None };
            let payload = r.buf;
            r.buf = &[];
            Packet::Publish {
                topic,
                pid,
                qos,
                retain: flags & 1 == 1,
                payload,
            }
        }
        kind::PUBACK if flags == 0 => Packet::PubAck { pid: r.u16()? },
        kind::SUBACK if flags == 0 => {
            let pid = r.u16()?;
            let code = r.u8()?;
            r.buf = &[];
            Packet::SubAck { pid, code }
        }
        kind::PINGRESP if flags == 0 => Packet::PingResp,
        kind::CONNACK | kind::PUBACK | kind::SUBACK | kind::PINGRESP | 0 => return Err(Error::Protocol),
        other => {
            r.buf = &[];
            Packet::Other(other)
        }
    };
    if !r.buf.is_empty() {
        return Err(Error::Protocol);
    }
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(frame: &[u8]) -> Result<Packet<'_>, Error> {
        assert_eq!(frame_len(frame).unwrap(), Some(frame.len()));
        parse(frame)
    }

    #[test]
    fn connect_matches_the_spec_example_layout() {
        let mut buf = [0u8; 128];
        let n = encode_connect(
            &mut buf,
            &Connect {
                client_id: "dev1",
                keep_alive_s: 60,
                clean_session: true,
                will: Some(Will {
                    topic: "w",
                    payload: b"x",
                    qos: 1,
                    retain: true,
                }),
                username: Some("u"),
                password: Some(b"p"),
            },
        )
        .unwrap();
        let want: &[u8] = &[
            0x10,
            28,
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            4,
            0b1110_1110,
            0,
            60,
            0,
            4,
            b'd',
            b'e',
            b'v',
            b'1',
            0,
            1,
            b'w',
            0,
            1,
            b'x',
            0,
            1,
            b'u',
            0,
            1,
            b'p',
        ];
        assert_eq!(&buf[..n], want);
    }

    #[test]
    fn publish_round_trips_with_multibyte_length() {
        let payload = [7u8; 300];
        let mut buf = [0u8; 400];
        let range = encode_publish(&mut buf, "sensors/a", Some(9), true, &payload).unwrap();
        match one(&buf[range]).unwrap() {
            Packet::Publish {
                topic,
                pid,
                qos,
                retain,
                payload: p,
            } => {
                assert_eq!((topic, pid, qos, retain), ("sensors/a", Some(9), 1, true));
                assert_eq!(p, &payload[..]);
            }
            p => panic!("unexpected {p:?}"),
        }
    }

    #[test]
    fn small_packets_and_errors() {
        assert_eq!(
            one(&[0x20, 2, 0, 5]),
            Ok(Packet::ConnAck {
                session_present: false,
                code: 5
            })
        );
        assert_eq!(one(&[0x40, 2, 1, 2]), Ok(Packet::PubAck { pid: 258 }));
        assert_eq!(
            one(&[0x90, 3, 0, 1, 0x80]),
            Ok(Packet::SubAck { pid: 1, code: 0x80 })
        );
        assert_eq!(one(&[0xd0, 0]), Ok(Packet::PingResp));
        assert_eq!(one(&[0x40, 3, 1, 2, 3]), Err(Error::Protocol), "trailing byte");
        assert_eq!(one(&[0x36, 0]), Err(Error::Protocol), "QoS 3");
        assert_eq!(one(&[0x42, 2, 0, 1]), Err(Error::Protocol), "bad PUBACK flags");
        assert_eq!(frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff]), Err(Error::Protocol));
        assert_eq!(frame_len(&[0x30, 0xff]), Ok(None));
        let mut small = [0u8; 3];
        assert_eq!(encode_puback(&mut small, 1), Err(Error::BufferTooSmall));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(Some(n)) = frame_len(&bytes) {
                if n <= bytes.len() {
                    let _ = parse(&bytes[..n]);
                }
            }
            let _ = parse(&bytes);
        }
    }
}
