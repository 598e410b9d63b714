//! The report: the machine it ran on, rounding, and the table printed instead of the JSON.

use serde_json::{json, Value};

pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

pub(crate) fn machine() -> Value {
    let m = foundation::procfs::machine();
    json!({
        "nproc": m.nproc,
        "mem_total_gib": round2(m.mem_total_kib as f64 / 1024.0 / 1024.0),
    })
}

/// The table's system columns, in order: report key, heading.
const COLUMNS: [(&str, &str); 5] = [
    ("cloud-broker", "cloud-broker"),
    ("cloud-broker-sasl-ssl", "SASL_SSL"),
    ("jetstream", "jetstream"),
    ("cluster", "cluster (R3)"),
    ("jetstream-r3", "jetstream-r3"),
];

/// The table's ratio columns: heading, numerator, denominator.
const RATIOS: [(&str, &str, &str); 4] = [
    ("ratio", "cloud-broker", "jetstream"),
    ("sasl/plain", "cloud-broker-sasl-ssl", "cloud-broker"),
    ("r3/js-r3", "cluster", "jetstream-r3"),
    ("r3/single", "cluster", "cloud-broker"),
];

pub(crate) fn print_table(r: &Value) {
    let s = &r["systems"];
    let f = |v: &Value| match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    };
    println!(
        "machine: {} cores, {} GiB; {}-byte records, {} partitions/subjects, acks=all",
        r["machine"]["nproc"],
        r["machine"]["mem_total_gib"],
        r["settings"]["record_bytes"],
        r["settings"]["partitions"]
    );
    let ran = |k: &str| !s[k].is_null();
    let cols: Vec<(&str, &str)> = COLUMNS.into_iter().filter(|(k, _)| ran(k)).collect();
    let ratios: Vec<(&str, &str, &str)> = RATIOS.into_iter().filter(|(_, a, b)| ran(a) && ran(b)).collect();
    let mut head = format!("{:<34}", "");
    for (_, h) in &cols {
        head += &format!(" {h:>14}");
    }
    for (h, _, _) in &ratios {
        head += &format!(" {h:>8}");
    }
    println!("{head}");
    let row = |label: &str, path: &[&str], ratio: bool| {
        let get = |sys: &str| path.iter().fold(&s[sys], |v, k| &v[*k]).clone();
        let mut line = format!("{label:<34}");
        for (k, _) in &cols {
            line += &format!(" {:>14}", f(&get(k)));
        }
        for (h, a, b) in &ratios {
            let rt = match (get(a).as_f64(), get(b).as_f64()) {
                (Some(a), Some(b)) if ratio && b > 0.0 => format!("{:.2}", a / b),
                _ => String::new(),
            };
            line += &format!(" {rt:>w$}", w = h.len().max(8));
        }
        println!("{line}");
    };
    row(
        "produce peak, records/s",
        &["produce_peak", "records_per_s"],
        true,
    );
    row("produce peak, MB/s", &["produce_peak", "mb_per_s"], true);
    row(
        "latency phase rate, records/s",
        &["latency", "achieved_rate"],
        false,
    );
    row("  p50 ms", &["latency", "p50_ms"], false);
    row("  p99 ms", &["latency", "p99_ms"], false);
    row("  p99.9 ms", &["latency", "p999_ms"], false);
    row("  max ms", &["latency", "max_ms"], false);
    row("consume, records/s", &["consume", "records_per_s"], true);
    row("consume, MB/s", &["consume", "mb_per_s"], true);
    row(
        "servers' CPU at peak, % of a core",
        &["produce_peak", "servers_cpu_percent_of_a_core"],
        false,
    );
    row(
        "servers' RSS after peak, MiB",
        &["produce_peak", "servers_rss_mib"],
        false,
    );
    for (sys, _) in &cols {
        for phase in ["produce_peak", "latency"] {
            let p = &s[sys][phase];
            let Some(cpu) = p["cpu_percent_of_a_core"].as_object() else {
                continue;
            };
            for (proc_name, threads) in cpu {
                let list: Vec<String> = threads
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(t, v)| format!("{t} {:.0}%", v.as_f64().unwrap_or(0.0)))
                    .collect();
                let at = if phase == "latency" { "half peak" } else { "peak" };
                let total = p["cpu_total_percent_of_a_core"][proc_name]
                    .as_f64()
                    .unwrap_or(0.0);
                let rss = p["rss_mib"][proc_name].as_f64().unwrap_or(0.0);
                println!(
                    "cpu at {at} ({sys} run), {proc_name} ({total:.0}% in all, RSS {rss:.0} MiB): {}",
                    list.join(", ")
                );
            }
        }
    }
    let fo = &s["cluster"]["failover"];
    if fo.is_object() {
        println!(
            "failover: {} kills of partition 0's leader at {} records/s: stall p50 {} ms, p99 {} ms, max {} ms; \
             new leader seen p50 {} ms; {} records acknowledged, {} failed",
            fo["kills"],
            fo["rate"],
            f(&fo["stall_p50_ms"]),
            f(&fo["stall_p99_ms"]),
            f(&fo["stall_max_ms"]),
            f(&fo["new_leader_seen_p50_ms"]),
            fo["acked"],
            fo["failed"]
        );
    }
    let rss = &s["cluster"]["rss"];
    if let Some(nodes) = rss["rss_mib"].as_object() {
        println!(
            "rss with {} partitions (RF 3, {} topics, all led after {} s), after {} s idle:",
            rss["partitions"], rss["topics"], rss["create_seconds"], rss["idle_seconds"]
        );
        for (node, v) in nodes {
            println!(
                "  {node}: {} MiB (formed, no topics: {} MiB; {} KiB per partition), idle CPU {}% of a core",
                f(v),
                f(&rss["rss_mib_formed_no_topics"][node]),
                f(&rss["kib_per_partition"][node]),
                f(&rss["idle_cpu_percent_of_a_core"][node])
            );
        }
    }
    let t = &r["targets"];
    if ran("cloud-broker") || ran("jetstream") {
        println!(
            "targets: produce ≥ 2× JetStream: {}; p99 ≤ 10 ms at half peak: {}",
            t["produce_peak_at_least_2x_jetstream"], t["p99_at_half_peak_at_most_10ms"]
        );
    }
    if ran("cloud-broker-sasl-ssl") {
        println!(
            "target: SASL_SSL produce ≥ 0.8× plaintext: {}",
            t["sasl_ssl_produce_peak_at_least_0_8x_plaintext"]
        );
    }
    if ran("cluster") || ran("jetstream-r3") {
        println!(
            "targets R3: produce ≥ 2× JetStream R3: {}; ≥ 0.30× single node: {}; p99 ≤ 10 ms at half peak: {}; \
             failover stall p99 ≤ 3 s: {}",
            t["r3_produce_peak_at_least_2x_jetstream_r3"],
            t["r3_produce_peak_at_least_0_30x_single"],
            t["r3_p99_at_half_peak_at_most_10ms"],
            t["failover_stall_p99_at_most_3s"]
        );
    }
}
