//! Topic names: the edge log's topics (the cloud topics the bridge forwards them to have the
//! same names unless `[bridge.topics]` maps them), the cloud topic of gateway heartbeats, and
//! the MQTT topics devices use.

/// Device readings: key = device id, value = postcard
/// [`ReadingRecord`](crate::wire::ReadingRecord).
pub const TELEMETRY: &str = "telemetry";
/// Device status: key = device id, value = postcard
/// [`DeviceStatus`](crate::wire::DeviceStatus) (compacted).
pub const DEVICE_STATUS: &str = "device-status";
/// Messages the edge refused, with why ([`crate::headers::REASON`]).
pub const DEAD_LETTER: &str = "dead-letter";
/// Gateway heartbeats in the cloud: key = gateway id, value = JSON
/// [`Heartbeat`](crate::heartbeat::Heartbeat).
pub const GATEWAYS: &str = "gateways";

/// The edge log's topics, in order.
pub const EDGE_TOPICS: [&str; 3] = [TELEMETRY, DEVICE_STATUS, DEAD_LETTER];

/// MQTT: a device publishes its batches of readings to `sensors/<device id>`.
pub const MQTT_SENSORS_PREFIX: &str = "sensors/";
/// MQTT: a device's status (and last will) go to `devices/<device id>/status`.
pub const MQTT_STATUS_SUFFIX: &str = "/status";
/// MQTT: the gateway acknowledges a device's readings on `devices/<device id>/ack`.
pub const MQTT_ACK_SUFFIX: &str = "/ack";
/// MQTT: the prefix of a device's own topics.
pub const MQTT_DEVICES_PREFIX: &str = "devices/";
