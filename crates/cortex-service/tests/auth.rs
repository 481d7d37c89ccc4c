//! Authentication in the kit, over real loopback HTTP: every kind of bad
//! token refused with an RFC 6750 challenge on the Cortex routes and on
//! `/mcp`, the RFC 9728 metadata, `/health` open and `/metrics` by role,
//! the verified caller reaching handlers (tool, read, stream, MCP),
//! idempotency keys scoped per user, MCP sessions bound to their user, the
//! in-process client, and JWKS keys (RS256, ES256, EdDSA) with rotation,
//! rate-limited refreshes and algorithm confusion refused.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cortex_mcp_api::McpClient;
use cortex_service::auth::{JwksSettings, METRICS_ROLE};
use cortex_service::{
    AuthConfig, CallContext, InProcessMcpClient, Resource, ResourceContent, Service, ServiceConfig,
    ServiceError, Tool,
};
use cortex_test_support::auth::{Credential, McpSession, bearer, config, token};
use cortex_test_support::{SseReader, TestServer};
use futures::StreamExt;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

fn caller_json(ctx: &CallContext) -> Value {
    match &ctx.caller {
        Some(caller) => json!({"user": caller.user_id(), "roles": caller.roles()}),
        None => Value::Null,
    }
}

/// A small service: `whoami` (the caller), `note` (a keyed write of a
/// user, counted), and `notes/{user_id}` with a live stream that starts
/// with one event naming its caller.
fn service(calls: Arc<AtomicUsize>) -> Service {
    Service::builder("kit", "0.0.0")
        .tool(
            Tool::new(
                "whoami",
                "The caller.",
                json!({"type": "object"}),
                |ctx, _| async move { Ok(json!({"caller": caller_json(&ctx)})) },
            )
            .read_only(),
        )
        .tool(Tool::new(
            "note",
            "Counts a write of a user.",
            json!({"type": "object", "properties": {"user_id": {"type": "string"}}, "required": ["user_id"]}),
            move |ctx, args| {
                let calls = calls.clone();
                async move {
                    let user = args["user_id"].as_str().unwrap_or_default().to_string();
                    ctx.authorize_user(&user)?;
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok(json!({"n": n, "user_id": user}))
                }
            },
        ))
        .resource(
            Resource::new("notes/{user_id}", "A user's notes.", |ctx, params| async move {
                let user = params.get("user_id")?.to_string();
                ctx.authorize_user(&user)?;
                Ok(ResourceContent::Json(json!({"user_id": user, "caller": caller_json(&ctx)})))
            })
            .with_stream(|ctx, params, _last| async move {
                let user = params.get("user_id")?.to_string();
                ctx.authorize_user(&user)?;
                let first = cortex_proto::sse::Event::message(caller_json(&ctx).to_string())
                    .with_id("1");
                let events = futures::stream::once(async move { Ok::<_, ServiceError>(first) })
                    .chain(futures::stream::pending());
                Ok(events.boxed())
            }),
        )
        .build()
        .unwrap()
}

