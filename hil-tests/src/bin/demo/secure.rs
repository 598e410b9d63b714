//! The demo's security, made in its data directory: a development CA and certificates
//! (`certs/`), the cloud's principals (`cloud/users.toml`), the devices' credentials
//! (`edge/credentials.toml`), and the edge agent's configuration. Passwords are made for the
//! run: the devices' and the gateway's live only in this process and the files that must hold
//! them (the agent's configuration gives librdkafka its SASL password, mode 0600); the one a
//! user's kcat needs is written to `cloud/kcat.properties` (0600), never printed.

use std::path::{Path, PathBuf};

use cloud_broker::security::scram::{Credential, Mechanism, DEFAULT_ITERATIONS};
use cloud_broker::security::users::{User, UsersFile, ANONYMOUS};
use foundation::files::write_private;
use foundation::tls::{DevCa, Role};

use crate::GATEWAY_ID;

/// What the demo made.
pub(crate) struct Secured {
    /// The development CA's certificate.
    pub(crate) ca: PathBuf,
    /// The directory of every certificate (the simulated devices' among them).
    pub(crate) certs: PathBuf,
    /// The broker's certificate and key.
    pub(crate) broker: (PathBuf, PathBuf),
    /// The cloud's users file.
    pub(crate) users: PathBuf,
    /// The QEMU device's password (it logs in with a password: no TLS on the MCU).
    pub(crate) device_password: String,
    /// The edge agent's configuration.
    pub(crate) edge_config: PathBuf,
    /// librdkafka properties for a user's kcat (`kcat -F`).
    pub(crate) kcat_properties: PathBuf,
    /// The cloud nodes' HTTP token (one for the cluster; writes need it).
    pub(crate) cloud_token: PathBuf,
    /// The edge agent's admin token (writes need it).
    pub(crate) admin_token: PathBuf,
}

fn principal(
    password: Option<&str>,
    produce: &[&str],
    consume: &[&str],
    groups: &[&str],
) -> anyhow::Result<User> {
    let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    let mut u = User {
        produce: list(produce),
        consume: list(consume),
        groups: list(groups),
        ..Default::default()
    };
    if let Some(pw) = password {
        u.scram_sha_256 = Some(Credential::new(Mechanism::ScramSha256, pw, DEFAULT_ITERATIONS)?);
        u.scram_sha_512 = Some(Credential::new(Mechanism::ScramSha512, pw, DEFAULT_ITERATIONS)?);
    }
    Ok(u)
}

