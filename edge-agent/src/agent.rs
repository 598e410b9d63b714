//! `edge-agent run`: wires the broker, the ingest loop, retention and the admin API together,
//! and shuts down gracefully on SIGINT/SIGTERM (stop taking messages, commit what is in
//! flight, ack it, exit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttd::local::LinkTx;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::broker::{LinkPublish, Mqtt};
use crate::config::{Config, IngestConfig, DEVICE_STATUS};
use crate::devices::Registry;
use crate::ingest::{Ingest, Message};
use crate::log::redb_store::RedbLog;
use crate::log::LogStore;
use crate::metrics::Metrics;

fn rdkafka_version() -> String {
    bridge::librdkafka_version()
}

/// The log file inside a data dir.
pub fn log_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("log.redb")
}

/// The configured gateway id, else the one stored in the log, else a new one (stored).
fn gateway_id(store: &dyn LogStore, configured: Option<&str>) -> anyhow::Result<String> {
    if let Some(id) = configured {
        store.set_meta("gateway_id", id.as_bytes())?;
        return Ok(id.to_string());
    }
    if let Some(v) = store.meta("gateway_id")? {
        return Ok(String::from_utf8_lossy(&v).into_owned());
    }
    let id = format!("gw-{:012x}", foundation::ids::random_u64() & 0xffff_ffff_ffff);
    store.set_meta("gateway_id", id.as_bytes())?;
    Ok(id)
}

/// Fills the registry from the compacted device-status topic, so `/api/devices` knows devices
/// from before a restart.
fn preload_devices(store: &dyn LogStore, reg: &mut Registry) -> anyhow::Result<()> {
    let mut from = 0;
    loop {
        let batch = match store.read(DEVICE_STATUS, 0, from, 10_000, 64 << 20) {
            Ok(b) => b,
            // Damaged records (reported by the store): the devices they named are known again
            // at their next status.
            Err(crate::log::LogError::Corrupt(_)) => match store.skip_damaged(DEVICE_STATUS, 0, from)? {
                Some(next) => {
                    from = next;
                    continue;
                }
                None => return Ok(()),
            },
            Err(e) => return Err(e.into()),
        };
        let Some(last) = batch.last() else { return Ok(()) };
        from = last.offset + 1;
        for r in &batch {
            if let Ok(s) = firmware::wire::decode_status(&r.value) {
                reg.status(&s, r.timestamp_ms);
            }
        }
    }
}

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    // glibc's fastbins make every large free (a read batch, a produce buffer) consolidate the
    // heap; without them the bridge drains ~15 % faster.
    // SAFETY: mallopt only changes allocator tuning; called before the agent starts threads.
    unsafe {
        libc::mallopt(libc::M_MXFAST, 0);
    }
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let store = Arc::new(RedbLog::open(&log_path(&cfg.data_dir))?);
    store.set_reserve(cfg.disk_reserve_mb << 20);
    for spec in cfg.topic_specs() {
        store
            .ensure_topic(&spec)
            .with_context(|| format!("topic {}", spec.name))?;
    }
    let gateway_id = gateway_id(&*store, cfg.gateway_id.as_deref())?;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    preload_devices(&*store, &mut registry)?;
    let devices = Arc::new(Mutex::new(registry));
    let telemetry_partitions = cfg.topic_specs()[0].partitions;
    let appended = Arc::new(crate::forward::AppendSignal::default());
    let bridge = match &cfg.bridge {
        Some(b) => Some(Arc::new(bridge::Bridge::start(
            b.clone(),
            Arc::new(crate::forward::Forwarded {
                store: store.clone(),
                appended: appended.clone(),
            }),
            &gateway_id,
            vec![
                ("edge-agent".into(), env!("CARGO_PKG_VERSION").into()),
                ("librdkafka".into(), rdkafka_version()),
            ],
        )?)),
        None => None,
    };

    let auth = match cfg.mqtt.auth {
        crate::config::MqttAuth::None => None,
        crate::config::MqttAuth::Password => {
            let path = cfg
                .mqtt
                .credentials_file
                .clone()
                .unwrap_or_else(|| cfg.data_dir.join(crate::credentials::FILE_NAME));
            Some(crate::credentials::Checker::new(path, metrics.clone())?)
        }
    };
    let mut mqtt = Mqtt::start(&cfg.mqtt, auth, &metrics)?;
    // The hand-over between the link reader and the ingest thread. Its slots are allocated up
    // front (80 B each); 16 Ki of them cover ~16 ms at peak, behind which rumqttd's own
    // telemetry window (4 × 4 MiB) still holds ~175 k publishes before it would skip any.
    let (tx, rx) = sync_channel::<LinkPublish>(16_384);
    mqtt.spawn_reader(tx, metrics.clone())?;
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = Ingest::new(
        store.clone(),
        telemetry_partitions,
        cfg.mqtt.max_payload_bytes,
        devices.clone(),
        metrics.clone(),
    );
    let link_tx = mqtt.tx;
    let ingest_thread = {
        let (stop, icfg) = (stop.clone(), cfg.ingest.clone());
        std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || ingest_loop(rx, ingest, link_tx, icfg, stop, &appended))?
    };
    {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::Builder::new()
            .name("retention".into())
            .spawn(move || housekeeping(&*store, &stop))?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The admin token: made at the first start that needs it; its path is logged, never it.
    let gate = Arc::new(foundation::token::Gate::open(
        cfg.admin.auth,
        &cfg.admin_token_file(),
        "edge-agent admin",
    )?);
    metrics.admin_gate.set(gate.clone()).ok();
    let admin_state = Arc::new(AdminState {
        store: store.clone(),
        metrics,
        devices,
        gateway_id: gateway_id.clone(),
        started: Instant::now(),
        bridge: bridge.clone(),
    });
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.admin.listen)
            .await
            .with_context(|| format!("admin listen address {}", cfg.admin.listen))?;
        info!(
            gateway_id = %gateway_id,
            mqtt = %cfg.mqtt.listen,
            admin = %cfg.admin.listen,
            data_dir = %cfg.data_dir.display(),
            cloud = %cfg.bridge.as_ref().map_or("(bridge off)", |b| b.bootstrap.as_str()),
            "edge agent running"
        );
        let server = axum::serve(listener, admin::router(admin_state, gate));
        tokio::select! {
            r = server => r.context("admin server")?,
            _ = foundation::shutdown::signal_received() => info!("shutting down: committing and acking what is in flight"),
        }
        anyhow::Ok(())
    })?;
    stop.store(true, Ordering::SeqCst);
    ingest_thread
        .join()
        .map_err(|_| anyhow::anyhow!("ingest thread panicked"))?;
    if let Some(b) = &bridge {
        // What was committed last gets a few seconds to reach the cloud; the rest follows
        // from the checkpoint at the next start.
        b.shutdown();
    }
    // Threads and tasks that are not joined may still hold the store: closing it here, not
    // when the last of them lets go, is what leaves the file clean.
    store.close();
    info!("stopped; the log file is closed");
    Ok(())
}

