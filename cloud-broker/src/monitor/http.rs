//! The monitor's HTTP surface: the dashboard at `/` (plain HTML, CSS and JS built into the
//! binary; nothing is fetched from elsewhere), `/api/devices` (`?filter=&status=online|offline&lossy=true&
//! sort=[-]field&offset=&limit=`), `/api/devices/{id}`, `/api/gateways`, `/api/monitor`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::view::DeviceQuery;
use super::{lock, Shared};

/// The routes, on a shared monitor.
pub fn routes(m: Shared) -> Router {
    Router::new()
        .route("/api/devices", get(devices))
        .route("/api/devices/{id}", get(device))
        .route("/api/gateways", get(gateways))
        .route("/api/monitor", get(feed))
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .with_state(m)
}

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, kind),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn devices(State(m): State<Shared>, Query(q): Query<DeviceQuery>) -> Response {
    let now = foundation::time::now_ms();
    Json(lock(&m).devices(&q, now)).into_response()
}

async fn device(State(m): State<Shared>, Path(id): Path<String>) -> Response {
    let now = foundation::time::now_ms();
    match lock(&m).device(&id, now) {
        Some(d) => Json(d).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no device {id:?} is known") })),
        )
            .into_response(),
    }
}

async fn gateways(State(m): State<Shared>) -> Response {
    let now = foundation::time::now_ms();
    Json(lock(&m).gateway_rows(now)).into_response()
}

async fn feed(State(m): State<Shared>) -> Response {
    Json(lock(&m).feed_view()).into_response()
}
