//! One connection's login: SaslHandshake (v1) then SaslAuthenticate (v1+), PLAIN in one
//! round, SCRAM in two.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::scram::{self, Mechanism, SaslError, ScramServer};
use super::{Guard, Listener, ANONYMOUS};
use crate::errors::Code;

/// Where a connection's login stands.
#[derive(Debug)]
enum State {
    /// Nothing to do: the listener asks for no login.
    Open,
    /// A SaslHandshake is due.
    Start,
    /// The mechanism is chosen; the first SaslAuthenticate is due.
    Chosen(Mechanism),
    /// A SCRAM exchange waits for the client's final message.
    Scram(Box<ScramServer>),
    /// Logged in.
    Done,
}

/// A connection's principal and login.
#[derive(Debug)]
pub struct Session {
    /// Who the connection acts as.
    pub principal: Arc<str>,
    state: State,
}

/// A login step's answer; `close` ends the connection once it is sent.
#[derive(Debug)]
pub struct Step<R> {
    /// The response.
    pub response: R,
    /// Close after sending it.
    pub close: bool,
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

impl Session {
    /// A new connection on `listener`, with the common name of its verified client
    /// certificate if it gave one.
    pub fn new(listener: &Listener, certificate_name: Option<String>) -> Session {
        Session {
            principal: Arc::from(certificate_name.as_deref().unwrap_or(ANONYMOUS)),
            state: if listener.protocol.sasl() {
                State::Start
            } else {
                State::Open
            },
        }
    }

    /// Whether requests other than the login's may be served.
    pub fn authenticated(&self) -> bool {
        matches!(self.state, State::Open | State::Done)
    }

    /// SaslHandshake: picks the mechanism.
    pub fn handshake(&mut self, guard: &Guard, r: &SaslHandshakeRequest) -> Step<SaslHandshakeResponse> {
        let offered: Vec<StrBytes> = guard.mechanisms().iter().map(|m| s(m.name())).collect();
        let response = SaslHandshakeResponse::default().with_mechanisms(offered);
        if !matches!(self.state, State::Start) {
            return Step {
                response: response.with_error_code(Code::IllegalSaslState.code()),
                close: true,
            };
        }
        match Mechanism::from_name(r.mechanism.as_str()).filter(|m| guard.mechanisms().contains(m)) {
            Some(m) => {
                self.state = State::Chosen(m);
                Step {
                    response,
                    close: false,
                }
            }
            None => Step {
                response: response.with_error_code(Code::UnsupportedSaslMechanism.code()),
                close: true,
            },
        }
    }

    /// SaslAuthenticate: one round of the chosen mechanism.
    pub async fn authenticate(
        &mut self,
        guard: &Guard,
        r: SaslAuthenticateRequest,
        peer: Option<std::net::IpAddr>,
    ) -> Step<SaslAuthenticateResponse> {
        let state = std::mem::replace(&mut self.state, State::Start);
        let result = match state {
            State::Chosen(Mechanism::Plain) => {
                plain(guard, &r.auth_bytes).await.map(|user| (user, Vec::new()))
            }
            State::Chosen(m) => {
                let users = guard.users();
                let lookup = |name: &str| {
                    users
                        .as_ref()
                        .and_then(|u| u.users.get(name))
                        .and_then(|u| u.credential(m))
                        .filter(|(hash, _)| *hash == m)
                        .map(|(_, c)| c.clone())
                };
                match ScramServer::start(m, &r.auth_bytes, lookup, guard.decoy_key()) {
                    Ok((server, first)) => {
                        self.state = State::Scram(Box::new(server));
                        return Step {
                            response: SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(first)),
                            close: false,
                        };
                    }
                    Err(e) => Err(e),
                }
            }
            State::Scram(server) => server.finish(&r.auth_bytes),
            State::Open | State::Start | State::Done => {
                self.state = state;
                return Step {
                    response: SaslAuthenticateResponse::default()
                        .with_error_code(Code::IllegalSaslState.code())
                        .with_error_message(Some(s("SaslAuthenticate out of order"))),
                    close: true,
                };
            }
        };
        match result {
            Ok((user, last)) => {
                guard.logins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.principal = Arc::from(user.as_str());
                self.state = State::Done;
                Step {
                    response: SaslAuthenticateResponse::default()
                        .with_auth_bytes(Bytes::from(last))
                        .with_session_lifetime_ms(0),
                    close: false,
                }
            }
            Err(e) => {
                guard.login_failed(peer, &e.to_string());
                Step {
                    response: SaslAuthenticateResponse::default()
                        .with_error_code(Code::SaslAuthenticationFailed.code())
                        .with_error_message(Some(s(&e.to_string()))),
                    close: true,
                }
            }
        }
    }
}

/// PLAIN: the password checked against the user's SCRAM credential (PBKDF2, off the async
/// threads).
async fn plain(guard: &Guard, message: &[u8]) -> Result<String, SaslError> {
    let (user, password) = scram::plain(message)?;
    let credential = guard.users().and_then(|u| {
        u.users
            .get(&user)
            .and_then(|u| u.credential(Mechanism::Plain))
            .map(|(m, c)| (m, c.clone()))
    });
    let Some((hash, credential)) = credential else {
        return Err(SaslError::BadCredentials);
    };
    let ok = tokio::task::spawn_blocking(move || credential.verify_password(hash, &password))
        .await
        .unwrap_or(false);
    if ok {
        Ok(user)
    } else {
        Err(SaslError::BadCredentials)
    }
}
