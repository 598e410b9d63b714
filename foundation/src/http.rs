//! A blocking HTTP client for admin APIs (ureq, plain HTTP).

use std::time::Duration;

/// How long a request may take unless the caller says otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A request that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing answered at the address (refused, unreachable, timed out connecting).
    #[error("no server answers on {addr}: {source}")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// Why.
        source: ureq::Error,
    },
    /// The exchange failed after connecting (reset, timeout, malformed answer).
    #[error("{method} {path}: {source}")]
    Failed {
        /// Method.
        method: String,
        /// Path.
        path: String,
        /// Why.
        source: ureq::Error,
    },
    /// The server answered with a status other than 200 (for [`json`]).
    #[error("{method} {path}: HTTP {status}: {body}")]
    Status {
        /// Method.
        method: String,
        /// Path.
        path: String,
        /// Status code.
        status: u16,
        /// The answer's body.
        body: String,
    },
    /// The body is not JSON (for [`json`]).
    #[error("{method} {path}: the answer is not JSON: {source}")]
    Json {
        /// Method.
        method: String,
        /// Path.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
}

impl Error {
    /// Nothing answered: worth retrying while a server (re)starts.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }
}

/// Sends `method path` (no body) to `http://addr`; returns the status and the body (lossy
/// UTF-8), whatever the status.
pub fn request(addr: &str, method: &str, path: &str, timeout: Duration) -> Result<(u16, String), Error> {
    request_with(addr, method, path, None, timeout)
}

/// Like [`request`], sending `body` (`(content type, bytes)`).
pub fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<(u16, String), Error> {
    request_authorized(addr, method, path, body, None, timeout)
}

/// Like [`request_with`], with an `Authorization` header value (`Bearer <token>`, `Basic ...`).
pub fn request_authorized(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    authorization: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let mut req = ureq::http::Request::builder().method(method).uri(&url);
    if let Some((kind, _)) = body {
        req = req.header("Content-Type", kind);
    }
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    let req = req
        .body(body.map(|(_, b)| b.to_vec()).unwrap_or_default())
        .map_err(|e| Error::Failed {
            method: method.into(),
            path: path.into(),
            source: ureq::Error::Http(e),
        })?;
    let mut resp = agent.run(req).map_err(|source| match source {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => Error::Unreachable {
            addr: addr.into(),
            source,
        },
        ureq::Error::Io(ref e) if connect_kind(e.kind()) => Error::Unreachable {
            addr: addr.into(),
            source,
        },
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => Error::Unreachable {
            addr: addr.into(),
            source,
        },
        source => Error::Failed {
            method: method.into(),
            path: path.into(),
            source,
        },
    })?;
    let status = resp.status().as_u16();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .map_err(|source| Error::Failed {
            method: method.into(),
            path: path.into(),
            source,
        })?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

fn connect_kind(k: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        k,
        ConnectionRefused | AddrNotAvailable | NetworkUnreachable | HostUnreachable
    )
}

/// A GET: status and body.
pub fn get(addr: &str, path: &str) -> Result<(u16, String), Error> {
    request(addr, "GET", path, TIMEOUT)
}

/// `method path` whose answer must be 200 with a JSON body.
pub fn json(addr: &str, method: &str, path: &str) -> Result<serde_json::Value, Error> {
    json_with_token(addr, method, path, None)
}

/// [`json`], presenting `token` (`Authorization: Bearer`) when there is one.
pub fn json_with_token(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<serde_json::Value, Error> {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let (status, body) = request_authorized(addr, method, path, None, authorization.as_deref(), TIMEOUT)?;
    if status != 200 {
        return Err(Error::Status {
            method: method.into(),
            path: path.into(),
            status,
            body: body.trim().to_string(),
        });
    }
    serde_json::from_str(&body).map_err(|source| Error::Json {
        method: method.into(),
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves one connection with `answer`, returns the request it read.
    fn serve_once(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (addr, t)
    }

    #[test]
    fn chunked_json_and_status() {
        let (addr, t) = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n",
        );
        assert_eq!(json(&addr, "POST", "/x?y=1").unwrap()["a"], 1);
        assert!(t.join().unwrap().starts_with("POST /x?y=1 HTTP/1.1"));
        let (addr, _t) = serve_once("HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope");
        match json(&addr, "GET", "/y") {
            Err(Error::Status {
                status: 404, body, ..
            }) => assert_eq!(body, "nope"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_listening_is_unreachable() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = get(&format!("127.0.0.1:{port}"), "/").unwrap_err();
        assert!(e.is_unreachable(), "{e:?}");
    }
}
