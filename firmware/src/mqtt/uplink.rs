//! The device's MQTT uplink as a sans-I/O state machine.
//!
//! The uplink owns the [`Buffer`] of unacknowledged readings and speaks MQTT 3.1.1 through the
//! [`super::codec`]. It never touches a socket or a clock: the driver feeds it bytes and
//! the current time in milliseconds and does what [`Uplink::poll`] asks:
//!
//! ```text
//! loop {
//!     match uplink.poll(now) {
//!         Action::Connect      => open the transport, then on_connected(now) or on_connect_failed(now)
//!         Action::Transmit     => write uplink.transmit(), then consume_tx(n)
//!         Action::Close        => close the transport (the uplink already counts it as down)
//!         Action::Wait(until)  => read until `until`; on_received(bytes, now); on error on_disconnected(now)
//!     }
//! }
//! ```
//!
//! # Session
//! CONNECT (clean session, last will = this device's [`DeviceStatus`] with `online = false`,
//! retained, on `devices/<id>/status`) → CONNACK → SUBSCRIBE `devices/<id>/ack` (QoS 0) →
//! SUBACK → birth status (retained) → batches of readings (QoS 1) on `sensors/<id>`.
//!
//! # Reliability
//! - The MQTT PUBACK only proves the broker has the message in memory. A reading leaves the
//!   buffer only when an application [`Ack`] covering it arrives on the ack topic.
//! - At most `max_in_flight` readings are unacknowledged on the wire. If the oldest gets no
//!   ack progress within `resend_timeout_ms`, everything in flight is sent again from the oldest
//!   (go-back-N; the receiver drops duplicates by `(device, boot, seq)`). Every new session
//!   re-sends all unacknowledged readings too.
//! - If the broker leaves any request (CONNACK, SUBACK, PUBACK, PINGRESP) unanswered for
//!   `response_timeout_ms`, the session is dead: the uplink asks for [`Action::Close`] and
//!   reconnects after a jittered exponential backoff. This also catches a UART link whose far
//!   end silently went away.
//! - Acks for another boot, stale acks, duplicate acks and acks for readings never sent change
//!   nothing.

use heapless::String;

use super::codec::{self, Connect, Packet, Will};
use crate::buffer::{Buffer, OverflowPolicy, Storage};
use crate::wire::{
    self, Ack, BatchRef, Counters, DeviceStatus, Reading, MAX_DEVICE_ID, MAX_FIRMWARE_VERSION,
    MAX_READING_ENCODED,
};
use crate::Error;

/// Bytes of incoming packet this client holds at once. Acks are 20-odd bytes; anything larger
/// than this is skipped (and counted as [`Error::PacketTooLarge`]).
pub const RX_CAPACITY: usize = 128;
/// Bytes of a publish that are not readings: fixed header, topic, packet id and the batch's
/// other fields.
const PUBLISH_OVERHEAD: usize = 5 + 2 + 8 + MAX_DEVICE_ID + 2 + wire::max_batch_encoded(0);
/// Queued PUBACKs for incoming QoS 1 acks.
const PENDING_PUBACKS: usize = 8;

/// Uplink settings. [`Config::new`] gives sensible defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Device id: one MQTT topic level (see [`wire::is_valid_device_id`]). Also the client id.
    pub device_id: String<MAX_DEVICE_ID>,
    /// Boot id stamped on every batch.
    pub boot_id: u32,
    /// Reported in [`DeviceStatus`].
    pub firmware_version: String<MAX_FIRMWARE_VERSION>,
    /// Optional MQTT user name (empty = none).
    pub username: String<32>,
    /// Optional MQTT password (used only with a user name).
    pub password: String<64>,
    /// MQTT keep-alive, seconds.
    pub keep_alive_s: u16,
    /// Most readings per publish (clamped to what the transmit buffer holds).
    pub batch_max: usize,
    /// How long a reading may wait for more to fill its batch, ms.
    pub linger_ms: u64,
    /// Most readings sent but not yet acknowledged.
    pub max_in_flight: usize,
    /// Resend everything in flight if the ack does not advance for this long, ms.
    pub resend_timeout_ms: u64,
    /// A broker that does not answer a request within this long is considered gone, ms.
    pub response_timeout_ms: u64,
    /// First reconnect delay, ms (doubles up to `reconnect_max_ms`, with jitter).
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay, ms.
    pub reconnect_max_ms: u64,
    /// Publish a fresh status this often while connected, ms.
    pub status_interval_ms: u64,
}

