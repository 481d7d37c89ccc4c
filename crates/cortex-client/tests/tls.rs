//! TLS to `https://` endpoints, against a real memory service's routes
//! served over rustls on loopback.
//!
//! Each test makes its certificates with rcgen (a test CA, server
//! certificates for `127.0.0.1`/`localhost` or for another name, a client
//! certificate), writes the PEM files the client options name into a
//! temporary directory, and starts a TLS server on `127.0.0.1:0`: a
//! tokio-rustls acceptor in front of hyper's HTTP/1 server, which serves
//! the memory service's router (`cortex_service::routes::router`). The
//! server counts the TCP connections it accepted and the handshakes that
//! completed, which is how the tests see reuse and refusals from the wire.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cortex_client::tls::{rustls, rustls_error};
use cortex_client::{ClientConfig, McpClient, McpError, NetworkMcpClient, Retry};
use cortex_service::ServiceConfig;
use cortex_service::routes::{ShutdownSignals, router};
use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// Upper bound of anything a test waits for: a hang fails, it does not stall.
const LIMIT: Duration = Duration::from_secs(20);

/// A certificate and its private key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The certificate and the key as PEM, for the client's files.
    cert_pem: String,
    key_pem: String,
}

impl Identity {
    fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// A test CA, what it signed, and the PEM files the client options name.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        Self::named("Cortex test CA")
    }

    /// A CA whose name is `name`.
    fn named(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            ca,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A certificate for `names` (IP addresses or DNS names) signed by the
    /// CA, for a server or a client.
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Identity {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for `127.0.0.1` and `localhost`.
    fn server(&self) -> Identity {
        self.issue(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    fn client(&self) -> Identity {
        self.issue(&["client.test"], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// Writes `text` into the directory; its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The CA certificate's PEM file, for `ca_file`.
    fn ca_file(&self) -> PathBuf {
        self.write("ca.pem", &self.ca.pem())
    }

    /// The CA as rustls roots, for a server that checks client certificates.
    fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        Arc::new(roots)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Who the server asks for a certificate, and which TLS versions it speaks.
#[derive(Clone, Copy, PartialEq)]
enum Server {
    /// No client certificate; TLS 1.3 and 1.2; HTTP/1.1 only (ALPN).
    Open,
    /// As `Open`, choosing HTTP/2 (ALPN `h2`) for a client that offers it.
    OpenHttp2,
    /// A client certificate signed by the test CA is required; TLS 1.3.
    Mutual,
    /// The same, TLS 1.2 only: there the refusal comes inside the handshake.
    MutualTls12,
}

/// The memory service's routes over TLS on `127.0.0.1:0`.
struct TlsServer {
    addr: std::net::SocketAddr,
    /// TCP connections accepted.
    accepted: Arc<AtomicUsize>,
    /// TLS handshakes completed.
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    /// The service's shutdown signals, held so that its streams stay open.
    _signals: (watch::Sender<bool>, watch::Sender<bool>),
    _store: tempfile::TempDir,
}

impl TlsServer {
    async fn start(identity: &Identity, pki: &Pki, kind: Server) -> Self {
        let versions: &[&rustls::SupportedProtocolVersion] = match kind {
            Server::MutualTls12 => &[&rustls::version::TLS12],
            Server::Open | Server::OpenHttp2 | Server::Mutual => rustls::DEFAULT_VERSIONS,
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap();
        let builder = match kind {
            Server::Open | Server::OpenHttp2 => builder.with_no_client_auth(),
            Server::Mutual | Server::MutualTls12 => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    pki.roots(),
                    provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(identity.chain.clone(), identity.key())
            .unwrap();
        config.alpn_protocols = match kind {
            Server::OpenHttp2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            _ => vec![b"http/1.1".to_vec()],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let (service, store) = cortex_test_support::memory_service().await;
        let (stopping_tx, stopping) = watch::channel(false);
        let (expired_tx, expired) = watch::channel(false);
        let app = router(
            service,
            ServiceConfig::default(),
            ShutdownSignals { stopping, expired },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (accepted, handshakes) = (accepted.clone(), handshakes.clone());
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, app, handshakes) =
                        (acceptor.clone(), app.clone(), handshakes.clone());
                    tokio::spawn(async move {
                        // Each handshake on its own task: a slow or failing
                        // one holds up no other.
                        let Ok(Ok(tls)) = tokio::time::timeout(LIMIT, acceptor.accept(tcp)).await
                        else {
                            return;
                        };
                        handshakes.fetch_add(1, Ordering::SeqCst);
                        let service = hyper_util::service::TowerToHyperService::new(app);
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let io = hyper_util::rt::TokioIo::new(tls);
                        let _ = if h2 {
                            hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(io, service)
                            .await
                        } else {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await
                        };
                    });
                }
            }
        });
        Self {
            addr,
            accepted,
            handshakes,
            task,
            _signals: (stopping_tx, expired_tx),
            _store: store,
        }
    }

    /// `https://127.0.0.1:PORT`.
    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client whose `memory` service is at `url`, with `config`.
fn client(url: &str, config: ClientConfig) -> NetworkMcpClient {
    common::client_for(url, config)
}

async fn store(client: &NetworkMcpClient, content: &str) -> Result<serde_json::Value, McpError> {
    let call = client.call_tool(
        "memory",
        "store_input",
        json!({"user_id": "u1", "input_data": {"content": content}}),
    );
    tokio::time::timeout(LIMIT, call)
        .await
        .unwrap_or_else(|_| panic!("no answer within {LIMIT:?}"))
}

/// The first I/O error kind on `error`'s chain of sources.
fn io_kind(error: &McpError) -> Option<std::io::ErrorKind> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = e.source();
    }
    None
}

/// Asserts that `error` is a refused handshake: nothing sent, at the first
/// attempt, not to be retried, an `InvalidData` I/O error carrying the
/// rustls error on its chain; that error is returned.
#[track_caller]
fn refused_handshake(error: &McpError) -> rustls::Error {
    assert!(matches!(error, McpError::Connection { .. }), "{error:?}");
    assert!(error.is_connect(), "nothing was sent: {error:?}");
    assert_eq!(error.retry(), Retry::Never, "{error}");
    assert!(!error.is_retryable());
    assert_eq!(error.attempts(), Some(1), "not retried: {error}");
    assert_eq!(
        io_kind(error),
        Some(std::io::ErrorKind::InvalidData),
        "{error:?}"
    );
    rustls_error(error)
        .unwrap_or_else(|| panic!("no rustls error on the chain of {error:?}"))
        .clone()
}

#[tokio::test]
async fn a_call_over_https_trusting_the_test_ca_succeeds() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki.server(), &pki, Server::Open).await;
    let config = common::fast_config()
        .ca_file(Some(pki.ca_file()))
        .build()
        .unwrap();
    let client = client(&server.url(), config);

    let stored = store(&client, "over TLS").await.unwrap();
    let id = stored["item_id"].as_i64().unwrap();
    let item = client
        .call_tool("memory", "get_item", json!({"item_id": id}))
        .await
        .unwrap();
    assert_eq!(item["content"], "over TLS", "{item}");
    let history = client.read_resource("memory", "history/u1").await.unwrap();
    assert!(history.content.to_string().contains("over TLS"));

    assert_eq!(
        server.accepted(),
        1,
        "three calls on one kept-alive connection"
    );
    assert_eq!(server.handshakes(), 1);
    let status = client.endpoint_status();
    assert_eq!(status[0].url, server.url());
    assert_eq!(status[0].pool.dialed_total, 1);

    // `localhost` is in the certificate too; the name it is reached by is
    // the one checked.
    let by_name = format!("https://localhost:{}", server.addr.port());
    let config = common::fast_config()
        .ca_file(Some(pki.ca_file()))
        .build()
        .unwrap();
    store(&self::client(&by_name, config), "by name")
        .await
        .unwrap();
}

#[tokio::test]
async fn without_the_test_ca_the_certificate_is_refused_at_once() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki.server(), &pki, Server::Open).await;

    // The system's roots only (the default): the test CA is not among them.
    for config in [
        common::fast_config().build().unwrap(),
        common::fast_config()
            .tls_system_roots(false)
            .build()
            .unwrap(),
    ] {
        let started = Instant::now();
        let error = store(&client(&server.url(), config), "x")
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "typed and final, not retried until the deadline: {:?}",
            started.elapsed()
        );
        let cause = refused_handshake(&error);
        assert_eq!(
            cause,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("TLS handshake with 127.0.0.1 failed"),
            "{message}"
        );
        assert!(message.contains("set ca_file"), "{message}");
    }
    assert_eq!(server.accepted(), 2, "one connection per call: no retry");
    assert_eq!(server.handshakes(), 0);

    // A breaker sees it as the endpoint's failure, like a refused
    // connection: it opens after `failure_threshold` calls.
    let config = common::fast_config()
        .failure_threshold(2)
        .reset_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let client = client(&server.url(), config);
    for _ in 0..2 {
        refused_handshake(&store(&client, "x").await.unwrap_err());
    }
    assert!(store(&client, "x").await.unwrap_err().is_circuit_open());
}

