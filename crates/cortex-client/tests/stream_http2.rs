//! Resource streams over HTTP/2: many streams share a connection, a lost
//! connection resumes every stream it carried, and an endpoint that speaks
//! only HTTP/1.1 gets HTTP/1.1 streams without any failure counted.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use cortex_client::{McpClient, McpError};
use cortex_resilience::breaker::BreakerState;
use cortex_service::ServiceConfig;
use cortex_test_support::proxy::TcpProxy;
use cortex_test_support::start_memory;
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

/// Opens `n` streams of `u1`'s history at once and reads the first event
/// of each (the backlog's item `first`).
async fn open_streams(
    client: &cortex_client::NetworkMcpClient,
    n: usize,
    first: i64,
) -> Vec<cortex_client::EventStream> {
    let opened: Vec<_> = futures::stream::iter(0..n)
        .map(|_| async {
            let mut stream = client
                .stream_resource("memory", "history/u1/stream")
                .await
                .unwrap();
            let event = tokio::time::timeout(WAIT, stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(event.id, Some(first.to_string()));
            stream
        })
        .buffer_unordered(n)
        .collect()
        .await;
    opened
}

#[tokio::test]
async fn two_hundred_fifty_streams_share_three_connections_and_all_deliver() {
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let proxy = TcpProxy::start(server.addr).await;
    let config = common::fast_config()
        .max_connections(10)
        .idle_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let client = common::client_for(&proxy.url(""), config);
    let first = common::store(&client, "u1", "before").await;
    let calls_connection = proxy.accepted();

    let mut streams = open_streams(&client, 250, first).await;
    assert_eq!(
        proxy.accepted() - calls_connection,
        3,
        "100 streams per HTTP/2 connection"
    );
    let status = client.endpoint_status();
    assert_eq!(status[0].pool.in_use, 250, "{:?}", status[0].pool);

    let live = common::store(&client, "u1", "live").await;
    for stream in &mut streams {
        let event = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.id, Some(live.to_string()));
        assert_eq!(event.data["content"], "live");
    }

    // Dropped streams give up their shares; the idle connections are
    // closed after the idle timeout, as HTTP/1 ones are.
    drop(streams);
    assert_eq!(client.endpoint_status()[0].pool.in_use, 0);
    assert!(
        proxy.wait_open_at_most(0, WAIT).await,
        "{} connections left open",
        proxy.open()
    );
}

#[tokio::test]
async fn a_lost_http2_connection_resumes_each_of_its_streams_after_its_last_event() {
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let proxy = TcpProxy::start(server.addr).await;
    let config = common::fast_config().max_connections(10).build().unwrap();
    let client = common::client_for(&proxy.url(""), config);
    let first = common::store(&client, "u1", "before").await;
    let mut streams = open_streams(&client, 150, first).await;
    let accepted = proxy.accepted();
    assert!(
        accepted <= 3,
        "the calls' connection and 2 shared: {accepted}"
    );

    // Every connection goes at once: 150 streams on 2 connections, and the
    // calls' own.
    proxy.cut_all();
    let live = common::store(&client, "u1", "after the cut").await;
    // Read together: a stream reconnects when read, after the service's
    // `retry:` advice.
    let next: Vec<_> = futures::future::join_all(
        streams
            .iter_mut()
            .map(|stream| tokio::time::timeout(WAIT, stream.next())),
    )
    .await;
    for event in next {
        let event = event.unwrap().unwrap().unwrap();
        // Resumed after `first`: nothing again, nothing lost.
        assert_eq!(event.id, Some(live.to_string()));
    }
    assert!(
        proxy.accepted() - accepted <= 4,
        "the streams came back sharing connections again: {} new",
        proxy.accepted() - accepted
    );
    assert_eq!(
        client.endpoint_status()[0].breaker,
        BreakerState::Closed,
        "{:?}",
        client.endpoint_status()
    );
}

/// A resource that streams three events and ends, served over HTTP/1.1
/// only.
async fn http1_only() -> String {
    async fn events() -> impl IntoResponse {
        (
            [(header::CONTENT_TYPE, "text/event-stream")],
            "id: 1\nevent: item\ndata: {\"n\":1}\n\nid: 2\nevent: item\ndata: {\"n\":2}\n\nid: 3\nevent: item\ndata: {\"n\":3}\n\n",
        )
    }
    let app = Router::new().route("/resource/{*uri}", get(events));
    common::serve_http1_only(app).await
}

