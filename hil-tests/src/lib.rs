//! # hil-tests — the device simulator, test peers and end-to-end tests
//!
//! # Layout
//! - [`sim`] — `device-sim`'s engine: many virtual devices, each running the real firmware
//!   library ([`firmware::mqtt::Uplink`] through its async driver) over a tokio TCP socket.
//! - [`agent`] — runs the edge agent binary as a process (start, kill -9, SIGTERM, metrics).
//! - [`browser`] — headless Chromium through ChromeDriver (WebDriver): load a page, run a
//!   script in it, take a screenshot.
//! - [`cloud`] — runs the cloud broker as a process (start, stop, kill -9, restart).
//! - [`acker`] — a stand-in for the gateway's Ack path until the edge agent exists: subscribes
//!   to `sensors/+` (rumqttc), applies [`firmware::receiver::Stream`] per device boot, and
//!   publishes cumulative Acks. It never stores anything, so its Ack means "received", not
//!   "durable" — good enough to test the device side.
//! - [`mosquitto`] — starts and stops a real mosquitto broker on a free loopback port.
//! - [`proxy`] — a TCP proxy whose connections can be cut on demand (link faults).
//! - [`qemu`] — locates the board image and runs it under `qemu-system-arm`.
//! - [`raw_mqtt`] — MQTT packets by hand over a blocking socket, and a device's batch.
//! - [`wait`] — wait for a condition with a deadline (never sleep-and-hope).

pub mod acker;
pub mod agent;
pub mod browser;
pub mod cloud;
pub mod mosquitto;
pub mod qemu;
pub mod raw_mqtt;
pub mod sim;
/// A TCP proxy that cuts its links on demand (the foundation crate's, re-exported).
pub use foundation::proxy;
/// Waiting for a condition with a deadline (the foundation crate's, re-exported).
pub use foundation::wait;

pub use foundation::net::listening;

/// A free TCP port on 127.0.0.1 (bound, then released for the server under test to take).
pub fn free_port() -> u16 {
    foundation::net::free_port().expect("no free loopback port")
}