#[tokio::test]
async fn a_certificate_for_another_host_is_refused() {
    let pki = Pki::new();
    let other = pki.issue(&["other.test"], ExtendedKeyUsagePurpose::ServerAuth);
    let server = TlsServer::start(&other, &pki, Server::Open).await;
    let config = common::fast_config()
        .ca_file(Some(pki.ca_file()))
        .build()
        .unwrap();
    let error = store(&client(&server.url(), config), "x")
        .await
        .unwrap_err();
    let cause = refused_handshake(&error);
    assert!(
        matches!(
            cause,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{cause:?}"
    );
    assert!(error.to_string().contains("host must be a name"), "{error}");
    assert_eq!(server.handshakes(), 0);
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate_and_takes_one_with_it() {
    let pki = Pki::new();
    let client_identity = pki.client();
    let cert = pki.write("client.pem", &client_identity.cert_pem);
    let key = pki.write("client.key", &client_identity.key_pem);
    // A certificate from a CA the server does not trust.
    let stranger_pki = Pki::named("Stranger CA");
    let stranger = stranger_pki.client();
    let stranger_cert = pki.write("stranger.pem", &stranger.cert_pem);
    let stranger_key = pki.write("stranger.key", &stranger.key_pem);

    for kind in [Server::Mutual, Server::MutualTls12] {
        let server = TlsServer::start(&pki.server(), &pki, kind).await;
        let base = || common::fast_config().ca_file(Some(pki.ca_file()));

        // Without a certificate: refused by the server. Under TLS 1.3 the
        // refusal arrives after our side of the handshake, as an alert on
        // the first read; it is still "nothing sent".
        let error = store(&client(&server.url(), base().build().unwrap()), "x")
            .await
            .unwrap_err();
        assert_eq!(
            refused_handshake(&error),
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
            "{error}"
        );
        assert!(error.to_string().contains("client_cert"), "{error}");

        // With one the server does not trust: refused too.
        let config = base()
            .client_cert(Some(stranger_cert.clone()))
            .client_key(Some(stranger_key.clone()))
            .build()
            .unwrap();
        let error = store(&client(&server.url(), config), "x")
            .await
            .unwrap_err();
        assert_eq!(
            refused_handshake(&error),
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
            "{error}"
        );
        assert_eq!(server.handshakes(), 0, "no handshake was completed");

        // With the right one: served.
        let config = base()
            .client_cert(Some(cert.clone()))
            .client_key(Some(key.clone()))
            .build()
            .unwrap();
        let client = client(&server.url(), config);
        store(&client, "mutual").await.unwrap();
        let history = client.read_resource("memory", "history/u1").await.unwrap();
        let text = history.content.to_string();
        assert!(
            text.contains("mutual") && !text.contains("\"x\""),
            "only the accepted client's call ran: {text}"
        );
        assert_eq!(server.handshakes(), 1);
    }
}

#[tokio::test]
async fn kept_alive_tls_connections_stay_within_the_pool_cap() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki.server(), &pki, Server::Open).await;
    let config = common::fast_config()
        .ca_file(Some(pki.ca_file()))
        .max_connections(2)
        .pool_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let client = client(&server.url(), config);
    let calls = futures::stream::iter(0..200)
        .map(|i| {
            let client = client.clone();
            async move {
                client
                    .call_tool(
                        "memory",
                        "store_input",
                        json!({"user_id": "u2", "input_data": {"content": format!("m{i}")}}),
                    )
                    .await
            }
        })
        .buffer_unordered(16);
    let results: Vec<_> = tokio::time::timeout(LIMIT, calls.collect::<Vec<_>>())
        .await
        .unwrap();
    cortex_test_support::assert_none_failed(&results);
    assert!(
        server.accepted() <= 2,
        "200 calls at concurrency 16 opened {} connections",
        server.accepted()
    );
    assert_eq!(server.handshakes(), server.accepted());
    assert!(client.endpoint_status()[0].pool.dialed_total <= 2);
}

