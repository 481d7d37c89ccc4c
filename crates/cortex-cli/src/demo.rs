//! `cortex demo`: the whole system in one process, narrated.
//!
//! Memory, cognition and core run on free loopback ports with a throw-away
//! database, so the demo never collides with a running `cortex up`. It
//! stores and reads items, streams them live, asks cognition for context,
//! then stops memory to show the circuit breaker and core keeping inputs
//! in its outbox, restarts memory on the same port and database, and
//! checks that the stream saw every item once and core stored each kept
//! input once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_client::{
    ClientConfig, McpClient, McpError, NetworkMcpClient, StaticDiscovery, StreamEvent,
};
use cortex_cognition::CognitionConfig;
use cortex_resilience::breaker::BreakerState;
use cortex_service::ServiceConfig;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::cli::Database;
use crate::exit::Failure;
use crate::output::{self, line};
use crate::system::{self, Running};

const USER: &str = "ada";

/// The user who sends inputs through core while memory is down.
const CORE_USER: &str = "grace";

/// What `CORE_USER` sends through core during the outage.
const THROUGH_CORE: [&str; 2] = [
    "Water the plants on Friday",
    "Call the plumber about the kitchen tap",
];

/// What the demo stores before, during and after the outage.
const BEFORE: [(&str, &str); 3] = [
    ("Planning a trip to Lisbon in May", "trip"),
    ("Book a table for two near the river", "trip"),
    ("Remind me to renew my passport", "errands"),
];
const LIVE: (&str, &str) = ("Find a hotel in Lisbon with a view of the river", "trip");
const AFTER: [(&str, &str); 2] = [
    ("Pack the passport and the charger", "errands"),
    ("Check the Lisbon tram map", "trip"),
];

/// How long the demo waits for any one thing before calling it a failure.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn run() -> Result<(), Failure> {
    let started = Instant::now();
    let dir = tempfile::tempdir()
        .map_err(|e| Failure::other(format!("cannot create a temporary directory: {e}")))?;
    let db = dir.path().join("memory.sqlite3");
    let mut demo = Demo::start(&db).await;
    let outcome = match &mut demo {
        Ok(demo) => demo.tell().await,
        Err(failure) => Err(failure.clone()),
    };
    if let Ok(demo) = demo {
        demo.shut_down().await;
    }
    outcome?;
    line(format!(
        "\nDone in {}. Run it for real with `cortex up`.",
        output::duration(started.elapsed())
    ))
}

struct Demo {
    db: PathBuf,
    memory_port: u16,
    memory: Option<Running>,
    cognition: Running,
    core: Running,
    /// Core's drain, health checks and context events.
    core_work: tokio::task::JoinHandle<()>,
    /// The input ids core accepted while memory was down.
    kept: Vec<String>,
    client: NetworkMcpClient,
    /// Ids of the items memory acknowledged, in order.
    stored: Vec<i64>,
    /// Ids the stream delivered, in order.
    streamed: Vec<i64>,
    events: Option<mpsc::UnboundedReceiver<Result<StreamEvent, McpError>>>,
}

/// Memory's settings in the demo: a short reconnect advice, so the stream
/// resumes soon after memory is back.
fn service_config() -> ServiceConfig {
    ServiceConfig {
        stream_retry: Duration::from_millis(200),
        grace_period: Duration::from_secs(2),
        ..ServiceConfig::default()
    }
}

/// The demo's client: a breaker that opens after 3 failures and probes
/// again after 1 s, no retries, short deadlines, so each step is quick.
fn client_config() -> Result<ClientConfig, Failure> {
    ClientConfig::builder()
        .failure_threshold(3)
        .reset_timeout(Duration::from_secs(1))
        .max_retries(0)
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .stream_max_reconnects(30)
        .stream_max_backoff(Duration::from_millis(400))
        .build()
        .map_err(|e| Failure::other(e.to_string()))
}

