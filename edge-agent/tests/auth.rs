//! `[mqtt] auth = "password"` with real clients: devices added with `edge-agent devices add`
//! connect (mosquitto_pub, and the firmware image under QEMU with `pass=`); a wrong password,
//! no credentials, an unknown device, and a client id that is not the username are refused and
//! nothing they sent reaches the log; a device removed while the agent runs is refused at its
//! next connect; `devices list` shows ids, never a secret. Authorization (the front): an
//! authenticated device publishing to another device's topic, subscribing to another device's
//! acks (or to every device's), or leaving a will on another device's status is cut off and
//! nothing of it reaches the log, over MQTT 3.1.1 and 5 alike; an MQTT 5 device's batch is
//! acknowledged; an MQTT 3.1 client gets "unacceptable protocol version".

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use firmware::wire;
use hil_tests::agent::EdgeAgent;
use hil_tests::wait;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-agent"))
}

fn mosquitto_pub() -> PathBuf {
    hil_tests::mosquitto::which("mosquitto_pub")
        .expect("mosquitto_pub missing: run the README's test command")
}

/// `edge-agent devices <args> --data-dir <dir>` with `stdin`; (success, stdout, stderr).
fn devices(dir: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut c = Command::new(bin())
        .arg("devices")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(c.stdin.take());
    let out = c.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A batch of three readings of `device`, as a file for mosquitto_pub.
fn batch_file(dir: &Path, device: &str) -> PathBuf {
    let path = dir.join(format!("{device}.bin"));
    std::fs::write(&path, hil_tests::raw_mqtt::batch(device, 3)).unwrap();
    path
}

/// mosquitto_pub of `device`'s batch as client `id` with these credentials; whether it was let in.
fn publish(port: u16, file: &Path, device: &str, id: &str, user: Option<&str>, pass: Option<&str>) -> bool {
    let mut c = Command::new(mosquitto_pub());
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-i", id]);
    c.args(["-t", &format!("sensors/{device}"), "-f"]).arg(file);
    if let Some(u) = user {
        c.args(["-u", u]);
    }
    if let Some(p) = pass {
        c.args(["-P", p]);
    }
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c.status().unwrap().success()
}

/// An MQTT 5 device on one connection: CONNECT with credentials, SUBSCRIBE to its ack topic,
/// PUBLISH its batch at QoS 1, then the agent's Ack (decoded) from the ack topic.
fn mqtt5_publish_and_wait_ack(port: u16, id: &str, password: &str, batch: &[u8]) -> wire::Ack {
    use hil_tests::raw_mqtt::string;
    use std::io::Read;
    let frame = |kind: u8, body: Vec<u8>| hil_tests::raw_mqtt::frame(kind, &body);
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0xc2, 0, 30, 0];
    for x in [id.as_bytes(), id.as_bytes(), password.as_bytes()] {
        string(&mut connect, x);
    }
    let mut subscribe = vec![0, 1, 0];
    string(&mut subscribe, format!("devices/{id}/ack").as_bytes());
    subscribe.push(0x01);
    let mut publish = Vec::new();
    string(&mut publish, format!("sensors/{id}").as_bytes());
    publish.extend_from_slice(&[0, 2, 0]);
    publish.extend_from_slice(batch);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(&frame(0x10, connect)).unwrap();
    c.write_all(&frame(0x82, subscribe)).unwrap();
    // What the broker sends, framed by hand (rumqttd's V5 reader is a server's: it has no
    // CONNACK): CONNACK, SUBACK, PUBACK, and the Ack's PUBLISH.
    let mut buf: Vec<u8> = Vec::new();
    let mut published = false;
    loop {
        let Ok(h) = rumqttd::protocol::v4::check(buf.iter(), 1 << 20) else {
            let mut b = [0u8; 4096];
            let n = c.read(&mut b).expect("the agent answers");
            assert!(n > 0, "the agent closed an MQTT 5 device's connection");
            buf.extend_from_slice(&b[..n]);
            continue;
        };
        let f: Vec<u8> = buf.drain(..h.frame_length()).collect();
        let body = &f[h.fixed_header_len..];
        match f[0] >> 4 {
            2 => assert_eq!(body[1], 0, "CONNACK: success"),
            9 if !published => {
                c.write_all(&frame(0x32, publish.clone())).unwrap();
                published = true;
            }
            3 => {
                // Topic, packet id (QoS 1), properties (a varint length, short here), payload.
                let t = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let mut at = 2 + t + if f[0] & 0x06 != 0 { 2 } else { 0 };
                let props = usize::from(body[at]);
                at += 1 + props;
                return wire::decode::<wire::Ack>(&body[at..]).unwrap();
            }
            _ => {}
        }
    }
}

