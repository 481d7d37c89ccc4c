//! The client commands: `call`, `read`, `stream`, `tools`, `resources`,
//! `health` and `status`. Each one line of output per thing for people,
//! or JSON with `--json`. None of them knows which dialect a service
//! speaks: the client's listings, health and streams answer in one shape
//! for the Cortex dialect and for standard MCP.

use std::time::Instant;

use cortex_client::{McpClient, McpError, McpFeatures, ServiceDiscovery};
use cortex_resilience::breaker::BreakerState;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::cli::{CallArgs, HealthArgs, ReadArgs, ServiceArg, StreamArgs, ToolsArgs};
use crate::connect::{ClientFlags, Target};
use crate::exit::{Code, Failure, code_for};
use crate::hints::explain;
use crate::input::ArgWords;
use crate::output::{self, line};
use crate::progress_line::ProgressLine;
use crate::words::Words;

pub(crate) async fn call(args: CallArgs, flags: &ClientFlags, json: bool) -> Result<(), Failure> {
    let mut words = Words::new("call", args.words, flags.url_service());
    let service = words.service()?;
    let tool = words.required("TOOL")?;
    let arg_words = ArgWords::parse(&words.rest())?;
    let target = flags.connect(|c| c).await?;
    let arguments = arguments_for(&target, &service, &tool, arg_words).await?;
    // Over MCP a long call's progress shows on stderr (the Cortex
    // dialect sends none).
    let progress = ProgressLine::new();
    let result = target
        .client
        .call_tool_with(&service, &tool, arguments, progress.options())
        .await;
    progress.done();
    let result = match result {
        Ok(result) => result,
        Err(error) => return Err(explain(&target, error).await),
    };
    output::json(&result, json)
}

/// The arguments `words` stand for, typed by the tool's input schema when
/// a `key=value` pair needs it (one listing; without one, values stay
/// strings and the service says what it expected).
pub(crate) async fn arguments_for(
    target: &Target,
    service: &str,
    tool: &str,
    words: ArgWords,
) -> Result<Value, Failure> {
    let schema = if words.needs_schema() {
        match target.client.list_tools(service).await {
            Ok(list) => list
                .tools
                .into_iter()
                .find(|t| t.name == tool)
                .map(|t| t.input_schema),
            // The service cannot be asked: the call will say why.
            Err(McpError::ServiceNotFound { .. }) => None,
            Err(error) if code_for(&error) == Code::Unavailable => {
                return Err(explain(target, error).await);
            }
            Err(_) => None,
        }
    } else {
        None
    };
    words.build(schema.as_ref()).await
}

pub(crate) async fn read(args: ReadArgs, flags: &ClientFlags, json: bool) -> Result<(), Failure> {
    let mut words = Words::new("read", args.words, flags.url_service());
    let service = words.service()?;
    let uri = words.required("URI")?;
    words.done()?;
    let target = flags.connect(|c| c).await?;
    let resource = match target.client.read_resource(&service, &uri).await {
        Ok(resource) => resource,
        Err(error) => return Err(explain(&target, error).await),
    };
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
    let mut words = Words::new("stream", args.words, flags.url_service());
    let service = words.service()?;
    let uri = words.required("URI")?;
    words.done()?;
    let target = flags.connect(|c| c).await?;
    let events = match target
        .client
        .stream_resource_from(&service, &uri, args.from)
        .await
    {
        Ok(events) => events,
        Err(error) => return Err(explain(&target, error).await),
    };
    follow(
        events,
        args.count,
        |_| true,
        |event| {
            if json {
                line(json!({"id": event.id, "event": event.event, "data": event.data}).to_string())
            } else {
                line(format!(
                    "#{} {} {}",
                    event.id.as_deref().unwrap_or("-"),
                    event.event,
                    event.data
                ))
            }
        },
    )
    .await
}

