//! The kit's own listener over TLS: a memory service served with
//! `ServiceConfig::tls` on `127.0.0.1:0`, called by the network client
//! over `https://`, with certificates made here by rcgen (a test CA, a
//! server certificate for `127.0.0.1` and `localhost`, a client
//! certificate).
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cortex_client::tls::{rustls, rustls_error};
use cortex_client::{ClientConfig, McpClient, McpError, NetworkMcpClient, StaticDiscovery};
use cortex_service::tls::TlsFile;
use cortex_service::{HttpLimits, ServiceConfig, TlsConfig, TlsSetupError};
use cortex_test_support::{TestServer, start_memory};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// Upper bound of anything a test waits for: a hang fails, it does not stall.
const LIMIT: Duration = Duration::from_secs(20);

/// A test CA and the PEM files of what it signed.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

/// The PEM files of one certificate and its key.
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "Cortex test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            ca,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A certificate for `names` signed by the CA, written as `NAME.pem`
    /// and `NAME.key`.
    fn issue(&self, name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Files {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Files {
            cert: self.write(&format!("{name}.pem"), &cert.pem()),
            key: self.write(&format!("{name}.key"), &key.serialize_pem()),
        }
    }

    /// A server certificate valid from `since` ago until `left` from now.
    fn server_valid(&self, name: &str, since: time::Duration, left: time::Duration) -> Files {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - since;
        params.not_after = now + left;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Files {
            cert: self.write(&format!("{name}.pem"), &cert.pem()),
            key: self.write(&format!("{name}.key"), &key.serialize_pem()),
        }
    }

    fn server(&self) -> Files {
        self.issue(
            "server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self) -> Files {
        self.issue(
            "client",
            &["client.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// The CA certificate's PEM file: the client's `ca_file`, the
    /// service's client CA.
    fn ca_file(&self) -> PathBuf {
        self.write("ca.pem", &self.ca.pem())
    }
}

/// Memory served over TLS with `limits`; `mutual`: client certificates
/// signed by the test CA are required.
async fn start(
    pki: &Pki,
    mutual: bool,
    limits: HttpLimits,
) -> (TestServer, String, tempfile::TempDir) {
    let server = pki.server();
    let client_ca = mutual.then(|| pki.ca_file());
    let tls = TlsConfig::from_pem_files(&server.cert, &server.key, client_ca.as_deref()).unwrap();
    assert_eq!(tls.requires_client_certificate(), mutual);
    let (running, dir) = start_memory(ServiceConfig {
        tls: Some(tls),
        limits,
        ..ServiceConfig::default()
    })
    .await;
    let url = format!("https://127.0.0.1:{}", running.addr.port());
    (running, url, dir)
}

fn client(url: &str, config: ClientConfig) -> NetworkMcpClient {
    let discovery = Arc::new(StaticDiscovery::new().with("memory", url));
    NetworkMcpClient::builder(discovery)
        .config(config)
        .build()
        .unwrap()
}

fn trusting(pki: &Pki) -> cortex_client::config::ClientConfigBuilder {
    ClientConfig::builder()
        .ca_file(Some(pki.ca_file()))
        .request_timeout(Duration::from_secs(10))
}

/// Stores `content` for `u1` and reads it back by id.
async fn store_and_get(client: &NetworkMcpClient, content: &str) -> Result<(), McpError> {
    let stored = tokio::time::timeout(
        LIMIT,
        client.call_tool(
            "memory",
            "store_input",
            json!({"user_id": "u1", "input_data": {"content": content}}),
        ),
    )
    .await
    .expect("store_input answers within the limit")?;
    assert_eq!(stored["status"], "stored", "{stored}");
    let item = client
        .call_tool("memory", "get_item", json!({"item_id": stored["item_id"]}))
        .await?;
    assert_eq!(item["content"], content, "{item}");
    Ok(())
}

#[tokio::test]
async fn the_kit_serves_https_and_the_network_client_calls_it_with_the_test_ca() {
    let pki = Pki::new();
    let (_server, url, _dir) = start(&pki, false, HttpLimits::default()).await;
    let client = client(&url, trusting(&pki).build().unwrap());
    store_and_get(&client, "over TLS").await.unwrap();
    let history = client.read_resource("memory", "history/u1").await.unwrap();
    assert!(history.content.to_string().contains("over TLS"));

    // Plain HTTP to the TLS port is not served: the handshake fails and
    // the connection is closed, with no answer.
    let plain = url.replacen("https://", "http://", 1);
    let answer = tokio::time::timeout(LIMIT, reqwest::get(format!("{plain}/health")))
        .await
        .expect("closed, not left hanging");
    assert!(answer.is_err(), "{answer:?}");
}

#[tokio::test]
async fn streams_over_the_kits_tls_share_http2_connections_chosen_by_alpn() {
    use futures::StreamExt;
    let pki = Pki::new();
    let (_server, url, _dir) = start(&pki, false, HttpLimits::default()).await;
    let client = client(&url, trusting(&pki).build().unwrap());
    store_and_get(&client, "before").await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..150 {
        let mut stream = client
            .stream_resource("memory", "history/u1/stream")
            .await
            .unwrap();
        let first = tokio::time::timeout(LIMIT, stream.next()).await.unwrap();
        assert!(first.unwrap().unwrap().data.to_string().contains("before"));
        streams.push(stream);
    }
    let pool = client.endpoint_status()[0].pool;
    // The calls' HTTP/1.1 connection, and two HTTP/2 ones for 150 streams.
    assert_eq!(pool.dialed_total, 3, "{pool:?}");
    store_and_get(&client, "live").await.unwrap();
    for stream in &mut streams {
        let event = tokio::time::timeout(LIMIT, stream.next()).await.unwrap();
        assert!(event.unwrap().unwrap().data.to_string().contains("live"));
    }
}

#[tokio::test]
async fn mutual_tls_refuses_a_stream_without_a_certificate_and_names_why() {
    // A stream offers h2, which the kit chooses: its refusal of a client
    // without a certificate cannot be read before the first request (an
    // HTTP/2 server speaks first), so it fails that request; the error
    // names the server's alert and what to set, and is not retried.
    let pki = Pki::new();
    let (_server, url, _dir) = start(&pki, true, HttpLimits::default()).await;
    let client = client(&url, trusting(&pki).build().unwrap());
    let error = tokio::time::timeout(LIMIT, client.stream_resource("memory", "history/u1/stream"))
        .await
        .expect("refused within the limit")
        .err()
        .unwrap();
    assert!(
        matches!(error, McpError::Connection { attempts: 1, .. }),
        "{error:?}"
    );
    assert!(error.is_connect(), "nothing was sent: {error:?}");
    assert!(!error.is_retryable(), "{error:?}");
    let text = format!("{error} {:?}", std::error::Error::source(&error));
    assert!(text.contains("CertificateRequired"), "{text}");
    assert!(text.contains("client_cert"), "{text}");
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate_and_serves_one_with_it() {
    let pki = Pki::new();
    let (_server, url, _dir) = start(&pki, true, HttpLimits::default()).await;

    let started = Instant::now();
    let error = store_and_get(&client(&url, trusting(&pki).build().unwrap()), "x")
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once: {:?}",
        started.elapsed()
    );
    assert!(matches!(error, McpError::Connection { .. }), "{error:?}");
    assert!(error.is_connect(), "nothing was sent: {error:?}");
    assert_eq!(
        rustls_error(&error),
        Some(&rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired
        )),
        "{error:?}"
    );

    let identity = pki.client();
    let config = trusting(&pki)
        .client_cert(Some(identity.cert))
        .client_key(Some(identity.key))
        .build()
        .unwrap();
    let client = client(&url, config);
    store_and_get(&client, "mutual").await.unwrap();
    let history = client.read_resource("memory", "history/u1").await.unwrap();
    let text = history.content.to_string();
    assert!(
        text.contains("mutual") && !text.contains("\"x\""),
        "only the accepted client's call ran: {text}"
    );
}

/// Reads from `peer` until the service closes it (end of stream or a
/// reset); how long that took from `since`. Fails after [`LIMIT`].
async fn closed_after(peer: &mut tokio::net::TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LIMIT, peer.read(&mut buf))
        .await
        .expect("the service closes a silent peer");
    match read {
        Ok(0) | Err(_) => since.elapsed(),
        Ok(n) => panic!("the service sent {n} bytes to a peer that sent nothing"),
    }
}

#[tokio::test]
async fn a_peer_that_never_sends_a_client_hello_is_closed_within_the_header_timeout() {
    let pki = Pki::new();
    let header_timeout = Duration::from_millis(500);
    let limits = HttpLimits {
        header_timeout,
        ..HttpLimits::default()
    };
    let (server, url, _dir) = start(&pki, false, limits).await;
    let opened = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();

    // The accept loop does not wait on it: another client is served while
    // it stays silent.
    store_and_get(&client(&url, trusting(&pki).build().unwrap()), "beside")
        .await
        .unwrap();
    assert!(opened.elapsed() < header_timeout, "served beside it");

    let closed = closed_after(&mut silent, opened).await;
    assert!(
        closed >= header_timeout - Duration::from_millis(50),
        "closed after {closed:?}, before the header timeout"
    );
    assert!(
        closed < header_timeout + Duration::from_secs(3),
        "closed after {closed:?}"
    );
}

#[tokio::test]
async fn a_connection_still_in_its_handshake_holds_a_slot_and_is_closed_to_make_room() {
    let pki = Pki::new();
    let limits = HttpLimits {
        max_connections: 1,
        // Long: only the cap can close it within the test.
        header_timeout: Duration::from_secs(60),
        ..HttpLimits::default()
    };
    let (server, url, _dir) = start(&pki, false, limits).await;
    let opened = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Its TCP connect has completed, so it is ahead of the client's in the
    // listen backlog, which the accept loop takes in order: it holds the
    // only slot when the client's connection is accepted.
    store_and_get(&client(&url, trusting(&pki).build().unwrap()), "room")
        .await
        .unwrap();
    let closed = closed_after(&mut silent, opened).await;
    assert!(
        closed < Duration::from_secs(10),
        "closed to make room, not by its header timeout: {closed:?}"
    );
}

#[test]
fn bad_files_are_start_up_errors_naming_the_file() {
    let pki = Pki::new();
    let good = pki.server();
    let other = pki.client();
    let missing = pki.dir.path().join("missing.pem");
    let garbage = pki.write("garbage.pem", "not PEM at all\n");

    let error = TlsConfig::from_pem_files(&missing, &good.key, None).unwrap_err();
    assert!(matches!(error, TlsSetupError::Read { .. }), "{error:?}");
    assert_eq!(error.file(), TlsFile::Certificate);
    assert_eq!(error.path(), missing);
    assert!(error.to_string().contains("missing.pem"), "{error}");

    let error = TlsConfig::from_pem_files(&garbage, &good.key, None).unwrap_err();
    assert_eq!(error.file(), TlsFile::Certificate, "{error}");
    assert!(
        error.to_string().contains("garbage.pem")
            && error.to_string().contains("no PEM certificate"),
        "{error}"
    );

    // The certificate file is no key.
    let error = TlsConfig::from_pem_files(&good.cert, &good.cert, None).unwrap_err();
    assert_eq!(error.file(), TlsFile::Key, "{error}");
    assert!(error.to_string().contains("no PEM private key"), "{error}");

    // Another certificate's key.
    let error = TlsConfig::from_pem_files(&good.cert, &other.key, None).unwrap_err();
    assert!(
        matches!(error, TlsSetupError::KeyMismatch { .. }),
        "{error:?}"
    );
    assert_eq!(error.path(), other.key);
    assert!(
        error
            .to_string()
            .contains("is not the key of the certificate"),
        "{error}"
    );

    let error = TlsConfig::from_pem_files(&good.cert, &good.key, Some(&garbage)).unwrap_err();
    assert_eq!(error.file(), TlsFile::ClientCa, "{error}");
    assert!(error.to_string().contains("client CA"), "{error}");

    // One file holding the chain and the key, named twice.
    let both = pki.write(
        "both.pem",
        &format!(
            "{}{}",
            std::fs::read_to_string(&good.cert).unwrap(),
            std::fs::read_to_string(&good.key).unwrap()
        ),
    );
    TlsConfig::from_pem_files(&both, &both, None).unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_broken_files_are_not() {
    let old = Pki::new();
    let files = old.server();
    let tls = TlsConfig::from_pem_files(&files.cert, &files.key, None)
        .unwrap()
        .reload_every(Duration::from_millis(50));
    let (running, _dir) = start_memory(ServiceConfig {
        tls: Some(tls),
        ..ServiceConfig::default()
    })
    .await;
    let url = format!("https://127.0.0.1:{}", running.addr.port());
    store_and_get(&client(&url, trusting(&old).build().unwrap()), "before")
        .await
        .unwrap();

    // Renewed in place under another CA, the key first: for a moment the
    // key is not the certificate's, and the service keeps the old pair.
    let new = Pki::new();
    let renewed = new.server();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    store_and_get(&client(&url, trusting(&old).build().unwrap()), "mismatch")
        .await
        .expect("a key without its certificate is not used");
    std::fs::copy(&renewed.cert, &files.cert).unwrap();

    // New connections get the renewed certificate: a client trusting only
    // the new CA is served, one trusting only the old CA is refused.
    let started = Instant::now();
    while let Err(error) =
        store_and_get(&client(&url, trusting(&new).build().unwrap()), "after").await
    {
        assert!(
            started.elapsed() < LIMIT,
            "the renewed certificate was never served: {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let error = store_and_get(&client(&url, trusting(&old).build().unwrap()), "x")
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert!(
        matches!(
            rustls_error(&error),
            Some(rustls::Error::InvalidCertificate(_))
        ),
        "{error:?}"
    );

    // A broken certificate file is not used: the renewed pair stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    store_and_get(&client(&url, trusting(&new).build().unwrap()), "still")
        .await
        .expect("served with the last usable certificate");
}

#[test]
fn a_reload_reports_changed_files_and_names_a_broken_one() {
    let pki = Pki::new();
    let files = pki.server();
    let tls = TlsConfig::from_pem_files(&files.cert, &files.key, None).unwrap();
    assert!(tls.reload_if_changed().is_none(), "nothing changed");

    std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nnot base64\n").unwrap();
    let error = tls.reload_if_changed().unwrap().unwrap_err();
    assert_eq!(error.file(), TlsFile::Key, "{error}");
    assert!(
        tls.reload_if_changed().is_none(),
        "the same broken files are not tried again"
    );

    let renewed = pki.issue(
        "renewed",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::copy(&renewed.key, &files.key).unwrap();
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    assert!(tls.reload_if_changed().unwrap().is_ok());
    assert!(tls.reload_if_changed().is_none());
}

/// `GET /metrics` over TLS, trusting `pki`'s CA: the body.
async fn scrape_metrics(pki: &Pki, port: u16) -> String {
    use tokio::io::AsyncWriteExt;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            pki.ca.der().to_vec(),
        ))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(LIMIT, tls.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// The value of the expiry gauge of certificate file `cert` in `metrics`.
fn expiry_sample(metrics: &str, cert: &std::path::Path) -> Option<i64> {
    let series = format!(
        "cortex_tls_certificate_expiry_timestamp_seconds{{certificate=\"{}\"}} ",
        cert.display()
    );
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map(|value| value.trim().parse().unwrap())
}

fn unix(at: std::time::SystemTime) -> i64 {
    i64::try_from(at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

#[tokio::test]
async fn the_served_certificates_expiry_is_on_metrics_and_follows_a_renewal() {
    let pki = Pki::new();
    // 80 days into a 90-day certificate: its renewal is overdue.
    let files = pki.server_valid("server", time::Duration::days(80), time::Duration::days(10));
    let tls = TlsConfig::from_pem_files(&files.cert, &files.key, None)
        .unwrap()
        .reload_every(Duration::from_millis(50));
    let expires = unix(tls.expires_at().expect("its dates are read"));
    let in_ten_days = unix(std::time::SystemTime::now()) + 10 * 86_400;
    assert!(
        (expires - in_ten_days).abs() < 60,
        "{expires} vs {in_ten_days}"
    );
    let (running, _dir) = start_memory(ServiceConfig {
        tls: Some(tls),
        ..ServiceConfig::default()
    })
    .await;
    let port = running.addr.port();
    let started = Instant::now();
    let mut metrics = scrape_metrics(&pki, port).await;
    // The watcher sets the gauge when it starts, just after the listener.
    while expiry_sample(&metrics, &files.cert).is_none() && started.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = scrape_metrics(&pki, port).await;
    }
    assert_eq!(
        expiry_sample(&metrics, &files.cert),
        Some(expires),
        "{metrics}"
    );

    // Renewed in place for 90 days: the gauge follows.
    let renewed = pki.server_valid("renewed", time::Duration::ZERO, time::Duration::days(90));
    std::fs::copy(&renewed.key, &files.key).unwrap();
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    let later = unix(std::time::SystemTime::now()) + 90 * 86_400;
    loop {
        let metrics = scrape_metrics(&pki, port).await;
        let sample = expiry_sample(&metrics, &files.cert);
        if sample.is_some_and(|at| (at - later).abs() < 60) {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the gauge never showed the renewed expiry: {sample:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
