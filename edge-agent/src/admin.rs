//! The admin HTTP API: `/health`, `/metrics` (Prometheus text), `/api/log`,
//! `/api/log/records`, `/api/log/verify`, `POST /api/log/quarantine`, `/api/devices`, and with the bridge on: `/api/bridge` (status),
//! `POST /api/bridge/restart` (a new session: reconnect, reconcile, resend what was in flight),
//! `POST /api/replay?topic=T[&partition=P](&from_offset=N|&since_ms=MS)` and
//! `/api/replay/{id}` (progress).
//!
//! With `[admin] auth = "writes"` the POSTs need the admin token, with `"all"` every request but
//! `GET /health` does ([`foundation::token`]).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::devices::Registry;
use crate::log::LogStore;
use crate::metrics::{get as read, Metrics};

/// What the handlers see.
#[derive(Debug)]
pub struct AdminState {
    /// The log.
    pub store: Arc<dyn LogStore>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Devices.
    pub devices: Arc<Mutex<Registry>>,
    /// This gateway's id.
    pub gateway_id: String,
    /// Process start.
    pub started: Instant,
    /// The hosted bridge, when forwarding is on.
    pub bridge: Option<Arc<bridge::Bridge>>,
}

/// The router; requests pass `gate` first (`[admin] auth`).
pub fn router(state: Arc<AdminState>, gate: Arc<foundation::token::Gate>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/log", get(log))
        .route("/api/log/records", get(records))
        .route("/api/log/verify", get(verify))
        .route("/api/log/quarantine", axum::routing::post(quarantine))
        .route("/api/devices", get(devices))
        .route("/api/bridge", get(bridge_status))
        .route("/api/bridge/restart", axum::routing::post(bridge_restart))
        .route("/api/replay", axum::routing::post(replay))
        .route("/api/replay/{id}", get(replay_status))
        .layer(axum::middleware::from_fn_with_state(
            gate,
            foundation::token::middleware,
        ))
        .with_state(state)
}

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn health(State(s): State<Arc<AdminState>>) -> Response {
    let writes_failing = read(&s.metrics.degraded) == 1;
    let damage = s.store.damage();
    let degraded = writes_failing || damage.is_some();
    let mut body = json!({
        "status": if degraded { "degraded" } else { "ok" },
        "gateway_id": s.gateway_id,
        "uptime_s": s.started.elapsed().as_secs(),
    });
    if writes_failing {
        let why = s
            .store
            .write_failure()
            .unwrap_or_else(|| "see the agent's log".into());
        body["reason"] =
            format!("log writes are failing: acking stopped, devices keep their readings ({why})").into();
    }
    if let Some(d) = damage {
        body["reason"] = "damaged log data: run `edge-agent log verify`".into();
        body["damage"] = json!(d);
    }
    let body = Json(body);
    let code = if degraded {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, body).into_response()
}

/// `GET /api/log/verify`: every row and chunk checked, and redb's page checksums; the report.
async fn verify(State(s): State<Arc<AdminState>>) -> Response {
    verify_report(&s, false).await
}

/// `POST /api/log/quarantine`: damaged items put aside; the report of what was.
async fn quarantine(State(s): State<Arc<AdminState>>) -> Response {
    verify_report(&s, true).await
}

