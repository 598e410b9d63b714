//! `cloud-broker monitor | devices | gateways | consume`: the device monitor on its own, and
//! what it knows, from the command line.

use std::fmt::Write;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::info;

use crate::monitor::view::{DeviceDetail, DeviceList, GatewayRow};

/// `devices [ID]`: the device table, or one device with its gaps.
pub(super) fn devices(http: &str, id: Option<&str>, query: &str, json: bool) -> anyhow::Result<()> {
    if let Some(id) = id {
        let v = get_json(http, &format!("/api/devices/{}", super::query_encode(id)))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let d: DeviceDetail = serde_json::from_str(&v.to_string())?;
        print!("{}", render_device(&d));
        return Ok(());
    }
    let v = get_json(http, &format!("/api/devices{query}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let l: DeviceList = serde_json::from_str(&v.to_string())?;
    print!("{}", render_devices(&l));
    Ok(())
}

/// `gateways`.
pub(super) fn gateways(http: &str, json: bool) -> anyhow::Result<()> {
    let v = get_json(http, "/api/gateways")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<GatewayRow> = serde_json::from_str(&v.to_string())?;
    print!("{}", render_gateways(&rows));
    Ok(())
}

fn get_json(http: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    match foundation::http::json(http, "GET", path) {
        Ok(v) => Ok(v),
        Err(foundation::http::Error::Status {
            status: 404, body, ..
        }) => {
            let why = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(body);
            anyhow::bail!("{why}")
        }
        Err(e) => Err(anyhow::anyhow!(
            "{e} (is the broker's HTTP listener at {http}? --http)"
        )),
    }
}

fn ago(now: i64, ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn render_devices(l: &DeviceList) -> String {
    let now = foundation::time::now_ms();
    let mut out = format!(
        "{} devices, {} online, {} readings missing{}\n",
        l.total,
        l.online,
        l.missing,
        if l.untracked > 0 {
            format!(" ({} records of untracked devices)", l.untracked)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "{:<24} {:<16} {:<8} {:>6} {:>10} {:>8} {:>8} {:>8} {:>7}  LAST SEEN",
        "DEVICE", "GATEWAY", "STATUS", "BOOT", "READINGS", "MISSING", "OVERFLOW", "DUPS", "RATE/S"
    );
    for d in &l.devices {
        let _ = writeln!(
            out,
            "{:<24} {:<16} {:<8} {:>6} {:>10} {:>8} {:>8} {:>8} {:>7.1}  {}",
            d.id,
            d.gateway.as_deref().unwrap_or("-"),
            if d.online { "online" } else { "offline" },
            d.boot,
            d.readings,
            d.missing,
            d.dropped_overflow,
            d.duplicates,
            d.rate,
            ago(now, d.last_seen_ms)
        );
    }
    if l.matched > l.devices.len() {
        let _ = writeln!(
            out,
            "({} of {} shown: --limit, --offset)",
            l.devices.len(),
            l.matched
        );
    }
    out
}

fn render_device(d: &DeviceDetail) -> String {
    let now = foundation::time::now_ms();
    let r = &d.row;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "device {}  {}  gateway {}  boot {}  firmware {}",
        r.id,
        if r.online { "online" } else { "offline" },
        r.gateway.as_deref().unwrap_or("-"),
        r.boot,
        r.firmware.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "readings {}  missing {}  dropped by the device (overflow) {}  duplicates {}  rate {:.1}/s  last seen {}",
        r.readings,
        r.missing,
        r.dropped_overflow,
        r.duplicates,
        r.rate,
        ago(now, r.last_seen_ms)
    );
    for b in &d.boots {
        let _ = writeln!(
            out,
            "boot {}: {} received, highest seq {}, {} missing",
            b.boot,
            b.received,
            b.highest.map_or("-".into(), |h| h.to_string()),
            b.missing
        );
    }
    if d.gaps.is_empty() {
        let _ = writeln!(out, "no gaps");
    } else {
        let _ = writeln!(out, "gaps (boot: from..=to):");
        for g in &d.gaps {
            let _ = writeln!(
                out,
                "  {}: {}..={} ({})",
                g.boot,
                g.from_seq,
                g.to_seq,
                g.to_seq - g.from_seq + 1
            );
        }
    }
    for (c, v) in &r.last_values {
        let _ = writeln!(out, "channel {c}: {v}");
    }
    out
}

fn render_gateways(rows: &[GatewayRow]) -> String {
    let now = foundation::time::now_ms();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:>7} {:>10} {:>12} {:>10} {:>8} {:>8}  LAST HEARTBEAT",
        "GATEWAY", "STATUS", "DEVICES", "BACKLOG", "BYTES", "OLDEST", "DROPPED", "RATE/S"
    );
    for g in rows {
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:>7} {:>10} {:>12} {:>9.1}s {:>8} {:>8.1}  {}",
            g.id,
            if g.online { "online" } else { "offline" },
            g.devices,
            g.backlog_records,
            g.backlog_bytes,
            g.oldest_age_ms as f64 / 1000.0,
            g.dropped,
            g.send_rate,
            ago(now, g.last_heartbeat_ms)
        );
    }
    out
}

/// The `[monitor]` settings from a config file, if given.
pub(super) fn settings(config: Option<&PathBuf>) -> anyhow::Result<crate::monitor::Settings> {
    Ok(match config {
        Some(p) => crate::config::Config::from_file(p)?.monitor,
        None => crate::monitor::Settings::default(),
    })
}

