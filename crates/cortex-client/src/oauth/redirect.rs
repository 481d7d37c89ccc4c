//! The user's part of the authorization code flow: someone has to open the
//! authorization URL, and the redirect back has to be caught. The
//! application says how with an [`AuthorizationHandler`]:
//! [`LoopbackRedirect`] catches the redirect on a loopback port (RFC 8252
//! §7.3) after handing the URL to a function that prints or opens it;
//! [`FollowRedirect`] asks the URL itself and reads the redirect from the
//! answer, for authorization servers that approve without a person
//! (automated tests, conformance suites).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::error::OAuthError;
use super::http::{Http, query_pairs};
use crate::config::ClientConfig;

/// What the redirect back from the authorization server carried.
#[derive(Clone, Default, PartialEq)]
pub struct AuthorizationResponse {
    /// The authorization code.
    pub code: Option<String>,
    /// The `state` sent, echoed.
    pub state: Option<String>,
    /// The issuer (RFC 9207), when the server sends it.
    pub iss: Option<String>,
    /// The error, when the authorization was refused (`access_denied`).
    pub error: Option<String>,
    /// The server's words about the error.
    pub error_description: Option<String>,
}

impl AuthorizationResponse {
    /// The parameters of a redirect URL's query.
    pub fn from_query(query: &str) -> Self {
        let mut out = Self::default();
        for (key, value) in query_pairs(query) {
            match key.as_str() {
                "code" => out.code = Some(value),
                "state" => out.state = Some(value),
                "iss" => out.iss = Some(value),
                "error" => out.error = Some(value),
                "error_description" => out.error_description = Some(value),
                _ => {}
            }
        }
        out
    }

    /// The parameters of a full redirect URL (`http://127.0.0.1:8/cb?code=…`).
    pub fn from_url(url: &str) -> Self {
        let url = url.split('#').next().unwrap_or(url);
        Self::from_query(url.split_once('?').map_or("", |(_, q)| q))
    }
}

impl fmt::Debug for AuthorizationResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationResponse")
            .field("code", &self.code.as_ref().map(|_| "<redacted>"))
            .field("state", &self.state.as_ref().map(|_| "<redacted>"))
            .field("iss", &self.iss)
            .field("error", &self.error)
            .field("error_description", &self.error_description)
            .finish()
    }
}

/// Gets the user's authorization: opens (or shows) the authorization URL
/// and returns what the redirect back carried.
#[async_trait]
pub trait AuthorizationHandler: Send + Sync + 'static {
    /// The redirect URI registered and sent with each request.
    fn redirect_uri(&self) -> String;

    /// Lets the user authorize at `url`; the redirect's parameters.
    async fn authorize(&self, url: &str) -> Result<AuthorizationResponse, OAuthError>;
}

/// What the application does with the authorization URL (print it, open a
/// browser).
pub type OpenUrl = Arc<dyn Fn(&str) + Send + Sync>;

/// Catches the redirect on a loopback listener the application bound:
/// `http://127.0.0.1:<port>/callback`. One authorization at a time.
pub struct LoopbackRedirect {
    listener: tokio::sync::Mutex<TcpListener>,
    addr: SocketAddr,
    open: OpenUrl,
    /// How long the user has to finish.
    wait: Duration,
}

impl LoopbackRedirect {
    /// Catches redirects on `listener` (bind it to `127.0.0.1:0` for any
    /// free port); `open` is given each authorization URL; the user has
    /// `wait` to finish.
    pub fn new(listener: TcpListener, open: OpenUrl, wait: Duration) -> Result<Self, OAuthError> {
        let addr = listener.local_addr().map_err(|e| {
            OAuthError::config(format!("the redirect listener has no address: {e}"))
        })?;
        if !addr.ip().is_loopback() {
            return Err(OAuthError::config(format!(
                "the redirect listener is on {addr}, not a loopback address"
            )));
        }
        Ok(Self {
            listener: tokio::sync::Mutex::new(listener),
            addr,
            open,
            wait,
        })
    }

    /// The address redirects come to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl fmt::Debug for LoopbackRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopbackRedirect")
            .field("addr", &self.addr)
            .field("wait", &self.wait)
            .finish()
    }
}

/// The largest request head read from a browser.
const MAX_HEAD: usize = 16 * 1024;

#[async_trait]
impl AuthorizationHandler for LoopbackRedirect {
    fn redirect_uri(&self) -> String {
        format!("http://{}/callback", self.addr)
    }

    async fn authorize(&self, url: &str) -> Result<AuthorizationResponse, OAuthError> {
        let listener = self.listener.lock().await;
        (self.open)(url);
        let caught = tokio::time::timeout(self.wait, async {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(Ok(target)) =
                    tokio::time::timeout(Duration::from_secs(10), read_target(&mut socket)).await
                else {
                    continue;
                };
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                if path != "/callback" {
                    let _ = socket
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    continue;
                }
                let response = AuthorizationResponse::from_query(query);
                let page = if response.code.is_some() {
                    "Authorized. You can close this window and go back to the terminal."
                } else {
                    "The authorization was not granted. You can close this window."
                };
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.shutdown().await;
                return response;
            }
        })
        .await;
        caught.map_err(|_| {
            OAuthError::authorization(format!(
                "no redirect came back to {} within {:?}",
                self.redirect_uri(),
                self.wait
            ))
        })
    }
}

/// The request target of a `GET` request head (`/callback?code=…`).
async fn read_target(socket: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => Ok(target.to_string()),
        _ => Err(std::io::Error::other("not a GET request")),
    }
}

/// Asks the authorization URL itself, without following the redirect,
/// and reads the code from the answer's `Location`: for authorization
/// servers that approve at once (tests, the conformance suite), never for
/// a person's login.
pub struct FollowRedirect {
    http: Http,
    redirect_uri: String,
}

impl FollowRedirect {
    /// Follows with the default client settings; `redirect_uri` is what is
    /// registered and sent (nothing listens there).
    pub fn new(redirect_uri: impl Into<String>) -> Self {
        Self {
            http: Http {
                config: ClientConfig::default(),
                timeout: Duration::from_secs(10),
                max_bytes: 64 * 1024,
                plaintext: true,
            },
            redirect_uri: redirect_uri.into(),
        }
    }
}

impl fmt::Debug for FollowRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FollowRedirect")
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

#[async_trait]
impl AuthorizationHandler for FollowRedirect {
    fn redirect_uri(&self) -> String {
        self.redirect_uri.clone()
    }

    async fn authorize(&self, url: &str) -> Result<AuthorizationResponse, OAuthError> {
        let reply = self.http.get_raw(url).await?;
        if !reply.status.is_redirection() {
            return Err(OAuthError::authorization(format!(
                "the authorization endpoint answered HTTP {}, not a redirect",
                reply.status
            )));
        }
        let location = reply
            .headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OAuthError::authorization("the redirect has no Location"))?;
        Ok(AuthorizationResponse::from_url(location))
    }
}