#[test]
fn devices_connect_with_their_id_and_password_and_nobody_else_does() {
    let data = std::env::temp_dir().join(format!(
        "edge-auth-{}-{}",
        std::process::id(),
        hil_tests::free_port()
    ));
    std::fs::create_dir_all(&data).unwrap();
    let cfg = data.join("edge.toml");
    std::fs::write(&cfg, "[mqtt]\nauth = \"password\"\nframe_timeout_s = 2\n").unwrap();

    // Credentials: one chosen, one made by the agent and printed once.
    let (ok, _, err) = devices(
        &data,
        &["add", "dev-ok", "--password-stdin"],
        Some("chosen-password-1\n"),
    );
    assert!(ok, "{err}");
    let (ok, made, err) = devices(&data, &["add", "qemu-auth"], None);
    assert!(ok, "{err}");
    let made = made.trim().to_string();
    assert_eq!(made.len(), 24, "a made password is printed once: {made:?}");
    let (ok, _, err) = devices(&data, &["add", "short", "--password-stdin"], Some("short\n"));
    assert!(!ok && err.contains("8 to 64"), "{err}");
    let (ok, list, _) = devices(&data, &["list", "--json"], None);
    assert!(ok);
    let ids: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&list)
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["dev-ok", "qemu-auth"]);
    let file = std::fs::read_to_string(data.join("credentials.toml")).unwrap();
    for secret in ["chosen-password-1", made.as_str()] {
        assert!(
            !list.contains(secret) && !file.contains(secret),
            "no secret is kept or shown"
        );
    }

    let mut agent = EdgeAgent::launch(
        &bin(),
        &[],
        &data,
        hil_tests::free_port(),
        hil_tests::free_port(),
        &["--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    let port = agent.mqtt_port;
    let good = batch_file(&data, "dev-ok");
    assert!(publish(
        port,
        &good,
        "dev-ok",
        "dev-ok",
        Some("dev-ok"),
        Some("chosen-password-1")
    ));
    wait::until(Duration::from_secs(20), "dev-ok's readings in the log", || {
        (agent.metric("edge_readings_ingested_total").ok()? >= 3.0).then_some(())
    })
    .unwrap();

    // Refused, each as its own device so that anything let through would show.
    let cases: [(&str, &str, Option<&str>, Option<&str>); 5] = [
        ("wrong-pass", "dev-ok", Some("dev-ok"), Some("chosen-password-2")),
        ("no-creds", "dev-ok", None, None),
        ("unknown", "intruder", Some("intruder"), Some("chosen-password-1")),
        (
            "id-not-user",
            "other-id",
            Some("dev-ok"),
            Some("chosen-password-1"),
        ),
        ("empty-pass", "dev-ok", Some("dev-ok"), Some("")),
    ];
    for (device, id, user, pass) in cases {
        let f = batch_file(&data, device);
        assert!(!publish(port, &f, device, id, user, pass), "{device}: let in");
    }
    // Counted and logged: all but the one without credentials, which rumqttd refuses before
    // the agent's check is asked.
    assert_eq!(agent.metric("edge_mqtt_auth_refused_total").unwrap(), 4.0);

    // Authenticated, but not allowed: another device's topic, another device's acks, a will
    // on another device's status. Each closes the connection; nothing reaches the log.
    let (ok, pw2, _) = devices(&data, &["add", "dev-two"], None);
    assert!(ok);
    let pw2 = pw2.trim().to_string();
    let theirs = batch_file(&data, "dev-ok");
    assert!(
        !publish(port, &theirs, "dev-ok", "dev-two", Some("dev-two"), Some(&pw2)),
        "dev-two publishing as dev-ok"
    );
    let sub = |filter: &str| {
        Command::new(hil_tests::mosquitto::which("mosquitto_sub").unwrap())
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-i",
                "dev-two",
                "-u",
                "dev-two",
                "-P",
                &pw2,
            ])
            .args(["-t", filter, "-C", "1", "-W", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    // (mosquitto_sub reconnects after being cut off, and is cut off again, until -W ends it.)
    assert!(
        !sub("devices/dev-ok/ack").success(),
        "dev-two reading dev-ok's acks"
    );
    assert!(
        !sub("devices/+/ack").success(),
        "a wildcard over every device's acks"
    );
    let will = Command::new(mosquitto_pub())
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-i",
            "dev-two",
            "-u",
            "dev-two",
            "-P",
            &pw2,
        ])
        .args(["--will-topic", "devices/dev-ok/status", "--will-payload", "x"])
        .args(["-t", "sensors/dev-two", "-m", "x"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!will.success(), "a will on another device's status");
    // MQTT 3.1 is not served: the CONNACK 3.1.1 asks for (unacceptable protocol version).
    let v31 = Command::new(mosquitto_pub())
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            "mqttv31",
            "-i",
            "dev-two",
        ])
        .args(["-u", "dev-two", "-P", &pw2, "-t", "sensors/dev-two", "-m", "x"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!v31.status.success());
    let err = String::from_utf8_lossy(&v31.stderr);
    assert!(
        err.to_lowercase().contains("protocol"),
        "the CONNACK says why: {err}"
    );
    // MQTT 5: the same rules. Another device's topic is refused...
    let v5 = |device: &str, file: &Path| {
        Command::new(mosquitto_pub())
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-V",
                "mqttv5",
                "-q",
                "1",
            ])
            .args(["-i", "dev-two", "-u", "dev-two", "-P", &pw2])
            .args(["-t", &format!("sensors/{device}"), "-f"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(!v5("dev-ok", &theirs), "MQTT 5, publishing as another device");
    // ...and its own batch is taken and acknowledged by the agent's Ack on its ack topic (one
    // connection subscribing and publishing, as a device does).
    let mine = batch_file(&data, "dev-two");
    let ack = mqtt5_publish_and_wait_ack(port, "dev-two", &pw2, &std::fs::read(&mine).unwrap());
    assert_eq!(
        ack,
        wire::Ack {
            boot_id: 3,
            up_to_seq: 2
        }
    );
    assert!(agent.metric("edge_mqtt_denied_total").unwrap() >= 5.0);
    // A connection that never sends its CONNECT, and one that sends half a PUBLISH after it,
    // are closed at the frame deadline (2 s here).
    let closed_after = |mut c: std::net::TcpStream| {
        use std::io::Read;
        let t = std::time::Instant::now();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 64];
        loop {
            match c.read(&mut b) {
                Ok(0) | Err(_) => return t.elapsed(),
                Ok(_) => {} // the CONNACK
            }
        }
    };
    let silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let took = closed_after(silent);
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let mut half = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0, 60];
    for field in ["dev-two", "dev-two", pw2.as_str()] {
        connect.extend_from_slice(&(field.len() as u16).to_be_bytes());
        connect.extend_from_slice(field.as_bytes());
    }
    let mut frame = vec![0x10, connect.len() as u8];
    frame.extend(connect);
    // Then a PUBLISH announcing 100 bytes and sending 3.
    frame.extend_from_slice(&[0x32, 100, 0, 15]);
    half.write_all(&frame).unwrap();
    let took = closed_after(half);
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!(agent.metric("edge_mqtt_frame_timeouts_total").unwrap(), 2.0);

    // Its own topics it may use.
    let mine = batch_file(&data, "dev-two");
    assert!(publish(
        port,
        &mine,
        "dev-two",
        "dev-two",
        Some("dev-two"),
        Some(&pw2)
    ));

    // A fleet of simulated devices (the firmware's Uplink library) through the front.
    for i in 0..3 {
        let (ok, _, err) = devices(
            &data,
            &["add", &format!("simauth-{i}"), "--password-stdin"],
            Some("fleet-password-1\n"),
        );
        assert!(ok, "{err}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt
        .block_on(hil_tests::sim::run(hil_tests::sim::SimConfig {
            broker: format!("127.0.0.1:{port}"),
            devices: 3,
            rate: 200.0,
            batch: 8,
            readings: Some(400),
            id_prefix: "simauth-".into(),
            resend_timeout_ms: 1_000,
            keep_alive_s: 5,
            password: Some("fleet-password-1".into()),
            ..hil_tests::sim::SimConfig::default()
        }))
        .unwrap();
    assert!(report.lossless(), "{}", report.to_json());
    assert_eq!(report.acked(), 3 * 400);

    // The firmware under QEMU, with its password.
    let args: Vec<String> = [
        "id=qemu-auth",
        "n=40",
        "rate=100",
        "batch=8",
        "keepalive=2",
        "resend=1000",
        "timeout=2000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("pass={made}")])
    .collect();
    let mut q = hil_tests::qemu::Qemu::start(port, &args, Duration::from_secs(120)).unwrap();
    let st = q.wait(Duration::from_secs(120)).unwrap();
    assert!(st.success(), "QEMU with its password: exit {st}");
    // And with a wrong one it never gets in (it retries until its time is up).
    let wrong: Vec<String> = ["id=qemu-auth", "n=5", "pass=not-the-password"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut q = hil_tests::qemu::Qemu::start(port, &wrong, Duration::from_secs(8)).unwrap();
    assert!(!q
        .wait(Duration::from_secs(8))
        .map(|s| s.success())
        .unwrap_or(false));

    // Removed while the agent runs: refused at the next connect.
    let (ok, _, err) = devices(&data, &["remove", "dev-ok"], None);
    assert!(ok, "{err}");
    wait::until(Duration::from_secs(10), "the removal to take effect", || {
        (!publish(
            port,
            &good,
            "dev-ok",
            "dev-ok",
            Some("dev-ok"),
            Some("chosen-password-1"),
        ))
        .then_some(())
    })
    .unwrap();

    agent.terminate(Duration::from_secs(20)).unwrap();
    let (_, seen) = (0, {
        let store = edge_agent::log::redb_store::RedbLog::open(&data.join("log.redb")).unwrap();
        let mut devs = std::collections::BTreeMap::<String, usize>::new();
        use edge_agent::log::LogStore;
        let parts = store
            .topics()
            .unwrap()
            .into_iter()
            .find(|t| t.name == edge_agent::config::TELEMETRY)
            .unwrap()
            .partitions;
        for p in 0..parts {
            for r in store
                .read(edge_agent::config::TELEMETRY, p, 0, usize::MAX, usize::MAX)
                .unwrap()
            {
                *devs
                    .entry(String::from_utf8(r.key.unwrap()).unwrap())
                    .or_default() += 1;
            }
        }
        devs
    });
    assert_eq!(
        seen.get("dev-ok"),
        Some(&3),
        "dev-two's batch in dev-ok's name never landed"
    );
    assert_eq!(seen.get("dev-two"), Some(&3));
    assert_eq!(seen.get("qemu-auth"), Some(&40));
    for i in 0..3 {
        assert_eq!(seen.get(&format!("simauth-{i}")), Some(&400));
    }
    assert_eq!(
        seen.len(),
        6,
        "nothing of the refused clients in the log: {seen:?}"
    );
    std::fs::remove_dir_all(&data).ok();
}
