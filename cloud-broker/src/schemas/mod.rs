//! A schema registry: the subset of the Confluent Schema Registry REST API that clients use
//! (register and look up subjects, versions and schema ids), so the Kafka ecosystem can read
//! the appliance's records with no code of ours.
//!
//! Like Confluent's, it keeps its state in a Kafka topic (`_schemas`, one partition, key =
//! subject and version, value = the [`Entry`] as JSON) and every instance rebuilds it by
//! reading that topic from the start: on a cluster it is replicated like any topic.
//!
//! - this module — the rules, sans I/O: [`Schemas::apply`] takes the topic's entries in
//!   order (the first entry to claim an id or a subject's version wins; a later one that
//!   disagrees is ignored, so concurrent registrations on two nodes settle the same way
//!   everywhere), [`Schemas::plan`] says what registering a schema needs;
//! - `store` (feature `monitor-feed`) — the topic through librdkafka: a reader thread and a
//!   producer that waits until its entry is read back;
//! - `http` — the REST routes.
//!
//! Schemas are JSON Schema or Avro, compared by their canonical JSON text (keys sorted, no
//! whitespace). Compatibility is not checked (the global level is `NONE`).

#[cfg(feature = "monitor-feed")]
pub mod http;
#[cfg(feature = "monitor-feed")]
pub mod store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The topic the registry keeps its entries in.
pub const TOPIC: &str = "_schemas";
/// Largest schema accepted, bytes.
pub const MAX_SCHEMA_BYTES: usize = 256 << 10;
/// Most subjects; most versions per subject.
pub const MAX_SUBJECTS: usize = 10_000;
/// Most versions kept per subject.
pub const MAX_VERSIONS: usize = 1_000;

/// A schema's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub enum SchemaType {
    /// Apache Avro (Confluent's default when `schemaType` is absent).
    #[default]
    #[serde(rename = "AVRO")]
    Avro,
    /// JSON Schema.
    #[serde(rename = "JSON")]
    Json,
}

impl SchemaType {
    /// Parses `schemaType` as clients send it.
    pub fn parse(s: Option<&str>) -> Result<SchemaType, Error> {
        match s {
            None | Some("AVRO") => Ok(SchemaType::Avro),
            Some("JSON") => Ok(SchemaType::Json),
            Some(other) => Err(Error::InvalidSchema(format!(
                "schemaType {other:?} is not served here (AVRO and JSON are)"
            ))),
        }
    }

    /// As clients name it.
    pub fn name(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Json => "JSON",
        }
    }
}

/// One record of the `_schemas` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The subject (Confluent's topic name strategy: `<topic>-value`).
    pub subject: String,
    /// Its version under the subject, from 1.
    pub version: u32,
    /// The schema's global id, from 1.
    pub id: u32,
    /// Its language.
    #[serde(rename = "schemaType", default)]
    pub schema_type: SchemaType,
    /// Its canonical text.
    pub schema: String,
    /// Soft-deleted (a `DELETE` of the version or subject).
    #[serde(default)]
    pub deleted: bool,
}

/// The registry's errors, with Confluent's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 404, 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 404, 40402.
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    /// 404, 40403.
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    /// 422, 42201.
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// 422, 42202.
    #[error("The specified version '{0}' is not a valid version id.")]
    InvalidVersion(String),
    /// 500, 50001 (the store is unavailable, or full).
    #[error("{0}")]
    Store(String),
}

impl Error {
    /// HTTP status and Confluent error code.
    pub fn codes(&self) -> (u16, u32) {
        match self {
            Error::SubjectNotFound(_) => (404, 40401),
            Error::VersionNotFound(_) => (404, 40402),
            Error::SchemaNotFound(_) => (404, 40403),
            Error::InvalidSchema(_) => (422, 42201),
            Error::InvalidVersion(_) => (422, 42202),
            Error::Store(_) => (500, 50001),
        }
    }
}