#[tokio::test]
async fn an_endpoint_without_http2_gets_http1_streams_and_no_failure_counted() {
    let url = http1_only().await;
    // One failure would open the breaker.
    let config = common::fast_config().failure_threshold(1).build().unwrap();
    let client = common::client_for(&url, config);
    for _ in 0..3 {
        let stream = client.stream_resource("memory", "things").await.unwrap();
        let ids: HashSet<String> = tokio::time::timeout(WAIT, stream.collect::<Vec<_>>())
            .await
            .unwrap()
            .into_iter()
            .map(|event| event.unwrap().id.unwrap())
            .collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
    }
    let status = client.endpoint_status();
    assert_eq!(status[0].breaker, BreakerState::Closed, "{status:?}");
    // The refused preface cost one connection; each stream has an
    // HTTP/1.1 connection of its own.
    assert_eq!(status[0].pool.dialed_total, 4, "{:?}", status[0].pool);
}

#[tokio::test]
async fn streams_use_http1_when_http2_is_off() {
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let proxy = TcpProxy::start(server.addr).await;
    let config = common::fast_config()
        .max_connections(20)
        .stream_http2(false)
        .build()
        .unwrap();
    let client = common::client_for(&proxy.url(""), config);
    let first = common::store(&client, "u1", "before").await;
    let accepted = proxy.accepted();
    let streams = open_streams(&client, 10, first).await;
    // One of them may have taken the calls' idle connection.
    assert!(proxy.accepted() - accepted >= 9, "{}", proxy.accepted());
    assert_eq!(proxy.open(), 10, "one connection per stream");
    drop(streams);
}

#[tokio::test]
async fn at_the_cap_a_stream_waits_for_a_share_and_gets_the_one_freed() {
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let proxy = TcpProxy::start(server.addr).await;
    // One connection: the calls' HTTP/1.1 one closes when idle, then the
    // one slot carries one HTTP/2 connection of 100 streams.
    let config = common::fast_config()
        .max_connections(1)
        .idle_timeout(Duration::from_millis(200))
        .pool_timeout(Duration::from_millis(500))
        .max_retries(0)
        .build()
        .unwrap();
    let client = common::client_for(&proxy.url(""), config);
    let first = common::store(&client, "u1", "before").await;
    assert!(
        proxy.wait_open_at_most(0, WAIT).await,
        "the calls' connection closed"
    );
    let mut streams = open_streams(&client, 100, first).await;
    assert_eq!(proxy.open(), 1);

    // The 101st finds no share and no slot: a pool timeout, not a hang.
    let error = client
        .stream_resource("memory", "history/u1/stream")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, cortex_client::McpError::PoolTimeout { .. }),
        "{error:?}"
    );

    // Waiting while a stream ends: the waiter takes its share.
    let waiter = tokio::spawn({
        let client = client.clone();
        async move {
            let mut stream = client
                .stream_resource("memory", "history/u1/stream")
                .await
                .unwrap();
            tokio::time::timeout(WAIT, stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(streams.pop());
    let event = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert_eq!(event.id, Some(first.to_string()));
    assert_eq!(proxy.accepted(), 2, "no connection beyond the cap");
}

#[tokio::test]
async fn streams_whose_readers_stop_do_not_hold_up_the_others_on_their_connection() {
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let proxy = TcpProxy::start(server.addr).await;
    let config = common::fast_config().max_connections(10).build().unwrap();
    let client = common::client_for(&proxy.url(""), config);
    let first = common::store(&client, "u1", "before").await;
    // Four streams of one connection; three are never read again.
    let mut streams = open_streams(&client, 4, first).await;
    let mut reader = streams.pop().unwrap();
    assert_eq!(proxy.accepted(), 2, "the calls' connection and one shared");

    // 8 MiB of events for each stream: more than the three stalled
    // streams may hold back together without taking the connection's
    // window from the one that reads.
    let content = "x".repeat(200 * 1024);
    for _ in 0..40 {
        common::store(&client, "u1", &content).await;
    }
    for n in 0..40 {
        let event = tokio::time::timeout(WAIT, reader.next())
            .await
            .unwrap_or_else(|_| panic!("event {n} held up behind the stalled streams"))
            .unwrap()
            .unwrap();
        assert_eq!(
            event.data["content"].as_str().map(str::len),
            Some(200 * 1024)
        );
    }
    drop(streams);
}

#[tokio::test]
async fn a_stream_given_up_while_waiting_to_dial_leaves_the_next_one_free_to_dial() {
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let proxy = TcpProxy::start(server.addr).await;
    // One slot, held for a second by the calls' idle connection.
    let config = common::fast_config()
        .max_connections(1)
        .idle_timeout(Duration::from_secs(1))
        .pool_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let client = common::client_for(&proxy.url(""), config);
    let first = common::store(&client, "u1", "before").await;

    // This stream becomes the one that dials, waits for the slot, and is
    // given up (its caller stops waiting) before the slot comes free.
    let given_up = tokio::time::timeout(
        Duration::from_millis(200),
        client.stream_resource("memory", "history/u1/stream"),
    )
    .await;
    assert!(given_up.is_err(), "it could not have had a connection yet");

    // Once the idle connection closes, the next stream dials and delivers.
    let mut stream = client
        .stream_resource("memory", "history/u1/stream")
        .await
        .unwrap();
    let event = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.id, Some(first.to_string()));
}

/// `u1`'s stream, opened and delivering its first event.
async fn first_stream(client: &cortex_client::NetworkMcpClient) -> cortex_client::EventStream {
    let mut first = client
        .stream_resource("memory", "history/u1/stream")
        .await
        .unwrap();
    let event = tokio::time::timeout(WAIT, first.next()).await.unwrap();
    assert!(matches!(event, Some(Ok(_))), "{event:?}");
    first
}

/// An h2c server that answers its first stream with an open event stream
/// and refuses every later one with `REFUSED_STREAM`, counting them; or,
/// with `refuse_first`, refuses the first and answers every later one.
async fn refusing_h2_server(
    refuse_first: bool,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        let mut first = true;
        // Bounded: the test makes one connection.
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut connection) = h2::server::handshake(socket).await else {
            return;
        };
        let mut open = Vec::new();
        while let Some(Ok((_request, mut respond))) = connection.accept().await {
            let refuse = first == refuse_first;
            first = false;
            if refuse {
                counter.fetch_add(1, Ordering::SeqCst);
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                continue;
            }
            let head = http::Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(())
                .unwrap();
            if let Ok(mut body) = respond.send_response(head, false) {
                let _ = body.send_data(bytes::Bytes::from_static(b"id: 1\ndata: {}\n\n"), false);
                open.push(body);
            }
        }
    });
    (url, refused)
}

