//! OAuth 2.1 for MCP servers that require authorization, as the MCP
//! authorization specification (2025-06-18, 2025-11-25) describes it, with
//! the 2025-03-26 fallbacks.
//!
//! An [`OAuth`] set on a service ([`NetworkMcpClientBuilder::oauth`])
//! puts its token on every request to the service. When the service
//! answers 401, the client, once for all the calls refused at that moment:
//!
//! 1. reads the challenge's `WWW-Authenticate` (`resource_metadata`,
//!    `scope`);
//! 2. finds the protected resource metadata (RFC 9728): the challenge's
//!    pointer, else `/.well-known/oauth-protected-resource/<path>`, else
//!    the same at the root. None (a 2025-03-26 server): the MCP server's
//!    origin is the authorization server;
//! 3. finds the authorization server's metadata (RFC 8414 with the path
//!    inserted, then OpenID Connect Discovery); none for a 2025-03-26
//!    server: `/authorize`, `/token`, `/register` at its origin;
//! 4. chooses the client's identity: pre-registered credentials, else a
//!    registration kept from before, else a Client ID Metadata Document
//!    URL (when the server supports them), else dynamic registration
//!    (RFC 7591);
//! 5. runs the grant: authorization code with PKCE S256 (refused when the
//!    server does not list S256), the user authorizing through the
//!    application's [`AuthorizationHandler`]; or client credentials (a
//!    secret or a signed assertion); every request names the server with
//!    `resource` (RFC 8707), and the scopes are the challenge's, else the
//!    resource metadata's `scopes_supported`, else none;
//! 6. keeps the token in its [`TokenStore`] and sends the request again.
//!
//! A token about to expire is refreshed before it is sent. A 403 with
//! `insufficient_scope` asks again for the scopes held plus those the
//! challenge names, unless they are held already (then the refusal
//! stands: asking again would loop). No call runs more than two
//! authorizations.
//!
//! Every OAuth request has a timeout and a bound on its answer's size;
//! what goes wrong is an [`OAuthError`] whose kind names the step, inside
//! [`McpError::Auth`] (see [`McpError::is_auth`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use cortex_client::oauth::{FileTokenStore, FollowRedirect, OAuth, OAuthConfig};
//! use cortex_client::{NetworkMcpClient, StaticDiscovery};
//!
//! # fn run() -> Result<(), cortex_client::McpError> {
//! let oauth = OAuth::new(OAuthConfig::default())
//!     .with_store(Arc::new(FileTokenStore::new("tokens.json")))
//!     .with_handler(Arc::new(FollowRedirect::new("http://127.0.0.1:1/callback")));
//! let discovery = StaticDiscovery::new().with("remote", "https://mcp.example.com/mcp");
//! let client = NetworkMcpClient::builder(Arc::new(discovery))
//!     .oauth("remote", Arc::new(oauth))
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `metadata`: challenges, protected resource and authorization server
//!   metadata.
//! - `registration`: the client's identity.
//! - `flow`: the grants and the token endpoint.
//! - `pkce`: PKCE and `state`.
//! - [`redirect`]: how the user authorizes ([`LoopbackRedirect`],
//!   [`FollowRedirect`]).
//! - [`store`]: [`TokenStore`], [`MemoryTokenStore`], [`FileTokenStore`].
//! - `http`: the OAuth requests.
//!
//! [`NetworkMcpClientBuilder::oauth`]: crate::NetworkMcpClientBuilder::oauth

mod error;
mod flow;
// Also the active health checks' (`crate::health_probe`): one-off
// exchanges over the client's connection machinery.
pub(crate) mod http;
mod metadata;
mod pkce;
pub mod redirect;
mod registration;
pub mod store;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

pub use self::error::{OAuthError, OAuthErrorKind};
pub use self::redirect::{
    AuthorizationHandler, AuthorizationResponse, FollowRedirect, LoopbackRedirect, OpenUrl,
};
pub use self::store::{FileTokenStore, MemoryTokenStore, StoredToken, TokenStore};

