//! TLS for the appliance's listeners and links (rustls over ring): PEM files to rustls
//! configurations, the identity in a peer's certificate, and development certificates.
//!
//! Production users bring their own PKI; [`DevCa`] makes a development CA and certificates
//! signed by it (`edge-agent certs`, `cloud-broker certs`, the demo and the tests).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The crypto provider every configuration here uses: ring (no C toolchain beyond cc, and
/// the provider of the tree's other rustls users). rustls releases after 0.23.46 deprecate it
/// for want of post-quantum key exchange; aws-lc-rs would bring that at the cost of a CMake
/// build.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate in it", path.display());
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("{}: no private key read: {e}", path.display()))
}

/// A root store of the CA certificates in a PEM file.
pub fn roots(path: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store
            .add(c)
            .map_err(|e| anyhow::anyhow!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(Arc::new(store))
}

/// Client certificates on a server: not asked for, asked for, or required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// None asked for.
    None,
    /// Verified against the CA when given; a client without one is let in unauthenticated.
    Optional,
    /// A client without a certificate from the CA is refused in the handshake.
    Required,
}

/// A server configuration: its certificate chain and key, and client certificates checked
/// against `client_ca` as `client_auth` says.
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
    client_auth: ClientAuth,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS versions: {e}"))?;
    let builder = match (client_auth, client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => anyhow::bail!("client certificates need a CA to check them against (client_ca)"),
        (mode, Some(ca)) => {
            let v = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
            let v = if mode == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder
                .with_client_cert_verifier(v.build().map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?)
        }
    };
    let config = builder
        .with_single_cert(certs(cert)?, key(key_path)?)
        .map_err(|e| anyhow::anyhow!("{} with {}: {e}", cert.display(), key_path.display()))?;
    Ok(Arc::new(config))
}

/// A client configuration trusting `ca`, presenting `identity` (certificate, key) if given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS versions: {e}"))?
        .with_root_certificates(roots(ca)?);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, k)) => builder
            .with_client_auth_cert(certs(cert)?, key(k)?)
            .map_err(|e| anyhow::anyhow!("{} with {}: {e}", cert.display(), k.display()))?,
    };
    Ok(Arc::new(config))
}

/// The common name (CN) of a certificate's subject: the identity the appliance reads from a
/// verified peer certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// A development certificate authority: a CA key and certificate, and the certificates it
/// signs. Not for production: its key sits in a file next to the certificates.
#[derive(Debug)]
pub struct DevCa {
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A server: its names go in the subject alternative names.
    Server,
    /// A client (device, Kafka principal): its name is the subject's CN.
    Client,
    /// Both (a cluster node, which is a server to its peers and their client).
    Node,
}

/// Files of one issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, mode 0600).
    pub key: PathBuf,
}

fn validity(params: &mut rcgen::CertificateParams, days: u32) {
    // An hour back, for clocks a little behind.
    let from = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_before = from;
    params.not_after = from + time::Duration::days(i64::from(days)) + time::Duration::hours(1);
}

impl DevCa {
    /// The CA in `dir` (`ca.pem`, `ca.key`), made if it is not there yet.
    pub fn open_or_create(dir: &Path, name: &str) -> anyhow::Result<DevCa> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert_path.exists() && key_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path)?;
            let key = rcgen::KeyPair::from_pem(&key_pem)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key_path.display()))?;
            let cert_pem = std::fs::read_to_string(&cert_path)?;
            let issuer = rcgen::Issuer::from_ca_cert_pem(&cert_pem, key)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
            return Ok(DevCa {
                dir: dir.to_path_buf(),
                issuer,
            });
        }
        let key = rcgen::KeyPair::generate().map_err(|e| anyhow::anyhow!("CA key: {e}"))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 3650);
        let cert = params
            .self_signed(&key)
            .map_err(|e| anyhow::anyhow!("CA certificate: {e}"))?;
        std::fs::write(&cert_path, cert.pem())?;
        crate::files::write_private(&key_path, &key.serialize_pem())?;
        Ok(DevCa {
            dir: dir.to_path_buf(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The CA certificate's file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues `<file>.pem` and `<file>.key` in the CA's directory: subject CN `name`, and for
    /// a server the subject alternative names `hosts` (DNS names or IP addresses), valid for
    /// `days` days (0: already expired, for tests).
    pub fn issue(
        &self,
        file: &str,
        name: &str,
        hosts: &[String],
        role: Role,
        days: u32,
    ) -> anyhow::Result<Issued> {
        anyhow::ensure!(
            !file.is_empty()
                && file
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "a certificate file name is letters, digits, '-', '_' and '.': {file:?}"
        );
        let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(|e| anyhow::anyhow!("{e}"))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match role {
            Role::Server => vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
            Role::Client => vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
            Role::Node => vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        if days == 0 {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(2);
            params.not_after = now - time::Duration::days(1);
        } else {
            validity(&mut params, days);
        }
        let key = rcgen::KeyPair::generate().map_err(|e| anyhow::anyhow!("key: {e}"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| anyhow::anyhow!("certificate: {e}"))?;
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&issued.cert, cert.pem())?;
        crate::files::write_private(&issued.key, &key.serialize_pem())?;
        Ok(issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dev_ca_issues_certificates_that_configure_and_name_their_holder() {
        let dir = std::env::temp_dir().join(format!("devca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = DevCa::open_or_create(&dir, "test CA").unwrap();
        let server = ca
            .issue(
                "server",
                "broker",
                &["localhost".into(), "127.0.0.1".into()],
                Role::Server,
                30,
            )
            .unwrap();
        let client = ca.issue("dev-1", "dev-1", &[], Role::Client, 30).unwrap();
        server_config(
            &server.cert,
            &server.key,
            Some(&ca.cert_path()),
            ClientAuth::Required,
        )
        .unwrap();
        server_config(&server.cert, &server.key, None, ClientAuth::None).unwrap();
        assert!(server_config(&server.cert, &server.key, None, ClientAuth::Optional).is_err());
        client_config(&ca.cert_path(), Some((&client.cert, &client.key))).unwrap();
        assert_eq!(
            common_name(&certs(&client.cert).unwrap()[0]).as_deref(),
            Some("dev-1")
        );
        // Opened again, the same CA (its certificate unchanged).
        let before = std::fs::read(ca.cert_path()).unwrap();
        let again = DevCa::open_or_create(&dir, "test CA").unwrap();
        again.issue("dev-2", "dev-2", &[], Role::Client, 1).unwrap();
        assert_eq!(std::fs::read(again.cert_path()).unwrap(), before);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&client.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(ca.issue("../x", "x", &[], Role::Client, 1).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
