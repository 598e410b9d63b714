//! MQTT 3.1.1 packets by hand over a blocking socket, for tests and benchmarks that must send
//! exactly what they mean (half a packet, a forbidden filter, a DISCONNECT then a close), and a
//! device's batch as the firmware encodes it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use firmware::wire;

/// A packet: first byte `kind`, the remaining length, `body`.
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    let mut n = body.len();
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        f.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
    f.extend_from_slice(body);
    f
}

/// Appends an MQTT string (2-byte length, then the bytes).
pub fn string(v: &mut Vec<u8>, s: &[u8]) {
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s);
}

/// CONNECT, MQTT 3.1.1, clean session, keep-alive 30 s, client `id`, no login.
pub fn connect_frame(id: &str) -> Vec<u8> {
    let mut v = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    string(&mut v, id.as_bytes());
    frame(0x10, &v)
}

/// SUBSCRIBE (packet id 1) to `filter` at QoS 1.
pub fn subscribe_frame(filter: &str) -> Vec<u8> {
    let mut v = vec![0, 1];
    string(&mut v, filter.as_bytes());
    v.push(1);
    frame(0x82, &v)
}

/// PUBLISH at QoS 1, packet id 1.
pub fn publish_frame(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    string(&mut v, topic.as_bytes());
    v.extend_from_slice(&[0, 1]);
    v.extend_from_slice(payload);
    frame(0x32, &v)
}

/// DISCONNECT.
pub const DISCONNECT: [u8; 2] = [0xe0, 0];

/// Reads one whole packet: (first byte, body); `None` when the connection closed (or the
/// socket's read timeout passed).
pub fn read_packet(c: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 1];
    c.read_exact(&mut head).ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        c.read_exact(&mut b).ok()?;
        len |= usize::from(b[0] & 0x7f) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
        if shift > 21 {
            return None;
        }
    }
    let mut body = vec![0; len];
    c.read_exact(&mut body).ok()?;
    Some((head[0], body))
}

/// A socket to `addr` with a 10 s read timeout and `TCP_NODELAY`.
pub fn open(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.set_nodelay(true)?;
    Ok(c)
}

/// Connects as `id`: the socket and the CONNACK's return code (`None`: closed without one).
pub fn connect(addr: SocketAddr, id: &str) -> std::io::Result<(TcpStream, Option<u8>)> {
    let mut c = open(addr)?;
    c.write_all(&connect_frame(id))?;
    let code = read_packet(&mut c).and_then(|(h, body)| (h == 0x20).then(|| body.get(1).copied()).flatten());
    Ok((c, code))
}

/// The body of the PUBLISH in `body` (first byte `h`): its payload, after the topic and, at
/// QoS 1 or 2, the packet id.
pub fn payload(h: u8, body: &[u8]) -> &[u8] {
    let t = body
        .get(..2)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let at = 2 + t + if h & 0x06 != 0 { 2 } else { 0 };
    body.get(at..).unwrap_or(&[])
}

/// `device`'s batch of three readings (sequence 0 to 2) in boot `boot`, encoded.
pub fn batch(device: &str, boot: u32) -> Vec<u8> {
    let b = wire::Batch {
        device_id: device.try_into().expect("a device id"),
        boot_id: boot,
        first_seq: 0,
        low_seq: 0,
        readings: (0..3)
            .map(|i| wire::Reading {
                channel: 0,
                timestamp_ms: 1_750_000_000_000 + i,
                value: 1.5,
            })
            .collect(),
    };
    let mut buf = [0u8; wire::MAX_BATCH_ENCODED];
    wire::encode(&b, &mut buf).expect("a batch fits").to_vec()
}