async fn start(auth: AuthConfig) -> (TestServer, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(
        service(calls.clone()),
        ServiceConfig {
            auth,
            ..ServiceConfig::default()
        },
    )
    .await;
    (server, calls)
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn send(request: reqwest::RequestBuilder, authorization: Option<&str>) -> reqwest::Response {
    let request = match authorization {
        Some(value) => request.header("authorization", value),
        None => request,
    };
    request.send().await.unwrap()
}

fn challenge_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_bearer_challenge_on_every_route_and_on_mcp() {
    let (server, calls) = start(config()).await;
    let metadata = server.url("/.well-known/oauth-protected-resource");
    let bad = [
        Credential::Missing,
        Credential::Malformed,
        Credential::Expired,
        Credential::WrongSignature,
        Credential::AlgNone,
    ];
    for credential in bad {
        let header = credential.header("alice");
        let requests = [
            http()
                .post(server.url("/tool/note"))
                .json(&json!({"user_id": "alice"})),
            http().post(server.url("/tool/whoami")).json(&json!({})),
            http().get(server.url("/resource/notes/alice")),
            http()
                .get(server.url("/resource/notes/alice"))
                .header("accept", "text/event-stream"),
            http().get(server.url("/tools")),
            http().get(server.url("/resources")),
            http().get(server.url("/metrics")),
            http().get(server.url("/no/such/route")),
        ];
        for request in requests {
            let response = send(request, header.as_deref()).await;
            let url = response.url().to_string();
            assert_eq!(response.status(), 401, "{credential:?} {url}");
            let challenge = challenge_of(&response);
            assert!(challenge.starts_with("Bearer realm=\"kit\""), "{challenge}");
            assert!(
                challenge.contains(&format!("resource_metadata=\"{metadata}\"")),
                "{challenge}"
            );
            // RFC 6750 §3.1: no error code when no token was sent.
            assert_eq!(
                challenge.contains("error=\"invalid_token\""),
                credential != Credential::Missing,
                "{credential:?}: {challenge}"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
        // `/mcp`: refused before any session exists.
        let refused = McpSession::open(&server.url("/mcp"), header.clone())
            .await
            .err()
            .unwrap();
        assert_eq!(refused.status, 401, "{credential:?}");
        let challenge = refused.challenge.unwrap_or_default();
        assert!(challenge.contains("resource_metadata="), "{challenge}");
        assert_eq!(refused.body["error"]["code"], "unauthorized");
    }
    // The alg: none token says why.
    let response = send(
        http().get(server.url("/tools")),
        Credential::AlgNone.header("alice").as_deref(),
    )
    .await;
    assert!(challenge_of(&response).contains("none"));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no handler ran");
}

#[tokio::test]
async fn health_and_the_protected_resource_metadata_are_open() {
    let auth = config().with_authorization_servers(vec!["https://login.example.com/tenant".into()]);
    let (server, _) = start(auth).await;
    let health = http().get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metadata: Value = http()
        .get(server.url("/.well-known/oauth-protected-resource"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], server.url(""));
    assert_eq!(
        metadata["authorization_servers"],
        json!(["https://login.example.com/tenant"])
    );
    assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));
    assert_eq!(metadata["resource_name"], "kit");
    // The path-suffixed form for `/mcp` (RFC 9728 §3.1) names `/mcp`.
    let mcp: Value = http()
        .get(server.url("/.well-known/oauth-protected-resource/mcp"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mcp["resource"], server.url("/mcp"));
    // A configured public URL wins over the Host a request came to.
    let (behind_proxy, _) = start(config().with_resource("https://kit.example.com/")).await;
    let metadata: Value = http()
        .get(behind_proxy.url("/.well-known/oauth-protected-resource"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], "https://kit.example.com");
    assert_eq!(metadata["authorization_servers"], json!([]));
    // Without auth there is nothing to describe.
    let (open, _) = start(AuthConfig::disabled()).await;
    let none = http()
        .get(open.url("/.well-known/oauth-protected-resource"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
}

#[tokio::test]
async fn metrics_need_the_admin_or_metrics_role_unless_open() {
    let (server, _) = start(config()).await;
    let metrics = |authorization: Option<String>| {
        let request = http().get(server.url("/metrics"));
        async move { send(request, authorization.as_deref()).await }
    };
    assert_eq!(metrics(None).await.status(), 401);
    let plain = metrics(Some(bearer(&token("alice", &[])))).await;
    assert_eq!(plain.status(), 403);
    assert!(challenge_of(&plain).contains("error=\"insufficient_scope\""));
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    for role in [METRICS_ROLE, "admin"] {
        let allowed = metrics(Some(bearer(&token("prometheus", &[role])))).await;
        assert_eq!(allowed.status(), 200, "{role}");
        assert!(
            allowed
                .text()
                .await
                .unwrap()
                .contains("cortex_service_tool_calls_total")
        );
    }
    let (open, _) = start(config().with_open_metrics(true)).await;
    let response = http().get(open.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_verified_caller_reaches_tools_reads_streams_and_mcp() {
    let (server, _) = start(config()).await;
    let alice = bearer(&token("alice", &["reader"]));
    let expected = json!({"user": "alice", "roles": ["reader"]});
    let whoami: Value = send(
        http().post(server.url("/tool/whoami")).json(&json!({})),
        Some(&alice),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(whoami["caller"], expected);
    let read: Value = send(
        http().get(server.url("/resource/notes/alice")),
        Some(&alice),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(read["caller"], expected);
    let stream = send(
        http()
            .get(server.url("/resource/notes/alice"))
            .header("accept", "text/event-stream"),
        Some(&alice),
    )
    .await;
    let mut events = SseReader::new(stream);
    let first = events.next(WAIT).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&first.data).unwrap(),
        expected
    );
    // Another user's stream is refused when it opens.
    let refused = send(
        http()
            .get(server.url("/resource/notes/bob"))
            .header("accept", "text/event-stream"),
        Some(&alice),
    )
    .await;
    assert_eq!(refused.status(), 403);

    let mut mcp = McpSession::open(&server.url("/mcp"), Some(alice.clone()))
        .await
        .unwrap();
    let reply = mcp.call_tool("whoami", json!({})).await;
    assert_eq!(
        reply.body["result"]["structuredContent"]["caller"],
        expected
    );
    let reply = mcp.read("kit://notes/alice").await;
    let text = reply.body["result"]["contents"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap()["caller"],
        expected
    );
    assert_eq!(mcp.subscribe("kit://notes/alice").await.error_code(), None);
    assert_eq!(
        mcp.subscribe("kit://notes/bob")
            .await
            .error_code()
            .as_deref(),
        Some("forbidden")
    );
    assert_eq!(
        mcp.call_tool("note", json!({"user_id": "bob"}))
            .await
            .error_code()
            .as_deref(),
        Some("forbidden")
    );
}

#[tokio::test]
async fn a_stateless_listen_honours_only_the_callers_own_streams() {
    let (server, _) = start(config()).await;
    let listen = |authorization: Option<String>| {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": "subscriptions/listen", "params": {
            "notifications": {"resourceSubscriptions": ["kit://notes/alice", "kit://notes/bob"]},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }});
        let request = http()
            .post(server.url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "subscriptions/listen")
            .body(body.to_string());
        async move { send(request, authorization.as_deref()).await }
    };
    assert_eq!(listen(None).await.status(), 401);
    let response = listen(Some(bearer(&token("alice", &[])))).await;
    assert_eq!(response.status(), 200);
    let mut events = SseReader::new(response);
    let ack = loop {
        let event = events.next(WAIT).await.unwrap();
        if !event.data.is_empty() {
            break serde_json::from_str::<Value>(&event.data).unwrap();
        }
    };
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(
        ack["params"]["notifications"]["resourceSubscriptions"],
        json!(["kit://notes/alice"]),
        "bob's stream is not opened for alice"
    );
}

#[tokio::test]
async fn mcp_sessions_belong_to_the_user_who_opened_them() {
    let (server, _) = start(config()).await;
    let alice = bearer(&token("alice", &[]));
    let mut own = McpSession::open(&server.url("/mcp"), Some(alice))
        .await
        .unwrap();
    assert_eq!(own.request("ping", json!({})).await.status, 200);
    // Bob has a valid token and the session id: the session is not his.
    let mut stolen = own.with_authorization(Some(bearer(&token("bob", &[]))));
    assert_eq!(stolen.request("ping", json!({})).await.status, 404);
    // Even an admin cannot ride another user's session.
    let mut admin = own.with_authorization(Some(bearer(&token("root", &["admin"]))));
    assert_eq!(admin.request("ping", json!({})).await.status, 404);
    let delete = http()
        .delete(server.url("/mcp"))
        .header("mcp-session-id", own.id())
        .header("authorization", bearer(&token("bob", &[])))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 404, "bob cannot end it either");
    assert_eq!(own.request("ping", json!({})).await.status, 200);
}

#[tokio::test]
async fn the_same_idempotency_key_from_two_users_is_two_calls() {
    let (server, calls) = start(config()).await;
    let note = |user: &'static str, key: &'static str| {
        let request = http()
            .post(server.url("/tool/note"))
            .header("idempotency-key", key)
            .json(&json!({"user_id": user}));
        let authorization = bearer(&token(user, &[]));
        async move {
            let body: Value = send(request, Some(&authorization))
                .await
                .json()
                .await
                .unwrap();
            body["n"].as_u64().unwrap()
        }
    };
    let alice = note("alice", "k-1").await;
    let bob = note("bob", "k-1").await;
    assert_ne!(alice, bob, "bob's call ran: not alice's replayed");
    assert_eq!(note("alice", "k-1").await, alice, "alice's repeat replays");
    assert_eq!(note("bob", "k-1").await, bob, "bob's repeat replays");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_in_process_client_is_trusted_or_verifies_a_forwarded_caller() {
    let trusted = InProcessMcpClient::new();
    trusted.register(service(Arc::default()));
    let who = trusted.call_tool("kit", "whoami", json!({})).await.unwrap();
    assert_eq!(who["caller"], Value::Null, "the process itself: no caller");
    let other = trusted
        .call_tool("kit", "note", json!({"user_id": "bob"}))
        .await;
    assert!(other.is_ok(), "trusted: {other:?}");

    let verifying = InProcessMcpClient::new().verify_forwarded(config());
    verifying.register(service(Arc::default()));
    let alice = http::HeaderValue::from_str(&bearer(&token("alice", &[]))).unwrap();
    let who = cortex_mcp_api::with_authorization(Some(alice.clone()), async {
        verifying.call_tool("kit", "whoami", json!({})).await
    })
    .await
    .unwrap();
    assert_eq!(who["caller"]["user"], "alice");
    let refused = cortex_mcp_api::with_authorization(Some(alice), async {
        verifying
            .call_tool("kit", "note", json!({"user_id": "bob"}))
            .await
    })
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("forbidden"), "{refused}");
    let expired = Credential::Expired.header("alice").unwrap();
    let refused = cortex_mcp_api::with_authorization(
        Some(http::HeaderValue::from_str(&expired).unwrap()),
        async { verifying.read_resource("kit", "notes/alice").await },
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("expired"), "{refused}");
    // Without a forwarded caller it acts as the process, as before.
    let who = verifying
        .call_tool("kit", "whoami", json!({}))
        .await
        .unwrap();
    assert_eq!(who["caller"], Value::Null);
}

// ---- JWKS ------------------------------------------------------------------

/// A signing key and its public JWK.
struct Signer {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn sign(&self, user: &str) -> String {
        self.sign_claims(&json!({"sub": user, "exp": now() + 600}))
    }

    fn sign_claims(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn random32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

fn with_kid(jwk: Jwk, kid: &str) -> Value {
    let mut value = serde_json::to_value(jwk).unwrap();
    value["kid"] = json!(kid);
    value
}

fn rsa_signer(kid: &str) -> Signer {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
    let der = private.to_pkcs1_der().unwrap();
    let key = EncodingKey::from_rsa_der(der.as_bytes());
    let jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    Signer {
        kid: kid.into(),
        algorithm: Algorithm::RS256,
        jwk: with_kid(jwk, kid),
        key,
    }
}

fn ec_signer(kid: &str) -> Signer {
    use p256::pkcs8::EncodePrivateKey;
    let private = loop {
        // Almost every 32 bytes is a valid scalar; retry the rest.
        if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&random32()) {
            break key;
        }
    };
    let der = private.to_pkcs8_der().unwrap();
    let key = EncodingKey::from_ec_der(der.as_bytes());
    let jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    Signer {
        kid: kid.into(),
        algorithm: Algorithm::ES256,
        jwk: with_kid(jwk, kid),
        key,
    }
}

fn ed_signer(kid: &str) -> Signer {
    use base64::Engine as _;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let private = ed25519_dalek::SigningKey::from_bytes(&random32());
    let der = private.to_pkcs8_der().unwrap();
    let x =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(private.verifying_key().as_bytes());
    Signer {
        kid: kid.into(),
        algorithm: Algorithm::EdDSA,
        key: EncodingKey::from_ed_der(der.as_bytes()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA"}),
    }
}

/// An identity provider's JWKS endpoint on loopback: the keys it serves
/// can change, it counts fetches, and it can fail.
struct Provider {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    url: String,
    _task: tokio::task::JoinHandle<()>,
}

impl Provider {
    async fn start(keys: Vec<Value>) -> Self {
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (k, f, fail) = (keys.clone(), fetches.clone(), failing.clone());
        let app = axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let (k, f, fail) = (k.clone(), f.clone(), fail.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    if fail.load(Ordering::SeqCst) {
                        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                    }
                    Ok(axum::Json(json!({"keys": *k.lock().unwrap()})))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/keys", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            keys,
            fetches,
            failing,
            url,
            _task: task,
        }
    }

    fn publish(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn whoami(server: &TestServer, token: &str) -> (u16, Value, String) {
    let response = send(
        http().post(server.url("/tool/whoami")).json(&json!({})),
        Some(&bearer(token)),
    )
    .await;
    let status = response.status().as_u16();
    let challenge = challenge_of(&response);
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        challenge,
    )
}

#[tokio::test]
async fn jwks_keys_of_every_kind_verify_and_algorithms_cannot_be_confused() {
    let (rsa, ec, ed) = (rsa_signer("rsa-1"), ec_signer("ec-1"), ed_signer("ed-1"));
    let provider = Provider::start(vec![rsa.jwk.clone(), ec.jwk.clone(), ed.jwk.clone()]).await;
    let (server, _) = start(AuthConfig::jwks(&provider.url).unwrap()).await;
    for signer in [&rsa, &ec, &ed] {
        let (status, body, _) = whoami(&server, &signer.sign("alice")).await;
        assert_eq!(status, 200, "{:?}: {body}", signer.algorithm);
        assert_eq!(body["caller"]["user"], "alice");
    }
    assert_eq!(provider.fetches(), 1, "one fetch serves every key");

    // HMAC keyed with the RSA key's public half, naming the RSA key.
    let public = serde_json::to_vec(&rsa.jwk).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let forged = jsonwebtoken::encode(
        &header,
        &json!({"sub": "root", "roles": ["admin"], "exp": now() + 600}),
        &EncodingKey::from_secret(&public).unwrap(),
    )
    .unwrap();
    let (status, body, challenge) = whoami(&server, &forged).await;
    assert_eq!(status, 401, "{body}");
    assert!(challenge.contains("algorithm"), "{challenge}");
    // An EC signature presented as the RSA key's.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rsa-1".into());
    let mixed =
        jsonwebtoken::encode(&header, &json!({"sub": "a", "exp": now() + 600}), &ec.key).unwrap();
    assert_eq!(whoami(&server, &mixed).await.0, 401);
    // HS256 with the shared test secret means nothing to a JWKS service.
    assert_eq!(whoami(&server, &token("alice", &[])).await.0, 401);
    // A token signed by a key of the right kind but not published.
    let stranger = ec_signer("ec-1");
    assert_eq!(whoami(&server, &stranger.sign("alice")).await.0, 401);
}

#[tokio::test]
async fn jwks_rotation_is_followed_and_refreshes_are_rate_limited() {
    let (old, new) = (ec_signer("2026-old"), ed_signer("2026-new"));
    let provider = Provider::start(vec![old.jwk.clone()]).await;
    let settings = JwksSettings {
        min_refresh_interval: Duration::from_millis(400),
        max_age: Duration::from_secs(2),
        fetch_timeout: Duration::from_secs(2),
    };
    let auth = AuthConfig::jwks_with(&provider.url, settings)
        .unwrap()
        .with_issuer("https://idp.test")
        .with_audience("kit");
    let (server, _) = start(auth).await;
    let claims = |user: &str| json!({"sub": user, "exp": now() + 600, "iss": "https://idp.test", "aud": "kit"});
    assert_eq!(whoami(&server, &old.sign_claims(&claims("a"))).await.0, 200);
    assert_eq!(provider.fetches(), 1);
    // Issuer and audience are checked on JWKS tokens too.
    let foreign = json!({"sub": "a", "exp": now() + 600, "iss": "https://evil", "aud": "kit"});
    assert_eq!(whoami(&server, &old.sign_claims(&foreign)).await.0, 401);

    // The provider rotates: the new key is published beside the old one.
    provider.publish(vec![old.jwk.clone(), new.jwk.clone()]);
    // Within the refresh interval an unknown key is refused without a fetch.
    let (status, _, challenge) = whoami(&server, &new.sign_claims(&claims("b"))).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("2026-new"), "{challenge}");
    assert_eq!(provider.fetches(), 1, "rate-limited");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (status, body, _) = whoami(&server, &new.sign_claims(&claims("b"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["caller"]["user"], "b");
    assert_eq!(
        provider.fetches(),
        2,
        "the unknown kid fetched the set once"
    );

    // A flood of made-up kids costs at most one fetch per interval.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(format!("made-up-{i}"));
            jsonwebtoken::encode(&header, &claims("x"), &new.key).unwrap()
        })
        .collect();
    for token in &tasks {
        assert_eq!(whoami(&server, token).await.0, 401);
    }
    assert_eq!(provider.fetches(), 2, "no fetch within the interval");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let results = futures::future::join_all(tasks.iter().map(|token| whoami(&server, token))).await;
    assert!(results.iter().all(|(status, ..)| *status == 401));
    assert_eq!(
        provider.fetches(),
        3,
        "concurrent unknown kids share one fetch"
    );

    // The old key is retired; once the set is older than max_age it is
    // fetched again and the old key stops working.
    provider.publish(vec![new.jwk.clone()]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(whoami(&server, &old.sign_claims(&claims("a"))).await.0, 401);
    assert_eq!(whoami(&server, &new.sign_claims(&claims("b"))).await.0, 200);
}

#[tokio::test]
async fn an_unreachable_jwks_is_503_not_the_callers_fault() {
    let signer = ed_signer("k");
    let provider = Provider::start(vec![signer.jwk.clone()]).await;
    provider.failing.store(true, Ordering::SeqCst);
    let (server, _) = start(AuthConfig::jwks(&provider.url).unwrap()).await;
    let response = send(
        http().post(server.url("/tool/whoami")).json(&json!({})),
        Some(&bearer(&signer.sign("alice"))),
    )
    .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    // A service answering nothing at all: the same.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/keys", dead.local_addr().unwrap());
    drop(dead);
    let (server, _) = start(AuthConfig::jwks(&url).unwrap()).await;
    assert_eq!(whoami(&server, &signer.sign("alice")).await.0, 503);
}

/// An identity provider's JWKS endpoint over TLS on loopback, its
/// certificate (for `127.0.0.1`) signed by a CA made here: the URL, the
/// CA's PEM file, and what keeps them alive.
async fn tls_provider(
    keys: Vec<Value>,
) -> (
    String,
    std::path::PathBuf,
    tempfile::TempDir,
    tokio::task::JoinHandle<()>,
) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("idp-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![server_cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let body = serde_json::to_vec(&json!({ "keys": keys })).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/keys", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                // A client that does not trust the CA ends the handshake.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_request| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, ca_file, dir, task)
}

#[tokio::test]
async fn an_https_jwks_is_trusted_through_its_ca_file_and_refused_without_it() {
    let signer = ed_signer("tls-1");
    let (url, ca_file, _dir, _task) = tls_provider(vec![signer.jwk.clone()]).await;

    // Trusting the provider's CA: the keys are fetched over TLS and verify.
    let auth = AuthConfig::jwks_trusting(&url, JwksSettings::default(), &ca_file).unwrap();
    let (server, _) = start(auth).await;
    let (status, body, _) = whoami(&server, &signer.sign("alice")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["caller"]["user"], "alice");

    // The system's CAs alone do not know the test CA: the keys cannot be
    // fetched, which is the service's problem (503), and nobody is let in.
    match AuthConfig::jwks(&url) {
        Ok(auth) => {
            let (server, _) = start(auth).await;
            let response = send(
                http().post(server.url("/tool/whoami")).json(&json!({})),
                Some(&bearer(&signer.sign("alice"))),
            )
            .await;
            assert_eq!(response.status(), 503);
            let body: Value = response.json().await.unwrap();
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("TLS handshake failed"), "{message}");
        }
        // A machine without a system trust store refuses at set-up.
        Err(error) => assert!(error.to_string().contains("CA"), "{error}"),
    }
}