use self::flow::{ClientAuth, CodeRequest, IdentityAssertion, Signer, TokenResponse};
use self::http::Http;
use self::metadata::{Challenge, ResourceMetadata, ServerMetadata};
use self::registration::{ClientFacts, ClientIdentity};
use crate::config::ClientConfig;
use crate::engine::{AuthChallenge, AuthTarget, Authorizer, lock};
use crate::error::{Cause, McpError};
use cortex_discovery::Endpoint;

/// How the client gets its token.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Grant {
    /// Authorization code with PKCE: a person authorizes, through the
    /// [`AuthorizationHandler`] (needed).
    #[default]
    AuthorizationCode,
    /// Client credentials, machine to machine, with the configured
    /// `client_id` and `client_secret`.
    ClientCredentials,
    /// Client credentials proving the client with a signed assertion
    /// (`private_key_jwt`, RFC 7523).
    PrivateKeyJwt {
        /// The private key, PKCS#8 PEM.
        private_key_pem: String,
        /// The JWS algorithm: `ES256` or `ES384`.
        algorithm: String,
    },
    /// Enterprise-managed authorization: an identity provider's ID token
    /// exchanged for an ID-JAG there (RFC 8693), and that for a token at
    /// the authorization server (RFC 7523), as the configured client.
    IdentityAssertion {
        /// The identity provider's token endpoint.
        idp_token_endpoint: String,
        /// The ID token the user got from the identity provider.
        id_token: String,
        /// The client's id at the identity provider.
        idp_client_id: String,
        /// Its secret there, when it has one.
        idp_client_secret: Option<String>,
    },
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AuthorizationCode => f.write_str("AuthorizationCode"),
            Self::ClientCredentials => f.write_str("ClientCredentials"),
            Self::PrivateKeyJwt { algorithm, .. } => f
                .debug_struct("PrivateKeyJwt")
                .field("private_key_pem", &"<redacted>")
                .field("algorithm", algorithm)
                .finish(),
            Self::IdentityAssertion {
                idp_token_endpoint,
                idp_client_id,
                ..
            } => f
                .debug_struct("IdentityAssertion")
                .field("idp_token_endpoint", idp_token_endpoint)
                .field("id_token", &"<redacted>")
                .field("idp_client_id", idp_client_id)
                .finish_non_exhaustive(),
        }
    }
}

/// What an [`OAuth`] knows before it starts.
#[derive(Clone)]
pub struct OAuthConfig {
    /// The grant.
    pub grant: Grant,
    /// A client id registered beforehand (used before anything else).
    pub client_id: Option<String>,
    /// Its secret, for a confidential client.
    pub client_secret: Option<String>,
    /// The HTTPS URL of this client's metadata document, used as its
    /// `client_id` where the server supports Client ID Metadata Documents.
    pub client_metadata_url: Option<String>,
    /// The `client_name` registered.
    pub client_name: String,
    /// The scopes to ask for, instead of the server's (the challenge's,
    /// else the resource metadata's `scopes_supported`).
    pub scopes: Option<Vec<String>>,
    /// Ask for `offline_access` too (a refresh token) when the
    /// authorization server lists it and scopes are asked for.
    pub offline_access: bool,
    /// Bounds each OAuth HTTP request.
    pub request_timeout: Duration,
    /// The largest OAuth answer read.
    pub max_response_bytes: usize,
    /// A token expiring within this is refreshed before it is sent.
    pub refresh_margin: Duration,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            grant: Grant::AuthorizationCode,
            client_id: None,
            client_secret: None,
            client_metadata_url: None,
            client_name: "cortex".into(),
            scopes: None,
            offline_access: true,
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 256 * 1024,
            refresh_margin: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("grant", &self.grant)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_metadata_url", &self.client_metadata_url)
            .field("client_name", &self.client_name)
            .field("scopes", &self.scopes)
            .field("offline_access", &self.offline_access)
            .field("request_timeout", &self.request_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("refresh_margin", &self.refresh_margin)
            .finish()
    }
}