#[tokio::test]
async fn resource_streams_over_tls_share_http2_connections_when_the_server_chooses_h2() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki.server(), &pki, Server::OpenHttp2).await;
    let config = common::fast_config()
        .ca_file(Some(pki.ca_file()))
        .build()
        .unwrap();
    let client = client(&server.url(), config);
    store(&client, "before").await.unwrap();
    let calls = server.handshakes();

    let mut streams = Vec::new();
    for _ in 0..150 {
        let mut stream = client
            .stream_resource("memory", "history/u1/stream")
            .await
            .unwrap();
        let backlog = next(&mut stream).await;
        assert!(backlog.data.to_string().contains("before"), "{backlog:?}");
        streams.push(stream);
    }
    assert_eq!(
        server.handshakes() - calls,
        2,
        "150 streams over two HTTP/2 connections"
    );
    store(&client, "live").await.unwrap();
    for stream in &mut streams {
        let live = next(stream).await;
        assert!(live.data.to_string().contains("live"), "{live:?}");
    }
    assert_eq!(server.handshakes(), server.accepted());
}

#[tokio::test]
async fn a_resource_stream_runs_over_tls() {
    let pki = Pki::new();
    // ALPN `http/1.1` alone: the stream takes an HTTP/1.1 connection.
    let server = TlsServer::start(&pki.server(), &pki, Server::Open).await;
    let config = common::fast_config()
        .ca_file(Some(pki.ca_file()))
        .build()
        .unwrap();
    let client = client(&server.url(), config);
    store(&client, "before").await.unwrap();

    let mut stream = client
        .stream_resource("memory", "history/u1/stream")
        .await
        .unwrap();
    let backlog = next(&mut stream).await;
    assert!(backlog.data.to_string().contains("before"), "{backlog:?}");
    // A live event, written while the stream holds its TLS connection.
    store(&client, "live").await.unwrap();
    let live = loop {
        let event = next(&mut stream).await;
        if event.data.to_string().contains("live") {
            break event;
        }
    };
    assert!(live.id.is_some(), "{live:?}");
    assert_eq!(server.handshakes(), server.accepted());
}

