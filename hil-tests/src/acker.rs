//! A stand-in for the edge agent's Ack path: receive batches, apply the receiver rule, ack.
//!
//! It acknowledges on receipt (nothing is stored), so it tests the device side only. The real
//! gateway acks after its redb commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firmware::receiver::Stream;
use firmware::wire::{self, Ack, DeviceStatus};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// What the acker saw of one device boot.
#[derive(Debug, Clone)]
pub struct BootLog {
    /// Receive state.
    pub stream: Stream,
    /// Readings taken as new (each sequence number once).
    pub received: u64,
    /// Readings received again (already taken).
    pub duplicates: u64,
    /// Readings the device reported dropped (below its `low_seq`, never received).
    pub gaps: u64,
    /// Batches refused for arriving out of order.
    pub out_of_order: u64,
    /// Every sequence number taken, in the order taken (checks order and exactly-once).
    pub seqs: Vec<u64>,
}

/// Everything the acker saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Per `(device, boot)`.
    pub boots: HashMap<(String, u32), BootLog>,
    /// Latest status per device.
    pub statuses: HashMap<String, DeviceStatus>,
    /// Payloads that failed to decode.
    pub malformed: u64,
    /// Acks published.
    pub acks_sent: u64,
}

impl Stats {
    /// Total new readings over all devices.
    pub fn received(&self) -> u64 {
        self.boots.values().map(|b| b.received).sum()
    }
}

/// A running acker (own thread and runtime). Dropping it stops it.
#[derive(Debug)]
pub struct Acker {
    stats: Arc<Mutex<Stats>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Acker {
    /// Connects to the broker at `host:port` and starts acking; returns once subscribed.
    pub fn start(host: &str, port: u16) -> anyhow::Result<Self> {
        let stats = Arc::new(Mutex::new(Stats::default()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, h) = (stats.clone(), host.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                tokio::select! {
                    _ = run(&h, port, s, Some(ready_tx)) => {}
                    _ = stop_rx => {}
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow::anyhow!("acker did not subscribe within 10 s"))?;
        Ok(Acker {
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// A view of what it saw so far.
    pub fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the acker until the task is dropped. Reconnects (and resubscribes) on its own.
/// `ready` is signalled after the first SUBACK.
pub async fn run(
    host: &str,
    port: u16,
    stats: Arc<Mutex<Stats>>,
    mut ready: Option<std::sync::mpsc::Sender<()>>,
) {
    let mut opts = MqttOptions::new(format!("test-acker-{}", std::process::id()), host, port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_inflight(u16::MAX);
    opts.set_clean_session(true);
    opts.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut events) = AsyncClient::new(opts, 100_000);
    // Acks are tiny: without NODELAY, Nagle holds each one back for a delayed ACK (~40 ms).
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    events.set_network_options(net);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe("sensors/+", QoS::AtLeastOnce);
                let _ = client.try_subscribe("devices/+/status", QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let mut st = stats.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(device) = p.topic.strip_prefix("sensors/") {
                    match wire::decode_batch(&p.payload) {
                        Ok(b) if b.device_id.as_str() == device => {
                            let key = (device.to_string(), b.boot_id);
                            let log = st.boots.entry(key).or_insert_with(|| BootLog {
                                stream: Stream::start(b.low_seq),
                                received: 0,
                                duplicates: 0,
                                gaps: 0,
                                out_of_order: 0,
                                seqs: Vec::new(),
                            });
                            let o = log.stream.accept(b.first_seq, b.low_seq, b.readings.len());
                            let new = o.new.len() as u64;
                            log.received += new;
                            log.gaps += o.gap;
                            if o.out_of_order {
                                log.out_of_order += 1;
                            } else {
                                log.duplicates += b.readings.len() as u64 - new;
                            }
                            log.seqs.extend(o.new.clone().map(|i| b.first_seq + i as u64));
                            if let Some(up_to_seq) = log.stream.ack_up_to() {
                                let mut buf = [0u8; wire::MAX_ACK_ENCODED];
                                if let Ok(bytes) = wire::encode(
                                    &Ack {
                                        boot_id: b.boot_id,
                                        up_to_seq,
                                    },
                                    &mut buf,
                                ) {
                                    let topic = format!("devices/{device}/ack");
                                    if client
                                        .try_publish(topic, QoS::AtLeastOnce, false, bytes.to_vec())
                                        .is_ok()
                                    {
                                        st.acks_sent += 1;
                                    }
                                }
                            }
                        }
                        _ => st.malformed += 1,
                    }
                } else if let Some(rest) = p.topic.strip_prefix("devices/") {
                    if rest.ends_with("/status") {
                        match wire::decode_status(&p.payload) {
                            Ok(s) => {
                                st.statuses.insert(s.device_id.to_string(), s);
                            }
                            Err(_) => st.malformed += 1,
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