impl Demo {
    async fn start(db: &Path) -> Result<Self, Failure> {
        let memory_listener = system::bind("127.0.0.1", 0, "memory", "-").await?;
        let cognition_listener = system::bind("127.0.0.1", 0, "cognition", "-").await?;
        let memory = Running::spawn(
            memory_listener,
            system::memory_service(&Database::Sqlite(db.to_path_buf())).await?,
            service_config(),
        )?;
        let memory_reader = NetworkMcpClient::builder(Arc::new(
            StaticDiscovery::new().with("memory", memory.url()),
        ))
        .config(client_config()?)
        .build()?;
        let cognition = Running::spawn(
            cognition_listener,
            system::cognition_service(
                memory_reader,
                CognitionConfig {
                    context_deadline: Duration::from_secs(1),
                    ..CognitionConfig::default()
                },
            )?,
            service_config(),
        )?;
        let core_listener = system::bind("127.0.0.1", 0, "core", "-").await?;
        let core_client = NetworkMcpClient::builder(Arc::new(
            StaticDiscovery::new()
                .with("memory", memory.url())
                .with("cognition", cognition.url()),
        ))
        .config(client_config()?)
        .build()?;
        let data = db.parent().unwrap_or(Path::new("."));
        let (core_service, core_work) = system::core_service(
            data,
            core_client,
            &cortex_service::AuthConfig::disabled(),
            1000,
        )?;
        let core = Running::spawn(core_listener, core_service, service_config())?;
        let client = NetworkMcpClient::builder(Arc::new(
            StaticDiscovery::new()
                .with("memory", memory.url())
                .with("cognition", cognition.url())
                .with("core", core.url()),
        ))
        .config(client_config()?)
        .build()?;
        Ok(Self {
            db: db.to_path_buf(),
            memory_port: memory.addr.port(),
            memory: Some(memory),
            cognition,
            core,
            core_work,
            kept: Vec::new(),
            client,
            stored: Vec::new(),
            streamed: Vec::new(),
            events: None,
        })
    }

    async fn shut_down(self) {
        self.client.close().await;
        self.core_work.abort();
        let _ = self.core.stop().await;
        let _ = self.cognition.stop().await;
        if let Some(memory) = self.memory {
            let _ = memory.stop().await;
        }
    }

    fn memory(&self) -> Result<&Running, Failure> {
        self.memory
            .as_ref()
            .ok_or_else(|| Failure::other("memory is not running"))
    }

    async fn tell(&mut self) -> Result<(), Failure> {
        line(
            "Cortex demo: the memory, cognition and core services in this process, on free ports,\n\
             with a throw-away database, and a client that talks to them over HTTP.",
        )?;

        step(1, "Start the system")?;
        line(format!(
            "   memory     {}   stores inputs in SQLite ({})",
            self.memory()?.url(),
            self.db.display()
        ))?;
        line(format!(
            "   cognition  {}   builds context; reads memory through the network client",
            self.cognition.url()
        ))?;
        line(format!(
            "   core       {}   the front door: takes users' inputs, keeps them while memory is away",
            self.core.url()
        ))?;
        system::wait_healthy(&self.client, &["memory", "cognition", "core"], STEP_TIMEOUT).await?;
        line("   all three answer /health: healthy")?;

        step(2, &format!("Store three inputs for user \"{USER}\""))?;
        for (content, conversation) in BEFORE {
            let id = self.store(content, conversation).await?;
            line(format!("   store_input -> item #{id}  \"{content}\""))?;
        }

        step(3, "Read the history (newest first)")?;
        let history = self
            .client
            .read_resource("memory", &format!("history/{USER}"))
            .await?;
        for item in history.content.as_array().into_iter().flatten() {
            line(format!(
                "   #{}  [{}]  \"{}\"",
                item["item_id"],
                item["conversation_id"].as_str().unwrap_or("-"),
                item["content"].as_str().unwrap_or_default()
            ))?;
        }

        step(4, "Stream the history live")?;
        self.open_stream().await?;
        line(format!(
            "   history/{USER}/stream sends the backlog in id order, then each new item as it is stored:"
        ))?;
        for _ in BEFORE {
            let event = self.next_event().await?;
            line(format!("   stream <- #{}  (backlog)", show_event(&event)))?;
        }
        let (content, conversation) = LIVE;
        let stored_at = Instant::now();
        let id = self.store(content, conversation).await?;
        line(format!("   store_input -> item #{id}  \"{content}\""))?;
        let event = self.next_event().await?;
        line(format!(
            "   stream <- #{}  (live, {} after it was stored)",
            show_event(&event),
            output::duration(stored_at.elapsed())
        ))?;

        step(5, "Ask cognition for context about \"Lisbon trip\"")?;
        let context = self
            .client
            .call_tool(
                "cognition",
                "get_context",
                json!({"user_id": USER, "query": "Lisbon trip", "limit": 3}),
            )
            .await?;
        line(
            "   cognition read the history from memory and ranked it by words shared with the query:",
        )?;
        for item in context["context"].as_array().into_iter().flatten() {
            line(format!(
                "   score {}  #{}  \"{}\"",
                item["score"],
                item["item_id"],
                item["content"].as_str().unwrap_or_default()
            ))?;
        }

        self.outage().await?;
        self.recovery().await?;
        self.check().await
    }

