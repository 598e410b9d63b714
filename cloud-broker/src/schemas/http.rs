//! The Confluent Schema Registry REST routes clients use, on the broker's HTTP listener:
//!
//! | route | answer |
//! |---|---|
//! | `GET /subjects` | subjects with a live version |
//! | `POST /subjects/{s}/versions` `{schema, schemaType?}` | `{id}` (registers, or finds) |
//! | `POST /subjects/{s}` `{schema, schemaType?}` | `{subject, id, version, schema}` if registered |
//! | `GET /subjects/{s}/versions` | its versions |
//! | `GET /subjects/{s}/versions/{v}` (`latest`, `-1`, n) | `{subject, id, version, schema, schemaType?}` |
//! | `GET /subjects/{s}/versions/{v}/schema` | the schema itself |
//! | `DELETE /subjects/{s}` | the versions deleted |
//! | `GET /schemas/ids/{id}` | `{schema, schemaType?}` |
//! | `GET /schemas/ids/{id}/schema` | the schema itself |
//! | `GET /schemas/types` | `["AVRO","JSON"]` |
//! | `GET /config`, `GET /config/{s}` | `{"compatibilityLevel":"NONE"}` |
//!
//! Errors are `{"error_code", "message"}` with Confluent's codes. Bodies are read whatever
//! their content type (clients send `application/vnd.schemaregistry.v1+json`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::store::Store;
use super::{Error, SchemaType};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The routes over a store.
pub fn routes(store: Arc<Store>) -> Router {
    Router::new()
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route("/schemas/ids/{id}", get(by_id))
        .route("/schemas/ids/{id}/schema", get(by_id_schema))
        .route("/schemas/types", get(|| async { ok(json!(["AVRO", "JSON"])) }))
        .route(
            "/config",
            get(|| async { ok(json!({ "compatibilityLevel": "NONE" })) }),
        )
        .route(
            "/config/{subject}",
            get(|| async { ok(json!({ "compatibilityLevel": "NONE" })) }),
        )
        .with_state(store)
}

fn ok(v: Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], v.to_string()).into_response()
}

fn fail(e: Error) -> Response {
    let (status, code) = e.codes();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        json!({ "error_code": code, "message": e.to_string() }).to_string(),
    )
        .into_response()
}

/// A schema itself, as its JSON (an Avro type name stays a string).
fn raw(r: Result<String, Error>) -> Response {
    answer(r.map(|schema| serde_json::from_str(&schema).unwrap_or(Value::String(schema))))
}

fn answer(r: Result<Value, Error>) -> Response {
    r.map_or_else(fail, ok)
}

/// `{schema, schemaType?, references?}` from a request body.
fn body(bytes: &[u8]) -> Result<(SchemaType, String), Error> {
    if bytes.len() > super::MAX_SCHEMA_BYTES + 4096 {
        return Err(Error::InvalidSchema("request too large".into()));
    }
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::InvalidSchema(format!("request is not JSON: {e}")))?;
    if v["references"].as_array().is_some_and(|r| !r.is_empty()) {
        return Err(Error::InvalidSchema(
            "schema references are not served here".into(),
        ));
    }
    let kind = SchemaType::parse(v["schemaType"].as_str())?;
    let schema = v["schema"]
        .as_str()
        .ok_or_else(|| Error::InvalidSchema("no \"schema\" string in the request".into()))?;
    Ok((kind, schema.to_string()))
}

fn with_type(mut v: Value, kind: SchemaType) -> Value {
    // Confluent leaves schemaType out for Avro, its default.
    if kind != SchemaType::Avro {
        v["schemaType"] = kind.name().into();
    }
    v
}

async fn subjects(State(s): State<Arc<Store>>) -> Response {
    answer(s.synced(|s| json!(s.subjects())).await)
}

async fn versions(State(s): State<Arc<Store>>, Path(subject): Path<String>) -> Response {
    answer(
        s.synced(|s| s.versions(&subject).map(|v| json!(v)))
            .await
            .and_then(|r| r),
    )
}

async fn register(
    State(s): State<Arc<Store>>,
    Path(subject): Path<String>,
    bytes: axum::body::Bytes,
) -> Response {
    let r = async {
        let (kind, schema) = body(&bytes)?;
        let id = s.register(&subject, kind, &schema).await?;
        Ok(json!({ "id": id }))
    };
    answer(r.await)
}

async fn lookup(
    State(s): State<Arc<Store>>,
    Path(subject): Path<String>,
    bytes: axum::body::Bytes,
) -> Response {
    let r = async {
        let (kind, schema) = body(&bytes)?;
        let c = super::canonical(kind, &schema)?;
        s.synced(|st| {
            st.versions(&subject)?;
            let (id, version) = st
                .find(&subject, kind, &c)
                .ok_or_else(|| Error::SchemaNotFound(format!("not registered under {subject}")))?;
            Ok(with_type(
                json!({ "subject": subject, "id": id, "version": version, "schema": c }),
                kind,
            ))
        })
        .await?
    };
    answer(r.await)
}

async fn version(State(s): State<Arc<Store>>, Path((subject, v)): Path<(String, String)>) -> Response {
    let r = s
        .synced(|st| {
            st.version(&subject, &v).map(|(version, id, kind, schema)| {
                with_type(
                    json!({ "subject": subject, "id": id, "version": version, "schema": schema }),
                    kind,
                )
            })
        })
        .await;
    answer(r.and_then(|r| r))
}

async fn version_schema(State(s): State<Arc<Store>>, Path((subject, v)): Path<(String, String)>) -> Response {
    let r = s
        .synced(|st| {
            st.version(&subject, &v)
                .map(|(_, _, _, schema)| schema.to_string())
        })
        .await;
    raw(r.and_then(|r| r))
}

fn parse_id(id: &str) -> Result<u32, Error> {
    id.parse().map_err(|_| Error::SchemaNotFound(id.to_string()))
}

/// A schema by id: from the state as read, or after reading the topic to its end (a client
/// that met a new id in a record may ask before this instance has read it).
async fn schema_by_id(s: &Store, id: &str) -> Result<(SchemaType, String), Error> {
    let id = parse_id(id)?;
    let found = |st: &super::Schemas| st.by_id(id).map(|(k, t)| (k, t.to_string()));
    if let Some(f) = s.now(found) {
        return Ok(f);
    }
    s.synced(found)
        .await?
        .ok_or_else(|| Error::SchemaNotFound(id.to_string()))
}

async fn by_id(State(s): State<Arc<Store>>, Path(id): Path<String>) -> Response {
    answer(
        schema_by_id(&s, &id)
            .await
            .map(|(kind, schema)| with_type(json!({ "schema": schema }), kind)),
    )
}

async fn by_id_schema(State(s): State<Arc<Store>>, Path(id): Path<String>) -> Response {
    raw(schema_by_id(&s, &id).await.map(|(_, schema)| schema))
}

async fn delete_subject(State(s): State<Arc<Store>>, Path(subject): Path<String>) -> Response {
    answer(s.delete_subject(&subject).await.map(|v| json!(v)))
}