/// The next event of `stream`, within [`LIMIT`].
async fn next(stream: &mut cortex_client::EventStream) -> cortex_client::StreamEvent {
    tokio::time::timeout(LIMIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("no event within {LIMIT:?}"))
        .unwrap_or_else(|| panic!("the stream ended"))
        .unwrap_or_else(|e| panic!("stream error: {e}"))
}

#[tokio::test]
async fn a_server_that_never_answers_the_handshake_times_out_within_connect_timeout() {
    // Accepts, and says nothing: the handshake waits for a ServerHello.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let config = common::fast_config()
        .connect_timeout(Duration::from_millis(300))
        .max_retries(1)
        .build()
        .unwrap();
    let started = Instant::now();
    let error = store(&client(&url, config), "x").await.unwrap_err();
    let elapsed = started.elapsed();
    held.abort();
    assert!(error.is_connect() && error.is_timeout(), "{error:?}");
    assert_eq!(
        error.retry(),
        Retry::Always,
        "a slow handshake may succeed later"
    );
    assert_eq!(error.attempts(), Some(2), "{error}");
    assert!(
        error
            .to_string()
            .contains("TLS handshake with 127.0.0.1 timed out"),
        "{error}"
    );
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_secs(5),
        "two attempts of 300 ms each: {elapsed:?}"
    );
}

/// A `CONNECT`-only proxy: reads the request head, dials the target it
/// names, answers `200`, then copies bytes both ways. Counts `CONNECT`s
/// and refuses anything else (a forwarded request) with a `405`.
struct ConnectProxy {
    port: u16,
    connects: Arc<AtomicUsize>,
    other: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connects = Arc::new(AtomicUsize::new(0));
        let other = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (connects, other) = (connects.clone(), other.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let (connects, other) = (connects.clone(), other.clone());
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                            match inbound.read(&mut byte).await {
                                Ok(1) => head.push(byte[0]),
                                _ => return,
                            }
                        }
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let mut words = head.split_whitespace();
                        let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
                            other.fetch_add(1, Ordering::SeqCst);
                            let _ = inbound
                                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .await;
                            return;
                        };
                        connects.fetch_add(1, Ordering::SeqCst);
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                            let _ = inbound.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                            return;
                        };
                        if inbound
                            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .await
                            .is_ok()
                        {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }
        });
        Self {
            port,
            connects,
            other,
            task,
        }
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn through_a_proxy_tls_runs_inside_a_connect_tunnel_even_when_forwarding_is_configured() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki.server(), &pki, Server::Open).await;
    let proxy = ConnectProxy::start().await;
    for tunnel in [false, true] {
        let config = common::fast_config()
            .ca_file(Some(pki.ca_file()))
            .proxy(format!("http://127.0.0.1:{}", proxy.port).parse().unwrap())
            .proxy_tunnel(tunnel)
            .build()
            .unwrap();
        let client = client(&server.url(), config);
        store(&client, "tunnelled").await.unwrap();
        store(&client, "again").await.unwrap();
    }
    assert_eq!(
        proxy.connects.load(Ordering::SeqCst),
        2,
        "one tunnel per client, kept alive across its calls"
    );
    assert_eq!(
        proxy.other.load(Ordering::SeqCst),
        0,
        "no request was forwarded in the clear"
    );
    assert_eq!(server.handshakes(), 2, "TLS end to end, through the tunnel");

    // The certificate is still checked end to end: the proxy is no reason
    // to trust the target.
    let config = common::fast_config()
        .proxy(format!("http://127.0.0.1:{}", proxy.port).parse().unwrap())
        .build()
        .unwrap();
    let error = store(&client(&server.url(), config), "x")
        .await
        .unwrap_err();
    assert_eq!(
        refused_handshake(&error),
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );
}