    async fn outage(&mut self) -> Result<(), Failure> {
        step(6, "Memory stops")?;
        let memory = self
            .memory
            .take()
            .ok_or_else(|| Failure::other("memory is not running"))?;
        memory.stop().await?;
        line("   memory shut down gracefully: calls in flight finished, the open stream was cut.")?;
        line(
            "   The demo client makes one attempt per call (no retries); its breaker opens after 3 failures in a row:",
        )?;
        let mut opened = false;
        for _ in 0..10 {
            let started = Instant::now();
            let outcome = self
                .client
                .call_tool("memory", "store_input", store_args("lost?", "trip"))
                .await;
            let took = output::duration(started.elapsed());
            match outcome {
                Ok(answer) => {
                    return Err(Failure::other(format!(
                        "memory answered while it was stopped: {answer}"
                    )));
                }
                Err(McpError::CircuitOpen { retry_after, .. }) => {
                    line(format!(
                        "   store_input -> failed fast in {took}: circuit open, next probe in {}",
                        output::duration(retry_after)
                    ))?;
                    opened = true;
                    break;
                }
                Err(error) => line(format!(
                    "   store_input -> failed in {took}: {}; breaker {}",
                    short(&error),
                    self.breaker()
                ))?,
            }
        }
        if !opened {
            return Err(Failure::other("the breaker did not open"));
        }
        line("   An open breaker answers at once instead of waiting on a dead service.")?;
        let context = self
            .client
            .call_tool(
                "cognition",
                "get_context",
                json!({"user_id": USER, "query": "Lisbon trip"}),
            )
            .await?;
        if context["degraded"] != json!(true) {
            return Err(Failure::other(format!(
                "cognition should answer degraded while memory is down: {context}"
            )));
        }
        line(format!(
            "   get_context -> cognition still answers, marked degraded: \"{}\"",
            context["reason"]
                .as_str()
                .unwrap_or("memory is unavailable")
        ))?;
        line(format!(
            "   core still takes inputs: \"{CORE_USER}\" sends two, and core keeps them in its outbox (on disk):"
        ))?;
        for content in THROUGH_CORE {
            let answer = self
                .client
                .call_tool(
                    "core",
                    "input",
                    json!({"user_id": CORE_USER, "content": content}),
                )
                .await?;
            if answer["status"] != "storage_pending" {
                return Err(Failure::other(format!(
                    "core should keep the input while memory is down: {answer}"
                )));
            }
            let input = answer["input_id"].as_str().unwrap_or_default().to_string();
            line(format!(
                "   input -> storage_pending  (input {})  \"{content}\"",
                short_id(&input)
            ))?;
            self.kept.push(input);
        }
        Ok(())
    }