/// Group commit: take whatever arrived (bounded by count, bytes and `linger_ms`), commit it in
/// one transaction, then ack. On a write failure: no acks, back off, keep going.
fn ingest_loop<S: LogStore, M: Message>(
    rx: Receiver<M>,
    mut ingest: Ingest<S>,
    mut link: LinkTx,
    cfg: IngestConfig,
    stop: Arc<AtomicBool>,
    appended: &crate::forward::AppendSignal,
) {
    let mut batch: Vec<M> = Vec::new();
    let mut backoff = Duration::from_millis(50);
    let linger = Duration::from_millis(cfg.linger_ms);
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if stopping {
            // Whatever the link already handed over gets committed and acked.
            while let Ok(p) = rx.try_recv() {
                batch.push(p);
            }
            if batch.is_empty() {
                return;
            }
        } else {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(p) => batch.push(p),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let mut bytes = batch[0].payload().len();
            let deadline = Instant::now() + linger;
            while batch.len() < cfg.max_batch_publishes && bytes < cfg.max_batch_bytes {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += p.payload().len();
                        batch.push(p);
                    }
                    Err(TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        match rx.recv_timeout(deadline - now) {
                            Ok(p) => {
                                bytes += p.payload().len();
                                batch.push(p);
                            }
                            Err(_) => break,
                        }
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            }
        }
        match ingest.process(&batch, foundation::time::now_ms()) {
            Ok(acks) => {
                backoff = Duration::from_millis(50);
                appended.bump();
                for a in acks {
                    if let Err(e) = link.publish(a.topic, a.payload) {
                        warn!(error = ?e, "publishing an ack failed; the device will re-send");
                    }
                }
            }
            Err(e) => {
                // Devices keep what was not acked and re-send it; retry with the next batch.
                warn!(error = %e, publishes = batch.len(), retry_in_ms = backoff.as_millis() as u64, "commit failed");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        batch.clear();
        if stopping {
            return;
        }
    }
}

/// Retention and compaction, every 30 s.
fn housekeeping(store: &dyn LogStore, stop: &AtomicBool) {
    let period = Duration::from_secs(30);
    let mut next = Instant::now() + period;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + period;
        match store.apply_retention(foundation::time::now_ms()) {
            Ok(r) if r.records > 0 => info!(
                records = r.records,
                bytes = r.bytes,
                "retention removed old records"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "retention failed"),
        }
        if let Ok(topics) = store.topics() {
            for t in topics.iter().filter(|t| t.compact) {
                match store.compact(&t.name) {
                    Ok(n) if n > 0 => {
                        info!(topic = %t.name, records = n, "compaction removed superseded records")
                    }
                    Ok(_) => {}
                    Err(e) => warn!(topic = %t.name, error = %e, "compaction failed"),
                }
            }
        }
    }
}