/// `consume`: records as JSON lines, readings, status and heartbeats decoded.
#[cfg(feature = "monitor-feed")]
pub(super) fn consume(
    bootstrap: &str,
    topic: &str,
    from_beginning: bool,
    count: Option<u64>,
    format: &str,
) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use std::io::Write as _;
    anyhow::ensure!(matches!(format, "json" | "raw"), "--format json or raw");
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("cloud-broker-consume-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set(
            "auto.offset.reset",
            if from_beginning { "earliest" } else { "latest" },
        )
        .set("log_level", "3")
        .create()?;
    consumer.subscribe(&[topic])?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            rt.block_on(foundation::shutdown::signal_received());
        }
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let mut n = 0;
    let mut out = std::io::stdout().lock();
    while count.is_none_or(|c| n < c) && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Some(m) = consumer.poll(std::time::Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        n += 1;
        if format == "raw" {
            out.write_all(m.payload().unwrap_or_default())?;
            out.write_all(b"\n")?;
            continue;
        }
        let headers: serde_json::Map<String, serde_json::Value> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(|v| String::from_utf8_lossy(v).into_owned()).into(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let line = serde_json::json!({
            "topic": m.topic(),
            "partition": m.partition(),
            "offset": m.offset(),
            "timestamp_ms": m.timestamp().to_millis(),
            "key": m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            "headers": headers,
            "value": crate::monitor::decode::value(m.topic(), m.payload()),
        });
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

/// Without a Kafka client there is nothing to consume with.
#[cfg(not(feature = "monitor-feed"))]
pub(super) fn consume(_: &str, _: &str, _: bool, _: Option<u64>, _: &str) -> anyhow::Result<()> {
    anyhow::bail!("this build has no Kafka client (feature monitor-feed)")
}

/// Starts the monitor's feed with the client its settings name.
pub(super) fn start_feed(
    m: &crate::monitor::Shared,
    bootstrap: String,
    group_id: String,
    properties: Vec<(String, String)>,
) -> anyhow::Result<crate::monitor::feed::Feed> {
    let client = crate::monitor::lock(m).settings.client;
    crate::monitor::feed::Feed::start(
        m.clone(),
        crate::monitor::feed::FeedConfig {
            bootstrap,
            group_id,
            properties,
            client,
        },
    )
}

/// A build without a Kafka client has no schema registry store.
#[cfg(not(feature = "monitor-feed"))]
#[derive(Debug)]
pub(super) struct NoFeed;

/// The schema registry's routes over a Kafka-backed store, if this build has a Kafka client;
/// the store is returned to be stopped with the rest.
#[cfg(feature = "monitor-feed")]
pub(super) fn schema_registry(
    bootstrap: &str,
    properties: &[(String, String)],
) -> anyhow::Result<(axum::Router, Option<Arc<crate::schemas::store::Store>>)> {
    let store = Arc::new(crate::schemas::store::Store::start(bootstrap, properties)?);
    Ok((crate::schemas::http::routes(store.clone()), Some(store)))
}

/// Without a Kafka client there is no registry.
#[cfg(not(feature = "monitor-feed"))]
pub(super) fn schema_registry(
    _: &str,
    _: &[(String, String)],
) -> anyhow::Result<(axum::Router, Option<NoFeed>)> {
    Ok((axum::Router::new(), None))
}

/// `cloud-broker monitor`.
pub(super) fn run_monitor(a: super::MonitorArgs) -> anyhow::Result<()> {
    let mut settings = settings(a.config.as_ref())?;
    settings.validate()?;
    let group = a
        .group_id
        .or_else(|| settings.group_id.clone())
        .unwrap_or_else(|| "iot-monitor".into());
    let mut props = Vec::new();
    for p in &a.properties {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--property {p:?}: expected KEY=VALUE"))?;
        props.push((k.to_string(), v.to_string()));
    }
    if props
        .iter()
        .any(|(k, _)| !crate::client::conn::LOGIN_PROPERTIES.contains(&k.as_str()))
    {
        // Properties beyond TLS and SASL: only librdkafka takes them.
        settings.client = crate::monitor::feed::Client::Librdkafka;
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let http = tokio::net::TcpListener::bind(a.http_listen)
            .await
            .map_err(|e| anyhow::anyhow!("http listen address {}: {e}", a.http_listen))?;
        let m: crate::monitor::Shared =
            Arc::new(std::sync::Mutex::new(crate::monitor::Monitor::new(settings)));
        let feed = start_feed(&m, a.bootstrap.clone(), group.clone(), props.clone())?;
        let (registry, registry_store) = schema_registry(&a.bootstrap, &props)?;
        let metrics = m.clone();
        let app = crate::monitor::http::routes(m.clone())
            .merge(registry)
            .route("/health", axum::routing::get(|| async { "ok" }))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let m = metrics.clone();
                    async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            crate::monitor::lock(&m).metrics(foundation::time::now_ms()),
                        )
                    }
                }),
            );
        info!(bootstrap = %a.bootstrap, group = %group, http = %a.http_listen, "monitor running");
        let r = tokio::select! {
            r = axum::serve(http, app) => r.map_err(anyhow::Error::from),
            _ = foundation::shutdown::signal_received() => Ok(()),
        };
        let _ = tokio::task::spawn_blocking(move || drop((feed, registry_store))).await;
        r
    })
}
