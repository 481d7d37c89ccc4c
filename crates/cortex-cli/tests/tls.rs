//! TLS through the built `cortex` binary: `cortex serve memory --tls-cert
//! … --tls-key …` serves https://, and client commands reach it over TLS
//! trusting the test CA (`CORTEX_CLIENT_CA_FILE`); `cortex up` with a
//! self-signed certificate (and mutual TLS) serves both services over
//! https://, cognition reaching memory over TLS. Certificates are made here
//! with rcgen.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use common::{cortex, free_port, run_with_env};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A test CA's certificate file, and a server certificate for
/// `127.0.0.1` and `localhost` it signed, with its key: `(ca, cert, key)`.
fn ca_and_server(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params
        .distinguished_name
        .push(DnType::CommonName, "Cortex CLI test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (
        write(dir, "ca.pem", &ca.pem()),
        write(dir, "server.pem", &cert.pem()),
        write(dir, "server.key", &key.serialize_pem()),
    )
}

/// Reads `child`'s stdout lines until one starts with `last`; all of them.
fn lines_until(child: &mut Child, last: &str) -> Vec<String> {
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "ended before a `{last}` line: {lines:?}"
        );
        let done = line.starts_with(last);
        lines.push(line.trim_end().to_owned());
        if done {
            return lines;
        }
    }
}

#[test]
fn serve_memory_over_tls_and_call_it_with_the_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server(dir.path());
    let port = free_port().to_string();
    let mut child = cortex()
        .args(["serve", "memory", "--port", &port, "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--db")
        .arg(dir.path().join("memory.sqlite3"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = lines_until(&mut child, "memory service listening on");
    let _serving = Process(child);
    let url = format!("https://127.0.0.1:{port}");
    assert!(ready.last().unwrap().ends_with(&url), "{ready:?}");
    let service = format!("memory={url}");

    let stored = run_with_env(
        &[
            "--service",
            &service,
            "--json",
            "call",
            "memory",
            "store_input",
            "user_id=u1",
            "input_data.content=over TLS",
        ],
        None,
        &[("CORTEX_CLIENT_CA_FILE", &ca)],
    )
    .ok()
    .json();
    assert_eq!(stored["status"], "stored", "{stored}");
    let id = stored["item_id"].to_string();
    let item = run_with_env(
        &[
            "--service",
            &service,
            "--json",
            "call",
            "memory",
            "get_item",
            &format!("item_id={id}"),
        ],
        None,
        &[("CORTEX_CLIENT_CA_FILE", &ca)],
    )
    .ok()
    .json();
    assert_eq!(item["content"], "over TLS", "{item}");

    // Without the CA: refused at once, saying what to set.
    run_with_env(
        &[
            "--service",
            &service,
            "call",
            "memory",
            "get_item",
            "item_id=1",
        ],
        None,
        &[],
    )
    .fails(4, "ca_file");
}

#[test]
fn serve_refuses_tls_files_it_cannot_use_naming_the_flag_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = ca_and_server(dir.path());
    let missing = dir.path().join("missing.pem");
    let db = dir.path().join("memory.sqlite3");
    let serve = |cert: &Path, key: &Path| {
        let mut args = vec!["serve", "memory", "--port", "0", "--db"];
        args.push(db.to_str().unwrap());
        args.extend(["--tls-cert", cert.to_str().unwrap()]);
        args.extend(["--tls-key", key.to_str().unwrap()]);
        common::run(&args, None)
    };
    let run = serve(&missing, &key).fails(2, "--tls-cert");
    assert!(run.stderr.contains("missing.pem"), "{run:?}");
    let run = serve(&cert, &cert).fails(2, "--tls-key");
    assert!(run.stderr.contains("server.pem"), "{run:?}");
    // A key without its certificate is a usage error of clap's.
    common::run(
        &["serve", "memory", "--tls-key", key.to_str().unwrap()],
        None,
    )
    .fails(2, "--tls-cert");
}

#[test]
fn up_with_a_self_signed_certificate_and_mutual_tls_serves_every_service_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Self-signed, no extended key usage: valid for the server and, with
    // --tls-client-ca naming the same file, for the internal clients.
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = write(dir.path(), "self.pem", &certified.cert.pem());
    let key = write(
        dir.path(),
        "self.key",
        &certified.signing_key.serialize_pem(),
    );
    let mut child = cortex()
        .arg("up")
        .arg("--data-dir")
        .arg(&data)
        .args(["--memory-port", &free_port().to_string()])
        .args(["--cognition-port", &free_port().to_string()])
        .args(["--core-port", &free_port().to_string()])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--tls-client-ca")
        .arg(&cert)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // `ready:` comes once all three answered /health over TLS.
    let lines = lines_until(&mut child, "ready:");
    let _up = Process(child);
    let text = lines.join("\n");
    let ready = lines.last().unwrap();
    let urls: Vec<&str> = ready
        .split_whitespace()
        .filter(|word| word.starts_with("https://"))
        .collect();
    assert_eq!(urls.len(), 3, "memory, cognition and core: {text}");
    let cert = std::fs::canonicalize(&cert).unwrap();
    let key = std::fs::canonicalize(&key).unwrap();
    for variable in [
        format!("MEMORY_SERVICE_URL={}", urls[0]),
        format!("CORTEX_CLIENT_CA_FILE={}", cert.display()),
        format!("CORTEX_CLIENT_CLIENT_CERT={}", cert.display()),
        format!("CORTEX_CLIENT_CLIENT_KEY={}", key.display()),
    ] {
        assert!(text.contains(&variable), "{variable} in {text}");
    }

    // As the `try:` line says: a client command with those variables.
    let memory = format!("memory={}", urls[0]);
    let cognition = format!("cognition={}", urls[1]);
    let vars: [(&str, &Path); 4] = [
        ("CORTEX_DATA_DIR", &data),
        ("CORTEX_CLIENT_CA_FILE", &cert),
        ("CORTEX_CLIENT_CLIENT_CERT", &cert),
        ("CORTEX_CLIENT_CLIENT_KEY", &key),
    ];
    let stored = run_with_env(
        &[
            "--service",
            &memory,
            "--json",
            "call",
            "memory",
            "store_input",
            "user_id=u1",
            "input_data.content=hello over mutual TLS",
        ],
        None,
        &vars,
    )
    .ok()
    .json();
    assert_eq!(stored["status"], "stored", "{stored}");
    // Cognition reads it from memory over TLS, with the certificate.
    let context = run_with_env(
        &[
            "--service",
            &cognition,
            "--json",
            "call",
            "cognition",
            "get_context",
            "user_id=u1",
        ],
        None,
        &vars,
    )
    .ok();
    assert!(
        context.stdout.contains("hello over mutual TLS"),
        "{context:?}"
    );

    // Without a client certificate: refused by the handshake.
    run_with_env(
        &[
            "--service",
            &memory,
            "call",
            "memory",
            "get_item",
            "item_id=1",
        ],
        None,
        &vars[..2],
    )
    .fails(4, "client_cert");
}