/// The canonical text of a schema: its JSON with keys sorted and no whitespace. An Avro
/// schema may also be a bare type name (`"string"` in JSON, or `string`).
pub fn canonical(kind: SchemaType, text: &str) -> Result<String, Error> {
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(Error::InvalidSchema(format!(
            "{} bytes (at most {MAX_SCHEMA_BYTES})",
            text.len()
        )));
    }
    let v: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_)
            if kind == SchemaType::Avro
                && !text.trim().is_empty()
                && text
                    .trim()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._".contains(&b)) =>
        {
            serde_json::Value::String(text.trim().to_string())
        }
        Err(e) => return Err(Error::InvalidSchema(format!("not JSON: {e}"))),
    };
    match (kind, &v) {
        (SchemaType::Json, serde_json::Value::Object(_) | serde_json::Value::Bool(_)) => {}
        (SchemaType::Json, _) => {
            return Err(Error::InvalidSchema(
                "a JSON Schema is an object or a boolean".into(),
            ))
        }
        (SchemaType::Avro, serde_json::Value::Object(o)) if !o.contains_key("type") => {
            return Err(Error::InvalidSchema(
                "an Avro schema object needs a \"type\"".into(),
            ))
        }
        (
            SchemaType::Avro,
            serde_json::Value::Object(_) | serde_json::Value::String(_) | serde_json::Value::Array(_),
        ) => {}
        (SchemaType::Avro, _) => {
            return Err(Error::InvalidSchema(
                "an Avro schema is an object, a type name or a union".into(),
            ))
        }
    }
    // serde_json's maps are sorted (no preserve_order feature): this is the sorted form.
    Ok(v.to_string())
}

/// What registering a schema under a subject needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// It is already the subject's version `version`, with id `id`.
    Existing {
        /// Its id.
        id: u32,
        /// Its version.
        version: u32,
    },
    /// Write this entry.
    New(Entry),
}

/// The registry's state, built from the topic's entries in order.
#[derive(Debug, Clone, Default)]
pub struct Schemas {
    /// Schemas by id: `(type, canonical text)`.
    ids: BTreeMap<u32, (SchemaType, String)>,
    /// Per subject, per version: `(id, deleted)`.
    subjects: BTreeMap<String, BTreeMap<u32, (u32, bool)>>,
    /// Entries read.
    pub entries: u64,
    /// Entries ignored (they disagreed with an earlier one, or were malformed).
    pub ignored: u64,
}

impl Schemas {
    /// Applies the topic's next entry. The first entry to bind an id to a schema, or a
    /// subject's version to an id, wins; a later one that disagrees is counted and ignored.
    /// Returns whether it was taken.
    pub fn apply(&mut self, e: &Entry) -> bool {
        self.entries += 1;
        let valid = e.id > 0
            && e.version > 0
            && !e.subject.is_empty()
            && canonical(e.schema_type, &e.schema).is_ok_and(|c| c == e.schema);
        let id_ok = self
            .ids
            .get(&e.id)
            .is_none_or(|s| *s == (e.schema_type, e.schema.clone()));
        let slot = self.subjects.get(&e.subject).and_then(|v| v.get(&e.version));
        let version_ok = slot.is_none_or(|(id, _)| *id == e.id);
        let room = self.subjects.contains_key(&e.subject) || self.subjects.len() < MAX_SUBJECTS;
        let vroom = slot.is_some()
            || self
                .subjects
                .get(&e.subject)
                .is_none_or(|v| v.len() < MAX_VERSIONS);
        if !(valid && id_ok && version_ok && room && vroom) {
            self.ignored += 1;
            return false;
        }
        self.ids.insert(e.id, (e.schema_type, e.schema.clone()));
        self.subjects
            .entry(e.subject.clone())
            .or_default()
            .insert(e.version, (e.id, e.deleted));
        true
    }

