//! `cloud-broker cluster ...`: a running cluster seen and changed through its nodes' HTTP
//! listeners.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The HTTP token in `file`, if one is given.
fn token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    file.map(|f| {
        foundation::token::read(f).map_err(|e| anyhow::anyhow!("the HTTP token file {}: {e}", f.display()))
    })
    .transpose()
}

/// `cluster status`: asks every node for `/api/cluster`, takes each partition from the node
/// that leads it (else the first that answered), and prints the result.
pub(super) fn status(
    nodes: &[String],
    json: bool,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let token = token(token_file)?;
    let merged = merge_status(&views(nodes, true, token.as_deref())?);
    if json {
        println!("{}", serde_json::to_string_pretty(&merged)?);
        return Ok(());
    }
    print!("{}", render_status(&merged));
    Ok(())
}

/// Every answering node's `/api/cluster` (the silent ones left out, noted when `say`).
fn views(nodes: &[String], say: bool, token: Option<&str>) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut views = Vec::new();
    for n in nodes {
        match foundation::http::json_with_token(n, "GET", "/api/cluster", token) {
            Ok(v) if v["mode"] == "cluster" => views.push(v),
            Ok(v) => anyhow::bail!("{n} is not a cluster node (mode {})", v["mode"]),
            Err(e) if say => eprintln!("cloud-broker: {n}: {e} (left out)"),
            Err(_) => {}
        }
    }
    if views.is_empty() {
        anyhow::bail!("no node answered");
    }
    Ok(views)
}

