//! The client commands: `call`, `read`, `stream`, `tools`, `resources`,
//! `health` and `status`. Each one line of output per thing for people,
//! or JSON with `--json`.

use std::time::Instant;

use cortex_client::{McpClient, ServiceDiscovery};
use cortex_resilience::breaker::BreakerState;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::cli::{CallArgs, HealthArgs, ReadArgs, ServiceArg, StreamArgs};
use crate::connect::ClientFlags;
use crate::exit::{Code, Failure, code_for};
use crate::output::{self, line};

pub(crate) async fn call(args: CallArgs, flags: &ClientFlags, json: bool) -> Result<(), Failure> {
    let arguments = crate::input::arguments(args.args.as_deref())?;
    let target = flags.connect(|c| c).await?;
    let result = target
        .client
        .call_tool(&args.service, &args.tool, arguments)
        .await?;
    output::json(&result, json)
}

pub(crate) async fn read(args: ReadArgs, flags: &ClientFlags, json: bool) -> Result<(), Failure> {
    let target = flags.connect(|c| c).await?;
    let resource = target
        .client
        .read_resource(&args.service, &args.uri)
        .await?;
    match &resource.content {
        // Text that is not JSON: as it is.
        Value::String(text) if !json && !resource.mime_type.contains("json") => line(text),
        content => output::json(content, json),
    }
}

pub(crate) async fn stream(
    args: StreamArgs,
    flags: &ClientFlags,
    json: bool,
) -> Result<(), Failure> {
    let target = flags.connect(|c| c).await?;
    let mut events = target
        .client
        .stream_resource_from(&args.service, &args.uri, args.from)
        .await?;
    let stop = cortex_service::shutdown_signal();
    tokio::pin!(stop);
    let mut seen = 0u64;
    while args.count.is_none_or(|count| seen < count) {
        let event = tokio::select! {
            () = &mut stop => break,
            event = events.next() => match event {
                // The service ended the stream: it is complete.
                None => break,
                Some(event) => event?,
            },
        };
        seen += 1;
        if json {
            line(json!({"id": event.id, "event": event.event, "data": event.data}).to_string())?;
        } else {
            line(format!(
                "#{} {} {}",
                event.id.as_deref().unwrap_or("-"),
                event.event,
                event.data
            ))?;
        }
    }
    Ok(())
}

pub(crate) async fn tools(
    args: ServiceArg,
    flags: &ClientFlags,
    json: bool,
) -> Result<(), Failure> {
    let target = flags.connect(|c| c).await?;
    let list = target.client.list_tools(&args.service).await?;
    if json {
        return output::json(&serde_json::to_value(&list).unwrap_or(Value::Null), true);
    }
    let mut rows = vec![vec!["TOOL".to_string(), "DESCRIPTION".to_string()]];
    rows.extend(list.tools.iter().map(|tool| {
        vec![
            tool.name.clone(),
            output::first_sentence(&tool.description).to_string(),
        ]
    }));
    output::table(&rows)
}

pub(crate) async fn resources(
    args: ServiceArg,
    flags: &ClientFlags,
    json: bool,
) -> Result<(), Failure> {
    let target = flags.connect(|c| c).await?;
    let list = target.client.list_resources(&args.service).await?;
    if json {
        return output::json(&serde_json::to_value(&list).unwrap_or(Value::Null), true);
    }
    let mut rows = vec![vec![
        "RESOURCE".to_string(),
        "STREAM".to_string(),
        "DESCRIPTION".to_string(),
    ]];
    rows.extend(list.resources.iter().map(|resource| {
        vec![
            resource.uri_template.clone(),
            if resource.streaming { "live" } else { "-" }.to_string(),
            output::first_sentence(&resource.description).to_string(),
        ]
    }));
    output::table(&rows)
}

/// What one health check found.
struct Checked {
    service: String,
    endpoints: Vec<String>,
    latency: std::time::Duration,
    outcome: Result<(u16, cortex_proto::listing::Health), cortex_client::McpError>,
}

impl Checked {
    fn healthy(&self) -> bool {
        matches!(self.outcome, Ok((200, _)))
    }

    fn state(&self) -> String {
        match &self.outcome {
            Ok((_, health)) => health.status.clone(),
            Err(error) if code_for(error) == Code::NotFound => "not found".into(),
            Err(_) => "unreachable".into(),
        }
    }

    /// The checks (`database ok`), or why there is no answer.
    fn detail(&self) -> String {
        match &self.outcome {
            Ok((_, health)) if health.checks.is_empty() => "-".into(),
            Ok((_, health)) => health
                .checks
                .iter()
                .map(|(name, value)| match value {
                    Value::String(text) if text == "ok" => format!("{name} ok"),
                    Value::String(text) => format!("{name}: {text}"),
                    other => format!("{name}: {other}"),
                })
                .collect::<Vec<_>>()
                .join("; "),
            Err(error) => error.to_string(),
        }
    }

    fn to_json(&self) -> Value {
        let mut value = json!({
            "service": self.service,
            "endpoints": self.endpoints,
            "healthy": self.healthy(),
            "status": self.state(),
            "latency_ms": output::millis(self.latency),
        });
        match &self.outcome {
            Ok((http, health)) => {
                value["http_status"] = json!(http);
                value["version"] = json!(health.version);
                value["checks"] = Value::Object(health.checks.clone());
            }
            Err(error) => {
                value["error"] = json!({"kind": error.kind(), "message": error.to_string()});
            }
        }
        value
    }
}