async fn verify_report(s: &Arc<AdminState>, quarantine: bool) -> Response {
    let store = s.store.clone();
    let r = tokio::task::spawn_blocking(move || {
        if quarantine {
            store.quarantine()
        } else {
            store.verify()
        }
    })
    .await;
    match r {
        Ok(Ok(report)) => {
            let mut v = json!(report);
            v["clean"] = report.is_clean().into();
            Json(v).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// Per-partition and per-device gauges for `/metrics`.
fn gauges(s: &AdminState) -> Result<String, crate::log::LogError> {
    let mut out = String::new();
    let names = [
        ("edge_partition_first_offset", "Lowest offset stored"),
        ("edge_partition_next_offset", "Offset the next record gets"),
        ("edge_partition_records", "Records stored"),
        ("edge_partition_bytes", "Bytes stored"),
    ];
    let mut rows = Vec::new();
    for t in s.store.topics()? {
        for p in 0..t.partitions {
            rows.push((t.name.clone(), p, s.store.partition_stats(&t.name, p)?));
        }
    }
    for (i, (name, help)) in names.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (topic, p, st) in &rows {
            let v = [st.first_offset, st.next_offset, st.records, st.bytes][i];
            let _ = writeln!(out, "{name}{{topic=\"{topic}\",partition=\"{p}\"}} {v}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP edge_log_damaged_reads Reads that met damaged stored data (checksum or decoding) since start or the last quarantine; /health is degraded while above 0\n# TYPE edge_log_damaged_reads gauge\nedge_log_damaged_reads {}",
        s.store.damage().map_or(0, |d| d.failures)
    );
    let _ = writeln!(
        out,
        "# HELP edge_log_opened_with_repair 1 if opening the log needed redb's full repair (reads the whole file)\n# TYPE edge_log_opened_with_repair gauge\nedge_log_opened_with_repair {}",
        u8::from(s.store.opened_with_repair())
    );
    let reg = s.devices.lock().unwrap_or_else(|e| e.into_inner());
    let _ = writeln!(
        out,
        "# HELP edge_devices_connected Devices whose last status is online\n# TYPE edge_devices_connected gauge\nedge_devices_connected {}",
        reg.online()
    );
    let _ = writeln!(
        out,
        "# HELP edge_devices_known Devices seen since start\n# TYPE edge_devices_known gauge\nedge_devices_known {}",
        reg.all().len()
    );
    Ok(out)
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    let state = s.clone();
    match tokio::task::spawn_blocking(move || gauges(&state)).await {
        Ok(Ok(mut extra)) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
            if let Some(b) = &s.bridge {
                extra.push_str(&b.status().render_prometheus());
            }
            s.metrics.render(&extra)
        })
            .into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// The log's topics and partitions.
pub fn log_json(store: &dyn LogStore) -> Result<serde_json::Value, crate::log::LogError> {
    let mut topics = Vec::new();
    for t in store.topics()? {
        let mut parts = Vec::new();
        for p in 0..t.partitions {
            let st = store.partition_stats(&t.name, p)?;
            parts.push(json!({
                "partition": p,
                "first_offset": st.first_offset,
                "next_offset": st.next_offset,
                "records": st.records,
                "bytes": st.bytes,
            }));
        }
        topics.push(json!({
            "name": t.name,
            "retention_ms": t.retention_ms,
            "retention_bytes": t.retention_bytes,
            "compact": t.compact,
            "partitions": parts,
        }));
    }
    Ok(json!({ "topics": topics }))
}

async fn log(State(s): State<Arc<AdminState>>) -> Response {
    match tokio::task::spawn_blocking(move || log_json(&*s.store)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// Query of `/api/log/records`.
#[derive(Debug, Deserialize)]
pub struct RecordsQuery {
    topic: String,
    #[serde(default)]
    partition: u32,
    #[serde(default)]
    from: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

async fn records(State(s): State<Arc<AdminState>>, Query(q): Query<RecordsQuery>) -> Response {
    let limit = q.limit.min(10_000);
    let res = tokio::task::spawn_blocking(move || {
        s.store
            .read(&q.topic, q.partition, q.from, limit, 64 << 20)
            .map(|rs| (q.topic, rs))
    })
    .await;
    match res {
        Ok(Ok((topic, rs))) => Json(
            rs.iter()
                .map(|r| crate::render::record(&topic, r))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Ok(Err(
            e @ (crate::log::LogError::UnknownTopic(_) | crate::log::LogError::UnknownPartition { .. }),
        )) => (StatusCode::NOT_FOUND, Json(json!({ "error": e.to_string() }))).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn devices(State(s): State<Arc<AdminState>>) -> Response {
    let reg = s.devices.lock().unwrap_or_else(|e| e.into_inner());
    Json(json!({ "devices": reg.all() })).into_response()
}

fn no_bridge() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "the bridge is off (start the agent with --cloud or a [bridge] section)" })),
    )
        .into_response()
}

async fn bridge_status(State(s): State<Arc<AdminState>>) -> Response {
    match &s.bridge {
        Some(b) => Json(b.status()).into_response(),
        None => no_bridge(),
    }
}

#[derive(Debug, Deserialize)]
struct ReplayQuery {
    topic: String,
    partition: Option<u32>,
    from_offset: Option<u64>,
    since_ms: Option<u64>,
}

async fn bridge_restart(State(s): State<Arc<AdminState>>) -> Response {
    let Some(b) = &s.bridge else { return no_bridge() };
    b.restart_session();
    (StatusCode::ACCEPTED, Json(json!({ "restarting": true }))).into_response()
}

async fn replay(State(s): State<Arc<AdminState>>, Query(q): Query<ReplayQuery>) -> Response {
    let Some(b) = s.bridge.clone() else {
        return no_bridge();
    };
    let start = match (q.from_offset, q.since_ms) {
        (Some(o), None) => bridge::ReplayStart::Offset(o),
        (None, Some(ms)) => bridge::ReplayStart::SinceMs(ms),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "give exactly one of from_offset and since_ms" })),
            )
                .into_response()
        }
    };
    match tokio::task::spawn_blocking(move || b.replay(&q.topic, q.partition, start)).await {
        Ok(Ok(st)) => Json(st).into_response(),
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("{e:#}") })),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

async fn replay_status(
    State(s): State<Arc<AdminState>>,
    axum::extract::Path(id): axum::extract::Path<u64>,
) -> Response {
    let Some(b) = &s.bridge else { return no_bridge() };
    match b.replay_status(id) {
        Some(st) => Json(st).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no replay job {id}") })),
        )
            .into_response(),
    }
}
