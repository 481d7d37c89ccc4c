//! Asking a service about itself: its tool and resource listings and its
//! health (the bodies of [`McpClient`](crate::McpClient)'s `list_tools`,
//! `list_resources` and `health`), the health of one replica, and a
//! resource stream that starts after a given event id.
//!
//! Each speaks the service's dialect: the Cortex dialect's `GET /tools`,
//! `GET /resources` and `GET /health`, or standard MCP's `tools/list`,
//! `resources/list` with `resources/templates/list`, and `ping`, with the
//! answers in one shape either way, so a program (the `cortex` command)
//! needs no code per dialect. They share the client's discovery, breakers,
//! pool and deadline like any call.

use cortex_proto::listing::{Health, ResourceList, ToolList};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::api::EventStream;
use crate::error::McpError;
use crate::network::{Answer, Exchange, NetworkMcpClient, Operation};
use cortex_discovery::Endpoint;

impl NetworkMcpClient {
    /// Every tool of `service` with its description and the JSON Schema
    /// of its arguments (`GET /tools`, or `tools/list` over MCP, all
    /// pages). Retried like a read.
    pub(crate) async fn tools_of(&self, service: &str) -> Result<ToolList, McpError> {
        let state = self.service_state(service)?;
        if crate::mcp::speaks_mcp(self, &state).await? {
            return Box::pin(crate::mcp::list_tools(self, &state)).await;
        }
        self.get_json(service, "tools", "/tools", u32::MAX, None)
            .await
    }

    /// Every resource pattern of `service` (`GET /resources`, or over MCP
    /// the resource templates then the resources, all pages).
    pub(crate) async fn resources_of(&self, service: &str) -> Result<ResourceList, McpError> {
        let state = self.service_state(service)?;
        if crate::mcp::speaks_mcp(self, &state).await? {
            return Box::pin(crate::mcp::list_resources(self, &state)).await;
        }
        self.get_json(service, "resources", "/resources", u32::MAX, None)
            .await
    }

    /// `GET /health` of `service`, asked once (no retry: a health check
    /// reports the state now). Returns the HTTP status with the body:
    /// `200` and `healthy`, or `503` and `unhealthy` with the failing
    /// checks. An unreachable service (or an open circuit) is an error.
    /// Over MCP it is a `ping`: `200` and `healthy` when it answers.
    pub(crate) async fn health_now(&self, service: &str) -> Result<(u16, Health), McpError> {
        self.health_of(service, None).await
    }

    /// As [`McpClient::health`](crate::McpClient::health), of one endpoint (one replica) of `service`,
    /// through that endpoint's pool and breaker. An endpoint discovery no
    /// longer lists is [`McpError::Discovery`].
    pub async fn health_at(
        &self,
        service: &str,
        endpoint: &Endpoint,
    ) -> Result<(u16, Health), McpError> {
        self.health_of(service, Some(endpoint)).await
    }

    async fn health_of(
        &self,
        service: &str,
        endpoint: Option<&Endpoint>,
    ) -> Result<(u16, Health), McpError> {
        let state = self.service_state(service)?;
        if crate::mcp::speaks_mcp(self, &state).await? {
            return Box::pin(crate::mcp::health(self, &state, endpoint)).await;
        }
        match self
            .get_json::<Health>(service, "health", "/health", 1, endpoint)
            .await
        {
            Ok(health) => Ok((200, health)),
            // A 503 carries the same `Health` shape; the client reads a
            // non-envelope error body as its message (up to 512 chars).
            Err(McpError::ResourceRead {
                status: 503,
                message,
                ..
            }) => Ok((
                503,
                serde_json::from_str::<Health>(&message).unwrap_or_else(|_| Health {
                    status: "unhealthy".into(),
                    service: service.into(),
                    version: String::new(),
                    checks: [("error".to_string(), message.into())]
                        .into_iter()
                        .collect(),
                }),
            )),
            Err(error) => Err(error),
        }
    }

    /// Streams `uri` of `service` starting after `last_event_id` (sent as
    /// `Last-Event-ID`), or from the start when `None`; otherwise as
    /// [`McpClient::stream_resource`](crate::McpClient::stream_resource).
    /// Reconnects before the first event resume from the same position.
    ///
    /// Over MCP a resource stream is a subscription, which has no event
    /// ids to start after: with `None` it is
    /// [`McpClient::stream_resource`](crate::McpClient::stream_resource);
    /// with an id it is [`McpError::InvalidRequest`].
    pub async fn stream_resource_from(
        &self,
        service: &str,
        uri: &str,
        last_event_id: Option<String>,
    ) -> Result<EventStream, McpError> {
        let state = self.service_state(service)?;
        if crate::mcp::speaks_mcp(self, &state).await? {
            if last_event_id.is_some() {
                return Err(McpError::InvalidRequest {
                    service: service.into(),
                    operation: uri.into(),
                    reason: "an MCP subscription cannot start after an event id".into(),
                });
            }
            return crate::McpClient::stream_resource(self, service, uri).await;
        }
        let (_, body, conn) = self
            .open_stream(&state, uri, last_event_id.clone(), u32::MAX)
            .await?;
        Ok(crate::stream::resumable(
            self.clone(),
            state,
            uri.to_string(),
            last_event_id,
            body,
            conn,
        ))
    }