#[tokio::test]
async fn a_stream_the_server_refused_unprocessed_is_known_not_sent_and_tried_again() {
    let (url, refused) = refusing_h2_server(false).await;
    let client = common::client_for(&url, common::fast_config().build().unwrap());
    // Kept open: the server's first stream stays busy.
    let _first = first_stream(&client).await;

    let error = tokio::time::timeout(WAIT, client.stream_resource("memory", "history/u2/stream"))
        .await
        .expect("refused streams end, they do not hang")
        .err()
        .expect("every later stream is refused");
    assert!(
        error.is_connect(),
        "REFUSED_STREAM means the request was not processed: {error:?}"
    );
    assert!(
        refused.load(std::sync::atomic::Ordering::SeqCst) > 1,
        "an unprocessed request is safe to send again, and was"
    );
}

#[tokio::test]
async fn a_new_endpoint_refusing_its_first_stream_still_gets_http2() {
    // The refusal is an HTTP/2 frame: the endpoint speaks HTTP/2, and the
    // stream is tried again over it. (Taken for a server without HTTP/2,
    // it would be tried over HTTP/1.1, which this server does not speak.)
    let (url, refused) = refusing_h2_server(true).await;
    let client = common::client_for(&url, common::fast_config().build().unwrap());
    let stream = client.stream_resource("memory", "history/u1/stream");
    let mut stream = tokio::time::timeout(WAIT, stream)
        .await
        .expect("a refused stream ends, it does not hang")
        .expect("the stream tried again over HTTP/2 is answered");
    let event = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert!(matches!(event, Some(Ok(_))), "{event:?}");
    assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// An h2c server that answers its first stream with an open event stream
/// and, when `hold_second`, also takes a second one and leaves it
/// unanswered; then it stops reading (and says so on `quiet`). Once told
/// to, it sends a `GOAWAY` naming the last stream it has read as the last
/// it processes (what `abrupt_shutdown` does) and closes. A stream the
/// client opened while it was not reading is above that one: the server
/// processed none of it (RFC 9113 §6.8). A stream it read it may have
/// acted on.
struct GoingAway {
    url: String,
    quiet: tokio::sync::oneshot::Receiver<()>,
    go_away: tokio::sync::oneshot::Sender<()>,
}

async fn going_away_h2_server(hold_second: bool) -> GoingAway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (go_away, told) = tokio::sync::oneshot::channel::<()>();
    let (is_quiet, quiet) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        // Bounded: one connection, one stream, one `GOAWAY`.
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        drop(listener);
        let Ok(mut connection) = h2::server::handshake(socket).await else {
            return;
        };
        let Some(Ok((_request, mut respond))) = connection.accept().await else {
            return;
        };
        let head = http::Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(())
            .unwrap();
        let Ok(mut body) = respond.send_response(head, false) else {
            return;
        };
        let _ = body.send_data(bytes::Bytes::from_static(b"id: 1\ndata: {}\n\n"), false);
        let mut held = None;
        if hold_second {
            let Some(Ok((_request, respond))) = connection.accept().await else {
                return;
            };
            held = Some(respond);
        }
        // Polling the connection writes what is queued (and reads what
        // comes, which is nothing: the client opens no other stream before
        // `quiet`).
        let polled = tokio::time::timeout(Duration::from_millis(200), connection.accept()).await;
        if polled.is_ok() || is_quiet.send(()).is_err() || told.await.is_err() {
            return;
        }
        connection.abrupt_shutdown(h2::Reason::NO_ERROR);
        while let Some(Ok(_ignored)) = connection.accept().await {}
        drop((body, held));
    });
    GoingAway {
        url,
        quiet,
        go_away,
    }
}

