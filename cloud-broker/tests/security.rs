//! The broker's secured listeners with real clients: certificates from `cloud-broker certs`,
//! principals from `cloud-broker users`, kcat (Debian's librdkafka 2.0.2), confluent-kafka and
//! the rdkafka crate over SASL_SSL (SCRAM-SHA-256 and -512, PLAIN) and over TLS with client
//! certificates. Each refusal is checked for Kafka's own error, for arriving quickly, for
//! leaving nothing in the log, and for being counted.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::python::run_script;
use common::{free_port, tempdir, Broker};

/// A broker with a plaintext, a SASL_SSL, an SSL (client certificates required) and a
/// SASL_PLAINTEXT listener, and four principals.
struct Secured {
    b: Broker,
    dir: PathBuf,
    sasl: u16,
    mtls: u16,
    sasl_plain: u16,
}

const BRIDGE_PW: &str = "bridge-secret-1";
const READER_PW: &str = "reader-secret-2";
const ADMIN_PW: &str = "admin-secret-3";

fn cli(args: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cloud-broker"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cloud-broker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Secured {
    fn start(tag: &str) -> Secured {
        let dir = tempdir(tag);
        let certs = dir.join("certs");
        let certs_s = certs.to_str().unwrap();
        let out = cli(&["certs", "--dir", certs_s, "--client", "dev-reader"], None);
        assert!(out.contains("broker certificate"), "{out}");
        let users = dir.join("users.toml");
        let users_s = users.to_str().unwrap();
        cli(
            &[
                "users",
                "add",
                "bridge",
                "--password-stdin",
                "--produce",
                "telemetry",
                "--file",
                users_s,
            ],
            Some(&format!("{BRIDGE_PW}\n")),
        );
        cli(
            &[
                "users",
                "add",
                "reader",
                "--password-stdin",
                "--consume",
                "telemetry",
                "--group",
                "readers",
                "--file",
                users_s,
            ],
            Some(&format!("{READER_PW}\n")),
        );
        cli(
            &[
                "users",
                "add",
                "admin",
                "--password-stdin",
                "--admin",
                "--file",
                users_s,
            ],
            Some(&format!("{ADMIN_PW}\n")),
        );
        cli(
            &[
                "users",
                "add",
                "dev-reader",
                "--no-password",
                "--consume",
                "telemetry",
                "--file",
                users_s,
            ],
            None,
        );
        let (sasl, mtls, sasl_plain) = (free_port(), free_port(), free_port());
        let cfg = dir.join("cloud.toml");
        std::fs::write(
            &cfg,
            format!(
                "schema_registry = false\n[[listeners]]\nname = \"external\"\nlisten = \"127.0.0.1:{sasl}\"\nprotocol = \"sasl_ssl\"\n\
                 [[listeners]]\nname = \"devices\"\nlisten = \"127.0.0.1:{mtls}\"\nprotocol = \"ssl\"\n\
                 [[listeners]]\nname = \"inside\"\nlisten = \"127.0.0.1:{sasl_plain}\"\nprotocol = \"sasl_plaintext\"\n\
                 [tls]\ncert = \"{c}/broker.pem\"\nkey = \"{c}/broker.key\"\nclient_ca = \"{c}/ca.pem\"\n\
                 [security]\nusers_file = \"{users_s}\"\n[monitor]\nenabled = false\n",
                c = certs.display()
            ),
        )
        .unwrap();
        let b = Broker::start_with(
            &dir.join("data"),
            free_port(),
            free_port(),
            vec!["--config".into(), cfg.to_string_lossy().into_owned()],
        );
        Secured {
            b,
            dir,
            sasl,
            mtls,
            sasl_plain,
        }
    }

    fn ca(&self) -> String {
        self.dir.join("certs/ca.pem").to_string_lossy().into_owned()
    }

    /// kcat's options for a SCRAM login on the SASL_SSL listener.
    fn scram(&self, mechanism: &str, user: &str, password: &str) -> Vec<String> {
        [
            "-b".to_string(),
            format!("127.0.0.1:{}", self.sasl),
            "-X".into(),
            "security.protocol=SASL_SSL".into(),
            "-X".into(),
            format!("sasl.mechanisms={mechanism}"),
            "-X".into(),
            format!("sasl.username={user}"),
            "-X".into(),
            format!("sasl.password={password}"),
            "-X".into(),
            format!("ssl.ca.location={}", self.ca()),
        ]
        .into()
    }

    fn metric(&self, prefix: &str) -> f64 {
        let (code, page) = foundation::http::get(&format!("127.0.0.1:{}", self.b.http), "/metrics").unwrap();
        assert_eq!(code, 200);
        page.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        self.b.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs Debian's kcat (librdkafka 2.0.2: cargo's LD_LIBRARY_PATH would give it the newer
/// librdkafka rdkafka-sys built); its output, whatever its exit status.
fn kcat(args: &[String], stdin: Option<&[u8]>) -> Output {
    let mut c = Command::new("kcat")
        .env_remove("LD_LIBRARY_PATH")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is not installed: run the README's test command");
    if let Some(data) = stdin {
        c.stdin.take().unwrap().write_all(data).unwrap();
    }
    c.wait_with_output().unwrap()
}

fn with(base: &[String], more: &[&str]) -> Vec<String> {
    base.iter()
        .cloned()
        .chain(more.iter().map(|s| s.to_string()))
        .collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn scram_logins_over_tls_produce_and_consume_and_metadata_names_the_tls_listener() {
    let s = Secured::start("sec-scram");
    let bridge = s.scram("SCRAM-SHA-256", "bridge", BRIDGE_PW);
    // Metadata through the SASL_SSL listener advertises that listener's address.
    let meta = kcat(&with(&bridge, &["-L"]), None);
    assert!(meta.status.success(), "{}", text(&meta));
    assert!(
        text(&meta).contains(&format!("broker 1 at 127.0.0.1:{}", s.sasl)),
        "{}",
        text(&meta)
    );
    let produced = kcat(
        &with(&bridge, &["-P", "-t", "telemetry", "-X", "acks=all"]),
        Some(b"r1\nr2\nr3\n"),
    );
    assert!(produced.status.success(), "{}", text(&produced));
    for (mechanism, user, pw) in [
        ("SCRAM-SHA-512", "reader", READER_PW),
        ("PLAIN", "reader", READER_PW),
    ] {
        let reader = s.scram(mechanism, user, pw);
        let out = kcat(&with(&reader, &["-C", "-t", "telemetry", "-e", "-q"]), None);
        assert!(out.status.success(), "{mechanism}: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "r1\nr2\nr3\n",
            "{mechanism}"
        );
    }
    assert!(s.metric("kafka_logins_total") >= 4.0);
}

#[test]
fn wrong_passwords_plaintext_to_tls_and_requests_before_the_login_are_refused() {
    let s = Secured::start("sec-refused");
    // A wrong password: the client is told why (kcat goes on retrying until -m runs out;
    // ck_sasl_ssl.py checks the error arrives at once).
    let out = kcat(
        &with(&s.scram("SCRAM-SHA-256", "bridge", "not-it"), &["-L", "-m", "3"]),
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("invalid username or password"),
        "{}",
        text(&out)
    );
    // A user nobody added fails the same way.
    let out = kcat(
        &with(&s.scram("SCRAM-SHA-512", "mallory", "x"), &["-L", "-m", "5"]),
        None,
    );
    assert!(
        text(&out).contains("invalid username or password"),
        "{}",
        text(&out)
    );
    assert!(s.metric("kafka_login_failures_total") >= 2.0);
    // Plaintext Kafka to the TLS listener: no answer, the handshake fails and is counted.
    let out = kcat(
        &[
            "-b".into(),
            format!("127.0.0.1:{}", s.sasl),
            "-L".into(),
            "-m".into(),
            "3".into(),
        ],
        None,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(s.metric("kafka_connections_closed_total{limit=\"tls_handshake\"}") >= 1.0);

    // On a SASL listener: ApiVersions is answered before the login; Metadata closes the
    // connection unanswered; so does the raw-token SaslHandshake v0.
    let mut c = TcpStream::connect(("127.0.0.1", s.sasl_plain)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(&frame(18, 0, 1, &[])).unwrap();
    let mut len = [0u8; 4];
    c.read_exact(&mut len).unwrap();
    assert!(i32::from_be_bytes(len) > 8, "ApiVersions answered");
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    c.read_exact(&mut body).unwrap();
    c.write_all(&frame(3, 1, 2, &[0xff, 0xff, 0xff, 0xff])).unwrap();
    assert_eq!(
        c.read(&mut len).unwrap_or(0),
        0,
        "Metadata before the login: closed, unanswered"
    );
    let mut c = TcpStream::connect(("127.0.0.1", s.sasl_plain)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(&frame(17, 0, 3, &[0, 5, b'P', b'L', b'A', b'I', b'N']))
        .unwrap();
    assert_eq!(c.read(&mut len).unwrap_or(0), 0, "SaslHandshake v0: closed");
    // A request larger than a login's before the login: closed too.
    let mut c = TcpStream::connect(("127.0.0.1", s.sasl_plain)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(&(4i32 << 20).to_be_bytes()).unwrap();
    assert_eq!(
        c.read(&mut len).unwrap_or(0),
        0,
        "a 4 MiB frame before the login: closed"
    );
}

/// A request frame: header v1 (client id null), then `body`.
fn frame(key: i16, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&key.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&correlation.to_be_bytes());
    f.extend_from_slice(&(-1i16).to_be_bytes());
    f.extend_from_slice(body);
    let mut out = (f.len() as i32).to_be_bytes().to_vec();
    out.extend(f);
    out
}

#[test]
fn principals_without_rights_get_kafkas_codes_quickly_and_nothing_is_stored() {
    let s = Secured::start("sec-acl");
    let bridge = s.scram("SCRAM-SHA-256", "bridge", BRIDGE_PW);
    let reader = s.scram("SCRAM-SHA-256", "reader", READER_PW);
    let out = kcat(&with(&bridge, &["-P", "-t", "telemetry"]), Some(b"ok\n"));
    assert!(out.status.success(), "{}", text(&out));
    // The reader may not produce: refused with TOPIC_AUTHORIZATION_FAILED, quickly.
    let started = Instant::now();
    let out = kcat(&with(&reader, &["-P", "-t", "telemetry"]), Some(b"forged\n"));
    assert!(
        text(&out).contains("Topic authorization failed"),
        "{}",
        text(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // Nor may the bridge read; nor may anyone produce to a topic not granted.
    let out = kcat(&with(&bridge, &["-C", "-t", "telemetry", "-e"]), None);
    assert!(
        text(&out).contains("Topic authorization failed"),
        "{}",
        text(&out)
    );
    let out = kcat(&with(&bridge, &["-P", "-t", "elsewhere"]), Some(b"x\n"));
    assert!(
        text(&out).contains("Topic authorization failed"),
        "{}",
        text(&out)
    );
    // Clients of the plaintext listener are ANONYMOUS, which has no rights here.
    let out = kcat(
        &[
            "-b".into(),
            s.b.addr(),
            "-P".into(),
            "-t".into(),
            "telemetry".into(),
        ],
        Some(b"anon\n"),
    );
    assert!(
        text(&out).contains("Topic authorization failed"),
        "{}",
        text(&out)
    );
    // The reader's Metadata shows only what it may see.
    let out = kcat(&with(&reader, &["-L"]), None);
    assert!(text(&out).contains("topic \"telemetry\""), "{}", text(&out));
    // A principal may create the topics it may produce to (telemetry exists: past the check,
    // the broker says so); other topics and the rest of administration are the admin's.
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(create_topic(&s, "bridge", BRIDGE_PW, "telemetry")),
        Err(rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)
    );
    let created = rt.block_on(create_topic(&s, "bridge", BRIDGE_PW, "not-the-bridges"));
    assert_eq!(
        created,
        Err(rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    assert_eq!(
        rt.block_on(create_topic(&s, "admin", ADMIN_PW, "made-by-admin")),
        Ok(())
    );
    // The log holds only what was allowed.
    let admin = s.scram("SCRAM-SHA-256", "admin", ADMIN_PW);
    let out = kcat(&with(&admin, &["-C", "-t", "telemetry", "-e", "-q"]), None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{}", text(&out));
    assert!(s.metric("kafka_authorization_denied_total") >= 4.0);

    // A principal removed while the broker runs: its next login fails.
    cli(
        &[
            "users",
            "remove",
            "reader",
            "--file",
            s.dir.join("users.toml").to_str().unwrap(),
        ],
        None,
    );
    let out = kcat(&with(&reader, &["-L", "-m", "5"]), None);
    assert!(
        text(&out).contains("invalid username or password"),
        "{}",
        text(&out)
    );
}

async fn create_topic(
    s: &Secured,
    user: &str,
    pw: &str,
    topic: &str,
) -> Result<(), rdkafka::types::RDKafkaErrorCode> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{}", s.sasl))
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", user)
        .set("sasl.password", pw)
        .set("ssl.ca.location", s.ca())
        .create()
        .unwrap();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let r = admin
        .create_topics(&[NewTopic::new(topic, 1, TopicReplication::Fixed(1))], &opts)
        .await
        .expect("the request was answered");
    match &r[0] {
        Ok(_) => Ok(()),
        Err((_, code)) => Err(*code),
    }
}

#[test]
fn client_certificates_name_the_principal_and_bad_ones_are_refused() {
    let s = Secured::start("sec-mtls");
    let out = kcat(
        &with(
            &s.scram("SCRAM-SHA-256", "bridge", BRIDGE_PW),
            &["-P", "-t", "telemetry"],
        ),
        Some(b"c1\nc2\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let certs = s.dir.join("certs");
    let tls = |cert: &Path, key: &Path| -> Vec<String> {
        vec![
            "-b".into(),
            format!("127.0.0.1:{}", s.mtls),
            "-X".into(),
            "security.protocol=SSL".into(),
            "-X".into(),
            format!("ssl.ca.location={}", s.ca()),
            "-X".into(),
            format!("ssl.certificate.location={}", cert.display()),
            "-X".into(),
            format!("ssl.key.location={}", key.display()),
        ]
    };
    // The certificate's CN, dev-reader, may consume.
    let good = tls(
        &certs.join("client-dev-reader.pem"),
        &certs.join("client-dev-reader.key"),
    );
    let out = kcat(&with(&good, &["-C", "-t", "telemetry", "-e", "-q"]), None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "c1\nc2\n");
    // ... but not produce.
    let out = kcat(&with(&good, &["-P", "-t", "telemetry"]), Some(b"x\n"));
    assert!(
        text(&out).contains("Topic authorization failed"),
        "{}",
        text(&out)
    );
    let before = s.metric("kafka_connections_closed_total{limit=\"tls_handshake\"}");
    // No certificate, one from another CA, an expired one: the handshake fails.
    let other = foundation::tls::DevCa::open_or_create(&s.dir.join("other-ca"), "another CA").unwrap();
    let foreign = other
        .issue("dev-reader", "dev-reader", &[], foundation::tls::Role::Client, 30)
        .unwrap();
    let ours = foundation::tls::DevCa::open_or_create(&certs, "unused").unwrap();
    let expired = ours
        .issue("expired", "dev-reader", &[], foundation::tls::Role::Client, 0)
        .unwrap();
    let none = vec![
        "-b".to_string(),
        format!("127.0.0.1:{}", s.mtls),
        "-X".into(),
        "security.protocol=SSL".into(),
        "-X".into(),
        format!("ssl.ca.location={}", s.ca()),
    ];
    for (what, args) in [
        ("no certificate", none),
        ("another CA's", tls(&foreign.cert, &foreign.key)),
        ("an expired one", tls(&expired.cert, &expired.key)),
    ] {
        let out = kcat(&with(&args, &["-L", "-m", "5"]), None);
        assert!(!out.status.success(), "{what}: {}", text(&out));
    }
    assert!(s.metric("kafka_connections_closed_total{limit=\"tls_handshake\"}") >= before + 3.0);
}

#[test]
fn confluent_kafka_over_sasl_ssl_with_scram() {
    let s = Secured::start("sec-ck");
    let out = run_script(
        "ck_sasl_ssl.py",
        &[
            "--bootstrap",
            &format!("127.0.0.1:{}", s.sasl),
            "--ca",
            &s.ca(),
            "--topic",
            "telemetry",
            "--producer",
            &format!("bridge:{BRIDGE_PW}"),
            "--consumer",
            &format!("reader:{READER_PW}"),
        ],
    );
    assert!(out.contains("ck_sasl_ssl: ok"), "{out}");
}

/// Three nodes whose Raft links are mutual TLS (`[cluster.tls]`, certificates from
/// `cloud-broker certs --node`): the cluster forms, a replicated topic takes acks=all produces
/// (which need a quorum over those links), another node reads them back; a plaintext peer is
/// refused (`raft::net::tests` checks certificates naming another node and another CA's).
#[test]
fn a_cluster_over_mutual_tls_replicates_and_refuses_plaintext_peers() {
    let dir = tempdir("sec-raft");
    let certs = dir.join("certs");
    cli(
        &["certs", "--dir", certs.to_str().unwrap(), "--node", "1,2,3"],
        None,
    );
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < 9 {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let (kafka, http, raft) = (&ports[0..3], &ports[3..6], &ports[6..9]);
    // One HTTP token for the cluster (replacing a node is a write).
    let token_file = dir.join("http-token");
    std::fs::write(&token_file, "cluster-http-token-1\n").unwrap();
    let config = |id: usize, cert_of: usize| {
        let peers: Vec<String> = (1..=3)
            .filter(|j| *j != id)
            .map(|j| format!("{j} = \"127.0.0.1:{}\"", raft[j - 1]))
            .collect();
        let path = dir.join(format!("node-{id}.toml"));
        std::fs::write(
            &path,
            format!(
                "node_id = {id}\nschema_registry = false\n\
                 http_auth = \"writes\"\nhttp_token_file = \"{}\"\n[monitor]\nenabled = false\n\
                 [cluster]\nname = \"secure\"\nraft_listen = \"127.0.0.1:{}\"\npeers = {{ {} }}\n\
                 [cluster.tls]\ncert = \"{c}/node-{cert_of}.pem\"\nkey = \"{c}/node-{cert_of}.key\"\nca = \"{c}/ca.pem\"\n",
                token_file.display(),
                raft[id - 1],
                peers.join(", "),
                c = certs.display()
            ),
        )
        .unwrap();
        path
    };
    let nodes: Vec<Broker> = (1..=3)
        .map(|id| {
            Broker::start_with(
                &dir.join(format!("data-{id}")),
                kafka[id - 1],
                http[id - 1],
                vec!["--config".into(), config(id, id).to_string_lossy().into_owned()],
            )
        })
        .collect();
    common::cluster::wait_ready(&nodes);
    let lines: String = (0..200).map(|i| format!("replicated {i}\n")).collect();
    let out = kcat(
        &["-b", &nodes[0].addr(), "-P", "-t", "over-tls", "-X", "acks=all"].map(String::from),
        Some(lines.as_bytes()),
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = kcat(
        &["-b", &nodes[2].addr(), "-C", "-t", "over-tls", "-e", "-q"].map(String::from),
        None,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), lines, "{}", text(&out));
    // A plaintext peer: the TLS handshake fails; what comes back is at most a TLS alert
    // record (content type 21), then the connection is closed.
    let mut c = TcpStream::connect(("127.0.0.1", raft[0])).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(&[0u8; 64]);
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(
        got.is_empty() || got[0] == 21,
        "a plaintext raft peer got {got:?}"
    );
    assert!(got.len() <= 7, "no more than an alert: {got:?}");
    // `cluster replace` needs the nodes' HTTP token: without it a node answers 401; with
    // it the request is heard (and refused on its merits: node 3 is alive and in sync).
    let replace = |token: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cloud-broker"));
        c.args(["cluster", "replace", "--wait-secs", "1"]);
        for p in http {
            c.args(["--node", &format!("127.0.0.1:{p}")]);
        }
        c.args(["3", &format!("4=127.0.0.1:{}", free_port())]);
        if let Some(t) = token {
            c.arg("--token-file").arg(t);
        }
        let out = c.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let refused = replace(None);
    assert!(refused.contains("needs the HTTP token"), "{refused}");
    let heard = replace(Some(&token_file));
    assert!(
        heard.contains("refused") && !heard.contains("HTTP token"),
        "{heard}"
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The broker's own Kafka client (the monitor's) logs in with SCRAM over TLS as librdkafka's
/// properties say, reads every record in its group, and is refused (its state says why) with a
/// wrong password.
#[test]
fn the_native_client_reads_over_sasl_ssl_and_a_wrong_password_reads_nothing() {
    use cloud_broker::client::{self, conn::Login, Fetched, Handler, RecordsError, Walked};
    #[derive(Default)]
    struct Count {
        values: std::collections::BTreeSet<String>,
        states: Vec<String>,
    }
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Count>>);
    impl Handler for Shared {
        fn start(&mut self, _: &str, _: i32) -> Option<i64> {
            None
        }
        fn fetched(&mut self, f: &Fetched<'_>) -> Result<Walked, (Walked, RecordsError)> {
            let mut c = self.0.lock().unwrap();
            let mut scratch = Vec::new();
            f.walk(&mut scratch, |r| {
                c.values
                    .insert(String::from_utf8_lossy(r.value.unwrap_or_default()).into_owned());
            })
        }
        fn progress(&mut self, _: &str, _: i32, _: i64, _: i64) {}
        fn state(&mut self, s: String) {
            self.0.lock().unwrap().states.push(s);
        }
    }
    let s = Secured::start("sec-native");
    let out = kcat(
        &with(
            &s.scram("SCRAM-SHA-256", "bridge", BRIDGE_PW),
            &["-P", "-t", "telemetry"],
        ),
        Some(b"n1\nn2\nn3\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let read = |password: &str, mechanism: &str, done: &dyn Fn(&Count) -> bool| {
        let props: Vec<(String, String)> = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", mechanism),
            ("sasl.username", "reader"),
            ("sasl.password", password),
            ("ssl.ca.location", &s.ca()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut cfg = client::Config::new(
            &format!("127.0.0.1:{}", s.sasl),
            "readers",
            vec!["telemetry".into()],
        );
        cfg.login = Login::from_properties(&props).unwrap().map(std::sync::Arc::new);
        let h = Shared::default();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut run = h.clone();
        let t = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(client::run(cfg, &mut run, rx))
        });
        let _ = foundation::wait::until(Duration::from_secs(20), "the consumer", || {
            done(&h.0.lock().unwrap()).then_some(())
        });
        let _ = tx.send(true);
        t.join().unwrap();
        let c = h.0.lock().unwrap();
        (c.values.clone(), c.states.clone())
    };
    let (values, _) = read(READER_PW, "SCRAM-SHA-512", &|c| c.values.len() >= 3);
    assert_eq!(values.into_iter().collect::<Vec<_>>(), ["n1", "n2", "n3"]);
    let refused = |c: &Count| {
        c.states
            .iter()
            .any(|s| s.contains("invalid username or password"))
    };
    let (values, states) = read("wrong", "SCRAM-SHA-256", &refused);
    assert!(values.is_empty());
    assert!(
        states.iter().any(|s| s.contains("invalid username or password")),
        "{states:?}"
    );
    // Properties the native client does not take are an error naming them.
    let e = Login::from_properties(&[("socket.timeout.ms".into(), "1".into())]).unwrap_err();
    assert!(e.to_string().contains("socket.timeout.ms"), "{e}");
}
