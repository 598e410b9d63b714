//! The cluster's nodes asked over their own Kafka listeners, as any client would: each node's
//! disk through DescribeLogDirs (v4: total and usable bytes), for `/api/cluster` and the
//! dashboard's cluster page.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, DescribeLogDirsRequest, DescribeLogDirsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one node may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read (a node's partition list).
const MAX_ANSWER: usize = 16 << 20;
const VERSION: i16 = 4;

/// Adds each node's disk (`disk`, from [`node_disks`]) to the nodes of a `/api/cluster` view.
pub async fn add_disks(view: &mut Value) {
    let nodes: Vec<(u64, String)> = view["nodes"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .filter_map(|n| Some((n["id"].as_u64()?, n["kafka"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let mut disks = node_disks(nodes).await;
    if let Some(ns) = view["nodes"].as_array_mut() {
        for n in ns {
            if let Some(d) = n["id"].as_u64().and_then(|id| disks.remove(&id)) {
                n["disk"] = d;
            }
        }
    }
}

/// Per node id: `{data_dir, total_bytes, usable_bytes, bytes}` (its partitions' bytes), or
/// `{error}` for a node that did not answer.
pub async fn node_disks(nodes: Vec<(u64, String)>) -> BTreeMap<u64, Value> {
    let asks = nodes.into_iter().map(|(id, addr)| async move {
        let v = match tokio::time::timeout(TIMEOUT, describe_log_dirs(&addr)).await {
            Ok(Ok(r)) => {
                let dir = r.results.first();
                let bytes: i64 = r
                    .results
                    .iter()
                    .flat_map(|d| &d.topics)
                    .flat_map(|t| &t.partitions)
                    .map(|p| p.partition_size)
                    .sum();
                json!({
                    "data_dir": dir.map(|d| d.log_dir.to_string()),
                    "total_bytes": dir.map(|d| d.total_bytes),
                    "usable_bytes": dir.map(|d| d.usable_bytes),
                    "bytes": bytes,
                })
            }
            Ok(Err(e)) => json!({ "error": e.to_string() }),
            Err(_) => json!({ "error": format!("no answer within {TIMEOUT:?}") }),
        };
        (id, v)
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

async fn describe_log_dirs(addr: &str) -> std::io::Result<DescribeLogDirsResponse> {
    let key = ApiKey::DescribeLogDirs;
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("iot-cluster-view")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, key.request_header_version(VERSION))
        .map_err(std::io::Error::other)?;
    DescribeLogDirsRequest::default()
        .with_topics(None)
        .encode(&mut body, VERSION)
        .map_err(std::io::Error::other)?;
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    sock.write_all(&frame).await?;
    let len = sock.read_i32().await?;
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_ANSWER)
        .ok_or_else(|| std::io::Error::other(format!("an answer of {len} bytes")))?;
    let mut buf = vec![0u8; len];
    sock.read_exact(&mut buf).await?;
    let mut buf = Bytes::from(buf);
    ResponseHeader::decode(&mut buf, key.response_header_version(VERSION)).map_err(std::io::Error::other)?;
    DescribeLogDirsResponse::decode(&mut buf, VERSION).map_err(std::io::Error::other)
}
