//! Credentials for the authentication tests: HS256 tokens signed with a
//! known secret, every kind of bad token, and a small MCP session client
//! that sends them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use cortex_service::AuthConfig;
use cortex_service::auth::{ADMIN_ROLE, TokenClaims, mint_hs256};
use serde_json::{Value, json};

/// The secret the test services check tokens with.
pub const SECRET: &str = "a test secret that is longer than thirty-two bytes";

/// HS256 authentication with [`SECRET`].
pub fn config() -> AuthConfig {
    AuthConfig::hs256(SECRET).unwrap_or_else(|e| panic!("auth config: {e}"))
}

/// A valid token for `user` with `roles`, for an hour.
pub fn token(user: &str, roles: &[&str]) -> String {
    let claims = TokenClaims {
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..TokenClaims::new(user, Duration::from_secs(3600))
    };
    mint_hs256(SECRET.as_bytes(), &claims).unwrap_or_else(|e| panic!("mint: {e}"))
}

/// `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An HS256 token with exactly `claims`, signed with `secret`.
pub fn signed(claims: &Value, secret: &[u8]) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret)
        .unwrap_or_else(|e| panic!("encoding key: {e}"));
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &key,
    )
    .unwrap_or_else(|e| panic!("encode: {e}"))
}

/// What a request carries as `Authorization`, in the matrix of the
/// authentication tests. `owner` is the user whose data is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// No header.
    Missing,
    /// `Bearer` and something that is not a JWT.
    Malformed,
    /// The owner's token, expired an hour ago.
    Expired,
    /// The owner's token, signed with another secret.
    WrongSignature,
    /// The owner's claims with `alg: none` and no signature.
    AlgNone,
    /// A valid token of another user.
    OtherUser,
    /// A valid token of another user with the role `admin`.
    Admin,
    /// The owner's own valid token.
    Own,
}

impl Credential {
    /// Every kind, in a fixed order.
    pub const ALL: [Credential; 8] = [
        Credential::Missing,
        Credential::Malformed,
        Credential::Expired,
        Credential::WrongSignature,
        Credential::AlgNone,
        Credential::OtherUser,
        Credential::Admin,
        Credential::Own,
    ];

    /// The `Authorization` header value, if any.
    pub fn header(self, owner: &str) -> Option<String> {
        let claims = json!({"sub": owner, "exp": now() + 3600});
        let token = match self {
            Self::Missing => return None,
            Self::Malformed => "this.is-not-a.jwt".to_string(),
            Self::Expired => signed(
                &json!({"sub": owner, "exp": now() - 3600}),
                SECRET.as_bytes(),
            ),
            Self::WrongSignature => signed(&claims, b"another secret, also long enough to sign"),
            Self::AlgNone => format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(claims.to_string().as_bytes())
            ),
            Self::OtherUser => token("mallory", &[]),
            Self::Admin => token("root", &[ADMIN_ROLE]),
            Self::Own => token(owner, &[]),
        };
        Some(bearer(&token))
    }

    /// Whether the token is refused before any handler runs (401).
    pub fn is_refused(self) -> bool {
        !matches!(self, Self::OtherUser | Self::Admin | Self::Own)
    }
}

/// A session with a service's `/mcp`, every request carrying one
/// `Authorization` value.
pub struct McpSession {
    http: reqwest::Client,
    url: String,
    authorization: Option<String>,
    session: String,
    next_id: u64,
}

/// An answer of `/mcp`: the HTTP status, the `WWW-Authenticate` header and
/// the JSON body (`Null` when there is none).
#[derive(Debug)]
pub struct McpReply {
    /// The HTTP status.
    pub status: u16,
    /// `WWW-Authenticate`, if sent.
    pub challenge: Option<String>,
    /// The body.
    pub body: Value,
}

impl McpSession {
    /// `initialize` and `notifications/initialized` at `url` (`…/mcp`);
    /// `Err` with the answer when `initialize` is refused.
    pub async fn open(url: &str, authorization: Option<String>) -> Result<Self, McpReply> {
        let mut session = Self {
            http: reqwest::Client::new(),
            url: url.to_string(),
            authorization,
            session: String::new(),
            next_id: 1,
        };
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "cortex-tests", "version": "0"}
        }});
        let response = session.post(init).await;
        let id = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let reply = Self::reply(response).await;
        let Some(id) = id.filter(|_| reply.status == 200) else {
            return Err(reply);
        };
        session.session = id;
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let _ = session.post(initialized).await;
        Ok(session)
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.session
    }

    /// The same session used with another `Authorization`.
    pub fn with_authorization(&self, authorization: Option<String>) -> Self {
        Self {
            http: self.http.clone(),
            url: self.url.clone(),
            authorization,
            session: self.session.clone(),
            next_id: self.next_id + 1000,
        }
    }

    async fn post(&self, body: Value) -> reqwest::Response {
        let mut request = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if !self.session.is_empty() {
            request = request
                .header("mcp-session-id", &self.session)
                .header("mcp-protocol-version", "2025-06-18");
        }
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {}: {e}", self.url))
    }

    async fn reply(response: reqwest::Response) -> McpReply {
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response.text().await.unwrap_or_default();
        McpReply {
            status,
            challenge,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// One JSON-RPC request.
    pub async fn request(&mut self, method: &str, params: Value) -> McpReply {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        Self::reply(self.post(body).await).await
    }

    /// `tools/call`.
    pub async fn call_tool(&mut self, tool: &str, arguments: Value) -> McpReply {
        self.request("tools/call", json!({"name": tool, "arguments": arguments}))
            .await
    }

    /// `resources/read` of `<scheme>://<path>`.
    pub async fn read(&mut self, uri: &str) -> McpReply {
        self.request("resources/read", json!({"uri": uri})).await
    }

    /// `resources/subscribe` to `<scheme>://<path>`.
    pub async fn subscribe(&mut self, uri: &str) -> McpReply {
        self.request("resources/subscribe", json!({"uri": uri}))
            .await
    }
}

impl McpReply {
    /// The Cortex error code the reply carries: a refused tool call's
    /// `structuredContent.error.code`, a JSON-RPC error's `data.code`, or
    /// the error envelope's `error.code`; `None` for a success.
    pub fn error_code(&self) -> Option<String> {
        let body = &self.body;
        let text = |v: &Value| v.as_str().map(str::to_string);
        if let Some(code) = body["error"]["code"].as_str() {
            // The kit's envelope (an HTTP-level refusal).
            return Some(code.to_string());
        }
        if let Some(code) = text(&body["error"]["data"]["code"]) {
            return Some(code);
        }
        if body["result"]["isError"] == true {
            return text(&body["result"]["structuredContent"]["error"]["code"])
                .or_else(|| Some("tool_error".into()));
        }
        if body["error"].is_object() {
            return Some("rpc_error".into());
        }
        None
    }
}
