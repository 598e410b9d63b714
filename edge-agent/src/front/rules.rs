//! The front's rules, free of I/O: which device ids a connection may name, what a CONNECT,
//! PUBLISH or SUBSCRIBE may carry, and the rewrites the front makes (a certificate device's
//! login, no retained will).

use std::sync::Arc;

use bytes::BytesMut;
use rumqttd::protocol::v4::{self, V4};
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{Error as MqttError, Packet, Protocol};

use crate::metrics::Metrics;

/// The distinct device ids taken since the agent started (`auth = "none"`), at most a capacity.
#[derive(Debug)]
pub struct DeviceSet {
    ids: std::sync::Mutex<std::collections::HashSet<String>>,
    capacity: usize,
    metrics: Option<Arc<Metrics>>,
}

impl DeviceSet {
    /// An empty set taking at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        DeviceSet {
            ids: std::sync::Mutex::new(std::collections::HashSet::new()),
            capacity,
            metrics: None,
        }
    }

    /// The same, its size shown in `edge_mqtt_devices_taken`.
    pub fn with_metrics(capacity: usize, metrics: Arc<Metrics>) -> Self {
        DeviceSet {
            metrics: Some(metrics),
            ..DeviceSet::new(capacity)
        }
    }

    /// Whether `id` is in the set, adding it if there is room.
    pub fn admit(&self, id: &str) -> bool {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.contains(id) {
            return true;
        }
        if ids.len() >= self.capacity {
            return false;
        }
        ids.insert(id.to_owned());
        if let Some(m) = &self.metrics {
            m.mqtt_devices
                .store(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        true
    }

    /// How many ids were taken.
    pub fn len(&self) -> usize {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The first packet was not CONNECT.
    NotConnect,
    /// CONNECT of another protocol level than 3.1.1 and 5.
    Protocol(u8),
    /// A client id that is not a device id.
    ClientId,
    /// A last will to another topic than the device's status.
    Will(String),
    /// A publish to a topic the device may not use.
    Publish(String),
    /// A subscription the device may not have.
    Subscribe(String),
    /// Bytes that are not MQTT.
    Malformed,
    /// A client id other than its certificate's name.
    Certificate,
    /// A device id past `[mqtt] max_devices` (`auth = "none"`).
    Devices,
}

/// The device a publish topic a device may use names: `sensors/<id>` or `devices/<id>/status`.
pub fn publish_device(topic: &str) -> Option<&str> {
    let id = match topic.strip_prefix("sensors/") {
        Some(id) => id,
        None => topic.strip_prefix("devices/")?.strip_suffix("/status")?,
    };
    vocab::wire::is_valid_device_id(id).then_some(id)
}

/// The device a subscription a device may have names: `devices/<id>/ack`.
pub fn subscribe_device(filter: &str) -> Option<&str> {
    let id = filter.strip_prefix("devices/")?.strip_suffix("/ack")?;
    vocab::wire::is_valid_device_id(id).then_some(id)
}

/// Whether device `id` may publish to `topic`.
pub fn may_publish(id: &str, topic: &str) -> bool {
    publish_device(topic) == Some(id)
}

/// Whether device `id` may subscribe to `filter`.
pub fn may_subscribe(id: &str, filter: &str) -> bool {
    subscribe_device(filter) == Some(id)
}

/// Whom a connection may name: the device it logged in as, or (`auth = "none"`) any device
/// the set takes.
#[derive(Debug, Clone, Copy)]
pub enum Rules<'a> {
    /// Only this device.
    Device(&'a str),
    /// Any device in, or with room in, the set.
    Open(&'a DeviceSet),
}

/// The identity a CONNECT frame gives and its protocol level (4: 3.1.1, 5), or why it is
/// refused (with the level, for the CONNACK's form). With `open` (`auth = "none"`) the client
/// id and the will's device must be in, or find room in, the set; else the will must be the
/// client's own.
pub fn connect_identity(frame: &[u8], open: Option<&DeviceSet>) -> Result<(String, u8), (Denied, u8)> {
    let mut level = 4;
    identity(frame, open, &mut level)
        .map(|id| (id, level))
        .map_err(|d| (d, level))
}

/// Whether `rules` let a connection name `device` (`None`: a topic of no device's); `denied`
/// is the refusal when they do not (past the set's capacity it is [`Denied::Devices`]).
fn check_name(rules: Rules<'_>, device: Option<&str>, denied: impl FnOnce() -> Denied) -> Result<(), Denied> {
    match (device, rules) {
        (Some(d), Rules::Device(id)) if d == id => Ok(()),
        (Some(d), Rules::Open(set)) => {
            if set.admit(d) {
                Ok(())
            } else {
                Err(Denied::Devices)
            }
        }
        _ => Err(denied()),
    }
}

fn identity(frame: &[u8], open: Option<&DeviceSet>, level_out: &mut u8) -> Result<String, Denied> {
    // Fixed header, then the protocol name (2-byte length + "MQTT") and its level.
    let h = v4::check(frame.iter(), usize::MAX).map_err(|_| Denied::Malformed)?;
    if h.byte1 >> 4 != 1 {
        return Err(Denied::NotConnect);
    }
    let var = &frame[h.fixed_header_len..];
    let name_len = usize::from(u16::from_be_bytes([
        *var.first().ok_or(Denied::Malformed)?,
        *var.get(1).ok_or(Denied::Malformed)?,
    ]));
    let level = *var.get(2 + name_len).ok_or(Denied::Malformed)?;
    if level != 4 && level != 5 {
        return Err(Denied::Protocol(level));
    }
    *level_out = level;
    match read(level, frame) {
        Ok(Packet::Connect(c, _, will, _, _)) => {
            if !vocab::wire::is_valid_device_id(&c.client_id) {
                return Err(Denied::ClientId);
            }
            let rules = match open {
                Some(set) => Rules::Open(set),
                None => Rules::Device(&c.client_id),
            };
            check_name(rules, Some(&c.client_id), || Denied::ClientId)?;
            if let Some(w) = will {
                let topic = String::from_utf8_lossy(&w.topic);
                let device = publish_device(&topic).filter(|_| topic.starts_with("devices/"));
                check_name(rules, device, || Denied::Will(topic.clone().into_owned()))?;
            }
            Ok(c.client_id)
        }
        _ => Err(Denied::Malformed),
    }
}

/// One whole frame read with rumqttd's parser of protocol `level` (only for packet types that
/// parser handles: CONNECT and SUBSCRIBE here).
fn read(level: u8, frame: &[u8]) -> Result<Packet, MqttError> {
    let mut b = BytesMut::from(frame);
    if level == 5 {
        V5.read_mut(&mut b, usize::MAX)
    } else {
        V4.read_mut(&mut b, usize::MAX)
    }
}

/// Whether a frame after CONNECT may go through under `rules` (protocol `level`, as its
/// CONNECT said).
pub fn authorize(rules: Rules<'_>, level: u8, frame: &[u8], h: &v4::FixedHeader) -> Result<(), Denied> {
    match h.byte1 >> 4 {
        // PUBLISH: the topic follows the fixed header (2-byte length, then the name).
        3 => {
            let var = &frame[h.fixed_header_len..];
            if var.len() < 2 {
                return Err(Denied::Malformed);
            }
            let n = usize::from(u16::from_be_bytes([var[0], var[1]]));
            let topic = var.get(2..2 + n).ok_or(Denied::Malformed)?;
            let topic = std::str::from_utf8(topic).map_err(|_| Denied::Malformed)?;
            check_name(rules, publish_device(topic), || {
                Denied::Publish(topic.to_string())
            })
        }
        // SUBSCRIBE: every filter.
        8 => match read(level, frame) {
            Ok(Packet::Subscribe(s, _)) => {
                for f in &s.filters {
                    check_name(rules, subscribe_device(&f.path), || {
                        Denied::Subscribe(f.path.clone())
                    })?;
                }
                Ok(())
            }
            _ => Err(Denied::Malformed),
        },
        // A second CONNECT is a protocol error; CONNACK, SUBACK, UNSUBACK and PINGRESP go only
        // from a server; AUTH (MQTT 5's enhanced authentication) is not offered. (rumqttd's MQTT
        // 5 reader meets those with `unreachable!()`: they must not reach it.)
        0..=2 | 9 | 11 | 13 | 15 => Err(Denied::Malformed),
        _ => Ok(()),
    }
}

/// Clears a CONNECT's will-retain flag (rumqttd would keep a retained will forever; behind
/// the front nobody can read it).
pub(super) fn clear_will_retain(connect: &mut [u8]) {
    let Ok(h) = v4::check(connect.iter(), usize::MAX) else {
        return;
    };
    let var = h.fixed_header_len;
    let (Some(&a), Some(&b)) = (connect.get(var), connect.get(var + 1)) else {
        return;
    };
    let flags = var + 2 + usize::from(u16::from_be_bytes([a, b])) + 1;
    if let Some(f) = connect.get_mut(flags) {
        *f &= !0x20;
    }
}

/// The CONNECT of a certificate device with the front's token as its login (username = id).
pub(super) fn with_token(level: u8, connect: &[u8], id: &str, token: &str) -> Result<BytesMut, Denied> {
    let login = Some(rumqttd::protocol::Login {
        username: id.to_string(),
        password: token.to_string(),
    });
    let mut out = BytesMut::with_capacity(connect.len() + token.len() + id.len() + 8);
    let written = match read(level, connect) {
        Ok(Packet::Connect(c, props, will, will_props, _)) => {
            let p = Packet::Connect(c, props, will, will_props, login);
            if level == 5 {
                V5.write(p, &mut out)
            } else {
                V4.write(p, &mut out)
            }
        }
        _ => return Err(Denied::Malformed),
    };
    written.map_err(|_| Denied::Malformed)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(level: u8, id: &str, will: Option<&str>) -> Vec<u8> {
        let mut v = vec![0, 4, b'M', b'Q', b'T', b'T', level];
        v.push(if will.is_some() { 0x06 } else { 0x02 });
        v.extend_from_slice(&[0, 30]);
        v.extend_from_slice(&(id.len() as u16).to_be_bytes());
        v.extend_from_slice(id.as_bytes());
        if let Some(t) = will {
            v.extend_from_slice(&(t.len() as u16).to_be_bytes());
            v.extend_from_slice(t.as_bytes());
            v.extend_from_slice(&[0, 1, b'x']);
        }
        let mut f = vec![0x10, v.len() as u8];
        f.extend(v);
        f
    }

    fn publish(topic: &str) -> Vec<u8> {
        let mut v = (topic.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(topic.as_bytes());
        v.extend_from_slice(b"payload");
        let mut f = vec![0x30, v.len() as u8];
        f.extend(v);
        f
    }

    fn subscribe(filters: &[&str]) -> Vec<u8> {
        let mut v = vec![0, 1];
        for t in filters {
            v.extend_from_slice(&(t.len() as u16).to_be_bytes());
            v.extend_from_slice(t.as_bytes());
            v.push(1);
        }
        let mut f = vec![0x82, v.len() as u8];
        f.extend(v);
        f
    }

    fn check(id: &str, frame: &[u8]) -> Result<(), Denied> {
        let h = v4::check(frame.iter(), usize::MAX).unwrap();
        authorize(Rules::Device(id), 4, frame, &h)
    }

    #[test]
    fn a_device_uses_its_own_topics_only() {
        assert!(may_publish("d1", "sensors/d1") && may_publish("d1", "devices/d1/status"));
        for t in [
            "sensors/d2",
            "sensors/d1/x",
            "devices/d2/status",
            "devices/d1/ack",
            "sensors/+",
            "sensors/d",
        ] {
            assert!(!may_publish("d1", t), "{t}");
        }
        assert!(may_subscribe("d1", "devices/d1/ack"));
        for f in [
            "devices/d2/ack",
            "devices/+/ack",
            "#",
            "sensors/d1",
            "devices/d1/#",
        ] {
            assert!(!may_subscribe("d1", f), "{f}");
        }
    }

    #[test]
    fn connect_gives_the_identity_or_the_refusal_the_spec_wants() {
        let id = |f: &[u8]| connect_identity(f, None).map_err(|e| e.0);
        assert_eq!(id(&connect(4, "dev-1", None)), Ok(("dev-1".into(), 4)));
        assert_eq!(
            id(&connect(4, "dev-1", Some("devices/dev-1/status"))),
            Ok(("dev-1".into(), 4))
        );
        assert_eq!(id(&connect5("dev-1", None)), Ok(("dev-1".into(), 5)));
        assert_eq!(
            id(&connect5("dev-1", Some("devices/dev-1/status"))),
            Ok(("dev-1".into(), 5))
        );
        assert_eq!(
            connect_identity(&connect5("dev-1", Some("devices/dev-2/status")), None),
            Err((Denied::Will("devices/dev-2/status".into()), 5))
        );
        assert_eq!(id(&connect(3, "dev-1", None)), Err(Denied::Protocol(3)));
        assert_eq!(id(&connect(6, "dev-1", None)), Err(Denied::Protocol(6)));
        assert_eq!(id(&connect(4, "bad/id", None)), Err(Denied::ClientId));
        assert_eq!(
            id(&connect(4, "dev-1", Some("devices/dev-2/status"))),
            Err(Denied::Will("devices/dev-2/status".into()))
        );
        assert_eq!(
            id(&connect(4, "dev-1", Some("sensors/dev-1"))),
            Err(Denied::Will("sensors/dev-1".into()))
        );
        assert_eq!(id(&publish("sensors/dev-1")), Err(Denied::NotConnect));
        assert_eq!(id(&[0x10, 0x01, 0x00]), Err(Denied::Malformed));
    }

    /// An MQTT 5 CONNECT: empty property lists after the keep-alive and before the will.
    fn connect5(id: &str, will: Option<&str>) -> Vec<u8> {
        let mut v = vec![0, 4, b'M', b'Q', b'T', b'T', 5];
        v.push(if will.is_some() { 0x06 } else { 0x02 });
        v.extend_from_slice(&[0, 30, 0]);
        v.extend_from_slice(&(id.len() as u16).to_be_bytes());
        v.extend_from_slice(id.as_bytes());
        if let Some(t) = will {
            v.push(0);
            v.extend_from_slice(&(t.len() as u16).to_be_bytes());
            v.extend_from_slice(t.as_bytes());
            v.extend_from_slice(&[0, 1, b'x']);
        }
        let mut f = vec![0x10, v.len() as u8];
        f.extend(v);
        f
    }

    proptest::proptest! {
        /// Whatever a client sends, the checks answer without a panic, and a frame that is not
        /// whole is never let through.
        #[test]
        fn any_bytes_are_answered(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), flip in 0usize..64) {
            let set = DeviceSet::new(4);
            let _ = connect_identity(&bytes, None);
            let _ = connect_identity(&bytes, Some(&set));
            let mut cleared = bytes.clone();
            clear_will_retain(&mut cleared);
            if let Ok(h) = v4::check(bytes.iter(), usize::MAX) {
                let frame = &bytes[..h.frame_length()];
                for rules in [Rules::Device("d1"), Rules::Open(&set)] {
                    let _ = authorize(rules, 4, frame, &h);
                    let _ = authorize(rules, 5, frame, &h);
                }
            }
            for base in [connect(4, "d1", Some("devices/d1/status")), publish("sensors/d1"), subscribe(&["devices/d1/ack"])] {
                let mut b = base.clone();
                let i = flip % b.len();
                b[i] ^= 0x5a;
                let _ = connect_identity(&b, None);
                let _ = connect_identity(&b, Some(&set));
                if let Ok(h) = v4::check(b.iter(), usize::MAX) {
                    let _ = authorize(Rules::Device("d1"), 4, &b[..h.frame_length()], &h);
                    let _ = authorize(Rules::Open(&set), 5, &b[..h.frame_length()], &h);
                }
            }
        }
    }

    #[test]
    fn publishes_and_subscriptions_are_checked_per_packet() {
        assert_eq!(check("d1", &publish("sensors/d1")), Ok(()));
        assert_eq!(
            check("d1", &publish("sensors/d2")),
            Err(Denied::Publish("sensors/d2".into()))
        );
        assert_eq!(check("d1", &subscribe(&["devices/d1/ack"])), Ok(()));
        assert_eq!(
            check("d1", &subscribe(&["devices/d1/ack", "devices/d2/ack"])),
            Err(Denied::Subscribe("devices/d2/ack".into()))
        );
        assert_eq!(check("d1", &[0xc0, 0x00]), Ok(()), "PINGREQ");
        for server_only in [
            [0x20, 0x00],
            [0x90, 0x00],
            [0xb0, 0x00],
            [0xd0, 0x00],
            [0xf0, 0x00],
        ] {
            assert_eq!(
                check("d1", &server_only),
                Err(Denied::Malformed),
                "{server_only:?}"
            );
        }
        assert_eq!(
            check("d1", &connect(4, "d1", None)),
            Err(Denied::Malformed),
            "a second CONNECT"
        );
        assert_eq!(check("d1", &[0x30, 0x01, 0x00]), Err(Denied::Malformed));
    }

    #[test]
    fn without_passwords_any_device_id_up_to_the_cap_but_only_device_topics() {
        let set = DeviceSet::new(3);
        let open = |frame: &[u8]| {
            let h = v4::check(frame.iter(), usize::MAX).unwrap();
            authorize(Rules::Open(&set), 4, frame, &h)
        };
        // A client id and the devices its topics name each take a place in the set.
        assert_eq!(
            connect_identity(&connect(4, "mosq-1", Some("devices/d1/status")), Some(&set)),
            Ok(("mosq-1".into(), 4))
        );
        assert_eq!(set.len(), 2);
        assert_eq!(open(&publish("sensors/d1")), Ok(()));
        assert_eq!(open(&subscribe(&["devices/d2/ack"])), Ok(()));
        assert_eq!(set.len(), 3);
        // Full: a known device goes on, a new one is refused, as is a new client id.
        assert_eq!(open(&publish("devices/d2/status")), Ok(()));
        assert_eq!(open(&publish("sensors/d3")), Err(Denied::Devices));
        assert_eq!(open(&subscribe(&["devices/d3/ack"])), Err(Denied::Devices));
        assert_eq!(
            connect_identity(&connect(4, "mosq-2", None), Some(&set)),
            Err((Denied::Devices, 4))
        );
        assert_eq!(
            connect_identity(&connect5("mosq-1", Some("devices/d4/status")), Some(&set)),
            Err((Denied::Devices, 5))
        );
        // Only device-shaped topics and filters, full or not: no wildcard, no other topic.
        for f in [
            "#",
            "sensors/+",
            "devices/+/ack",
            "devices/d1/#",
            "sensors/d1",
            "other",
        ] {
            assert_eq!(open(&subscribe(&[f])), Err(Denied::Subscribe(f.into())), "{f}");
        }
        for t in ["devices/d1/ack", "other", "sensors/d1/x", "sensors/"] {
            assert_eq!(open(&publish(t)), Err(Denied::Publish(t.into())), "{t}");
        }
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn the_will_retain_flag_is_cleared() {
        let mut c = connect(4, "d1", Some("devices/d1/status"));
        let flags = 2 + 2 + 4 + 1;
        c[flags] |= 0x20;
        clear_will_retain(&mut c);
        assert_eq!(c[flags], 0x06, "will + clean session, no retain");
        assert_eq!(connect_identity(&c, None), Ok(("d1".into(), 4)));
        let mut c5 = connect5("d1", Some("devices/d1/status"));
        c5[flags] |= 0x20;
        clear_will_retain(&mut c5);
        assert_eq!(c5[flags], 0x06);
    }
}
