//! `[admin] auth`: with `writes`, the admin API's POSTs need the admin token (made at the first
//! start, owner-only) and reads do not; with `all`, every request but `GET /health` needs it.
//! Bearer and Basic (any user name) are taken, a wrong or missing token gets 401 with a Basic
//! challenge and is counted; the CLI presents the token from its file.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use hil_tests::agent::EdgeAgent;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-agent"))
}

/// `method path` on the admin port with `authorization`: (status, body).
fn call(port: u16, method: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    foundation::http::request_authorized(
        &format!("127.0.0.1:{port}"),
        method,
        path,
        None,
        authorization,
        Duration::from_secs(10),
    )
    .unwrap()
}

#[test]
fn the_admin_token_guards_what_the_configuration_says() {
    use std::os::unix::fs::PermissionsExt as _;
    let data = std::env::temp_dir().join(format!(
        "edge-admin-auth-{}-{}",
        std::process::id(),
        hil_tests::free_port()
    ));
    std::fs::create_dir_all(&data).unwrap();
    let cfg = data.join("edge.toml");
    std::fs::write(&cfg, "[admin]\nauth = \"writes\"\n").unwrap();
    let (mqtt, admin) = (hil_tests::free_port(), hil_tests::free_port());
    let launch = || {
        EdgeAgent::launch(
            &bin(),
            &[],
            &data,
            mqtt,
            admin,
            &["--config", cfg.to_str().unwrap()],
        )
        .unwrap()
    };
    let agent = launch();
    let file = data.join("admin-token");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(token.len(), 64, "made at the first start");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let bearer = format!("Bearer {token}");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{token}"))
    );

    // Reads need nothing; a POST needs the token.
    assert_eq!(call(admin, "GET", "/api/log", None).0, 200);
    let (code, body) = call(admin, "POST", "/api/log/quarantine", None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("needs the HTTP token"), "{body}");
    assert!(!body.contains(&token));
    assert_eq!(
        call(admin, "POST", "/api/log/quarantine", Some("Bearer 0000")).0,
        401
    );
    assert_eq!(call(admin, "POST", "/api/log/quarantine", Some(&bearer)).0, 200);
    assert_eq!(call(admin, "POST", "/api/log/quarantine", Some(&basic)).0, 200);
    assert_eq!(agent.metric("edge_admin_auth_refused_total").unwrap(), 2.0);
    // The CLI presents the token from its file (here: the data dir's).
    let out = Command::new(bin())
        .args(["log", "verify", "--quarantine", "--json", "--data-dir"])
        .arg(&data)
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"clean\":true"));
    drop(agent);

    // `all`: every request but GET /health; the token is kept across restarts.
    std::fs::write(&cfg, "[admin]\nauth = \"all\"\n").unwrap();
    let agent = launch();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        token,
        "the same token"
    );
    assert_eq!(call(admin, "GET", "/health", None).0, 200);
    for path in ["/api/log", "/metrics", "/api/devices"] {
        let (code, _) = call(admin, "GET", path, None);
        assert_eq!(code, 401, "{path}");
        assert_eq!(call(admin, "GET", path, Some(&bearer)).0, 200, "{path}");
    }
    let (_, metrics) = call(admin, "GET", "/metrics", Some(&basic));
    assert!(metrics.contains("edge_admin_auth_refused_total 3"), "{metrics}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&data);
}