impl Config {
    /// Defaults for `device_id`: 30 s keep-alive, 16 readings per batch, 50 ms linger,
    /// 64 in flight, 5 s resend, 10 s response timeout, 0.5–30 s reconnect backoff.
    pub fn new(device_id: &str, boot_id: u32) -> Result<Self, Error> {
        if !wire::is_valid_device_id(device_id) {
            return Err(Error::InvalidDeviceId);
        }
        Ok(Config {
            device_id: String::try_from(device_id).map_err(|_| Error::InvalidDeviceId)?,
            boot_id,
            firmware_version: String::try_from(env!("CARGO_PKG_VERSION")).unwrap_or_default(),
            username: String::new(),
            password: String::new(),
            keep_alive_s: 30,
            batch_max: 16,
            linger_ms: 50,
            max_in_flight: 64,
            resend_timeout_ms: 5_000,
            response_timeout_ms: 10_000,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            status_interval_ms: 60_000,
        })
    }
}

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open the transport, then call [`Uplink::on_connected`] (or `on_connect_failed`).
    Connect,
    /// Write [`Uplink::transmit`] and report progress with [`Uplink::consume_tx`].
    Transmit,
    /// Close the transport; the session is over and a reconnect is scheduled.
    Close,
    /// Nothing to do before this time (ms) unless bytes arrive or a reading is pushed.
    Wait(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Down { retry_at: u64 },
    Connecting,
    Subscribing { sent: bool },
    Up,
    Closing,
}

/// The sans-I/O uplink. `S` is the reading storage, `TX` the transmit buffer size in bytes.
#[derive(Debug)]
pub struct Uplink<S: Storage, const TX: usize> {
    cfg: Config,
    buffer: Buffer<S>,
    data_topic: String<{ 8 + MAX_DEVICE_ID }>,
    ack_topic: String<{ 12 + MAX_DEVICE_ID }>,
    status_topic: String<{ 15 + MAX_DEVICE_ID }>,
    state: State,
    tx: [u8; TX],
    tx_start: usize,
    tx_end: usize,
    rx: [u8; RX_CAPACITY],
    rx_len: usize,
    rx_skip: usize,
    next_pid: u16,
    subscribe_pid: u16,
    pending_pubacks: heapless::Vec<u16, PENDING_PUBACKS>,
    outstanding: u32,
    outstanding_since: u64,
    last_tx_at: u64,
    last_progress_at: u64,
    unsent_since: Option<u64>,
    status_due_at: u64,
    counters: Counters,
    sent_high: u64,
    backoff_ms: u64,
    rng: u32,
    connected_once: bool,
    started_at: u64,
    last_error: Option<Error>,
}

impl<S: Storage, const TX: usize> Uplink<S, TX> {
    /// A new, disconnected uplink whose first reading gets sequence `next_seq` (0 for a fresh
    /// boot; the restored counter after a reset with persisted state).
    pub fn new(cfg: Config, storage: S, policy: OverflowPolicy, next_seq: u64, now: u64) -> Self {
        Self::with_buffer(cfg, Buffer::new(storage, policy, next_seq), now)
    }