#[tokio::test]
async fn an_https_url_on_a_plain_http_service_fails_without_hanging() {
    let (plain, _dir) = cortex_test_support::start_memory(ServiceConfig::default()).await;
    let url = format!("https://{}", plain.addr);
    let started = Instant::now();
    let error = store(&client(&url, common::fast_config().build().unwrap()), "x")
        .await
        .unwrap_err();
    // The service's answer to bytes that were no request is not TLS:
    // refused at once.
    assert!(matches!(
        refused_handshake(&error),
        rustls::Error::InvalidMessage(_)
    ));
    assert!(
        error.to_string().contains("does the endpoint speak TLS"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn active_health_checks_reach_https_endpoints_with_the_clients_trust_and_certificate() {
    use cortex_client::discovery::{
        Endpoint, HealthChecked, HealthConfig, HealthProbe, PlainHttp, ServiceDiscovery,
    };
    use cortex_client::{ClientHealthProbe, StaticDiscovery};

    let pki = Pki::new();
    let identity = pki.client();
    let cert = pki.write("client.pem", &identity.cert_pem);
    let key = pki.write("client.key", &identity.key_pem);
    let server = TlsServer::start(&pki.server(), &pki, Server::Mutual).await;
    let endpoint = Endpoint::new(server.url());
    let second = Duration::from_secs(5);
    let with_identity = ClientHealthProbe::new(
        common::fast_config()
            .ca_file(Some(pki.ca_file()))
            .client_cert(Some(cert))
            .client_key(Some(key))
            .build()
            .unwrap(),
    );
    assert!(with_identity.speaks_tls() && !PlainHttp.speaks_tls());
    with_identity
        .check("memory", &endpoint, second)
        .await
        .unwrap();
    // The trust read at an endpoint's first check is kept for the next
    // ones (the files are not read again every interval), and each check
    // still makes a connection of its own.
    let ca_file = pki.ca_file();
    std::fs::write(&ca_file, "not a certificate").unwrap();
    let handshakes = server.handshakes();
    with_identity
        .check("memory", &endpoint, second)
        .await
        .unwrap();
    assert_eq!(server.handshakes(), handshakes + 1, "a fresh connection");
    std::fs::write(&ca_file, pki.ca.pem()).unwrap();

    // Without the test CA the server's certificate is refused; without a
    // client certificate, the server refuses the client: both fail the
    // check, with the reason.
    let untrusting = ClientHealthProbe::new(common::fast_config().build().unwrap());
    let refused = untrusting.check("memory", &endpoint, second).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("certificate")),
        "{refused:?}"
    );
    let anonymous = ClientHealthProbe::new(
        common::fast_config()
            .ca_file(Some(pki.ca_file()))
            .build()
            .unwrap(),
    );
    assert!(anonymous.check("memory", &endpoint, second).await.is_err());

    // Through discovery: the endpoint is checked (a handshake per check)
    // and goes unhealthy once its server is gone.
    let health = HealthConfig {
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(2),
        unhealthy_threshold: 2,
        ..HealthConfig::default()
    };
    let checked = HealthChecked::with_probe(
        StaticDiscovery::new().with("memory", server.url()),
        health,
        Arc::new(with_identity),
    );
    checked.resolve("memory").await.unwrap();
    let started = Instant::now();
    while server.handshakes() < 2 {
        assert!(started.elapsed() < LIMIT, "no TLS health check was made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(checked.is_endpoint_usable("memory", &server.url()));
    let url = server.url();
    drop(server);
    while checked.is_endpoint_usable("memory", &url) {
        assert!(
            started.elapsed() < LIMIT,
            "a gone https endpoint stayed healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
