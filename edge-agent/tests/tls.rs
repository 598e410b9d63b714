//! Devices over TLS (`[mqtt.tls]`) with mosquitto_pub: certificates from `edge-agent certs`, a
//! certificate device (`devices add --certificate`) let in by its certificate alone, over MQTT
//! 3.1.1 and 5, a password device over TLS; refused: no certificate and no password, a
//! certificate from another CA, an expired one, a certificate device claiming another id or
//! publishing to another device's topic, a certificate device removed while the agent runs,
//! plaintext MQTT to the TLS port. Nothing refused reaches the log, and the failures are counted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hil_tests::agent::EdgeAgent;
use hil_tests::wait;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-agent"))
}

fn run(args: &[&str], data: &Path, stdin: Option<&str>) -> String {
    let mut c = Command::new(bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
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
    assert!(
        out.status.success(),
        "edge-agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A batch of three readings of `device` in boot `boot`, as a file for mosquitto_pub.
fn batch_file(dir: &Path, device: &str, boot: u32) -> PathBuf {
    let path = dir.join(format!("{device}-{boot}.bin"));
    std::fs::write(&path, hil_tests::raw_mqtt::batch(device, boot)).unwrap();
    path
}

/// mosquitto_pub over TLS to `port`: `device`'s batch on `sensors/<topic_device>` as client
/// `id`, with `extra` options (certificate, login, protocol); whether it was let in.
fn publish(port: u16, ca: &Path, file: &Path, topic_device: &str, id: &str, extra: &[&str]) -> bool {
    let pubbin = hil_tests::mosquitto::which("mosquitto_pub")
        .expect("mosquitto_pub missing: run the README's test command");
    Command::new(pubbin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-i", id])
        .arg("--cafile")
        .arg(ca)
        .args(extra)
        .args(["-t", &format!("sensors/{topic_device}"), "-f"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn devices_log_in_over_tls_with_certificates_or_passwords_and_nobody_else_does() {
    let data = std::env::temp_dir().join(format!(
        "edge-tls-{}-{}",
        std::process::id(),
        hil_tests::free_port()
    ));
    std::fs::create_dir_all(&data).unwrap();
    let certs = data.join("certs");
    let out = Command::new(bin())
        .args(["certs", "--dir"])
        .arg(&certs)
        .args(["--device", "cert-dev,cert-two"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    run(&["devices", "add", "cert-dev", "--certificate"], &data, None);
    run(&["devices", "add", "cert-two", "--certificate"], &data, None);
    run(
        &["devices", "add", "pw-dev", "--password-stdin"],
        &data,
        Some("tls-password-1\n"),
    );
    let list = run(&["devices", "list"], &data, None);
    assert!(
        list.contains("cert-dev\tcertificate") && list.contains("pw-dev\tpassword"),
        "{list}"
    );
    let tls_port = hil_tests::free_port();
    let toml = format!(
        "[mqtt]\nauth = \"password\"\nframe_timeout_s = 2\n[mqtt.tls]\nlisten = \"127.0.0.1:{tls_port}\"\n\
             cert = \"{c}/agent.pem\"\nkey = \"{c}/agent.key\"\nclient_ca = \"{c}/ca.pem\"\n",
        c = certs.display()
    );
    let agent = EdgeAgent::launch_with_config(&bin(), &data, &toml).unwrap();
    wait::until(Duration::from_secs(10), "the TLS listener", || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port))
            .ok()
            .map(|_| ())
    })
    .unwrap();
    let ca = certs.join("ca.pem");
    let cert = |name: &str| {
        let (c, k) = (
            certs.join(format!("{name}.pem")),
            certs.join(format!("{name}.key")),
        );
        vec![
            "--cert".to_string(),
            c.to_string_lossy().into(),
            "--key".into(),
            k.to_string_lossy().into(),
        ]
    };
    let publish_with = |file: &Path, topic: &str, id: &str, extra: &[String]| {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        publish(tls_port, &ca, file, topic, id, &extra)
    };
    let ingested = |n: f64| {
        let r = wait::until(Duration::from_secs(20), "readings in the log", || {
            (agent.metric("edge_readings_ingested_total").ok()? >= n).then_some(())
        });
        r.unwrap()
    };

    // A certificate device, by its certificate alone: MQTT 3.1.1, then 5.
    let mine = batch_file(&data, "cert-dev", 1);
    assert!(publish_with(
        &mine,
        "cert-dev",
        "cert-dev",
        &cert("device-cert-dev")
    ));
    ingested(3.0);
    let mut v5 = cert("device-cert-dev");
    v5.extend(["-V".to_string(), "mqttv5".to_string()]);
    // (Another boot's batch: the same one again would be dropped as a duplicate.)
    assert!(publish_with(
        &batch_file(&data, "cert-dev", 2),
        "cert-dev",
        "cert-dev",
        &v5
    ));
    ingested(6.0);
    // A password device over TLS, without a certificate.
    let pw = batch_file(&data, "pw-dev", 1);
    let login: Vec<String> = ["-u", "pw-dev", "-P", "tls-password-1"]
        .map(String::from)
        .to_vec();
    assert!(publish_with(&pw, "pw-dev", "pw-dev", &login));
    ingested(9.0);

    // Refused.
    let other_ca = foundation::tls::DevCa::open_or_create(&data.join("other-ca"), "another CA").unwrap();
    other_ca
        .issue(
            "device-cert-dev",
            "cert-dev",
            &[],
            foundation::tls::Role::Client,
            30,
        )
        .unwrap();
    let ours = foundation::tls::DevCa::open_or_create(&certs, "unused").unwrap();
    ours.issue("expired", "cert-dev", &[], foundation::tls::Role::Client, 0)
        .unwrap();
    let foreign = {
        let d = data.join("other-ca");
        vec![
            "--cert".to_string(),
            d.join("device-cert-dev.pem").to_string_lossy().into(),
            "--key".into(),
            d.join("device-cert-dev.key").to_string_lossy().into(),
        ]
    };
    let two = batch_file(&data, "cert-two", 1);
    let tls_failures_before = agent.metric("edge_mqtt_tls_failures_total").unwrap();
    let cases: Vec<(&str, &Path, &str, &str, Vec<String>)> = vec![
        (
            "no certificate, no password",
            &mine,
            "cert-dev",
            "cert-dev",
            vec![],
        ),
        (
            "a certificate from another CA",
            &mine,
            "cert-dev",
            "cert-dev",
            foreign,
        ),
        (
            "an expired certificate",
            &mine,
            "cert-dev",
            "cert-dev",
            cert("expired"),
        ),
        (
            "another id than the certificate's",
            &two,
            "cert-two",
            "cert-two",
            cert("device-cert-dev"),
        ),
        (
            "another device's topic",
            &two,
            "cert-two",
            "cert-dev",
            cert("device-cert-dev"),
        ),
    ];
    for (what, file, topic, id, extra) in cases {
        assert!(!publish_with(file, topic, id, &extra), "{what}: let in");
    }
    assert!(
        agent.metric("edge_mqtt_tls_failures_total").unwrap() >= tls_failures_before + 2.0,
        "the other CA's and the expired certificate fail the handshake"
    );
    // A certificate device removed while the agent runs: refused at its next connect.
    run(&["devices", "remove", "cert-two"], &data, None);
    assert!(!publish_with(
        &two,
        "cert-two",
        "cert-two",
        &cert("device-cert-two")
    ));
    // Plaintext MQTT to the TLS port.
    let plain = Command::new(hil_tests::mosquitto::which("mosquitto_pub").unwrap())
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls_port.to_string(),
            "-i",
            "pw-dev",
            "-u",
            "pw-dev",
        ])
        .args(["-P", "tls-password-1", "-t", "sensors/pw-dev", "-m", "x"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!plain.success());
    // Nothing refused reached the log: one more allowed batch after them, and only the twelve
    // readings let in are there once it is.
    let marker = batch_file(&data, "pw-dev", 2);
    assert!(publish_with(&marker, "pw-dev", "pw-dev", &login));
    ingested(12.0);
    assert_eq!(agent.metric("edge_readings_ingested_total").unwrap(), 12.0);
    assert!(agent.metric("edge_mqtt_denied_total").unwrap() >= 2.0);
    drop(agent);
    let _ = std::fs::remove_dir_all(&data);
}