/// OAuth for one service: its tokens, and the flow that gets them.
pub struct OAuth {
    config: OAuthConfig,
    handler: Option<Arc<dyn AuthorizationHandler>>,
    store: Arc<dyn TokenStore>,
    /// The private key of `private_key_jwt`, parsed once.
    signer: Option<Result<Arc<Signer>, OAuthError>>,
    /// Per server (canonical URI): the token in use and what discovery found.
    servers: Mutex<HashMap<String, ServerState>>,
    /// One authorization or refresh at a time: the calls refused meanwhile
    /// wait for it and use its token.
    flow: tokio::sync::Mutex<()>,
}

/// What is known about one MCP server.
#[derive(Default)]
struct ServerState {
    /// Whether the store was asked.
    loaded: bool,
    token: Option<StoredToken>,
}

impl fmt::Debug for OAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth")
            .field("config", &self.config)
            .field("handler", &self.handler.is_some())
            .finish_non_exhaustive()
    }
}

impl OAuth {
    /// OAuth with `config`, tokens in memory and no way to ask a person
    /// (see [`Self::with_handler`]).
    pub fn new(config: OAuthConfig) -> Self {
        let signer = match &config.grant {
            Grant::PrivateKeyJwt {
                private_key_pem,
                algorithm,
            } => Some(Signer::from_pem(private_key_pem, algorithm).map(Arc::new)),
            _ => None,
        };
        Self {
            config,
            handler: None,
            store: Arc::new(MemoryTokenStore::new()),
            signer,
            servers: Mutex::new(HashMap::new()),
            flow: tokio::sync::Mutex::new(()),
        }
    }

    /// Lets the user authorize through `handler` (the authorization code
    /// grant needs one).
    pub fn with_handler(mut self, handler: Arc<dyn AuthorizationHandler>) -> Self {
        self.handler = Some(handler);
        self
    }

