//! Memory replicas sharing one PostgreSQL schema: migrations under the
//! advisory lock, a newer schema refused, idempotency keys and per-user
//! event ids shared by the replicas, live streams fanned out with
//! LISTEN/NOTIFY and the fallback poll, and a database that goes away and
//! comes back (cut with a TCP proxy between the replicas and the server).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cortex_memory::store::{NewItem, PgOptions, PostgresStore, Store, StoreError};
use cortex_service::ServiceConfig;
use cortex_test_support::pg::PgSchema;
use cortex_test_support::proxy::{Mode, TcpProxy};
use cortex_test_support::{SseReader, TestServer};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

async fn count(store: &Store, user: &str) -> usize {
    store.history(user, None).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let schema = PgSchema::create("migrate_together").await;
    let starts = (0..6).map(|_| {
        let (url, options) = (schema.url.clone(), schema.options());
        tokio::spawn(async move { PostgresStore::connect(&url, options).await })
    });
    for started in futures::future::join_all(starts).await {
        started.unwrap().unwrap();
    }
    let store = schema.store().await;
    store.insert(NewItem::new("u", "after")).await.unwrap();
    assert_eq!(count(&store, "u").await, 1);
    // One version row, the latest; the tables exist once.
    let (client, connection) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions: Vec<i32> = client
        .query(
            &format!("SELECT version FROM {}.memory_schema", schema.name),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, [1]);
}

#[tokio::test]
async fn a_database_newer_than_the_binary_is_refused() {
    let schema = PgSchema::create("newer_schema").await;
    drop(schema.store().await);
    schema
        .execute("UPDATE memory_schema SET version = 99")
        .await;
    let err = PostgresStore::connect(&schema.url, schema.options())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("schema version 99 is newer"), "{message}");
    assert!(message.contains(&schema.name), "{message}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_missing_schema_is_a_clear_error() {
    let options = PgOptions {
        schema: Some("no_such_schema_here".to_owned()),
        ..PgOptions::default()
    };
    let err = PostgresStore::connect(&cortex_test_support::pg::postgres_url(), options)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no schema"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_at_two_replicas_at_once_stores_one_item() {
    let schema = PgSchema::create("same_key").await;
    let replicas = [schema.store().await, schema.store().await];
    for round in 0..20 {
        let key = format!("key-{round}");
        let calls = (0..8).map(|i| {
            let store = replicas[i % 2].clone();
            let key = key.clone();
            tokio::spawn(async move {
                store
                    .insert_idempotent(
                        NewItem::new("u", "once"),
                        "store_input",
                        &key,
                        |item| json!({"item_id": item.item_id}),
                    )
                    .await
                    .unwrap()
            })
        });
        let answers: Vec<(Value, bool)> = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(answers.iter().filter(|(_, replayed)| !replayed).count(), 1);
        assert!(answers.iter().all(|(answer, _)| *answer == answers[0].0));
    }
    assert_eq!(count(&replicas[1], "u").await, 20);
}

/// The same key from two users at once: the key is one row, so the user
/// locks do not order them; the primary key does, and the loser's item is
/// rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_raw_key_for_two_users_at_once_still_stores_once() {
    let schema = PgSchema::create("same_key_users").await;
    let replicas = [schema.store().await, schema.store().await];
    let calls = (0..2).map(|i| {
        let store = replicas[i].clone();
        tokio::spawn(async move {
            store
                .insert_idempotent(NewItem::new(format!("u{i}"), "x"), "t", "k", |item| {
                    json!(item.item_id)
                })
                .await
                .unwrap()
        })
    });
    let answers: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers[0].0, answers[1].0);
    let stored = replicas[0].history("u0", None).await.unwrap().len()
        + replicas[0].history("u1", None).await.unwrap().len();
    assert_eq!(stored, 1);
}

