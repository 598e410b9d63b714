//! `edge-agent devices provision`: the config sector image a WiFi board reads (the firmware's
//! own decoder reads it back here), owner-only, with a made password that the agent then takes
//! from the device; bad input is refused with the field named and nothing written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use firmware::provision::{Gateway, Provision, SECTOR};
use hil_tests::agent::EdgeAgent;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-agent"))
}

/// `edge-agent devices <args> --data-dir <dir>` with `stdin`: (success, stderr).
fn devices(dir: &Path, args: &[&str], stdin: &str) -> (bool, String) {
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
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_provisioned_board_image_holds_what_the_agent_takes() {
    use std::os::unix::fs::PermissionsExt as _;
    let data = std::env::temp_dir().join(format!(
        "edge-provision-{}-{}",
        std::process::id(),
        hil_tests::free_port()
    ));
    std::fs::create_dir_all(&data).unwrap();
    let image = data.join("wifi-1.bin");
    let image_s = image.to_str().unwrap();
    let (ok, err) = devices(
        &data,
        &[
            "provision",
            "wifi-1",
            "--wifi-ssid",
            "plant-floor",
            "--gateway",
            "192.168.10.2:1883",
            "--sample-period-ms",
            "5000",
            "--out",
            image_s,
        ],
        "wpa2-passphrase\n",
    );
    assert!(ok, "{err}");
    assert!(!err.contains("wpa2-passphrase"), "no secret printed: {err}");
    let bytes = std::fs::read(&image).unwrap();
    assert_eq!(bytes.len(), SECTOR);
    assert_eq!(
        std::fs::metadata(&image).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let p = Provision::decode(&bytes).unwrap();
    assert_eq!(
        (p.device_id, p.wifi_ssid, p.wifi_password),
        ("wifi-1", "plant-floor", "wpa2-passphrase")
    );
    assert_eq!(
        p.gateway,
        Gateway {
            host: "192.168.10.2",
            port: 1883
        }
    );
    assert_eq!((p.sample_period_ms, p.batch), (5000, 8));
    assert_eq!(p.mqtt_password.len(), 24, "a made password");
    let password = p.mqtt_password.to_string();

    // Refused, the field named, nothing written: a short WiFi password, a gateway without a
    // port, a bad device id.
    for (args, stdin, says) in [
        (
            vec!["provision", "wifi-2", "--wifi-ssid", "x", "--gateway", "gw:1883"],
            "short\n",
            "wifi_password",
        ),
        (
            vec!["provision", "wifi-2", "--wifi-ssid", "x", "--gateway", "gw"],
            "wpa2-passphrase\n",
            "HOST:PORT",
        ),
        (
            vec!["provision", "bad/id", "--wifi-ssid", "x", "--gateway", "gw:1883"],
            "wpa2-passphrase\n",
            "device_id",
        ),
    ] {
        let out = data.join("refused.bin");
        let mut a = args.clone();
        a.extend(["--out", out.to_str().unwrap()]);
        let (ok, err) = devices(&data, &a, stdin);
        assert!(!ok && err.contains(says), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: nothing written");
    }
    let creds = std::fs::read_to_string(data.join("credentials.toml")).unwrap();
    assert!(creds.contains("wifi-1") && !creds.contains("wifi-2"), "{creds}");
    assert!(!creds.contains(&password), "only a hash is kept");

    // The agent takes the device with the password from its image.
    let agent = EdgeAgent::launch_with_config(&bin(), &data, "[mqtt]\nauth = \"password\"\n").unwrap();
    let publish = |pw: &str| {
        Command::new(hil_tests::mosquitto::which("mosquitto_pub").expect("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &agent.mqtt_port.to_string(), "-q", "1"])
            .args([
                "-i",
                "wifi-1",
                "-u",
                "wifi-1",
                "-P",
                pw,
                "-t",
                "sensors/wifi-1",
                "-m",
                "x",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(publish(&password), "the image's password is let in");
    assert!(!publish("not-the-password-1"), "another is not");
    drop(agent);
    let _ = std::fs::remove_dir_all(&data);
}