    /// What registering `schema` (canonical) under `subject` needs: nothing if it is a live
    /// version already; else an entry with the next version and the schema's id (the same
    /// schema keeps its id across subjects).
    pub fn plan(&self, subject: &str, kind: SchemaType, schema: &str) -> Result<Plan, Error> {
        if subject.is_empty() || subject.len() > 255 || subject.chars().any(char::is_control) {
            return Err(Error::InvalidSchema(format!("bad subject name {subject:?}")));
        }
        if let Some((id, version)) = self.find(subject, kind, schema) {
            return Ok(Plan::Existing { id, version });
        }
        let versions = self.subjects.get(subject);
        if versions.is_some_and(|v| v.len() >= MAX_VERSIONS) {
            return Err(Error::Store(format!(
                "subject {subject:?} has {MAX_VERSIONS} versions"
            )));
        }
        if versions.is_none() && self.subjects.len() >= MAX_SUBJECTS {
            return Err(Error::Store(format!(
                "the registry holds {MAX_SUBJECTS} subjects"
            )));
        }
        let id = self
            .ids
            .iter()
            .find(|(_, s)| s.0 == kind && s.1 == schema)
            .map(|(id, _)| *id)
            .unwrap_or_else(|| self.ids.keys().next_back().map_or(1, |m| m + 1));
        let version = versions.and_then(|v| v.keys().next_back()).map_or(1, |v| v + 1);
        Ok(Plan::New(Entry {
            subject: subject.to_string(),
            version,
            id,
            schema_type: kind,
            schema: schema.to_string(),
            deleted: false,
        }))
    }

    /// The live version of `subject` holding `schema`: `(id, version)`.
    pub fn find(&self, subject: &str, kind: SchemaType, schema: &str) -> Option<(u32, u32)> {
        self.subjects.get(subject)?.iter().find_map(|(v, (id, deleted))| {
            (!deleted && self.ids.get(id).is_some_and(|s| s.0 == kind && s.1 == schema)).then_some((*id, *v))
        })
    }

    /// A schema by id.
    pub fn by_id(&self, id: u32) -> Option<(SchemaType, &str)> {
        self.ids.get(&id).map(|(k, s)| (*k, s.as_str()))
    }

    /// Subjects with a live version.
    pub fn subjects(&self) -> Vec<&str> {
        self.subjects
            .iter()
            .filter(|(_, v)| v.values().any(|(_, d)| !d))
            .map(|(s, _)| s.as_str())
            .collect()
    }

    /// A subject's live versions.
    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, Error> {
        let v: Vec<u32> = self
            .subjects
            .get(subject)
            .map(|v| v.iter().filter(|(_, (_, d))| !d).map(|(v, _)| *v).collect())
            .unwrap_or_default();
        if v.is_empty() {
            return Err(Error::SubjectNotFound(subject.to_string()));
        }
        Ok(v)
    }