/// Three replicas store for four users at once while a reader of each user
/// follows with `items_after(last)`, as a resumed stream does: it must never
/// find an item older than one it already saw, and in the end it has seen
/// every item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_event_ids_follow_commit_order_across_replicas() {
    let schema = PgSchema::create("event_order").await;
    let replicas = [
        schema.store().await,
        schema.store().await,
        schema.store().await,
    ];
    const USERS: usize = 4;
    const EACH: usize = 60;
    let writers: Vec<_> = (0..12)
        .map(|w| {
            let store = replicas[w % 3].clone();
            tokio::spawn(async move {
                for i in 0..EACH / 3 {
                    let user = format!("u{}", (w + i) % USERS);
                    store
                        .insert(NewItem::new(user, format!("{w}-{i}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..USERS)
        .map(|u| {
            let store = replicas[(u + 1) % 3].clone();
            tokio::spawn(async move {
                let user = format!("u{u}");
                let mut seen = Vec::new();
                let mut last = 0;
                let deadline = Instant::now() + WAIT;
                while seen.len() < EACH && Instant::now() < deadline {
                    for item in store.items_after(&user, last, 1000).await.unwrap() {
                        assert!(item.item_id > last);
                        last = item.item_id;
                        seen.push(item.item_id);
                    }
                }
                (user, seen)
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for reader in readers {
        let (user, seen) = reader.await.unwrap();
        let all: Vec<i64> = replicas[0]
            .history(&user, None)
            .await
            .unwrap()
            .iter()
            .rev()
            .map(|item| item.item_id)
            .collect();
        assert_eq!(all.len(), EACH, "{user}");
        assert_eq!(seen, all, "{user}: the follower missed or reordered items");
    }
}

struct Replica {
    server: TestServer,
}

async fn replica(schema: &PgSchema, options: PgOptions) -> Replica {
    let store = schema.store_with(options).await;
    let service = cortex_memory::service::build(store).unwrap();
    Replica {
        server: TestServer::start(service, ServiceConfig::default()).await,
    }
}

impl Replica {
    async fn store(&self, http: &reqwest::Client, user: &str, content: &str) -> (u16, Value) {
        let response = http
            .post(self.server.url("/tool/store_input"))
            .json(&json!({"arguments": {"user_id": user, "input_data": {"content": content}}}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn stream(&self, http: &reqwest::Client, user: &str, last: Option<&str>) -> SseReader {
        let mut request = http
            .get(self.server.url(&format!("/resource/history/{user}/stream")))
            .header("accept", "text/event-stream");
        if let Some(id) = last {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        SseReader::new(response)
    }
}

/// Far longer than the test waits: what arrives came by notification.
fn no_poll(schema: &PgSchema) -> PgOptions {
    PgOptions {
        poll_interval: Duration::from_secs(3600),
        ..schema.options()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_one_replica_reaches_a_stream_on_another_and_resumes_on_a_third() {
    let schema = PgSchema::create("fan_out").await;
    let one = replica(&schema, no_poll(&schema)).await;
    let two = replica(&schema, no_poll(&schema)).await;
    let three = replica(&schema, no_poll(&schema)).await;
    let http = reqwest::Client::new();
    let mut on_three = three.stream(&http, "ann", None).await;
    // The stream is open once its (empty) backlog is read; give the
    // listener of replica three a moment to be subscribed as well.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, body) = one.store(&http, "ann", &format!("m{i}")).await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["result"]["item_id"].as_i64().unwrap());
    }
    let events = on_three.take(5, WAIT).await;
    let got: Vec<i64> = events
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, ids);

    // Resume on another replica after the second event: exactly the rest.
    let second = ids[1].to_string();
    let mut on_two = two.stream(&http, "ann", Some(&second)).await;
    let rest: Vec<i64> = on_two
        .take(3, WAIT)
        .await
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(rest, ids[2..]);
    // Nothing more, and nothing of another user.
    one.store(&http, "bob", "not ann's").await;
    let after = on_two.raw_for(Duration::from_millis(500)).await;
    assert!(!after.contains("event: item"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_delays_an_event_but_never_loses_it() {
    let schema = PgSchema::create("lost_notify").await;
    let options = PgOptions {
        poll_interval: Duration::from_millis(300),
        ..schema.options()
    };
    let one = replica(&schema, options).await;
    let http = reqwest::Client::new();
    let mut stream = one.stream(&http, "ann", None).await;
    // An insert that notifies nobody (not through a store): as if the
    // notification were lost.
    schema
        .execute(
            "INSERT INTO items (user_id, content, content_type, \"timestamp\", input_data, created_at) \
             VALUES ('ann', 'silent', 'text/plain', 't', '{\"content\":\"silent\"}', 't')",
        )
        .await;
    let started = Instant::now();
    let event = stream
        .next(WAIT)
        .await
        .expect("the item, found by the poll");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(event.data.contains("silent"), "{}", event.data);
}

/// Forwards to the test server's PostgreSQL, so a test can take the
/// database away from the replicas (refuse new connections, cut open ones)
/// and give it back.
async fn proxy_to_postgres() -> (TcpProxy, String) {
    let url = cortex_test_support::pg::postgres_url();
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => panic!("a TCP PostgreSQL address is needed"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let upstream: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = TcpProxy::start(upstream).await;
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or("postgres");
    let proxied = format!("postgres://{user}@{}/{db}", proxy.addr);
    (proxy, proxied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_away_calls_fail_fast_with_503_and_health_says_why() {
    let schema = PgSchema::create("db_away").await;
    let (proxy, url) = proxy_to_postgres().await;
    let options = PgOptions {
        schema: Some(schema.name.clone()),
        ..PgOptions::default()
    };
    let store = Store::new(PostgresStore::connect(&url, options).await.unwrap());
    let service = cortex_memory::service::build(store).unwrap();
    let memory = Replica {
        server: TestServer::start(service, ServiceConfig::default()).await,
    };
    let http = reqwest::Client::new();
    assert_eq!(memory.store(&http, "ann", "before").await.0, 200);

    proxy.set_mode(Mode::Refuse);
    proxy.cut_all();
    let mut statuses = HashMap::new();
    for i in 0..5 {
        let started = Instant::now();
        let (status, body) = memory.store(&http, "ann", &format!("away {i}")).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "a call took {took:?}");
        if status != 200 {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert!(
        statuses.get(&503).copied().unwrap_or(0) >= 4,
        "{statuses:?}"
    );
    let health = http.get(memory.server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let body: Value = health.json().await.unwrap();
    let why = body["checks"]["database"].to_string();
    assert!(why.contains("PostgreSQL"), "{body}");

    proxy.set_mode(Mode::Forward);
    let back = Instant::now();
    let mut ok = false;
    while back.elapsed() < Duration::from_secs(1) {
        if memory.store(&http, "ann", "back").await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        ok,
        "not storing again within a second of the database's return"
    );
    let health = http.get(memory.server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn an_unreachable_database_at_start_is_a_typed_fast_error() {
    // A port nothing listens on: bind one, then free it.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let err = PostgresStore::connect(
        &format!("postgres://postgres@127.0.0.1:{port}/test"),
        PgOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(err.is_retryable(), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{port}/test")),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_sent_to_two_services_at_once_stores_one_item() {
    let schema = PgSchema::create("same_key_http").await;
    let replicas = [
        replica(&schema, schema.options()).await,
        replica(&schema, schema.options()).await,
    ];
    let http = reqwest::Client::new();
    let body = json!({"arguments": {"user_id": "ann", "input_data": {"content": "once"}}});
    let calls = (0..10).map(|i| {
        http.post(replicas[i % 2].server.url("/tool/store_input"))
            .header("idempotency-key", "the-key")
            .json(&body)
            .send()
    });
    let mut ids = HashMap::new();
    for response in futures::future::join_all(calls).await {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        *ids.entry(answer["result"]["item_id"].as_i64().unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let history: Value = http
        .get(replicas[1].server.url("/resource/history/ann"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history.as_array().unwrap().len(), 1);
}