#[tokio::test]
async fn a_stream_above_the_last_one_a_goaway_names_is_known_not_sent() {
    let server = going_away_h2_server(false).await;
    // No retry: the first attempt's error is the call's, as classified.
    // One failure would open the breaker.
    let config = common::fast_config()
        .max_retries(0)
        .failure_threshold(1)
        .build()
        .unwrap();
    let client = common::client_for(&server.url, config);
    let first = first_stream(&client).await;
    // Given up (reset), so that it does not try to resume once the
    // connection closes; the connection stays for the next stream.
    drop(first);
    tokio::time::timeout(WAIT, server.quiet)
        .await
        .unwrap()
        .unwrap();

    // The second stream's request reaches the connection's socket long
    // before the `GOAWAY` is sent (loopback, 300 ms), unread; had it not,
    // it would be opened after the `GOAWAY`, which is "not sent" as well.
    let second = client.stream_resource("memory", "history/u2/stream");
    let tell = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.go_away.send(()).unwrap();
    };
    let (second, ()) = tokio::join!(tokio::time::timeout(WAIT, second), tell);
    let error = second
        .expect("a stream cut by a GOAWAY ends, it does not hang")
        .err()
        .expect("the server processed no stream after the first");
    assert!(
        error.is_connect(),
        "a GOAWAY naming an earlier last stream means the request was not processed: {error:?}"
    );
    // A graceful GOAWAY is a server closing a connection, not failing.
    let status = client.endpoint_status();
    assert_eq!(status[0].breaker, BreakerState::Closed, "{status:?}");
}

#[tokio::test]
async fn a_stream_the_goaway_names_and_the_closing_connection_cuts_may_have_been_sent() {
    let server = going_away_h2_server(true).await;
    let config = common::fast_config().max_retries(0).build().unwrap();
    let client = common::client_for(&server.url, config);
    // Kept open until the connection closes under it.
    let _first = first_stream(&client).await;

    let GoingAway { quiet, go_away, .. } = server;
    let tell = async {
        tokio::time::timeout(WAIT, quiet).await.unwrap().unwrap();
        go_away.send(()).unwrap();
    };
    let second = client.stream_resource("memory", "history/u2/stream");
    let (second, ()) = tokio::join!(tokio::time::timeout(WAIT, second), tell);
    let error = second
        .expect("a stream cut by a closing connection ends, it does not hang")
        .err()
        .expect("the server never answered the second stream");
    // The server read it (its `GOAWAY` names it) and may have acted on it.
    assert!(
        matches!(error, McpError::Connection { sent: true, .. }),
        "{error:?}"
    );
    assert!(!error.is_connect(), "{error:?}");
}