    /// Keeps tokens in `store` (default: memory).
    pub fn with_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.store = store;
        self
    }

    /// Authorizes now for the MCP server at `url` (as a 401 would), with
    /// `config`'s network settings, and keeps the token: what `cortex
    /// login` does. The server is asked once without a token, so its
    /// challenge (scopes, metadata pointer) is used when it gives one.
    pub async fn login(&self, url: &str, config: &ClientConfig) -> Result<StoredToken, OAuthError> {
        let endpoint = Endpoint::new(url);
        let target = AuthTarget {
            service: url,
            endpoint: &endpoint,
            config,
        };
        let http = self.http(&target);
        let initialize = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": self.config.client_name, "version": env!("CARGO_PKG_VERSION")}},
        });
        let probe = http.post_json(url, &initialize).await?;
        let challenge = probe
            .headers
            .get(::http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(Challenge::parse)
            .unwrap_or_default();
        let _flow = self.flow.lock().await;
        self.authorize(&target, &challenge, None).await
    }

    /// The token kept for the MCP server at `url`, if any.
    pub fn stored(&self, url: &str) -> Result<Option<StoredToken>, OAuthError> {
        self.store.load(&metadata::canonical_resource(url)?)
    }

    fn http(&self, at: &AuthTarget<'_>) -> Http {
        Http {
            config: at.config.clone(),
            timeout: self.config.request_timeout,
            max_bytes: self.config.max_response_bytes,
            plaintext: !at.endpoint.is_tls(),
        }
    }

    /// The token in use for `resource`, read from the store the first time.
    fn current(&self, resource: &str) -> Option<StoredToken> {
        let mut servers = lock(&self.servers);
        let state = servers.entry(resource.to_string()).or_default();
        if !state.loaded {
            state.loaded = true;
            match self.store.load(resource) {
                Ok(token) => state.token = token,
                Err(error) => tracing::warn!(%error, "the token store could not be read"),
            }
        }
        state.token.clone()
    }

    fn keep(&self, token: StoredToken) {
        if let Err(error) = self.store.save(&token) {
            tracing::warn!(%error, "the token could not be kept in the token store");
        }
        let mut servers = lock(&self.servers);
        let state = servers.entry(token.resource.clone()).or_default();
        state.loaded = true;
        state.token = Some(token);
    }

    fn forget(&self, resource: &str) {
        if let Some(state) = lock(&self.servers).get_mut(resource) {
            state.token = None;
        }
    }

    /// Refreshes `token`; the new one is kept.
    async fn refresh(
        &self,
        at: &AuthTarget<'_>,
        token: &StoredToken,
    ) -> Result<StoredToken, OAuthError> {
        let refresh_token = token
            .refresh_token
            .as_deref()
            .ok_or_else(|| OAuthError::token("no refresh token"))?;
        let identity = ClientIdentity {
            client_id: token.client_id.clone(),
            client_secret: token.client_secret.clone(),
            auth_method: token.auth_method.clone(),
        };
        let signer = self.signer()?;
        let client = ClientAuth {
            identity: &identity,
            signer: signer.as_deref(),
            audience: &token.issuer,
        };
        let http = self.http(at);
        let fresh = flow::refresh(
            &http,
            &token.token_endpoint,
            &client,
            refresh_token,
            &token.resource,
        )
        .await?;
        let renewed = StoredToken {
            access_token: fresh.access_token.clone(),
            // A server that does not rotate refresh tokens sends none back.
            refresh_token: fresh
                .refresh_token
                .clone()
                .or_else(|| token.refresh_token.clone()),
            expires_at: fresh.expires_at(),
            scope: fresh.scope.clone().or_else(|| token.scope.clone()),
            ..token.clone()
        };
        self.keep(renewed.clone());
        tracing::debug!(resource = %token.resource, "OAuth token refreshed");
        Ok(renewed)
    }

    fn signer(&self) -> Result<Option<Arc<Signer>>, OAuthError> {
        match &self.signer {
            None => Ok(None),
            Some(Ok(signer)) => Ok(Some(signer.clone())),
            Some(Err(error)) => Err(error.clone()),
        }
    }

    /// Discovery and the grant, for the server at `at`; `scope_floor`:
    /// scopes that must be asked for besides (a step-up). Run under `flow`.
    async fn authorize(
        &self,
        at: &AuthTarget<'_>,
        challenge: &Challenge,
        step_up: Option<String>,
    ) -> Result<StoredToken, OAuthError> {
        let http = self.http(at);
        let server_url = metadata::canonical_resource(&at.endpoint.url)?;
        let found = metadata::discover_resource(
            &http,
            &at.endpoint.url,
            challenge.resource_metadata.as_deref(),
        )
        .await?;
        let (resource_metadata, server) = match found {
            Some((_, prm)) => {
                let issuer = prm.authorization_servers[0].clone();
                let server = metadata::discover_server(&http, &issuer, true)
                    .await?
                    .ok_or_else(|| {
                        OAuthError::metadata(format!(
                            "the authorization server {issuer} publishes no metadata"
                        ))
                    })?;
                (Some(prm), server)
            }
            None => {
                // 2025-03-26: the MCP server's origin is the authorization
                // server, with default endpoints when it has no metadata.
                let (origin, _) = metadata::split_url(&server_url)?;
                let server = metadata::discover_server(&http, &origin, false)
                    .await?
                    .unwrap_or_else(|| ServerMetadata::defaults(&origin));
                (None, server)
            }
        };
        let resource = resource_metadata
            .as_ref()
            .and_then(|prm| prm.resource.clone())
            .unwrap_or_else(|| server_url.clone());
        let scope = step_up.or_else(|| self.scope(challenge, resource_metadata.as_ref(), &server));
        let kept = self.store.load(&resource).ok().flatten();
        let signer = self.signer()?;
        let (grant_types, forced_method): (&[&str], _) = match &self.config.grant {
            Grant::AuthorizationCode => (&["authorization_code", "refresh_token"], None),
            Grant::ClientCredentials => (&["client_credentials"], None),
            Grant::PrivateKeyJwt { .. } => (&["client_credentials"], Some("private_key_jwt")),
            Grant::IdentityAssertion { .. } => {
                (&["urn:ietf:params:oauth:grant-type:jwt-bearer"], None)
            }
        };
        let redirect_uri = match (&self.config.grant, &self.handler) {
            (Grant::AuthorizationCode, Some(handler)) => Some(handler.redirect_uri()),
            (Grant::AuthorizationCode, None) => {
                return Err(OAuthError::authorization(format!(
                    "{server_url} needs a person to authorize, and this client has no authorization handler (log in first)"
                )));
            }
            _ => None,
        };
        let facts = ClientFacts {
            client_id: self.config.client_id.as_deref(),
            client_secret: self.config.client_secret.as_deref(),
            metadata_url: self.config.client_metadata_url.as_deref(),
            client_name: &self.config.client_name,
            redirect_uri: redirect_uri.as_deref(),
            grant_types,
            forced_method,
        };
        let identity = registration::identify(&http, &facts, &server, kept.as_ref()).await?;
        let client = ClientAuth {
            identity: &identity,
            signer: signer.as_deref(),
            audience: &server.issuer,
        };
        tracing::info!(
            service = at.service,
            issuer = %server.issuer,
            client_id = %identity.client_id,
            scope = scope.as_deref().unwrap_or(""),
            "authorizing with OAuth"
        );
        let token: TokenResponse = match &self.config.grant {
            Grant::AuthorizationCode => {
                let handler = self
                    .handler
                    .as_deref()
                    .ok_or_else(|| OAuthError::authorization("no authorization handler"))?;
                let request = CodeRequest {
                    server: &server,
                    client: &client,
                    resource: &resource,
                    scope: scope.as_deref(),
                };
                flow::authorization_code(&http, handler, &request).await?
            }
            Grant::ClientCredentials | Grant::PrivateKeyJwt { .. } => {
                flow::client_credentials(&http, &server, &client, &resource, scope.as_deref())
                    .await?
            }
            Grant::IdentityAssertion {
                idp_token_endpoint,
                id_token,
                idp_client_id,
                idp_client_secret,
            } => {
                let idp_client = ClientIdentity {
                    client_id: idp_client_id.clone(),
                    client_secret: idp_client_secret.clone(),
                    auth_method: if idp_client_secret.is_some() {
                        "client_secret_post".into()
                    } else {
                        "none".into()
                    },
                };
                let assertion = IdentityAssertion {
                    idp_token_endpoint,
                    id_token,
                    idp_client: &idp_client,
                };
                flow::id_jag(
                    &http,
                    &server,
                    &client,
                    &assertion,
                    &resource,
                    scope.as_deref(),
                )
                .await?
            }
        };
        let stored = StoredToken {
            resource: server_url,
            issuer: server.issuer.clone(),
            expires_at: token.expires_at(),
            // Not said: what was asked for (RFC 6749 §5.1).
            scope: token.scope.clone().or(scope),
            access_token: token.access_token,
            refresh_token: token.refresh_token,
            token_endpoint: server.token_endpoint.clone(),
            client_id: identity.client_id.clone(),
            client_secret: identity.client_secret.clone(),
            auth_method: identity.auth_method.clone(),
        };
        self.keep(stored.clone());
        Ok(stored)
    }

    /// The scopes to ask for: the configured ones, else the challenge's,
    /// else the resource metadata's `scopes_supported`, else none; with
    /// `offline_access` when wanted and the server lists it.
    fn scope(
        &self,
        challenge: &Challenge,
        prm: Option<&ResourceMetadata>,
        server: &ServerMetadata,
    ) -> Option<String> {
        let mut scopes: Vec<String> = if let Some(scopes) = &self.config.scopes {
            scopes.clone()
        } else if let Some(scope) = challenge.scope.as_deref().filter(|s| !s.trim().is_empty()) {
            scope.split_whitespace().map(str::to_string).collect()
        } else {
            prm.and_then(|p| p.scopes_supported.clone())
                .unwrap_or_default()
        };
        if scopes.is_empty() {
            return None;
        }
        let offers_offline = server
            .scopes_supported
            .as_ref()
            .is_some_and(|s| s.iter().any(|s| s == "offline_access"));
        if self.config.offline_access
            && offers_offline
            && matches!(self.config.grant, Grant::AuthorizationCode)
            && !scopes.iter().any(|s| s == "offline_access")
        {
            scopes.push("offline_access".into());
        }
        Some(scopes.join(" "))
    }

    /// Handles a refusal; `Ok(true)`: a new token is ready.
    async fn on_refusal(
        &self,
        at: &AuthTarget<'_>,
        refusal: &AuthChallenge,
    ) -> Result<bool, OAuthError> {
        let resource = metadata::canonical_resource(&at.endpoint.url)?;
        let challenge = refusal
            .www_authenticate
            .as_deref()
            .map(Challenge::parse)
            .unwrap_or_default();
        let _flow = self.flow.lock().await;
        let current = self.current(&resource);
        let renewed_meanwhile = current.as_ref().map(|t| &t.access_token) != refusal.sent.as_ref();
        if refusal.status == 403 {
            if !challenge.insufficient_scope() {
                return Ok(false);
            }
            let held: Vec<String> = current
                .as_ref()
                .map(|t| t.scopes().into_iter().map(str::to_string).collect())
                .unwrap_or_default();
            let required: Vec<String> = challenge
                .scope
                .as_deref()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if required.iter().all(|s| held.contains(s)) {
                // Held already: the token's scopes will not do better.
                return Ok(renewed_meanwhile);
            }
            let mut wanted = held;
            for scope in required {
                if !wanted.contains(&scope) {
                    wanted.push(scope);
                }
            }
            tracing::info!(service = at.service, scope = %wanted.join(" "), "step-up: asking for more scopes");
            self.authorize(at, &challenge, Some(wanted.join(" ")))
                .await?;
            return Ok(true);
        }
        if renewed_meanwhile && current.is_some() {
            return Ok(true); // another call got a token while this one waited
        }
        if let Some(token) = current.filter(|t| t.refresh_token.is_some()) {
            match self.refresh(at, &token).await {
                Ok(_) => return Ok(true),
                Err(error) => {
                    tracing::info!(%error, "refreshing the OAuth token failed: authorizing again");
                }
            }
        }
        self.forget(&resource);
        self.authorize(at, &challenge, None).await?;
        Ok(true)
    }
}

