//! Request framing, header decoding, version negotiation and response encoding.
//!
//! Frames are `i32` big-endian length + bytes. Before handing a frame to `kafka-protocol`'s
//! decoders we check what they do not: a minimum length (their header decode panics on fewer
//! than 4 bytes), a maximum length, a supported API key and version. A frame that fails any of
//! this closes its connection (what Kafka does); ApiVersions with an unsupported version gets
//! the KIP-511 answer (error 35, v0 body, our ranges) so the client can retry.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable};

use crate::errors::Code;

/// Largest request frame accepted (Kafka's `socket.request.max.bytes` default).
pub const MAX_FRAME: usize = 100 * 1024 * 1024;

/// `(api, min, max)` versions served. Each range lies inside what kafka-protocol decodes and
/// covers both Debian's kcat (librdkafka 2.0.2: Metadata ≤ 4, Fetch ≥ 4, Produce ≥ 3) and
/// current clients. Capping Produce and Fetch at 9 / 12 keeps topic ids out of the data path.
/// The rest reach Kafka 3.0's maximums: ListOffsets v7 makes kafka-python take us for 3.0, and
/// a kafka-python with `api_version` pinned at or below that uses 3.0's versions unasked.
/// ListGroups goes to v5 (its types filter), which kafka-python 3 and librdkafka 2.6+ send.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 2, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 0),
    // v0 is advertised because librdkafka before 2.1 (Debian's kcat) logs in only to a broker
    // whose range reaches it, but a v0 handshake, which raw (unframed) SASL tokens follow, is
    // refused by closing the connection; librdkafka sends v1, then SaslAuthenticate.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The served version range of an API.
pub fn supported(k: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED.iter().find(|e| e.0 == k).map(|&(_, lo, hi)| (lo, hi))
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    /// API.
    pub api_key: ApiKey,
    /// Version.
    pub version: i16,
    /// Header.
    pub header: RequestHeader,
    /// Body.
    pub body: RequestKind,
    /// The peer's address (set by the connection; DescribeGroups shows it per member).
    pub peer: Option<std::net::IpAddr>,
    /// Who sent it (set by the connection: its login, client certificate or `ANONYMOUS`).
    pub principal: std::sync::Arc<str>,
    /// The listener it came in on (Metadata answers with that listener's addresses).
    pub listener: std::sync::Arc<str>,
}

/// What to do with a frame.
#[derive(Debug)]
pub enum Decoded {
    /// Serve it.
    Request(Box<Request>),
    /// Answer with these bytes at once (the ApiVersions fallback).
    Immediate(BytesMut),
}

/// Why a frame was refused (the connection is closed).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Too short to hold a request header.
    #[error("frame of {0} bytes is too short")]
    Short(usize),
    /// Unknown API key.
    #[error("unknown api key {0}")]
    UnknownApi(i16),
    /// Known API, version not served.
    #[error("{0:?} v{1} is not supported")]
    Version(ApiKey, i16),
    /// The body did not decode.
    #[error("malformed {0:?} v{1} request: {2}")]
    Malformed(ApiKey, i16, String),
}

