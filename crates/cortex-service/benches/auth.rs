//! What authentication costs a tool call, through the kit's whole router
//! (request id, bounds, auth layer, body limit, route, registry, handler,
//! JSON answer) but without sockets, so the auth layer is not lost in
//! network noise. Routers over the same `echo` tool: auth off (the
//! baseline), HS256, and RS256 from a JWKS (fetched once from a server on
//! loopback, then cached), each with one token sent again and again (as a
//! client does; verified once, then remembered) and with thousands of
//! distinct tokens (each checked in full). Each is run in rounds,
//! interleaved, best of three; the figures are µs per call and the ratio
//! of calls/s against the baseline measured in the same run.
//!
//! Run: `cargo bench -p cortex-service --bench auth` (`-- --quick` for a
//! short run; `-- --only TEXT` for the baseline and the cases whose name
//! holds TEXT, as under a profiler). Over real sockets:
//! `benches/auth_loopback.rs`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::body::Body;
use cortex_service::auth::{TokenClaims, mint_hs256};
use cortex_service::routes::{ShutdownSignals, router};
use cortex_service::{AuthConfig, Service, ServiceConfig, Tool};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

mod common;
use common::{fail, rs256};

const SECRET: &str = "a benchmark secret that is longer than 32 bytes";

fn service() -> Service {
    let built = Service::builder("bench", "0")
        .tool(
            Tool::new(
                "echo",
                "Returns its arguments.",
                json!({"type": "object"}),
                |_ctx, args| async move { Ok(serde_json::Value::Object(args)) },
            )
            .read_only(),
        )
        .build();
    match built {
        Ok(service) => service,
        Err(error) => fail(&format!("cannot build the service: {error}")),
    }
}

/// The shutdown signals' senders: a dropped sender reads as "the grace
/// period is over", so they live as long as the router.
type Signals = (
    tokio::sync::watch::Sender<bool>,
    tokio::sync::watch::Sender<bool>,
);

fn app(auth: AuthConfig) -> (axum::Router, Signals) {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let (expire, expired) = tokio::sync::watch::channel(false);
    let app = router(
        service(),
        ServiceConfig {
            auth,
            ..ServiceConfig::default()
        },
        ShutdownSignals { stopping, expired },
    );
    (app, (stop, expire))
}

/// One call of `echo` through `app`, checked.
async fn call(app: &axum::Router, authorization: Option<&str>) {
    let mut request = http::Request::post("/tool/echo")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let request = match request.body(Body::from(r#"{"arguments":{"n":1}}"#)) {
        Ok(request) => request,
        Err(error) => fail(&error.to_string()),
    };
    let response = match app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(error) => fail(&format!("router: {error}")),
    };
    if !response.status().is_success() {
        fail(&format!("the call answered {}", response.status()));
    }
    let body = response.into_body().collect().await;
    black_box(body.map(|b| b.to_bytes()).ok());
}

/// How many distinct RS256 tokens the uncached case cycles through: more
/// than the verifier remembers, so none of them is found remembered.
const DISTINCT_TOKENS: usize = 5000;

/// `calls` calls, each with the next of `authorizations` after `*next`
/// (cycled, continuing where the last round stopped; none when it is
/// empty).
async fn round(
    app: &axum::Router,
    authorizations: &[String],
    calls: usize,
    next: &mut usize,
) -> Duration {
    let started = Instant::now();
    for _ in 0..calls {
        let authorization = match authorizations.len() {
            0 => None,
            n => Some(authorizations[*next % n].as_str()),
        };
        *next += 1;
        call(app, authorization).await;
    }
    started.elapsed()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--help") {
        println!("cargo bench -p cortex-service --bench auth [-- --quick] [-- --only TEXT]");
        println!(
            "  --only TEXT: the baseline and the cases whose name contains TEXT (for a profiler)"
        );
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let calls = if quick { 2_000 } else { 20_000 };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => fail(&format!("cannot start a runtime: {error}")),
    };
    runtime.block_on(async {
        let hs_token = mint_hs256(
            SECRET.as_bytes(),
            &TokenClaims::new("bench", Duration::from_secs(3600)),
        )
        .unwrap_or_else(|e| fail(&e.to_string()));
        let hs = vec![format!("Bearer {hs_token}")];
        let hs_tokens: Vec<String> = (0..DISTINCT_TOKENS)
            .map(|jti| {
                let claims = TokenClaims {
                    // Distinct tokens: the same user, distinct expiry times.
                    ttl: Duration::from_secs(3600 + jti as u64),
                    ..TokenClaims::new("bench", Duration::ZERO)
                };
                mint_hs256(SECRET.as_bytes(), &claims)
                    .map(|token| format!("Bearer {token}"))
                    .unwrap_or_else(|e| fail(&e.to_string()))
            })
            .collect();
        let (rs_auth, rs_tokens) = rs256(DISTINCT_TOKENS).await;
        let rs_tokens: Vec<String> = rs_tokens.iter().map(|t| format!("Bearer {t}")).collect();
        let rs_one = rs_tokens[..1].to_vec();
        let hs_auth = AuthConfig::hs256(SECRET).unwrap_or_else(|e| fail(&e.to_string()));
        let all: [(&str, (axum::Router, Signals), &[String]); 5] = [
            ("auth off (baseline)", app(AuthConfig::disabled()), &[]),
            ("HS256, same token", app(hs_auth.clone()), &hs),
            ("HS256, new tokens", app(hs_auth), &hs_tokens),
            ("RS256, same token", app(rs_auth.clone()), &rs_one),
            ("RS256, new tokens", app(rs_auth), &rs_tokens),
        ];
        let cases: Vec<_> = all
            .into_iter()
            .enumerate()
            .filter(|(i, (name, ..))| {
                *i == 0 || only.as_deref().is_none_or(|only| name.contains(only))
            })
            .map(|(_, case)| case)
            .collect();
        let mut next = vec![0usize; cases.len()];
        // Warm up (and let the RS256 routers fetch their keys).
        for (i, (_, (app, _), authorizations)) in cases.iter().enumerate() {
            round(app, authorizations, calls / 10, &mut next[i]).await;
        }
        let mut best = vec![Duration::MAX; cases.len()];
        for _ in 0..3 {
            for (i, (_, (app, _), authorizations)) in cases.iter().enumerate() {
                best[i] = best[i].min(round(app, authorizations, calls, &mut next[i]).await);
            }
        }
        println!(
            "a tool call through the router, {calls} calls per round, best of 3 interleaved rounds"
        );
        println!(
            "(\"same token\": one client reusing its token, verified once and then remembered; \
             \"new tokens\": {DISTINCT_TOKENS} tokens in turn, each one checked in full)"
        );
        println!(
            "{:<22} {:>12} {:>12} {:>10}",
            "", "µs/call", "calls/s", "vs off"
        );
        let per_call = |d: Duration| d.as_secs_f64() * 1e6 / calls as f64;
        let baseline = per_call(best[0]);
        for (i, (name, ..)) in cases.iter().enumerate() {
            let us = per_call(best[i]);
            println!(
                "{name:<22} {us:>12.2} {:>12.0} {:>9.2}x",
                1e6 / us,
                baseline / us
            );
        }
    });
}