    /// A subject's version (`latest`, `-1` or a number): `(version, id, type, schema)`.
    pub fn version(&self, subject: &str, version: &str) -> Result<(u32, u32, SchemaType, &str), Error> {
        let versions = self.versions(subject)?;
        let v = match version {
            "latest" | "-1" => versions.last().copied().unwrap_or(0),
            n => {
                let n: u32 = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Error::InvalidVersion(n.to_string()))?;
                if !versions.contains(&n) {
                    return Err(Error::VersionNotFound(n.to_string()));
                }
                n
            }
        };
        let (id, _) = self.subjects[subject][&v];
        let (kind, schema) = self
            .by_id(id)
            .ok_or_else(|| Error::SchemaNotFound(id.to_string()))?;
        Ok((v, id, kind, schema))
    }

    /// The subject's live versions as deleted entries (a `DELETE` of the subject).
    pub fn delete_subject(&self, subject: &str) -> Result<Vec<Entry>, Error> {
        let versions = self.versions(subject)?;
        Ok(versions
            .into_iter()
            .filter_map(|v| {
                let (id, _) = self.subjects[subject][&v];
                let (kind, schema) = self.by_id(id)?;
                Some(Entry {
                    subject: subject.to_string(),
                    version: v,
                    id,
                    schema_type: kind,
                    schema: schema.to_string(),
                    deleted: true,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READING: &str = r#"{ "type": "object", "properties": { "seq": { "type": "integer" } } }"#;

    fn register(s: &mut Schemas, subject: &str, kind: SchemaType, text: &str) -> (u32, u32) {
        let c = canonical(kind, text).unwrap();
        match s.plan(subject, kind, &c).unwrap() {
            Plan::Existing { id, version } => (id, version),
            Plan::New(e) => {
                assert!(s.apply(&e));
                (e.id, e.version)
            }
        }
    }

    #[test]
    fn registering_is_idempotent_and_ids_are_shared_across_subjects() {
        let mut s = Schemas::default();
        assert_eq!(
            register(&mut s, "telemetry-value", SchemaType::Json, READING),
            (1, 1)
        );
        // The same schema, spaced differently: the same version.
        let spaced = READING.replace(' ', "\n ");
        assert_eq!(
            register(&mut s, "telemetry-value", SchemaType::Json, &spaced),
            (1, 1)
        );
        // Another subject, the same schema: the same id, its own version 1.
        assert_eq!(register(&mut s, "other-value", SchemaType::Json, READING), (1, 1));
        // A new schema: the next id and version.
        assert_eq!(
            register(
                &mut s,
                "telemetry-value",
                SchemaType::Json,
                r#"{"type":"object"}"#
            ),
            (2, 2)
        );
        // The same text as Avro is another schema.
        assert_eq!(
            register(&mut s, "a-value", SchemaType::Avro, r#""string""#),
            (3, 1)
        );
        assert_eq!(register(&mut s, "a-value", SchemaType::Avro, "string"), (3, 1));
        assert_eq!(s.versions("telemetry-value").unwrap(), vec![1, 2]);
        let (v, id, kind, _) = s.version("telemetry-value", "latest").unwrap();
        assert_eq!((v, id, kind), (2, 2, SchemaType::Json));
        assert_eq!(s.subjects(), vec!["a-value", "other-value", "telemetry-value"]);
        assert!(matches!(
            s.version("telemetry-value", "9"),
            Err(Error::VersionNotFound(_))
        ));
        assert!(matches!(
            s.version("telemetry-value", "x"),
            Err(Error::InvalidVersion(_))
        ));
        assert!(matches!(s.version("nope", "1"), Err(Error::SubjectNotFound(_))));
        // Deleting the subject hides it; registering again starts a new version.
        for e in s.delete_subject("other-value").unwrap() {
            assert!(s.apply(&e));
        }
        assert_eq!(s.subjects(), vec!["a-value", "telemetry-value"]);
        assert_eq!(register(&mut s, "other-value", SchemaType::Json, READING), (1, 2));
    }

    #[test]
    fn the_first_entry_to_claim_an_id_or_version_wins() {
        let mut s = Schemas::default();
        let c = canonical(SchemaType::Json, READING).unwrap();
        let (Plan::New(a), Plan::New(mut b)) = (
            s.plan("x-value", SchemaType::Json, &c).unwrap(),
            s.plan("y-value", SchemaType::Json, r#"{"type":"string"}"#)
                .unwrap(),
        ) else {
            panic!("new entries expected")
        };
        // Two nodes planned at once: both chose id 1.
        assert_eq!((a.id, b.id), (1, 1));
        assert!(s.apply(&a));
        assert!(!s.apply(&b), "id 1 is taken by another schema");
        assert_eq!(s.ignored, 1);
        // The loser plans again and gets the next id.
        let Plan::New(again) = s
            .plan("y-value", SchemaType::Json, r#"{"type":"string"}"#)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(again.id, 2);
        // A malformed entry (not canonical) is ignored too.
        b.schema = "{ }".into();
        b.id = 9;
        assert!(!s.apply(&b));
    }

    #[test]
    fn bad_schemas_are_refused_with_the_reason() {
        for (kind, text) in [
            (SchemaType::Json, "not json"),
            (SchemaType::Json, "[1]"),
            (SchemaType::Avro, r#"{"name":"x"}"#),
            (SchemaType::Avro, "12"),
        ] {
            assert!(
                matches!(canonical(kind, text), Err(Error::InvalidSchema(_))),
                "{text}"
            );
        }
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_SCHEMA_BYTES));
        assert!(matches!(
            canonical(SchemaType::Json, &big),
            Err(Error::InvalidSchema(_))
        ));
        assert!(SchemaType::parse(Some("PROTOBUF")).is_err());
        assert_eq!(Error::SubjectNotFound("s".into()).codes(), (404, 40401));
    }
}