/// The ApiVersions response body for `error`.
pub fn api_versions(error: Code) -> ApiVersionsResponse {
    let keys = SUPPORTED
        .iter()
        .map(|&(k, lo, hi)| {
            ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(lo)
                .with_max_version(hi)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error.code())
        .with_api_keys(keys)
}

/// Decodes one frame (without its length prefix).
pub fn decode(mut frame: Bytes) -> Result<Decoded, FrameError> {
    if frame.len() < 8 {
        return Err(FrameError::Short(frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(key).map_err(|_| FrameError::UnknownApi(key))?;
    let Some((lo, hi)) = supported(api_key) else {
        return Err(FrameError::Version(api_key, version));
    };
    if !(lo..=hi).contains(&version) {
        if api_key == ApiKey::ApiVersions {
            let mut out = BytesMut::new();
            encode(
                &mut out,
                api_key,
                0,
                correlation,
                &ResponseKind::ApiVersions(api_versions(Code::UnsupportedVersion)),
            )
            .map_err(|e| FrameError::Malformed(api_key, version, e.to_string()))?;
            return Ok(Decoded::Immediate(out));
        }
        return Err(FrameError::Version(api_key, version));
    }
    let header = decode_request_header_from_buffer(&mut frame)
        .map_err(|e| FrameError::Malformed(api_key, version, e.to_string()))?;
    let body = RequestKind::decode(api_key, &mut frame, version)
        .map_err(|e| FrameError::Malformed(api_key, version, format!("{e:#}")))?;
    Ok(Decoded::Request(Box::new(Request {
        api_key,
        version,
        header,
        body,
        peer: None,
        principal: std::sync::Arc::from(crate::security::ANONYMOUS),
        listener: std::sync::Arc::from(crate::security::PRIMARY),
    })))
}

/// Appends a length-prefixed response frame to `out`.
pub fn encode(
    out: &mut BytesMut,
    key: ApiKey,
    version: i16,
    correlation: i32,
    resp: &ResponseKind,
) -> anyhow::Result<()> {
    let start = out.len();
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(out, key.response_header_version(version))?;
    resp.encode(out, version)?;
    let len = (out.len() - start - 4) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Message;

    #[test]
    fn served_ranges_lie_inside_what_the_codec_decodes() {
        fn check<M: Message>(lo: i16, hi: i16, name: &str) {
            assert!(
                M::VERSIONS.min <= lo && hi <= M::VERSIONS.max,
                "{name}: {lo}..={hi} vs {:?}",
                M::VERSIONS
            );
        }
        for &(k, lo, hi) in SUPPORTED {
            match k {
                ApiKey::Produce => check::<ProduceRequest>(lo, hi, "produce"),
                ApiKey::Fetch => check::<FetchRequest>(lo, hi, "fetch"),
                ApiKey::ListOffsets => check::<ListOffsetsRequest>(lo, hi, "list offsets"),
                ApiKey::Metadata => check::<MetadataRequest>(lo, hi, "metadata"),
                ApiKey::OffsetCommit => check::<OffsetCommitRequest>(lo, hi, "offset commit"),
                ApiKey::OffsetFetch => check::<OffsetFetchRequest>(lo, hi, "offset fetch"),
                ApiKey::FindCoordinator => check::<FindCoordinatorRequest>(lo, hi, "find coordinator"),
                ApiKey::JoinGroup => check::<JoinGroupRequest>(lo, hi, "join"),
                ApiKey::Heartbeat => check::<HeartbeatRequest>(lo, hi, "heartbeat"),
                ApiKey::LeaveGroup => check::<LeaveGroupRequest>(lo, hi, "leave"),
                ApiKey::SyncGroup => check::<SyncGroupRequest>(lo, hi, "sync"),
                ApiKey::ApiVersions => check::<ApiVersionsRequest>(lo, hi, "api versions"),
                ApiKey::CreateTopics => check::<CreateTopicsRequest>(lo, hi, "create topics"),
                ApiKey::DeleteTopics => check::<DeleteTopicsRequest>(lo, hi, "delete topics"),
                ApiKey::InitProducerId => check::<InitProducerIdRequest>(lo, hi, "init producer id"),
                ApiKey::DescribeConfigs => check::<DescribeConfigsRequest>(lo, hi, "describe configs"),
                ApiKey::ListGroups => check::<ListGroupsRequest>(lo, hi, "list groups"),
                ApiKey::DescribeGroups => check::<DescribeGroupsRequest>(lo, hi, "describe groups"),
                ApiKey::DeleteGroups => check::<DeleteGroupsRequest>(lo, hi, "delete groups"),
                ApiKey::CreatePartitions => check::<CreatePartitionsRequest>(lo, hi, "create partitions"),
                ApiKey::DeleteRecords => check::<DeleteRecordsRequest>(lo, hi, "delete records"),
                ApiKey::AlterConfigs => check::<AlterConfigsRequest>(lo, hi, "alter configs"),
                ApiKey::IncrementalAlterConfigs => {
                    check::<IncrementalAlterConfigsRequest>(lo, hi, "incremental alter configs")
                }
                ApiKey::DescribeLogDirs => check::<DescribeLogDirsRequest>(lo, hi, "describe log dirs"),
                ApiKey::OffsetDelete => check::<OffsetDeleteRequest>(lo, hi, "offset delete"),
                ApiKey::AddPartitionsToTxn => {
                    check::<AddPartitionsToTxnRequest>(lo, hi, "add partitions to txn")
                }
                ApiKey::AddOffsetsToTxn => check::<AddOffsetsToTxnRequest>(lo, hi, "add offsets to txn"),
                ApiKey::EndTxn => check::<EndTxnRequest>(lo, hi, "end txn"),
                ApiKey::TxnOffsetCommit => check::<TxnOffsetCommitRequest>(lo, hi, "txn offset commit"),
                ApiKey::DescribeTransactions => {
                    check::<DescribeTransactionsRequest>(lo, hi, "describe transactions")
                }
                ApiKey::ListTransactions => check::<ListTransactionsRequest>(lo, hi, "list transactions"),
                ApiKey::SaslHandshake => check::<SaslHandshakeRequest>(lo, hi, "sasl handshake"),
                ApiKey::SaslAuthenticate => check::<SaslAuthenticateRequest>(lo, hi, "sasl authenticate"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The README's compatibility table names every Kafka API (as kafka-protocol knows
    /// them), with exactly the versions ApiVersions advertises, or "not offered".
    #[test]
    fn the_readme_table_is_what_api_versions_advertises() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("<!-- kafka-api-table")
            .expect("the table's start marker");
        let end = readme
            .find("<!-- /kafka-api-table -->")
            .expect("the table's end marker");
        let mut rows = std::collections::BTreeMap::new();
        for line in readme[start..end]
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| API"))
        {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (name, key) = cells[1].split_once(" (").expect("API (key)");
            let key: i16 = key.trim_end_matches(')').parse().expect("a key");
            assert!(
                rows.insert(key, (name.to_string(), cells[2].to_string()))
                    .is_none(),
                "{name} twice"
            );
        }
        for k in ApiKey::iter() {
            let (name, versions) = rows
                .remove(&(k as i16))
                .unwrap_or_else(|| panic!("{k:?} ({}) is missing from the README's table", k as i16));
            assert_eq!(name, format!("{k:?}"), "key {}", k as i16);
            let want = match supported(k) {
                None => "not offered".to_string(),
                Some((lo, hi)) if lo == hi => lo.to_string(),
                Some((lo, hi)) => format!("{lo}–{hi}"),
            };
            assert_eq!(versions, want, "{k:?} in the README");
        }
        assert!(
            rows.is_empty(),
            "the README names APIs kafka-protocol does not: {rows:?}"
        );
    }

    #[test]
    fn short_unknown_and_unsupported_frames_are_refused() {
        assert!(matches!(
            decode(Bytes::from_static(&[0, 18, 0])),
            Err(FrameError::Short(3))
        ));
        assert!(matches!(
            decode(Bytes::from_static(&[0x7f, 0, 0, 0, 0, 0, 0, 1])),
            Err(FrameError::UnknownApi(_))
        ));
        assert!(matches!(
            decode(Bytes::from_static(&[0, 3, 0, 99, 0, 0, 0, 1])),
            Err(FrameError::Version(ApiKey::Metadata, 99))
        ));
        // ApiVersions v9 from a newer client: answered with error 35 and our ranges.
        match decode(Bytes::from_static(&[0, 18, 0, 9, 0, 0, 0, 7])).unwrap() {
            Decoded::Immediate(b) => {
                assert_eq!(&b[4..8], &7i32.to_be_bytes(), "correlation id");
                assert_eq!(&b[8..10], &35i16.to_be_bytes(), "UNSUPPORTED_VERSION");
            }
            d => panic!("{d:?}"),
        }
        // A truncated Metadata v1 body.
        assert!(matches!(
            decode(Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 1, 0, 0])),
            Err(FrameError::Malformed(..))
        ));
    }
}