/// Makes the certificates, principals, credentials and the edge agent's configuration for
/// `device_ids` (the simulated fleet, over TLS with client certificates) and qemu-1 (a
/// password), the agent's TLS listener on `mqtts_port`, its bridge to `kafka`.
pub(crate) fn provision(
    data_dir: &Path,
    device_ids: &[String],
    mqtts_port: u16,
    kafka: &str,
) -> anyhow::Result<Secured> {
    let certs = data_dir.join("certs");
    let ca = DevCa::open_or_create(&certs, "iot-appliance demo CA")?;
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    let broker = ca.issue("broker", "cloud-broker", &hosts, Role::Server, 365)?;
    let agent = ca.issue("agent", "edge-agent", &hosts, Role::Server, 365)?;
    for id in device_ids {
        ca.issue(&format!("device-{id}"), id, &[], Role::Client, 365)?;
    }

    // The cloud: the gateway's bridge may write its topics (and heartbeats); a user's kcat may read
    // everything; the broker's own monitor and schema registry read through its loopback
    // plaintext listener as ANONYMOUS.
    let gateway_password = edge_agent::credentials::generate_password()?;
    let viewer_password = edge_agent::credentials::generate_password()?;
    let mut users = UsersFile::default();
    let [a, b, c] = vocab::topics::EDGE_TOPICS;
    let topics = [a, b, c, vocab::topics::GATEWAYS];
    users.users.insert(
        GATEWAY_ID.into(),
        principal(Some(&gateway_password), &topics, &[], &[])?,
    );
    users.users.insert(
        "viewer".into(),
        principal(Some(&viewer_password), &[], &["*"], &["*"])?,
    );
    users.users.insert(
        ANONYMOUS.into(),
        principal(
            None,
            &["_schemas"],
            &["*"],
            &["iot-monitor-*", "iot-schema-registry"],
        )?,
    );
    let users_path = data_dir.join("cloud").join("users.toml");
    users.write(&users_path)?;
    let ca_path = ca.cert_path();
    let kcat_properties = data_dir.join("cloud").join("kcat.properties");
    write_private(
        &kcat_properties,
        &format!(
            "# kcat -F {}: the demo cloud's SASL_SSL listener as the principal `viewer`\n\
             security.protocol=SASL_SSL\nsasl.mechanisms=SCRAM-SHA-256\nsasl.username=viewer\n\
             sasl.password={viewer_password}\nssl.ca.location={}\n",
            kcat_properties.display(),
            ca_path.display()
        ),
    )?;

    // The HTTP listeners ask for their tokens on writes; one token for every cloud node, made
    // here so that nodes starting together do not each make their own.
    let cloud_token = data_dir.join("cloud").join("http-token");
    foundation::token::load_or_create(&cloud_token)?;
    let admin_token = data_dir.join("edge").join("admin-token");

    // The edge: the simulated devices log in with their certificates, qemu-1 with a password.
    use edge_agent::credentials::{Credentials, FILE_NAME};
    let edge_dir = data_dir.join("edge");
    let creds_path = edge_dir.join(FILE_NAME);
    let mut creds = Credentials::load(&creds_path)?;
    for id in device_ids {
        creds.set_certificate(id)?;
    }
    let device_password = edge_agent::credentials::generate_password()?;
    creds.set("qemu-1", &device_password)?;
    creds.save(&creds_path)?;
    let edge_config = edge_dir.join("edge.toml");
    write_private(
        &edge_config,
        &format!(
            "# Written by the demo: devices log in (passwords in credentials.toml, or client\n\
             # certificates over TLS); the bridge logs in to the cloud with SCRAM over TLS.\n\
             [mqtt]\nauth = \"password\"\n\
             [admin]\nauth = \"writes\"\ntoken_file = \"{}\"\n\
             [mqtt.tls]\nlisten = \"127.0.0.1:{mqtts_port}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
             [bridge]\nbootstrap = \"{kafka}\"\n\
             [bridge.librdkafka]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanism\" = \"SCRAM-SHA-256\"\n\
             \"sasl.username\" = \"{GATEWAY_ID}\"\n\"sasl.password\" = \"{gateway_password}\"\n\
             \"ssl.ca.location\" = \"{}\"\n",
            admin_token.display(),
            agent.cert.display(),
            agent.key.display(),
            ca_path.display(),
            ca_path.display(),
        ),
    )?;
    Ok(Secured {
        ca: ca_path,
        certs,
        broker: (broker.cert, broker.key),
        users: users_path,
        device_password,
        edge_config,
        kcat_properties,
        cloud_token,
        admin_token,
    })
}

/// The cloud broker configuration for the demo: a SASL_SSL listener named `uplink` on
/// `private` advertising `public` (the uplink proxy), the plaintext listener on `internal`
/// (loopback: the monitor and registry), TLS and the users file; HTTP writes need the token.
pub(crate) fn cloud_config(s: &Secured, private: std::net::SocketAddr, public: &str) -> String {
    format!(
        "# Written by the demo.\nhttp_auth = \"writes\"\nhttp_token_file = \"{}\"\n[[listeners]]\nname = \"uplink\"\nlisten = \"{private}\"\nadvertise = \"{public}\"\n\
         protocol = \"sasl_ssl\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n[security]\nusers_file = \"{}\"\n",
        s.cloud_token.display(),
        s.broker.0.display(),
        s.broker.1.display(),
        s.users.display()
    )
}