/// Checks the health of each of `services`, one after the other.
async fn check_all(target: &crate::connect::Target, services: &[String]) -> Vec<Checked> {
    let mut checked = Vec::new();
    for service in services {
        let endpoints = target
            .discovery
            .resolve(service)
            .await
            .map(|set| set.endpoints.iter().map(|e| e.url.clone()).collect())
            .unwrap_or_default();
        let started = Instant::now();
        let outcome = target.client.health(service).await;
        checked.push(Checked {
            service: service.clone(),
            endpoints,
            latency: started.elapsed(),
            outcome,
        });
    }
    checked
}

pub(crate) async fn health(
    args: HealthArgs,
    flags: &ClientFlags,
    json: bool,
) -> Result<(), Failure> {
    let target = flags.connect(|c| c).await?;
    let services = match &args.service {
        Some(service) => vec![service.clone()],
        None => target.names.clone(),
    };
    let checked = check_all(&target, &services).await;
    // A service asked for by name that does not exist: not found.
    if let [only] = checked.as_slice()
        && args.service.is_some()
        && let Err(error) = &only.outcome
        && code_for(error) == Code::NotFound
    {
        return Err(error.clone().into());
    }
    if json {
        output::json(
            &Value::Array(checked.iter().map(Checked::to_json).collect()),
            true,
        )?;
    } else {
        let mut rows = vec![vec![
            "SERVICE".to_string(),
            "HEALTH".to_string(),
            "LATENCY".to_string(),
            "CHECKS".to_string(),
        ]];
        rows.extend(checked.iter().map(|c| {
            vec![
                c.service.clone(),
                c.state(),
                output::duration(c.latency),
                c.detail(),
            ]
        }));
        output::table(&rows)?;
    }
    let unhealthy: Vec<String> = checked
        .iter()
        .filter(|c| !c.healthy())
        .map(|c| format!("{} is {}", c.service, c.state()))
        .collect();
    if unhealthy.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(Code::Unavailable, unhealthy.join(", ")))
    }
}

/// Checks every endpoint of each of `services` on its own (through its own
/// pool and breaker): one [`Checked`] per endpoint, with that endpoint
/// alone in `endpoints`; a service without endpoints gets one with none,
/// saying why.
async fn check_replicas(target: &crate::connect::Target, services: &[String]) -> Vec<Checked> {
    let mut replicas = Vec::new();
    for service in services {
        let endpoints = match target.discovery.resolve(service).await {
            Ok(set) if !set.endpoints.is_empty() => set.endpoints.clone(),
            _ => {
                let started = Instant::now();
                let outcome = target.client.health(service).await;
                replicas.push(Checked {
                    service: service.clone(),
                    endpoints: Vec::new(),
                    latency: started.elapsed(),
                    outcome,
                });
                continue;
            }
        };
        for endpoint in &endpoints {
            let started = Instant::now();
            let outcome = target.client.health_at(service, endpoint).await;
            replicas.push(Checked {
                service: service.clone(),
                endpoints: vec![endpoint.url.clone()],
                latency: started.elapsed(),
                outcome,
            });
        }
    }
    replicas
}

/// `status`: one row per replica of every known service: its health,
/// version, breaker and the latency of its health check. Exits 0 whatever
/// it finds.
pub(crate) async fn status(flags: &ClientFlags, json: bool) -> Result<(), Failure> {
    let target = flags.connect(|c| c).await?;
    let replicas = check_replicas(&target, &target.names).await;
    let endpoints = target.client.endpoint_status();
    let breaker_of = |service: &str, url: Option<&str>| -> String {
        endpoints
            .iter()
            .find(|e| e.service == service && Some(e.url.as_str()) == url)
            .map_or_else(
                || "-".to_string(),
                |e| match e.breaker_retry_after {
                    Some(left) if e.breaker == BreakerState::Open => {
                        format!("open ({} left)", output::duration(left))
                    }
                    _ => e.breaker.to_string(),
                },
            )
    };
    if json {
        let list = replicas
            .iter()
            .map(|c| {
                let endpoint = c.endpoints.first();
                let mut value = c.to_json();
                if let Some(object) = value.as_object_mut() {
                    object.remove("endpoints");
                }
                value["endpoint"] = json!(endpoint);
                value["breaker"] = json!(breaker_of(&c.service, endpoint.map(String::as_str)));
                value
            })
            .collect();
        return output::json(&Value::Array(list), true);
    }
    let mut rows = vec![vec![
        "SERVICE".to_string(),
        "ENDPOINT".to_string(),
        "HEALTH".to_string(),
        "VERSION".to_string(),
        "BREAKER".to_string(),
        "LATENCY".to_string(),
    ]];
    for c in &replicas {
        let endpoint = c.endpoints.first().map(String::as_str);
        let version = match &c.outcome {
            Ok((_, health)) if !health.version.is_empty() => health.version.clone(),
            _ => "-".into(),
        };
        let state = match &c.outcome {
            Ok((503, _)) => format!("unhealthy: {}", c.detail()),
            _ => c.state(),
        };
        rows.push(vec![
            c.service.clone(),
            endpoint.unwrap_or("-").to_string(),
            state,
            version,
            breaker_of(&c.service, endpoint),
            output::duration(c.latency),
        ]);
    }
    output::table(&rows)
}