#[async_trait]
impl Authorizer for OAuth {
    async fn token(&self, at: &AuthTarget<'_>) -> Option<String> {
        let resource = metadata::canonical_resource(&at.endpoint.url).ok()?;
        let token = self.current(&resource)?;
        let margin = self.config.refresh_margin.as_secs();
        if !token.expires_within(margin) {
            return Some(token.access_token);
        }
        let _flow = self.flow.lock().await;
        // Refreshed by another call while this one waited?
        let token = self.current(&resource)?;
        if !token.expires_within(margin) {
            return Some(token.access_token);
        }
        if token.refresh_token.is_some() {
            match self.refresh(at, &token).await {
                Ok(fresh) => return Some(fresh.access_token),
                Err(error) => tracing::info!(%error, "refreshing the OAuth token failed"),
            }
        }
        // Expired for good: the server's 401 starts a new authorization.
        token
            .expires_at
            .is_some_and(|at| at > store::now_secs())
            .then_some(token.access_token)
    }

    async fn challenged(
        &self,
        at: &AuthTarget<'_>,
        challenge: &AuthChallenge,
    ) -> Result<bool, McpError> {
        self.on_refusal(at, challenge)
            .await
            .map_err(|error| McpError::Auth {
                service: at.service.to_string(),
                reason: error.to_string(),
                cause: Some(Cause::new(error)),
            })
    }
}
