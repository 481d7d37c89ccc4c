//! What the authentication benchmarks share: failing with a message, and
//! an RS256 key whose JWKS is served on loopback.

use cortex_service::AuthConfig;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// Ends the benchmark with `message` (a benchmark has no test harness to
/// report a panic nicely).
pub(crate) fn fail(message: &str) -> ! {
    eprintln!("bench: {message}");
    std::process::exit(1)
}

/// An RS256 key, its JWKS served on loopback, an auth config over it, and
/// `count` distinct tokens for the user `bench` signed by it (the bare
/// tokens, without `Bearer `).
pub(crate) async fn rs256(count: usize) -> (AuthConfig, Vec<String>) {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)
        .unwrap_or_else(|e| fail(&format!("RSA key: {e}")));
    let der = private
        .to_pkcs1_der()
        .unwrap_or_else(|e| fail(&format!("RSA key: {e}")));
    let key = EncodingKey::from_rsa_der(der.as_bytes());
    let mut jwk = serde_json::to_value(
        Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap_or_else(|e| fail(&e.to_string())),
    )
    .unwrap_or_default();
    jwk["kid"] = json!("bench");
    let jwks = json!({ "keys": [jwk] });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| fail(&e.to_string()));
    let url = match listener.local_addr() {
        Ok(addr) => format!("http://{addr}/keys"),
        Err(error) => fail(&error.to_string()),
    };
    let keys = axum::Router::new().route(
        "/keys",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, keys).await;
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("bench".into());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + 3600;
    let tokens = (0..count)
        .map(|jti| {
            let claims = json!({"sub": "bench", "exp": exp, "jti": jti});
            jsonwebtoken::encode(&header, &claims, &key).unwrap_or_else(|e| fail(&e.to_string()))
        })
        .collect();
    let auth = AuthConfig::jwks(&url).unwrap_or_else(|e| fail(&e.to_string()));
    (auth, tokens)
}
