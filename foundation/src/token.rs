//! The HTTP admin token: a random secret kept in an owner-only file, which a client presents as
//! `Authorization: Bearer <token>`, or as the password of HTTP Basic authentication with any
//! user name (so a browser asks for it, and `curl -u admin:<token>` works).

use std::path::Path;

/// Which HTTP requests need the token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "lowercase"))]
pub enum Protect {
    /// None (the listener should be on loopback or a private network).
    #[default]
    None,
    /// Every request but GET and HEAD: what changes something.
    Writes,
    /// Every request but `GET /health`.
    All,
}

impl Protect {
    /// Whether `method path` needs the token.
    pub fn needs_token(self, method: &str, path: &str) -> bool {
        match self {
            Protect::None => false,
            Protect::Writes => !matches!(method, "GET" | "HEAD"),
            Protect::All => !(path == "/health" && matches!(method, "GET" | "HEAD")),
        }
    }
}

/// The token in `path`, made (32 random bytes, hex; the file owner-only) if the file does not
/// exist; `true` when it was made now.
pub fn load_or_create(path: &Path) -> std::io::Result<(String, bool)> {
    match read(path) {
        Ok(t) => Ok((t, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = [0u8; 32];
            getrandom::getrandom(&mut raw)
                .map_err(|e| std::io::Error::other(format!("no randomness from the OS: {e}")))?;
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            crate::files::write_private(path, &format!("{token}\n"))?;
            Ok((token, true))
        }
        Err(e) => Err(e),
    }
}

/// The token in `path` (its first line, trimmed); an empty one is an error.
pub fn read(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: the token file is empty", path.display()),
        ));
    }
    Ok(token)
}

/// Whether an `Authorization` header value presents `token` (Bearer, or Basic with any user
/// name), compared in constant time.
pub fn authorized(header: Option<&str>, token: &str) -> bool {
    use base64::Engine as _;
    use subtle::ConstantTimeEq as _;
    let Some(h) = header.map(str::trim) else {
        return false;
    };
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let presented: Vec<u8> = if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().as_bytes().to_vec()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let Ok(pair) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else {
            return false;
        };
        match pair.iter().position(|&b| b == b':') {
            Some(i) => pair[i + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    presented.len() == token.len() && bool::from(presented.ct_eq(token.as_bytes()))
}

/// What an HTTP listener needs to ask for the token: which requests need it, the token, and
/// the refusals (counted; logged at most once a second).
#[derive(Debug)]
pub struct Gate {
    protect: Protect,
    token: String,
    realm: &'static str,
    refused: std::sync::atomic::AtomicU64,
    log: crate::logging::Throttle,
}

impl Gate {
    /// A gate for `protect` with the token in `file` (made if missing, and then logged by its
    /// path, never the token); `realm` names the listener in the Basic challenge.
    pub fn open(protect: Protect, file: &Path, realm: &'static str) -> std::io::Result<Gate> {
        let token = if protect == Protect::None {
            String::new()
        } else {
            let (token, made) = load_or_create(file).map_err(|e| {
                std::io::Error::new(e.kind(), format!("the HTTP token ({}): {e}", file.display()))
            })?;
            if made {
                tracing::info!(file = %file.display(), "made an HTTP token");
            }
            token
        };
        Ok(Gate {
            protect,
            token,
            realm,
            refused: std::sync::atomic::AtomicU64::new(0),
            log: crate::logging::Throttle::default(),
        })
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `method path` with this `Authorization` header may go on (a refusal is counted
    /// and logged).
    pub fn admits(&self, method: &str, path: &str, authorization: Option<&str>) -> bool {
        if !self.protect.needs_token(method, path) || authorized(authorization, &self.token) {
            return true;
        }
        self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.log.ready() {
            tracing::warn!(method, path = %crate::logging::client_text(path), "HTTP request refused: no valid token");
        }
        false
    }
}

/// The axum middleware (`axum::middleware::from_fn_with_state(gate, token::middleware)`):
/// a request that needs the token and does not present it gets 401 with a Basic challenge,
/// so a browser asks for it.
pub async fn middleware(
    axum::extract::State(gate): axum::extract::State<std::sync::Arc<Gate>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse as _;
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if gate.admits(req.method().as_str(), req.uri().path(), presented) {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, format!("Basic realm=\"{}\"", gate.realm))],
        axum::Json(serde_json::json!({
            "error": "this request needs the HTTP token: Authorization: Bearer <token> (or Basic, any user name)"
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn bearer_or_basic_with_any_user_and_nothing_else() {
        let t = "0123abcd";
        assert!(authorized(Some("Bearer 0123abcd"), t));
        assert!(authorized(Some("bearer  0123abcd "), t));
        let basic = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        assert!(authorized(Some(&basic("admin:0123abcd")), t));
        assert!(authorized(Some(&basic(":0123abcd")), t));
        for wrong in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer 0123abce"),
            Some("Bearer 0123abcd0"),
            Some("0123abcd"),
            Some("Token 0123abcd"),
            Some("Basic !!!"),
            Some(basic("0123abcd").as_str()),
            Some(basic("admin:0123abc").as_str()),
        ] {
            assert!(!authorized(wrong, t), "{wrong:?}");
        }
    }

    #[test]
    fn a_token_file_is_made_once_owner_only_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("token-{}", crate::ids::unique_tag()));
        let path = dir.join("admin-token");
        let (made, new) = load_or_create(&path).unwrap();
        assert!(new && made.len() == 64 && made.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create(&path).unwrap(), (made, false));
        std::fs::write(&path, "\n").unwrap();
        assert!(read(&path).is_err(), "an empty token is refused");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn what_each_mode_protects() {
        assert!(!Protect::None.needs_token("POST", "/api/replay"));
        assert!(Protect::Writes.needs_token("POST", "/api/replay"));
        assert!(Protect::Writes.needs_token("DELETE", "/subjects/x"));
        assert!(!Protect::Writes.needs_token("GET", "/api/log"));
        assert!(Protect::All.needs_token("GET", "/api/log"));
        assert!(Protect::All.needs_token("GET", "/metrics"));
        assert!(!Protect::All.needs_token("GET", "/health"));
        assert!(Protect::All.needs_token("POST", "/health"));
    }
}
