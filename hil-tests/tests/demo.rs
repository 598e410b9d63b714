//! `demo` end to end: the whole appliance from one command — a three-node cloud and the edge
//! agent as child processes, the fleet in-process — with the gateway's uplink cut for 7 s and
//! restored. It must exit 0 with every reading the devices got acknowledged in the edge log and
//! in the cloud exactly once, and leave no process and no port behind.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use hil_tests::{free_port, wait};

/// The number that follows `label` at the start of a line of `out`.
fn number_after(out: &str, label: &str) -> u64 {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} line in the output:\n{out}"))
}

/// Five different free ports, the first followed by two more free ones (the Kafka ports of a
/// three-node cloud).
fn five_ports() -> [u16; 5] {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    let kafka = loop {
        let p = free_port();
        if p < u16::MAX - 2 && free(p + 1) && free(p + 2) {
            break p;
        }
    };
    let mut ports = vec![kafka];
    while ports.len() < 5 {
        let p = free_port();
        if !ports.contains(&p) && !(kafka..=kafka + 2).contains(&p) {
            ports.push(p);
        }
    }
    [ports[0], ports[1], ports[2], ports[3], ports[4]]
}

#[test]
fn demo_cuts_the_uplink_catches_up_and_leaves_nothing_behind() {
    let dir = std::env::temp_dir().join(format!("demo-e2e-{}-{:x}", std::process::id(), free_port()));
    let [kafka, mqtt, admin, http, mqtts] = five_ports();
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--data-dir")
        .arg(&dir)
        .args(["--devices", "5", "--rate", "5", "--duration", "25"])
        .args(["--offline-after", "5", "--online-after", "12", "--no-qemu"])
        .args([
            "--kafka-port",
            &kafka.to_string(),
            "--mqtt-port",
            &mqtt.to_string(),
            "--mqtts-port",
            &mqtts.to_string(),
        ])
        .args([
            "--admin-port",
            &admin.to_string(),
            "--cloud-http-port",
            &http.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).map(|_| s)
    });
    let status = wait::until(Duration::from_secs(180), "demo to exit", || {
        child.try_wait().ok().flatten()
    });
    if status.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = out.join().unwrap().unwrap();
    let err = err.join().unwrap().unwrap();
    let status = status.unwrap_or_else(|e| panic!("{e}\nstdout:\n{out}\nstderr:\n{err}"));
    assert!(
        status.success(),
        "demo exit: {status}\nstdout:\n{out}\nstderr:\n{err}"
    );

    let devices = number_after(&out, "readings acked to devices");
    let edge = number_after(&out, "readings in the edge log");
    let cloud = number_after(&out, "readings acked by the cloud");
    let left = number_after(&out, "not yet in the cloud");
    assert!(devices > 0, "the devices got readings acknowledged:\n{out}");
    assert_eq!(
        edge, devices,
        "the edge log holds each acknowledged reading once:\n{out}"
    );
    assert_eq!(cloud, edge, "the cloud has the whole edge log:\n{out}");
    assert_eq!(left, 0, "nothing is left at the edge:\n{out}");

    // The cut was real: while the uplink was down, the backlog grew at the edge.
    let backlog_while_down = out
        .lines()
        .filter(|l| l.starts_with('[') && l.contains("UPLINK DOWN"))
        .filter_map(|l| {
            l.split("backlog ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max();
    assert!(
        backlog_while_down.is_some_and(|b| b > 0),
        "a status line showed a backlog while the uplink was down:\n{out}"
    );
    assert!(out.contains("uplink UP again"), "{out}");
    assert_eq!(number_after(&out, "uplink cuts"), 1, "{out}");

    // Nothing left behind: no process with the data dir on its command line, every port free.
    let pg = Command::new("pgrep").arg("-af").arg(&dir).output().unwrap();
    assert!(
        pg.stdout.is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&pg.stdout)
    );
    for p in [kafka, mqtt, admin, http] {
        assert!(
            TcpListener::bind(("127.0.0.1", p)).is_ok(),
            "port {p} is still taken"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