    async fn recovery(&mut self) -> Result<(), Failure> {
        step(
            7,
            "Memory comes back on the same port, with the same database",
        )?;
        let listener = bind_again(self.memory_port).await?;
        let db = self.db.clone();
        let memory = Running::spawn(
            listener,
            system::memory_service(&Database::Sqlite(db)).await?,
            service_config(),
        )?;
        line(format!("   memory restarted at {}", memory.url()))?;
        self.memory = Some(memory);

        let started = Instant::now();
        let mut waited = false;
        let (content, conversation) = AFTER[0];
        let id = loop {
            match self
                .client
                .call_tool("memory", "store_input", store_args(content, conversation))
                .await
            {
                Ok(answer) => break item_id(&answer)?,
                Err(error) if started.elapsed() < STEP_TIMEOUT && error.is_retryable() => {
                    if !waited {
                        line(format!(
                            "   store_input -> {}: the breaker waits out its reset timeout before a probe",
                            short(&error)
                        ))?;
                        waited = true;
                    }
                    let pause = match &error {
                        McpError::CircuitOpen { retry_after, .. } => *retry_after,
                        _ => Duration::ZERO,
                    };
                    tokio::time::sleep(pause.max(Duration::from_millis(50))).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        self.stored.push(id);
        line(format!(
            "   store_input -> item #{id} after {}: a probe got through, succeeded, and the breaker closed  \"{content}\"",
            output::duration(started.elapsed())
        ))?;
        let (content, conversation) = AFTER[1];
        let id = self.store(content, conversation).await?;
        line(format!("   store_input -> item #{id}  \"{content}\""))?;
        let resumed_after = self.streamed.last().copied().unwrap_or_default();
        line(format!(
            "   the stream, cut at shutdown, reconnected by itself with Last-Event-ID: {resumed_after} and got exactly what it missed:"
        ))?;
        for _ in AFTER {
            let event = self.next_event().await?;
            line(format!("   stream <- #{}", show_event(&event)))?;
        }
        self.core_drained().await
    }

    /// Core's outbox drains by itself once memory answers: `CORE_USER`'s
    /// output stream tells each kept input `pending`, then `stored`, once.
    async fn core_drained(&mut self) -> Result<(), Failure> {
        line(format!(
            "   core's outbox drains by itself; {CORE_USER}'s output stream (from the start):"
        ))?;
        let mut output = self
            .client
            .stream_resource("core", &format!("output/{CORE_USER}"))
            .await?;
        let mut stored = Vec::new();
        while stored.len() < self.kept.len() {
            let event = match tokio::time::timeout(STEP_TIMEOUT, output.next()).await {
                Ok(Some(event)) => event?,
                Ok(None) => return Err(Failure::other("core's output stream ended")),
                Err(_) => {
                    return Err(Failure::other(format!(
                        "core stored {} of {} kept inputs within {}",
                        stored.len(),
                        self.kept.len(),
                        output::duration(STEP_TIMEOUT)
                    )));
                }
            };
            let input = event.data["input_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match event.event.as_str() {
                "pending" => line(format!(
                    "   output <- #{} pending  (input {})",
                    event.id.as_deref().unwrap_or("-"),
                    short_id(&input)
                ))?,
                "stored" => {
                    line(format!(
                        "   output <- #{} stored   (input {} is item #{})",
                        event.id.as_deref().unwrap_or("-"),
                        short_id(&input),
                        event.data["item_id"]
                    ))?;
                    stored.push(input);
                }
                _ => {}
            }
        }
        if stored != self.kept {
            return Err(Failure::other(format!(
                "core stored {stored:?}, but kept {:?}",
                self.kept
            )));
        }
        Ok(())
    }

    async fn check(&mut self) -> Result<(), Failure> {
        step(8, "Check")?;
        let history = self
            .client
            .read_resource("memory", &format!("history/{USER}"))
            .await?;
        let mut in_memory: Vec<i64> = history
            .content
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["item_id"].as_i64())
            .collect();
        in_memory.sort_unstable();
        let list = |ids: &[i64]| {
            ids.iter()
                .map(|id| format!("#{id}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if in_memory != self.stored {
            return Err(Failure::other(format!(
                "memory holds {} but the demo stored {}",
                list(&in_memory),
                list(&self.stored)
            )));
        }
        line(format!(
            "   memory holds {}: every acknowledged item, nothing from the failed calls",
            list(&in_memory)
        ))?;
        if self.streamed != self.stored {
            return Err(Failure::other(format!(
                "the stream delivered {} but memory stored {}",
                list(&self.streamed),
                list(&self.stored)
            )));
        }
        line(format!(
            "   the stream delivered {}: each stored item exactly once, in order, across the restart",
            list(&self.streamed)
        ))?;
        let kept = self
            .client
            .read_resource("memory", &format!("history/{CORE_USER}"))
            .await?;
        let kept = kept.content.as_array().map_or(0, Vec::len);
        if kept != self.kept.len() {
            return Err(Failure::other(format!(
                "memory holds {kept} items of {CORE_USER}, but core accepted {}",
                self.kept.len()
            )));
        }
        line(format!(
            "   memory holds {kept} items of {CORE_USER}: each input core accepted during the outage, once"
        ))?;
        line(
            "   Why: memory acknowledges an item only once it is on disk, a failed call stored nothing,",
        )?;
        line(
            "   a stream resumes after the last event id it delivered, and core stores each kept",
        )?;
        line(
            "   input under its own idempotency key, so a repeat is recognised, never stored twice.",
        )
    }

    /// Stores one input and remembers its id.
    async fn store(&mut self, content: &str, conversation: &str) -> Result<i64, Failure> {
        let answer = self
            .client
            .call_tool("memory", "store_input", store_args(content, conversation))
            .await?;
        let id = item_id(&answer)?;
        self.stored.push(id);
        Ok(id)
    }

    /// Opens the history stream and forwards its events to `self.events`.
    async fn open_stream(&mut self) -> Result<(), Failure> {
        let mut stream = self
            .client
            .stream_resource("memory", &format!("history/{USER}/stream"))
            .await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if sender.send(event).is_err() {
                    break;
                }
            }
        });
        self.events = Some(receiver);
        Ok(())
    }

    /// The next stream event, remembered in `self.streamed`.
    async fn next_event(&mut self) -> Result<StreamEvent, Failure> {
        let events = self
            .events
            .as_mut()
            .ok_or_else(|| Failure::other("the stream is not open"))?;
        let event = match tokio::time::timeout(STEP_TIMEOUT, events.recv()).await {
            Ok(Some(event)) => event?,
            Ok(None) => return Err(Failure::other("the stream ended")),
            Err(_) => {
                return Err(Failure::other(format!(
                    "no stream event within {}",
                    output::duration(STEP_TIMEOUT)
                )));
            }
        };
        let id = event
            .id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| {
                Failure::other(format!("a stream event without an item id: {event:?}"))
            })?;
        self.streamed.push(id);
        Ok(event)
    }