/// `cluster replace`: asks the first node that answers to replace `old` with `new` (`ID=HOST:PORT`,
/// its Raft listener), then follows every node's status until each partition and offsets log
/// has the new node among its voters and in sync, and the old one nowhere, or `wait` passes.
pub(super) fn replace(
    nodes: &[String],
    old: u64,
    new: &str,
    wait: Duration,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let token = token(token_file)?;
    let token = token.as_deref();
    let (new_id, raft) = super::parse_peer(new)?;
    let path = format!("/api/cluster/replace?old={old}&new={new_id}&raft={raft}");
    let mut asked = None;
    for n in nodes {
        match foundation::http::json_with_token(n, "POST", &path, token) {
            Ok(_) => {
                asked = Some(n);
                break;
            }
            Err(foundation::http::Error::Status { body, .. }) => {
                let why = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(body);
                anyhow::bail!("{n} refused: {why}")
            }
            Err(e) => eprintln!("cloud-broker: {n}: {e} (trying the next node)"),
        }
    }
    let Some(asked) = asked else {
        anyhow::bail!("no node answered");
    };
    println!("node {asked} recorded the replacement of node {old} by node {new_id}; the groups follow");
    let deadline = Instant::now() + wait;
    let mut last = String::new();
    loop {
        let pending = match views(nodes, false, token) {
            Ok(v) => pending_replacement(&merge_status(&v), old, new_id),
            Err(e) => vec![e.to_string()],
        };
        if pending.is_empty() {
            println!("done: node {new_id} holds every replica node {old} held, in sync");
            return Ok(());
        }
        let now = format!("{} groups still moving (first: {})", pending.len(), pending[0]);
        if now != last {
            println!("{now}");
            last = now;
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "not done after {}s: {} (the leaders keep working on it; see `cluster status`)",
                wait.as_secs(),
                pending.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What is left of replacing `old` by `new` in a merged status: one line per group whose
/// voters are not yet its replicas, or whose new replica is not in sync.
fn pending_replacement(s: &serde_json::Value, old: u64, new: u64) -> Vec<String> {
    let set = |v: &serde_json::Value| -> BTreeSet<u64> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_u64())
            .collect()
    };
    let mut out = Vec::new();
    let meta = set(&s["metadata_voters"]);
    if meta.contains(&old) || !meta.contains(&new) {
        out.push(format!("metadata voters {meta:?}"));
    }
    for p in s["partitions"].as_array().into_iter().flatten() {
        let name = format!("{}/{}", p["topic"].as_str().unwrap_or_default(), p["partition"]);
        let (replicas, voters, isr) = (set(&p["replicas"]), set(&p["voters"]), set(&p["isr"]));
        if replicas.contains(&old) {
            out.push(format!("{name}: node {old} still among the replicas"));
        } else if p["leader"].as_i64().is_none_or(|l| l < 0) {
            out.push(format!("{name}: no leader"));
        } else if voters != replicas {
            out.push(format!("{name}: voters {voters:?}, replicas {replicas:?}"));
        } else if !replicas.is_subset(&isr) {
            out.push(format!("{name}: in sync {isr:?} of {replicas:?}"));
        }
    }
    for l in s["offsets_logs"].as_array().into_iter().flatten() {
        let (replicas, voters) = (set(&l["replicas"]), set(&l["voters"]));
        if replicas.contains(&old) || voters != replicas {
            out.push(format!(
                "offsets log {}: voters {voters:?}, replicas {replicas:?}",
                l["log"]
            ));
        }
    }
    out
}

/// One status from several nodes' `/api/cluster`: the first answer's nodes and controller,
/// and every partition as the node leading it reports it (with the answering node noted).
fn merge_status(views: &[serde_json::Value]) -> serde_json::Value {
    let mut partitions: std::collections::BTreeMap<(String, i64), serde_json::Value> = Default::default();
    for v in views {
        for p in v["partitions"].as_array().into_iter().flatten() {
            let key = (
                p["topic"].as_str().unwrap_or_default().to_string(),
                p["partition"].as_i64().unwrap_or(-1),
            );
            let leads = p["leader"] == v["node"];
            let mut p = p.clone();
            p["seen_by"] = v["node"].clone();
            match partitions.get(&key) {
                Some(have) if !leads || have["leader"] == have["seen_by"] => {}
                _ => {
                    partitions.insert(key, p);
                }
            }
        }
    }
    let controller = views
        .iter()
        .map(|v| v["controller"].clone())
        .find(|c| c.as_i64().is_some_and(|c| c > 0))
        .unwrap_or(serde_json::Value::Null);
    // The offsets logs and the metadata group as their leaders see them.
    let mut logs: std::collections::BTreeMap<i64, serde_json::Value> = Default::default();
    for v in views {
        for l in v["offsets_logs"].as_array().into_iter().flatten() {
            let n = l["log"].as_i64().unwrap_or(-1);
            if l["leader"] == v["node"] || !logs.contains_key(&n) {
                logs.insert(n, l.clone());
            }
        }
    }
    let leader_view = views.iter().find(|v| v["node"] == controller).or(views.first());
    serde_json::json!({
        "nodes": leader_view.map(|v| v["nodes"].clone()).unwrap_or_default(),
        "replaced": leader_view.map(|v| v["replaced"].clone()).unwrap_or_default(),
        "metadata_voters": leader_view.map(|v| v["metadata_voters"].clone()).unwrap_or_default(),
        "offsets_logs": logs.into_values().collect::<Vec<_>>(),
        "answered": views.iter().map(|v| v["node"].clone()).collect::<Vec<_>>(),
        "controller": controller,
        "partitions": partitions.into_values().collect::<Vec<_>>(),
    })
}

/// The tables `cluster status` prints.
fn render_status(s: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let ids = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    };
    let mut out = String::new();
    let answered = ids(&s["answered"]);
    let _ = writeln!(out, "controller: node {}   answered: {answered}", s["controller"]);
    let _ = writeln!(out, "\n{:<6} {:<22} {:<22}", "NODE", "KAFKA", "RAFT");
    for n in s["nodes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<6} {:<22} {:<22}",
            n["id"],
            n["kafka"].as_str().unwrap_or("-"),
            n["raft"].as_str().unwrap_or("-")
        );
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:>9} {:>6} {:>5} {:<10} {:<10} {:<16} {:>14}",
        "TOPIC", "PARTITION", "LEADER", "TERM", "REPLICAS", "ISR", "LAG (entries)", "HIGH WATERMARK"
    );
    for p in s["partitions"].as_array().into_iter().flatten() {
        let leader = match p["leader"].as_i64() {
            Some(l) if l > 0 => l.to_string(),
            _ => "none".into(),
        };
        let lag = p["lag"]
            .as_object()
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "-".into());
        let hw = p["high_watermark"].as_i64().map_or("-".into(), |h| h.to_string());
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>6} {:>5} {:<10} {:<10} {:<16} {:>14}",
            p["topic"].as_str().unwrap_or_default(),
            p["partition"],
            leader,
            p["term"],
            ids(&p["replicas"]),
            ids(&p["isr"]),
            lag,
            hw
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_takes_each_partition_from_its_leader() {
        let node = |id: i64, leader: i64, hw: i64| {
            serde_json::json!({
                "mode": "cluster", "node": id, "controller": 1,
                "nodes": [{"id": 1, "kafka": "a:1", "raft": "a:2"}],
                "partitions": [{"topic": "t", "partition": 0, "leader": leader, "term": 3,
                                "replicas": [1, 2], "isr": [1, 2], "lag": {}, "high_watermark": hw}],
            })
        };
        // Node 1 follows (stale watermark), node 2 leads: node 2's view wins, in either order.
        for views in [
            vec![node(1, 2, 5), node(2, 2, 9)],
            vec![node(2, 2, 9), node(1, 2, 5)],
        ] {
            let m = merge_status(&views);
            assert_eq!(m["partitions"][0]["high_watermark"], 9);
            assert_eq!(m["partitions"][0]["seen_by"], 2);
        }
        let text = render_status(&merge_status(&[node(1, -1, 5)]));
        assert!(
            text.contains("none"),
            "a partition without a leader says so: {text}"
        );
        assert!(text.contains("HIGH WATERMARK"));
    }
}