/// Prints `events` with `print` until the stream ends, Ctrl-C, or `count`
/// of the events `counts` accepts have come.
pub(crate) async fn follow(
    mut events: cortex_client::EventStream,
    count: Option<u64>,
    counts: impl Fn(&cortex_client::StreamEvent) -> bool,
    print: impl Fn(&cortex_client::StreamEvent) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let stop = cortex_service::shutdown_signal();
    tokio::pin!(stop);
    let mut seen = 0u64;
    while count.is_none_or(|count| seen < count) {
        let event = tokio::select! {
            () = &mut stop => break,
            event = events.next() => match event {
                // The service ended the stream: it is complete.
                None => break,
                Some(event) => event?,
            },
        };
        if counts(&event) {
            seen += 1;
        }
        print(&event)?;
    }
    Ok(())
}

/// `tools SERVICE`: each tool with its parameters (`name*` is required)
/// and description; `tools SERVICE TOOL`: one tool's parameters in full.
pub(crate) async fn tools(args: ToolsArgs, flags: &ClientFlags, json: bool) -> Result<(), Failure> {
    let mut words = Words::new("tools", args.words, flags.url_service());
    let service = words.service()?;
    let only = words.optional();
    words.done()?;
    let target = flags.connect(|c| c).await?;
    let mut list = match target.client.list_tools(&service).await {
        Ok(list) => list,
        Err(error) => return Err(explain(&target, error).await),
    };
    if let Some(name) = &only {
        list.tools.retain(|t| &t.name == name);
        if list.tools.is_empty() {
            let error = McpError::ToolNotFound {
                service: service.clone(),
                tool: name.clone(),
            };
            return Err(explain(&target, error).await);
        }
    }
    if json {
        return output::json(&serde_json::to_value(&list).unwrap_or(Value::Null), true);
    }
    if let [tool] = list.tools.as_slice()
        && only.is_some()
    {
        line(format!("{}  {}", tool.name, tool.description.trim()))?;
        let mut rows = vec![vec![
            "  PARAMETER".to_string(),
            "TYPE".to_string(),
            "REQUIRED".to_string(),
            "DESCRIPTION".to_string(),
        ]];
        rows.extend(output::parameters(&tool.input_schema).into_iter().map(|p| {
            vec![
                format!("  {}", p.name),
                p.kind,
                if p.required { "yes" } else { "no" }.to_string(),
                p.description,
            ]
        }));
        return output::table(&rows);
    }
    let mut rows = vec![vec![
        "TOOL".to_string(),
        "DESCRIPTION".to_string(),
        "PARAMETERS".to_string(),
    ]];
    rows.extend(list.tools.iter().map(|tool| {
        let parameters = output::parameters(&tool.input_schema)
            .into_iter()
            .map(|p| format!("{}{}:{}", p.name, if p.required { "*" } else { "" }, p.kind))
            .collect::<Vec<_>>()
            .join(" ");
        vec![
            tool.name.clone(),
            output::first_sentence(&tool.description).to_string(),
            if parameters.is_empty() {
                "-".into()
            } else {
                parameters
            },
        ]
    }));
    output::table(&rows)?;
    if !list.tools.is_empty() {
        line(format!(
            "(* required; `cortex tools {}TOOL` shows one tool's parameters in full)",
            if flags.url.is_some() {
                String::new()
            } else {
                format!("{service} ")
            }
        ))?;
    }
    Ok(())
}

pub(crate) async fn resources(
    args: ServiceArg,
    flags: &ClientFlags,
    json: bool,
) -> Result<(), Failure> {
    let mut words = Words::new("resources", args.words, flags.url_service());
    let service = words.service()?;
    words.done()?;
    let target = flags.connect(|c| c).await?;
    let list = match target.client.list_resources(&service).await {
        Ok(list) => list,
        Err(error) => return Err(explain(&target, error).await),
    };
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
async fn check_all(target: &Target, services: &[String]) -> Vec<Checked> {
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
    let mut words = Words::new("health", args.words, flags.url_service());
    let asked = words.optional_service();
    words.done()?;
    let target = flags.connect(|c| c).await?;
    let services = match &asked {
        Some(service) => vec![service.clone()],
        None => target.names.clone(),
    };
    let checked = check_all(&target, &services).await;
    // A service asked for by name that does not exist: not found.
    if let [only] = checked.as_slice()
        && asked.is_some()
        && let Err(error) = &only.outcome
        && code_for(error) == Code::NotFound
    {
        return Err(explain(&target, error.clone()).await);
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
async fn check_replicas(target: &Target, services: &[String]) -> Vec<Checked> {
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