    /// The state of the demo client's breaker for memory.
    fn breaker(&self) -> String {
        self.client
            .endpoint_status()
            .into_iter()
            .find(|e| e.service == "memory")
            .map(|e| match e.breaker {
                BreakerState::Open => "open".to_string(),
                other => other.to_string(),
            })
            .unwrap_or_else(|| "-".into())
    }
}

fn step(number: u32, title: &str) -> Result<(), Failure> {
    line(format!("\n{number}. {title}"))
}

fn store_args(content: &str, conversation: &str) -> Value {
    json!({
        "user_id": USER,
        "input_data": {"content": content, "conversation_id": conversation},
    })
}

fn item_id(answer: &Value) -> Result<i64, Failure> {
    answer["item_id"]
        .as_i64()
        .ok_or_else(|| Failure::other(format!("store_input answered without an item_id: {answer}")))
}

/// `3  "content"` for a history stream event.
fn show_event(event: &StreamEvent) -> String {
    format!(
        "{}  \"{}\"",
        event.id.as_deref().unwrap_or("-"),
        event.data["content"].as_str().unwrap_or_default()
    )
}

/// The first block of an input id: enough to tell them apart on screen.
fn short_id(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

/// The gist of an error, for one narrated line.
fn short(error: &McpError) -> String {
    match error {
        error if error.is_refused() => "connection refused".into(),
        McpError::Connection { reason, .. } if !error.is_connect() || reason.contains("closed") => {
            "its kept-alive connection was closed by the shutdown".into()
        }
        McpError::Connection { reason, .. } => {
            // "… (os error 104)": the words are enough.
            reason
                .split(" (os error")
                .next()
                .unwrap_or_default()
                .to_string()
        }
        McpError::CircuitOpen { retry_after, .. } => format!(
            "circuit open, next probe in {}",
            output::duration(*retry_after)
        ),
        other => other.to_string(),
    }
}

/// Binds `127.0.0.1:port` again, retrying briefly while the old socket
/// lets go of it.
async fn bind_again(port: u16) -> Result<tokio::net::TcpListener, Failure> {
    let mut last = None;
    for _ in 0..50 {
        match system::bind("127.0.0.1", port, "memory", "-").await {
            Ok(listener) => return Ok(listener),
            Err(failure) => last = Some(failure),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| Failure::other(format!("cannot bind port {port} again"))))
}