    /// GETs `path` and parses its JSON body, with at most `max_attempts`
    /// attempts; records the call in the metrics as `operation`.
    async fn get_json<T: DeserializeOwned>(
        &self,
        service: &str,
        operation: &str,
        path: &str,
        max_attempts: u32,
        pin: Option<&Endpoint>,
    ) -> Result<T, McpError> {
        let started = Instant::now();
        let outcome = async {
            let state = self.service_state(service)?;
            let mut exchange = Exchange::get(Operation::Read(operation), path);
            exchange.max_attempts = max_attempts;
            exchange.pin = pin.cloned();
            let (endpoint, answer) = self.execute(&state, &exchange).await?;
            let not_json = |message: String| McpError::ResourceRead {
                service: service.into(),
                uri: operation.into(),
                endpoint: endpoint.endpoint.url.clone(),
                attempts: 1,
                status: 200,
                message,
            };
            let Answer::Full { body, .. } = answer else {
                return Err(not_json("unexpected streamed answer".into()));
            };
            serde_json::from_slice(&body)
                .map_err(|e| not_json(format!("the {path} answer is not what was expected: {e}")))
        }
        .await;
        self.inner.metrics.record(
            service,
            operation,
            started.elapsed(),
            outcome.as_ref().err(),
        );
        outcome
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use cortex_service::ServiceConfig;
    use cortex_test_support::TestServer;
    use futures::StreamExt;
    use serde_json::json;

    use crate::{ClientConfig, McpClient, NetworkMcpClient, StaticDiscovery};

    fn client(url: String) -> NetworkMcpClient {
        let config = ClientConfig::builder()
            .initial_backoff(Duration::from_millis(20))
            .max_backoff(Duration::from_millis(100))
            .stream_max_backoff(Duration::from_millis(200))
            .failure_threshold(1_000)
            .build()
            .unwrap();
        NetworkMcpClient::builder(Arc::new(StaticDiscovery::new().with("memory", url)))
            .config(config)
            .build()
            .unwrap()
    }

    async fn store(client: &NetworkMcpClient, content: &str) -> i64 {
        let args = json!({"user_id": "u1", "input_data": {"content": content}});
        client
            .call_tool("memory", "store_input", args)
            .await
            .unwrap()["item_id"]
            .as_i64()
            .unwrap()
    }

    #[tokio::test]
    async fn listings_and_health() {
        let (server, _dir) = cortex_test_support::start_memory(ServiceConfig::default()).await;
        let client = client(server.url(""));
        let tools = client.list_tools("memory").await.unwrap();
        assert!(tools.tools.iter().any(|t| t.name == "store_input"));
        let resources = client.list_resources("memory").await.unwrap();
        assert!(resources.resources.iter().any(|r| r.streaming));
        let (status, health) = client.health("memory").await.unwrap();
        assert_eq!((status, health.status.as_str()), (200, "healthy"));
        assert!(matches!(
            client.health("nope").await,
            Err(crate::McpError::ServiceNotFound { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_from_an_id_survives_a_restart_before_its_first_event() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("memory.sqlite3");
        let open = || async {
            let store = cortex_memory::store::Store::open(&db).await.unwrap();
            cortex_memory::service::build(store).unwrap()
        };
        let config = ServiceConfig {
            stream_retry: Duration::from_millis(50),
            ..ServiceConfig::default()
        };
        let server = TestServer::start(open().await, config.clone()).await;
        let addr = server.addr;
        let client = client(server.url(""));
        let ids = [store(&client, "one").await, store(&client, "two").await];

        let mut stream = client
            .stream_resource_from("memory", "history/u1/stream", Some(ids[1].to_string()))
            .await
            .unwrap();
        // The first connection is cut before it delivered anything.
        server.shutdown(Duration::from_secs(5)).await;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let _server = TestServer::start_on(listener, open().await, config);
        let third = store(&client, "three").await;

        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            event.id,
            Some(third.to_string()),
            "nothing at or before --from"
        );
    }
}
