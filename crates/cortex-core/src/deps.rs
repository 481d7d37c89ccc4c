//! Memory and cognition as core sees them: up or down, checked on a timer
//! through the client (so through its breakers), told to output streams as
//! `status` events and to `/health`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cortex_client::{McpClient, NetworkMcpClient};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

/// How long one health check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One dependency's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DependencyState {
    /// The service.
    pub service: String,
    /// Up (its health check passes), down, or not checked yet (`None`).
    pub up: Option<bool>,
    /// `ok`, or why it is down.
    pub detail: String,
    /// Since when (milliseconds since the Unix epoch).
    pub since_ms: u64,
}

/// The dependencies of core, checked in the background.
#[derive(Clone)]
pub struct Dependencies {
    client: Arc<NetworkMcpClient>,
    states: Arc<watch::Sender<Vec<DependencyState>>>,
}

impl Dependencies {
    /// The services `names`, reached through `client`, not checked yet.
    pub fn new(client: Arc<NetworkMcpClient>, names: &[&str]) -> Self {
        let states = names
            .iter()
            .map(|name| DependencyState {
                service: (*name).to_string(),
                up: None,
                detail: "not checked yet".into(),
                since_ms: now_ms(),
            })
            .collect();
        let (states, _) = watch::channel(states);
        Self {
            client,
            states: Arc::new(states),
        }
    }

    /// The states as they change.
    pub fn watch(&self) -> watch::Receiver<Vec<DependencyState>> {
        self.states.subscribe()
    }

    /// Checks every `interval` until dropped; `changed(service, up)` is
    /// called when a service goes up or down.
    pub async fn run(&self, interval: Duration, changed: impl Fn(&str, bool)) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let names: Vec<String> = self
                .states
                .borrow()
                .iter()
                .map(|s| s.service.clone())
                .collect();
            let checks = names.iter().map(|name| self.check(name));
            let results = futures::future::join_all(checks).await;
            for (name, (up, detail)) in names.iter().zip(results) {
                let mut flipped = false;
                self.states.send_if_modified(|states| {
                    let Some(state) = states.iter_mut().find(|s| &s.service == name) else {
                        return false;
                    };
                    if state.up == Some(up) {
                        return false;
                    }
                    flipped = state.up.is_some();
                    *state = DependencyState {
                        service: name.clone(),
                        up: Some(up),
                        detail,
                        since_ms: now_ms(),
                    };
                    true
                });
                if flipped {
                    tracing::info!(service = %name, up, "dependency {}", if up { "is back" } else { "went down" });
                    changed(name, up);
                }
            }
        }
    }

    async fn check(&self, service: &str) -> (bool, String) {
        match tokio::time::timeout(CHECK_TIMEOUT, self.client.health(service)).await {
            Ok(Ok((200, _))) => (true, "ok".into()),
            Ok(Ok((status, health))) => (false, format!("{} (HTTP {status})", health.status)),
            Ok(Err(error)) => (false, error.to_string()),
            Err(_) => (false, format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }

    /// What `/health` shows: each dependency's state and its endpoints'
    /// breakers.
    pub fn report(&self) -> Value {
        let endpoints = self.client.endpoint_status();
        let states = self.states.borrow();
        let mut report = serde_json::Map::new();
        for state in states.iter() {
            let breakers: Vec<Value> = endpoints
                .iter()
                .filter(|e| e.service == state.service)
                .map(
                    |e| json!({"url": e.url, "breaker": format!("{:?}", e.breaker).to_lowercase()}),
                )
                .collect();
            report.insert(
                state.service.clone(),
                json!({
                    "reachable": state.up,
                    "detail": state.detail,
                    "since_ms": state.since_ms,
                    "endpoints": breakers,
                }),
            );
        }
        Value::Object(report)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