    /// A new, disconnected uplink around `buffer`, typically one [`Buffer::restore`]d from flash
    /// after a reset: its readings go out again on the first session under their old sequence
    /// numbers (flagged and counted as resends, since they may have been sent before the reset).
    pub fn with_buffer(mut cfg: Config, buffer: Buffer<S>, now: u64) -> Self {
        let fit = TX.saturating_sub(PUBLISH_OVERHEAD) / MAX_READING_ENCODED;
        cfg.batch_max = cfg.batch_max.clamp(1, fit.clamp(1, wire::MAX_BATCH_READINGS));
        cfg.max_in_flight = cfg.max_in_flight.max(1);
        let id = cfg.device_id.as_str();
        let mut data_topic = String::new();
        let mut ack_topic = String::new();
        let mut status_topic = String::new();
        // Capacities are sized for the longest id, so these cannot fail.
        let _ = data_topic
            .push_str("sensors/")
            .and_then(|_| data_topic.push_str(id));
        let _ = ack_topic
            .push_str("devices/")
            .and_then(|_| ack_topic.push_str(id))
            .and_then(|_| ack_topic.push_str("/ack"));
        let _ = status_topic
            .push_str("devices/")
            .and_then(|_| status_topic.push_str(id))
            .and_then(|_| status_topic.push_str("/status"));
        let seed = id.bytes().fold(cfg.boot_id ^ 0x9e37_79b9, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        Uplink {
            backoff_ms: cfg.reconnect_min_ms,
            sent_high: buffer.next_seq(),
            buffer,
            cfg,
            data_topic,
            ack_topic,
            status_topic,
            state: State::Down { retry_at: now },
            tx: [0; TX],
            tx_start: 0,
            tx_end: 0,
            rx: [0; RX_CAPACITY],
            rx_len: 0,
            rx_skip: 0,
            next_pid: 0,
            subscribe_pid: 0,
            pending_pubacks: heapless::Vec::new(),
            outstanding: 0,
            outstanding_since: now,
            last_tx_at: now,
            last_progress_at: now,
            unsent_since: None,
            status_due_at: now,
            counters: Counters::default(),
            rng: seed | 1,
            connected_once: false,
            started_at: now,
            last_error: None,
        }
    }

    /// Settings in force (after clamping).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The buffer of unacknowledged readings.
    pub fn buffer(&self) -> &Buffer<S> {
        &self.buffer
    }

    /// Running totals, with the buffer's overflow count.
    pub fn counters(&self) -> Counters {
        Counters {
            dropped_overflow: self.buffer.dropped(),
            ..self.counters
        }
    }

    /// Whether the session is up (subscribed to acks, publishing).
    pub fn is_online(&self) -> bool {
        self.state == State::Up
    }

    /// The most recent error that ended a session or was absorbed (skipped packet), if any.
    pub fn last_error(&self) -> Option<Error> {
        self.last_error
    }

    /// Adds a sampled reading; it will be published and kept until acknowledged.
    pub fn push(&mut self, reading: Reading, now: u64) -> Result<u64, Error> {
        self.counters.generated += 1;
        let seq = self.buffer.push(reading)?;
        if self.unsent_since.is_none() {
            self.unsent_since = Some(now);
        }
        Ok(seq)
    }

    /// Bytes waiting to be written to the transport.
    pub fn transmit(&self) -> &[u8] {
        &self.tx[self.tx_start..self.tx_end]
    }

    /// Reports that the first `n` bytes of [`Uplink::transmit`] were written.
    pub fn consume_tx(&mut self, n: usize) {
        self.tx_start = (self.tx_start + n).min(self.tx_end);
    }

    /// Decides the next step at time `now` (ms, monotonic).
    pub fn poll(&mut self, now: u64) -> Action {
        match self.state {
            State::Closing => {
                self.go_down(now);
                return Action::Close;
            }
            State::Down { retry_at } => {
                return if now >= retry_at {
                    Action::Connect
                } else {
                    Action::Wait(retry_at)
                };
            }
            _ => {}
        }
        if self.outstanding > 0 && now.saturating_sub(self.outstanding_since) >= self.cfg.response_timeout_ms
        {
            self.fail(Error::Timeout);
            self.go_down(now);
            return Action::Close;
        }
        if self.tx_start == self.tx_end {
            self.tx_start = 0;
            self.tx_end = 0;
            match self.next_packet(now) {
                Ok(true) => {}
                Ok(false) => return Action::Wait(self.deadline()),
                Err(e) => {
                    self.fail(e);
                    self.go_down(now);
                    return Action::Close;
                }
            }
        }
        Action::Transmit
    }

    /// The transport is open: start the MQTT session.
    pub fn on_connected(&mut self, now: u64) {
        self.tx_start = 0;
        self.tx_end = 0;
        self.rx_len = 0;
        self.rx_skip = 0;
        self.outstanding = 0;
        self.pending_pubacks.clear();
        let mut will_buf = [0u8; wire::MAX_STATUS_ENCODED];
        let status = self.status(now, false);
        let will_len = wire::encode(&status, &mut will_buf).map(|b| b.len());
        let password = (!self.cfg.password.is_empty()).then_some(self.cfg.password.as_bytes());
        let res = will_len.and_then(|n| {
            codec::encode_connect(
                &mut self.tx,
                &Connect {
                    client_id: &self.cfg.device_id,
                    keep_alive_s: self.cfg.keep_alive_s,
                    clean_session: true,
                    will: Some(Will {
                        topic: &self.status_topic,
                        payload: &will_buf[..n],
                        qos: 1,
                        retain: true,
                    }),
                    username: (!self.cfg.username.is_empty()).then_some(self.cfg.username.as_str()),
                    password,
                },
            )
        });
        match res {
            Ok(n) => {
                self.tx_end = n;
                self.state = State::Connecting;
                self.sent_request(now);
                self.last_tx_at = now;
            }
            Err(e) => {
                self.fail(e);
            }
        }
    }

    /// The transport could not be opened.
    pub fn on_connect_failed(&mut self, now: u64) {
        self.last_error = Some(Error::Io);
        self.go_down(now);
    }

    /// The transport closed or failed.
    pub fn on_disconnected(&mut self, now: u64) {
        if !matches!(self.state, State::Down { .. }) {
            self.last_error = Some(Error::Io);
            self.go_down(now);
        }
    }

    /// Feeds bytes read from the transport.
    pub fn on_received(&mut self, mut bytes: &[u8], now: u64) {
        while !bytes.is_empty() {
            if matches!(self.state, State::Down { .. } | State::Closing) {
                return;
            }
            if self.rx_skip > 0 {
                let n = self.rx_skip.min(bytes.len());
                self.rx_skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (RX_CAPACITY - self.rx_len).min(bytes.len());
            self.rx[self.rx_len..self.rx_len + n].copy_from_slice(&bytes[..n]);
            self.rx_len += n;
            bytes = &bytes[n..];
            if let Err(e) = self.process_rx(now) {
                self.fail(e);
                return;
            }
        }
    }

    fn process_rx(&mut self, now: u64) -> Result<(), Error> {
        let mut start = 0;
        while let Some(total) = codec::frame_len(&self.rx[start..self.rx_len])? {
            if total > RX_CAPACITY {
                // Skip a packet we cannot hold: drop what we have of it, skip the rest.
                let have = self.rx_len - start;
                self.rx_skip = total - have;
                self.last_error = Some(Error::PacketTooLarge);
                start = self.rx_len;
                break;
            }
            if start + total > self.rx_len {
                break;
            }
            let mut frame = [0u8; RX_CAPACITY];
            frame[..total].copy_from_slice(&self.rx[start..start + total]);
            start += total;
            self.handle(&frame[..total], now)?;
            if matches!(self.state, State::Closing) {
                break;
            }
        }
        self.rx.copy_within(start..self.rx_len, 0);
        self.rx_len -= start;
        Ok(())
    }

    fn handle(&mut self, frame: &[u8], now: u64) -> Result<(), Error> {
        match codec::parse(frame)? {
            Packet::ConnAck { code, .. } => {
                if self.state != State::Connecting {
                    return Err(Error::Protocol);
                }
                self.answered(now);
                if code != 0 {
                    return Err(Error::Refused(code));
                }
                self.backoff_ms = self.cfg.reconnect_min_ms;
                if self.connected_once {
                    self.counters.reconnects += 1;
                }
                self.connected_once = true;
                self.state = State::Subscribing { sent: false };
            }
            Packet::SubAck { pid, code } => {
                if !matches!(self.state, State::Subscribing { sent: true }) || pid != self.subscribe_pid {
                    return Err(Error::Protocol);
                }
                self.answered(now);
                if code == 0x80 {
                    return Err(Error::Refused(code));
                }
                self.state = State::Up;
                // Everything unacknowledged goes out again on a new session.
                self.buffer.rewind();
                self.unsent_since = (self.buffer.unsent() > 0).then_some(0);
                self.last_progress_at = now;
                self.status_due_at = now;
            }
            Packet::PubAck { .. } | Packet::PingResp => self.answered(now),
            Packet::Publish {
                topic, pid, payload, ..
            } => {
                if let Some(pid) = pid {
                    self.pending_pubacks.push(pid).map_err(|_| Error::Protocol)?;
                }
                if topic == self.ack_topic.as_str() {
                    match wire::decode::<Ack>(payload) {
                        Ok(ack) if ack.boot_id == self.cfg.boot_id => {
                            let n = self.buffer.ack(ack.up_to_seq);
                            if n > 0 {
                                self.counters.acked += n as u64;
                                self.last_progress_at = now;
                                if self.buffer.unsent() == 0 {
                                    self.unsent_since = None;
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => self.last_error = Some(e),
                    }
                }
            }
            Packet::Other(_) => {}
        }
        Ok(())
    }

    fn answered(&mut self, now: u64) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.outstanding_since = now;
    }

    fn sent_request(&mut self, now: u64) {
        if self.outstanding == 0 {
            self.outstanding_since = now;
        }
        self.outstanding += 1;
    }

    fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid.wrapping_add(1).max(1);
        self.next_pid
    }

    fn fail(&mut self, e: Error) {
        self.last_error = Some(e);
        self.state = State::Closing;
    }

    fn go_down(&mut self, now: u64) {
        // xorshift32 jitter: wait between half and all of the backoff.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        let half = self.backoff_ms / 2;
        let delay = (half + u64::from(self.rng) % (half + 1)).max(1);
        self.state = State::Down {
            retry_at: now + delay,
        };
        self.backoff_ms = (self.backoff_ms * 2).min(self.cfg.reconnect_max_ms).max(1);
        self.tx_start = 0;
        self.tx_end = 0;
        self.rx_len = 0;
        self.rx_skip = 0;
    }

    fn status(&self, now: u64, online: bool) -> DeviceStatus {
        DeviceStatus {
            device_id: self.cfg.device_id.clone(),
            boot_id: self.cfg.boot_id,
            online,
            firmware_version: self.cfg.firmware_version.clone(),
            buffer_capacity: self.buffer.capacity() as u32,
            uptime_ms: now.saturating_sub(self.started_at),
            counters: self.counters(),
        }
    }

    fn batch_due(&self, now: u64) -> bool {
        let b = &self.buffer;
        b.unsent() > 0
            && b.in_flight() < self.cfg.max_in_flight
            && (b.unsent() >= self.cfg.batch_max
                || self.unsent_since.is_some_and(|t| now >= t + self.cfg.linger_ms))
    }

    /// Encodes the next packet into the empty transmit buffer; `Ok(false)` when none is due.
    fn next_packet(&mut self, now: u64) -> Result<bool, Error> {
        // PUBACKs go out in the order the publishes came: brokers (rumqttd among them) drop a
        // client that acknowledges out of order.
        if !self.pending_pubacks.is_empty() {
            let pid = self.pending_pubacks.remove(0);
            self.tx_end = codec::encode_puback(&mut self.tx, pid)?;
            return self.sent(now, false);
        }
        match self.state {
            State::Subscribing { sent: false } => {
                self.subscribe_pid = self.pid();
                // QoS 0: acks are cumulative and a lost one is repaired by the resend timer, so
                // QoS 1 would only add PUBACK traffic and a per-client inflight limit.
                self.tx_end = codec::encode_subscribe(&mut self.tx, self.subscribe_pid, &self.ack_topic, 0)?;
                self.state = State::Subscribing { sent: true };
                return self.sent(now, true);
            }
            State::Up => {}
            _ => return Ok(false),
        }
        if self.buffer.in_flight() > 0
            && now.saturating_sub(self.last_progress_at) >= self.cfg.resend_timeout_ms
        {
            self.buffer.rewind();
            self.unsent_since = Some(0);
            self.last_progress_at = now;
        }
        if now >= self.status_due_at {
            self.status_due_at = now + self.cfg.status_interval_ms;
            let status = self.status(now, true);
            let pid = self.pid();
            let r = codec::encode_publish_with(
                &mut self.tx,
                &self.status_topic,
                Some(pid),
                true,
                false,
                |out| wire::encode(&status, out).map(|b| b.len()),
            )?;
            (self.tx_start, self.tx_end) = (r.start, r.end);
            return self.sent(now, true);
        }
        if self.batch_due(now) {
            let room = self.cfg.max_in_flight - self.buffer.in_flight();
            let (first_seq, a, b) = self.buffer.peek_unsent(self.cfg.batch_max.min(room));
            let n = a.len() + b.len();
            let batch = BatchRef {
                device_id: &self.cfg.device_id,
                boot_id: self.cfg.boot_id,
                first_seq,
                low_seq: self.buffer.low_seq(),
                readings: (a, b),
            };
            let pid = self.next_pid.wrapping_add(1).max(1);
            let resend = first_seq < self.sent_high;
            let r = codec::encode_publish_with(
                &mut self.tx,
                &self.data_topic,
                Some(pid),
                false,
                resend,
                |out| wire::encode(&batch, out).map(|b| b.len()),
            )?;
            self.next_pid = pid;
            (self.tx_start, self.tx_end) = (r.start, r.end);
            self.buffer.mark_sent(n);
            let end = first_seq + n as u64;
            let again = self.sent_high.clamp(first_seq, end) - first_seq;
            self.counters.resent += again;
            self.counters.sent += n as u64 - again;
            self.sent_high = self.sent_high.max(end);
            if self.buffer.unsent() == 0 {
                self.unsent_since = None;
            }
            if self.buffer.in_flight() == n {
                // The ack clock starts when the oldest in-flight reading leaves.
                self.last_progress_at = now;
            }
            return self.sent(now, true);
        }
        let keep_alive_ms = u64::from(self.cfg.keep_alive_s) * 1000;
        if keep_alive_ms > 0 && now.saturating_sub(self.last_tx_at) >= keep_alive_ms * 3 / 4 {
            self.tx_end = codec::encode_pingreq(&mut self.tx)?;
            return self.sent(now, true);
        }
        Ok(false)
    }

    fn sent(&mut self, now: u64, expects_answer: bool) -> Result<bool, Error> {
        if expects_answer {
            self.sent_request(now);
        }
        self.last_tx_at = now;
        Ok(true)
    }

    /// The earliest time something is due (the `Wait` deadline).
    fn deadline(&self) -> u64 {
        let mut t = u64::MAX;
        if self.outstanding > 0 {
            t = t.min(self.outstanding_since + self.cfg.response_timeout_ms);
        }
        if self.state == State::Up {
            t = t.min(self.status_due_at);
            if self.buffer.in_flight() > 0 {
                t = t.min(self.last_progress_at + self.cfg.resend_timeout_ms);
            }
            if let Some(since) = self.unsent_since {
                if self.buffer.in_flight() < self.cfg.max_in_flight {
                    t = t.min(since + self.cfg.linger_ms);
                }
            }
            let keep_alive_ms = u64::from(self.cfg.keep_alive_s) * 1000;
            if keep_alive_ms > 0 {
                t = t.min(self.last_tx_at + keep_alive_ms * 3 / 4);
            }
        }
        t
    }

    /// Writes a DISCONNECT into the transmit buffer for a clean goodbye (the broker then does
    /// not publish the last will). The caller transmits it and closes the transport.
    pub fn disconnect(&mut self) -> Result<(), Error> {
        self.tx_start = 0;
        self.tx_end = codec::encode_disconnect(&mut self.tx)?;
        self.state = State::Down { retry_at: u64::MAX };
        Ok(())
    }
}
