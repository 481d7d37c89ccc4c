//! Client configuration: defaults, builder, TOML, environment and files.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cortex_client::config::{ClientConfigBuilder, ServiceOverrides};
use cortex_client::{ClientConfig, ConfigError, DiscoverySpec};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The option an `Invalid` error names (panics on anything else).
#[track_caller]
fn invalid_option(result: Result<ClientConfig, ConfigError>) -> String {
    match result {
        Err(ConfigError::Invalid { option, reason }) => {
            let message = ConfigError::Invalid {
                option: option.clone(),
                reason: reason.clone(),
            }
            .to_string();
            assert!(message.contains(&format!("`{option}`")), "{message}");
            assert!(!reason.is_empty());
            option
        }
        other => panic!("expected an invalid value, got {other:?}"),
    }
}

#[track_caller]
fn rejects(builder: ClientConfigBuilder, option: &str) -> String {
    let result = builder.build();
    let message = result.clone().unwrap_err().to_string();
    assert_eq!(invalid_option(result), option, "{message}");
    message
}

/// A configuration with every option away from its default.
fn all_changed() -> ClientConfig {
    tls_files();
    ClientConfig::builder()
        .max_connections(20)
        .idle_timeout(secs(90.0))
        .failure_threshold(7)
        .reset_timeout(secs(15.0))
        .half_open_max_calls(2)
        .max_retries(4)
        .initial_backoff(secs(0.25))
        .backoff_factor(1.5)
        .max_backoff(secs(20.0))
        .request_timeout(secs(12.5))
        .connect_timeout(secs(2.0))
        .pool_timeout(secs(3.0))
        .stream_idle_timeout(secs(30.0))
        .stream_max_reconnects(4)
        .stream_max_backoff(secs(30.0))
        .stream_http2(false)
        .jitter(false)
        .retry_budget_ratio(0.5)
        .retry_budget_min_per_sec(3)
        .retry_budget_window(secs(20.0))
        .retry_after_cap(secs(120.0))
        .proxy("http://alice:s3cret@127.0.0.1:3128".parse().unwrap())
        .no_proxy(cortex_client::proxy::NoProxy::parse("localhost,10.0.0.0/8").unwrap())
        .proxy_tunnel(true)
        .tls_system_roots(false)
        .ca_file(Some(TLS_CA.into()))
        .client_cert(Some(TLS_CLIENT.into()))
        .client_key(Some(TLS_CLIENT.into()))
        .build()
        .unwrap()
}

/// Where [`tls_files`] puts its files: paths known when compiling, so that
/// `ALL_CHANGED` can name them.
const TLS_CA: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/config-tls/ca.pem");
/// A client certificate and its key, in one file (a valid `client_cert`
/// and `client_key` both).
const TLS_CLIENT: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/config-tls/client.pem");

/// Writes the files `TLS_CA` and `TLS_CLIENT` name (once per process).
/// Each is written whole under another name and renamed into place, so a
/// concurrent run of these tests never reads half a file, and the key
/// always sits with its own certificate.
fn tls_files() {
    static WRITTEN: OnceLock<()> = OnceLock::new();
    WRITTEN.get_or_init(|| {
        let ca = rcgen::generate_simple_self_signed(["ca.test".to_owned()]).unwrap();
        let client = rcgen::generate_simple_self_signed(["client.test".to_owned()]).unwrap();
        let client_pem = format!(
            "{}{}",
            client.cert.pem(),
            client.signing_key.serialize_pem()
        );
        for (path, text) in [(TLS_CA, ca.cert.pem()), (TLS_CLIENT, client_pem)] {
            let path = Path::new(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let partial = path.with_extension(format!("{}.part", std::process::id()));
            std::fs::write(&partial, text).unwrap();
            std::fs::rename(&partial, path).unwrap();
        }
    });
}

/// `all_changed` as (option, value in file syntax; the same in a variable,
/// without a string's quotes).
const ALL_CHANGED: &[(&str, &str)] = &[
    ("max_connections", "20"),
    ("idle_timeout", "90"),
    ("failure_threshold", "7"),
    ("reset_timeout", "15"),
    ("half_open_max_calls", "2"),
    ("max_retries", "4"),
    ("initial_backoff", "0.25"),
    ("backoff_factor", "1.5"),
    ("max_backoff", "20.0"),
    ("request_timeout", "12.5"),
    ("connect_timeout", "2"),
    ("pool_timeout", "3"),
    ("stream_idle_timeout", "30"),
    ("stream_max_reconnects", "4"),
    ("stream_max_backoff", "30"),
    ("stream_http2", "false"),
    ("jitter", "false"),
    ("retry_budget_ratio", "0.5"),
    ("retry_budget_min_per_sec", "3"),
    ("retry_budget_window", "20"),
    ("retry_after_cap", "120"),
    ("proxy", "\"http://alice:s3cret@127.0.0.1:3128\""),
    ("no_proxy", "\"localhost,10.0.0.0/8\""),
    ("proxy_tunnel", "true"),
    ("tls_system_roots", "false"),
    (
        "ca_file",
        concat!("\"", env!("CARGO_TARGET_TMPDIR"), "/config-tls/ca.pem\""),
    ),
    (
        "client_cert",
        concat!(
            "\"",
            env!("CARGO_TARGET_TMPDIR"),
            "/config-tls/client.pem\""
        ),
    ),
    (
        "client_key",
        concat!(
            "\"",
            env!("CARGO_TARGET_TMPDIR"),
            "/config-tls/client.pem\""
        ),
    ),
];

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn unique_temp_path(name: &str) -> std::path::PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "cortex-client-config-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

// ---------------------------------------------------------------- defaults

#[test]
fn defaults_match_the_seed_table() {
    let c = ClientConfig::default();
    assert_eq!(c.max_connections, 10);
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.failure_threshold, 5);
    assert_eq!(c.reset_timeout, Duration::from_secs(30));
    assert_eq!(c.half_open_max_calls, 1);
    assert_eq!(c.max_retries, 3);
    assert_eq!(c.initial_backoff, Duration::from_millis(100));
    assert_eq!(c.backoff_factor, 2.0);
    assert_eq!(c.max_backoff, Duration::from_secs(10));
}

#[test]
fn defaults_of_our_options() {
    let c = ClientConfig::default();
    assert_eq!(c.request_timeout, Duration::from_secs(30));
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.pool_timeout, Duration::from_secs(5));
    assert_eq!(c.stream_idle_timeout, Duration::from_secs(45));
    assert_eq!(c.stream_max_reconnects, 10);
    assert_eq!(c.stream_max_backoff, Duration::from_secs(60));
    assert!(c.jitter);
    assert_eq!(c.retry_budget_ratio, 0.2);
    assert_eq!(c.retry_budget_min_per_sec, 10);
    assert_eq!(c.retry_budget_window, Duration::from_secs(10));
    assert_eq!(c.retry_after_cap, Duration::from_secs(60));
    assert!(c.services.is_empty());
    c.validate().unwrap();
    assert_eq!(ClientConfig::builder().build().unwrap(), c);
}

/// The TOML example of the module documentation lists every option with its
/// default.
#[test]
fn documented_toml_example_is_the_defaults() {
    let source = include_str!("../src/config.rs");
    let mut lines = source
        .lines()
        .skip_while(|l| l.trim() != "//! ```toml")
        .skip(1);
    let mut example = String::new();
    for line in lines.by_ref() {
        if line.trim() == "//! ```" {
            break;
        }
        let text = line.strip_prefix("//!").unwrap();
        example.push_str(text.strip_prefix(' ').unwrap_or(text));
        example.push('\n');
    }
    let keys: toml::Table = example.parse().unwrap();
    assert_eq!(keys.len(), ALL_CHANGED.len(), "every option is shown");
    assert_eq!(
        ClientConfig::from_toml_str(&example).unwrap(),
        ClientConfig::default()
    );
}

// ----------------------------------------------------------------- builder

#[test]
fn builder_sets_every_option() {
    let c = all_changed();
    let d = ClientConfig::default();
    assert_ne!(c.max_connections, d.max_connections);
    assert_ne!(c.idle_timeout, d.idle_timeout);
    assert_ne!(c.failure_threshold, d.failure_threshold);
    assert_ne!(c.reset_timeout, d.reset_timeout);
    assert_ne!(c.half_open_max_calls, d.half_open_max_calls);
    assert_ne!(c.max_retries, d.max_retries);
    assert_ne!(c.initial_backoff, d.initial_backoff);
    assert_ne!(c.backoff_factor, d.backoff_factor);
    assert_ne!(c.max_backoff, d.max_backoff);
    assert_ne!(c.request_timeout, d.request_timeout);
    assert_ne!(c.connect_timeout, d.connect_timeout);
    assert_ne!(c.pool_timeout, d.pool_timeout);
    assert_ne!(c.stream_idle_timeout, d.stream_idle_timeout);
    assert_ne!(c.stream_max_reconnects, d.stream_max_reconnects);
    assert_ne!(c.stream_max_backoff, d.stream_max_backoff);
    assert_ne!(c.stream_http2, d.stream_http2);
    assert_ne!(c.jitter, d.jitter);
    assert_ne!(c.retry_budget_ratio, d.retry_budget_ratio);
    assert_ne!(c.retry_budget_min_per_sec, d.retry_budget_min_per_sec);
    assert_ne!(c.retry_budget_window, d.retry_budget_window);
    assert_ne!(c.retry_after_cap, d.retry_after_cap);
    assert_ne!(c.proxy, d.proxy);
    assert_ne!(c.no_proxy, d.no_proxy);
    assert_ne!(c.proxy_tunnel, d.proxy_tunnel);
    assert_ne!(c.tls_system_roots, d.tls_system_roots);
    assert_ne!(c.ca_file, d.ca_file);
    assert_ne!(c.client_cert, d.client_cert);
    assert_ne!(c.client_key, d.client_key);
    assert_eq!(c.request_timeout, Duration::from_millis(12_500));
}

#[test]
fn builder_rejects_each_hard_limit_naming_the_option() {
    let b = ClientConfig::builder;
    let message = rejects(b().max_connections(0), "max_connections");
    assert!(message.contains("1 and 10000"), "{message}");
    rejects(b().max_connections(10_001), "max_connections");
    let message = rejects(b().idle_timeout(Duration::ZERO), "idle_timeout");
    assert!(message.contains("86400"), "{message}");
    rejects(b().idle_timeout(secs(86_400.5)), "idle_timeout");
    rejects(b().failure_threshold(0), "failure_threshold");
    rejects(b().reset_timeout(Duration::ZERO), "reset_timeout");
    rejects(b().half_open_max_calls(0), "half_open_max_calls");
    let message = rejects(b().max_retries(101), "max_retries");
    assert!(message.contains("100"), "{message}");
    rejects(b().initial_backoff(Duration::ZERO), "initial_backoff");
    rejects(b().backoff_factor(0.5), "backoff_factor");
    rejects(b().backoff_factor(f64::NAN), "backoff_factor");
    rejects(b().backoff_factor(f64::INFINITY), "backoff_factor");
    let message = rejects(
        b().initial_backoff(secs(2.0)).max_backoff(secs(1.0)),
        "max_backoff",
    );
    assert!(message.contains("initial_backoff"), "{message}");
    rejects(b().request_timeout(Duration::ZERO), "request_timeout");
    rejects(b().connect_timeout(Duration::ZERO), "connect_timeout");
    rejects(b().pool_timeout(Duration::ZERO), "pool_timeout");
    rejects(
        b().stream_idle_timeout(Duration::ZERO),
        "stream_idle_timeout",
    );
    rejects(b().stream_max_backoff(Duration::ZERO), "stream_max_backoff");
    rejects(b().retry_budget_ratio(-0.1), "retry_budget_ratio");
    rejects(b().retry_budget_ratio(1000.5), "retry_budget_ratio");
    rejects(b().retry_budget_ratio(f64::NAN), "retry_budget_ratio");
    let message = rejects(b().retry_budget_window(secs(0.5)), "retry_budget_window");
    assert!(message.contains("1 s and 60 s"), "{message}");
    rejects(b().retry_budget_window(secs(61.0)), "retry_budget_window");
}

#[test]
fn builder_accepts_the_edges_of_the_hard_limits() {
    let b = ClientConfig::builder;
    b().max_connections(1).build().unwrap();
    b().max_connections(10_000).build().unwrap();
    b().idle_timeout(Duration::from_secs(86_400))
        .build()
        .unwrap();
    b().max_retries(0).build().unwrap();
    b().max_retries(100).build().unwrap();
    b().backoff_factor(1.0).build().unwrap();
    b().initial_backoff(secs(3.0))
        .max_backoff(secs(3.0))
        .build()
        .unwrap();
    b().retry_budget_ratio(0.0).build().unwrap();
    b().retry_budget_ratio(1000.0).build().unwrap();
    b().retry_budget_window(Duration::from_secs(1))
        .build()
        .unwrap();
    b().retry_budget_window(Duration::from_secs(60))
        .build()
        .unwrap();
    b().stream_max_reconnects(0)
        .retry_budget_min_per_sec(0)
        .retry_after_cap(Duration::ZERO)
        .build()
        .unwrap();
}

#[test]
fn values_outside_the_recommended_ranges_are_accepted() {
    let c = ClientConfig::builder()
        .max_connections(100)
        .idle_timeout(secs(5.0))
        .failure_threshold(1)
        .reset_timeout(secs(600.0))
        .half_open_max_calls(10)
        .max_retries(0)
        .initial_backoff(secs(0.01))
        .backoff_factor(10.0)
        .max_backoff(secs(0.5))
        .build()
        .unwrap();
    assert_eq!(c.max_connections, 100);
}

#[test]
fn service_overrides_are_validated_as_applied() {
    let zero = ServiceOverrides {
        max_connections: Some(0),
        ..ServiceOverrides::default()
    };
    rejects(
        ClientConfig::builder().service("memory", zero),
        "services.memory.max_connections",
    );
    // Valid alone, but above the base's max_backoff once applied.
    let slow = ServiceOverrides {
        initial_backoff: Some(secs(20.0)),
        ..ServiceOverrides::default()
    };
    rejects(
        ClientConfig::builder().service("memory", slow.clone()),
        "services.memory.max_backoff",
    );
    let c = ClientConfig::builder()
        .max_backoff(secs(30.0))
        .service("memory", slow)
        .build()
        .unwrap();
    assert_eq!(c.for_service("memory").initial_backoff, secs(20.0));
    rejects(
        ClientConfig::builder().service("", ServiceOverrides::default()),
        "services",
    );
}

#[test]
fn for_service_applies_overrides_and_empties_services() {
    let overrides = ServiceOverrides {
        max_connections: Some(4),
        request_timeout: Some(secs(2.5)),
        jitter: Some(false),
        ..ServiceOverrides::default()
    };
    let c = ClientConfig::builder()
        .max_retries(5)
        .service("memory", overrides.clone())
        .build()
        .unwrap();
    assert_eq!(c.services.get("memory"), Some(&overrides));

    let memory = c.for_service("memory");
    assert_eq!(memory.max_connections, 4);
    assert_eq!(memory.request_timeout, secs(2.5));
    assert!(!memory.jitter);
    assert_eq!(memory.max_retries, 5, "base values are kept");
    assert!(memory.services.is_empty());

    let mut base = c.clone();
    base.services.clear();
    assert_eq!(c.for_service("search"), base);
}

// -------------------------------------------------------------------- TOML

fn toml_of(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
}

#[test]
fn toml_full_file_sets_every_option() {
    tls_files();
    let text = format!(
        "{}\n[services.memory]\nmax_connections = 4\nidle_timeout = 0.5\n",
        toml_of(ALL_CHANGED)
    );
    let c = ClientConfig::from_toml_str(&text).unwrap();
    let mut expected = all_changed();
    expected.services.insert(
        "memory".to_owned(),
        ServiceOverrides {
            max_connections: Some(4),
            idle_timeout: Some(secs(0.5)),
            ..ServiceOverrides::default()
        },
    );
    assert_eq!(c, expected);
}

#[test]
fn toml_every_option_can_be_overridden_per_service() {
    tls_files();
    let text = format!("[services.memory]\n{}", toml_of(ALL_CHANGED));
    let c = ClientConfig::from_toml_str(&text).unwrap();
    assert_eq!(c.for_service("memory"), all_changed());
    assert_eq!(c.for_service("other"), ClientConfig::default());
}

#[test]
fn toml_partial_file_keeps_the_other_defaults() {
    let c = ClientConfig::from_toml_str("max_connections = 12\njitter = false\n").unwrap();
    let expected = ClientConfig {
        max_connections: 12,
        jitter: false,
        ..ClientConfig::default()
    };
    assert_eq!(c, expected);
    assert_eq!(
        ClientConfig::from_toml_str("").unwrap(),
        ClientConfig::default()
    );
}

#[test]
fn toml_service_override_is_applied_by_for_service() {
    let text = r#"
max_connections = 8
request_timeout = 20

[services.memory]
max_connections = 4
reset_timeout = 12.5

[services."search-v2"]
failure_threshold = 9
"#;
    let c = ClientConfig::from_toml_str(text).unwrap();
    assert_eq!(c.services.len(), 2);
    let memory = c.for_service("memory");
    assert_eq!(memory.max_connections, 4);
    assert_eq!(memory.reset_timeout, secs(12.5));
    assert_eq!(memory.request_timeout, secs(20.0));
    assert!(memory.services.is_empty());
    assert_eq!(c.for_service("search-v2").failure_threshold, 9);
    assert_eq!(c.for_service("search-v2").max_connections, 8);
    assert_eq!(c.for_service("unknown").max_connections, 8);
}

#[test]
fn toml_unknown_key_is_rejected_naming_it() {
    let err = ClientConfig::from_toml_str("max_conections = 4").unwrap_err();
    assert_eq!(err, ConfigError::Unknown("max_conections".to_owned()));
    assert!(err.to_string().contains("`max_conections`"), "{err}");

    let err = ClientConfig::from_toml_str("[services.memory]\nbogus = 1").unwrap_err();
    assert_eq!(
        err,
        ConfigError::Unknown("services.memory.bogus".to_owned())
    );

    // A table that is not [services.*].
    let err = ClientConfig::from_toml_str("[memory]\nmax_connections = 4").unwrap_err();
    assert_eq!(err, ConfigError::Unknown("memory".to_owned()));
}

#[test]
fn toml_wrong_type_is_rejected_naming_the_option() {
    let parse = ClientConfig::from_toml_str;
    assert_eq!(
        invalid_option(parse("max_connections = \"ten\"")),
        "max_connections"
    );
    assert_eq!(
        invalid_option(parse("max_connections = 4.5")),
        "max_connections"
    );
    assert_eq!(
        invalid_option(parse("max_connections = -4")),
        "max_connections"
    );
    assert_eq!(
        invalid_option(parse("max_retries = 5_000_000_000")),
        "max_retries"
    );
    assert_eq!(
        invalid_option(parse("idle_timeout = \"60s\"")),
        "idle_timeout"
    );
    assert_eq!(
        invalid_option(parse("backoff_factor = true")),
        "backoff_factor"
    );
    assert_eq!(invalid_option(parse("jitter = 1")), "jitter");
    assert_eq!(invalid_option(parse("jitter = [true]")), "jitter");
    assert_eq!(invalid_option(parse("services = 3")), "services");
    assert_eq!(
        invalid_option(parse("[services]\nmemory = 3")),
        "services.memory"
    );
    assert_eq!(
        invalid_option(parse("[services.memory]\nmax_connections = \"4\"")),
        "services.memory.max_connections"
    );
    let message = parse("max_connections = \"ten\"").unwrap_err().to_string();
    assert!(message.contains("integer"), "{message}");
}

#[test]
fn toml_seconds_may_be_integers_or_floats() {
    let c = ClientConfig::from_toml_str(
        "idle_timeout = 90\nreset_timeout = 12.5\ninitial_backoff = 1\nmax_backoff = 10.0\nbackoff_factor = 2\n",
    )
    .unwrap();
    assert_eq!(c.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.reset_timeout, Duration::from_millis(12_500));
    assert_eq!(c.initial_backoff, Duration::from_secs(1));
    assert_eq!(c.max_backoff, Duration::from_secs(10));
    assert_eq!(c.backoff_factor, 2.0);
    let c = ClientConfig::from_toml_str("idle_timeout = 0.5").unwrap();
    assert_eq!(c.idle_timeout, Duration::from_millis(500));
}

#[test]
fn toml_negative_and_nan_seconds_are_rejected() {
    let parse = ClientConfig::from_toml_str;
    let err = parse("idle_timeout = -1").unwrap_err();
    assert_eq!(invalid_option(Err(err.clone())), "idle_timeout");
    assert!(err.to_string().contains("negative"), "{err}");
    assert_eq!(
        invalid_option(parse("reset_timeout = -0.5")),
        "reset_timeout"
    );
    let err = parse("idle_timeout = nan").unwrap_err();
    assert_eq!(invalid_option(Err(err.clone())), "idle_timeout");
    assert!(err.to_string().contains("finite"), "{err}");
    assert_eq!(
        invalid_option(parse("request_timeout = inf")),
        "request_timeout"
    );
    assert_eq!(
        invalid_option(parse("retry_after_cap = -inf")),
        "retry_after_cap"
    );
    assert_eq!(
        invalid_option(parse("pool_timeout = 1e300")),
        "pool_timeout"
    );
    assert_eq!(
        invalid_option(parse("backoff_factor = nan")),
        "backoff_factor"
    );
    assert_eq!(
        invalid_option(parse("[services.memory]\nidle_timeout = -3")),
        "services.memory.idle_timeout"
    );
}

#[test]
fn toml_values_are_validated() {
    let parse = ClientConfig::from_toml_str;
    assert_eq!(
        invalid_option(parse("max_connections = 0")),
        "max_connections"
    );
    assert_eq!(
        invalid_option(parse("initial_backoff = 5\nmax_backoff = 1")),
        "max_backoff"
    );
    assert_eq!(
        invalid_option(parse("[services.memory]\nhalf_open_max_calls = 0")),
        "services.memory.half_open_max_calls"
    );
}

#[test]
fn toml_syntax_error_is_a_parse_error() {
    let err = ClientConfig::from_toml_str("max_connections = = 4").unwrap_err();
    assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("config file is not valid TOML"),
        "{err}"
    );
}

// --------------------------------------------------------------------- env

#[test]
fn env_overlay_is_applied() {
    let base =
        ClientConfig::from_toml_str("max_retries = 4\n[services.memory]\nmax_connections = 2\n")
            .unwrap();
    let c = base
        .with_env(env(&[
            ("CORTEX_CLIENT_MAX_CONNECTIONS", "4"),
            ("CORTEX_CLIENT_IDLE_TIMEOUT", "0.5"),
            ("CORTEX_CLIENT_JITTER", "false"),
            ("PATH", "/usr/bin"),
            ("CORTEX_OTHER", "x"),
        ]))
        .unwrap();
    assert_eq!(c.max_connections, 4);
    assert_eq!(c.idle_timeout, Duration::from_millis(500));
    assert!(!c.jitter);
    assert_eq!(c.max_retries, 4, "values from the file are kept");
    assert_eq!(
        c.for_service("memory").max_connections,
        2,
        "services are kept"
    );
    assert_eq!(
        ClientConfig::default().with_env(Vec::new()).unwrap(),
        ClientConfig::default()
    );
}

#[test]
fn env_sets_every_option() {
    tls_files();
    let vars: Vec<(String, String)> = ALL_CHANGED
        .iter()
        .map(|(k, v)| {
            (
                format!("CORTEX_CLIENT_{}", k.to_uppercase()),
                v.trim_matches('"').to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ClientConfig::default().with_env(vars).unwrap(),
        all_changed()
    );
    let c = ClientConfig::default()
        .with_env(env(&[
            ("CORTEX_CLIENT_JITTER", "0"),
            ("CORTEX_CLIENT_REQUEST_TIMEOUT", " 7 "),
        ]))
        .unwrap();
    assert!(!c.jitter);
    assert_eq!(c.request_timeout, Duration::from_secs(7));
}

#[test]
fn env_unknown_variable_is_rejected_naming_it() {
    let err = ClientConfig::default()
        .with_env(env(&[("CORTEX_CLIENT_X", "1")]))
        .unwrap_err();
    assert_eq!(err, ConfigError::Unknown("CORTEX_CLIENT_X".to_owned()));
    assert!(err.to_string().contains("CORTEX_CLIENT_X"), "{err}");
    let err = ClientConfig::default()
        .with_env(env(&[("CORTEX_CLIENT_max_connections", "4")]))
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::Unknown("CORTEX_CLIENT_max_connections".to_owned())
    );
    let err = ClientConfig::default()
        .with_env(env(&[("CORTEX_CLIENT_SERVICES", "x")]))
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::Unknown("CORTEX_CLIENT_SERVICES".to_owned())
    );
}

#[test]
fn env_bad_value_names_the_variable() {
    let with = |name: &str, value: &str| ClientConfig::default().with_env(env(&[(name, value)]));
    for (name, value) in [
        ("CORTEX_CLIENT_MAX_CONNECTIONS", "abc"),
        ("CORTEX_CLIENT_MAX_CONNECTIONS", "4.0"),
        ("CORTEX_CLIENT_MAX_CONNECTIONS", "-1"),
        ("CORTEX_CLIENT_MAX_CONNECTIONS", ""),
        ("CORTEX_CLIENT_IDLE_TIMEOUT", "60s"),
        ("CORTEX_CLIENT_IDLE_TIMEOUT", "-1"),
        ("CORTEX_CLIENT_IDLE_TIMEOUT", "NaN"),
        ("CORTEX_CLIENT_JITTER", "maybe"),
        // Parsed, but out of range.
        ("CORTEX_CLIENT_MAX_CONNECTIONS", "0"),
        ("CORTEX_CLIENT_BACKOFF_FACTOR", "NaN"),
        ("CORTEX_CLIENT_RETRY_BUDGET_WINDOW", "0.5"),
    ] {
        let result = with(name, value);
        let message = result.clone().unwrap_err().to_string();
        assert_eq!(invalid_option(result), name, "{value:?}: {message}");
    }
}

#[test]
fn from_env_reads_the_process_environment() {
    // The test environment sets no CORTEX_CLIENT_* variable, unless a
    // developer does; either way this must not panic.
    let has_ours =
        std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("CORTEX_CLIENT_"));
    let result = ClientConfig::from_env();
    if !has_ours {
        assert_eq!(result.unwrap(), ClientConfig::default());
    }
}

// ------------------------------------------------------------------- files

#[test]
fn from_file_reads_a_toml_file() {
    let path = unique_temp_path("client.toml");
    std::fs::write(
        &path,
        "max_connections = 7\n[services.memory]\nmax_retries = 0\n",
    )
    .unwrap();
    let result = ClientConfig::from_file(&path);
    std::fs::remove_file(&path).unwrap();
    let c = result.unwrap();
    assert_eq!(c.max_connections, 7);
    assert_eq!(c.for_service("memory").max_retries, 0);
}

#[test]
fn from_file_missing_path_names_the_path() {
    let path = unique_temp_path("missing.toml");
    let err = ClientConfig::from_file(&path).unwrap_err();
    let shown = path.display().to_string();
    match &err {
        ConfigError::File { path, reason } => {
            assert_eq!(path, &shown);
            assert!(!reason.is_empty());
        }
        other => panic!("expected a file error, got {other:?}"),
    }
    assert!(err.to_string().contains(&shown), "{err}");
}

#[test]
fn from_file_syntax_error_names_the_path() {
    let path = unique_temp_path("broken.toml");
    std::fs::write(&path, "max_connections = \n").unwrap();
    let result = ClientConfig::from_file(&path);
    std::fs::remove_file(&path).unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

// ------------------------------------------------------- service overrides

#[test]
fn service_overrides_serde_uses_seconds_and_denies_unknown_fields() {
    let overrides = ServiceOverrides {
        max_connections: Some(4),
        idle_timeout: Some(secs(0.5)),
        backoff_factor: Some(1.5),
        jitter: Some(false),
        ..ServiceOverrides::default()
    };
    let text = toml::to_string(&overrides).unwrap();
    assert!(text.contains("idle_timeout = 0.5"), "{text}");
    assert!(!text.contains("reset_timeout"), "{text}");
    assert_eq!(
        toml::from_str::<ServiceOverrides>(&text).unwrap(),
        overrides
    );

    let json = serde_json::to_value(&overrides).unwrap();
    assert_eq!(
        serde_json::from_value::<ServiceOverrides>(json).unwrap(),
        overrides
    );

    let parsed: ServiceOverrides = toml::from_str("reset_timeout = 12\nmax_backoff = 2.5").unwrap();
    assert_eq!(parsed.reset_timeout, Some(Duration::from_secs(12)));
    assert_eq!(parsed.max_backoff, Some(Duration::from_millis(2500)));

    assert!(serde_json::from_str::<ServiceOverrides>(r#"{"bogus": 1}"#).is_err());
    assert!(serde_json::from_str::<ServiceOverrides>(r#"{"idle_timeout": -1}"#).is_err());
    assert_eq!(
        serde_json::from_str::<ServiceOverrides>("{}").unwrap(),
        ServiceOverrides::default()
    );
}

// --------------------------------------------------------------- discovery

#[test]
fn discovery_is_unset_by_default_and_kept_per_service() {
    assert_eq!(ClientConfig::default().discovery, None);
    assert_eq!(ClientConfig::from_toml_str("").unwrap().discovery, None);
    let spec: DiscoverySpec = "etcd://127.0.0.1:2379/cortex".parse().unwrap();
    let c = ClientConfig::builder()
        .discovery(spec.clone())
        .service("memory", ServiceOverrides::default())
        .build()
        .unwrap();
    assert_eq!(c.discovery, Some(spec.clone()));
    assert_eq!(c.for_service("memory").discovery, Some(spec.clone()));
    assert_eq!(c.for_service("other").discovery, Some(spec));
}

/// The commented `discovery` line of the documented example is valid.
#[test]
fn documented_discovery_example_parses() {
    let source = include_str!("../src/config.rs");
    let line = source
        .lines()
        .find_map(|l| l.strip_prefix("//! # discovery = "))
        .unwrap();
    let c = ClientConfig::from_toml_str(&format!("discovery = {line}")).unwrap();
    assert_eq!(
        c.discovery,
        Some(DiscoverySpec::Etcd("etcd://127.0.0.1:2379/cortex".into()))
    );
}

#[test]
fn toml_discovery_takes_every_form() {
    for (text, expected) in [
        ("env", DiscoverySpec::Env),
        (
            "file:services.toml",
            DiscoverySpec::File("services.toml".into()),
        ),
        (
            "dns:service.consul@127.0.0.1:8600",
            DiscoverySpec::Dns {
                domain: "service.consul".into(),
                nameserver: Some("127.0.0.1:8600".parse().unwrap()),
            },
        ),
        ("dns:service.consul", "dns:service.consul".parse().unwrap()),
        (
            "etcd://127.0.0.1:2379/cortex",
            DiscoverySpec::Etcd("etcd://127.0.0.1:2379/cortex".into()),
        ),
    ] {
        let c =
            ClientConfig::from_toml_str(&format!("discovery = \"{text}\"\nmax_connections = 4\n"))
                .unwrap();
        assert_eq!(c.discovery.as_ref(), Some(&expected), "{text}");
        assert_eq!(c.discovery.unwrap().to_string(), text);
        assert_eq!(c.max_connections, 4, "the other options are still read");
    }
}

#[test]
fn toml_invalid_discovery_names_the_option() {
    for (value, needle) in [
        ("\"zookeeper://x\"", "`zookeeper://x` is not a discovery"),
        ("\"\"", "is not a discovery"),
        ("\"file:\"", "needs a path"),
        ("\"dns:x@nowhere\"", "`nowhere` is not HOST:PORT"),
        ("\"etcd://\"", "`etcd://` is not a discovery"),
        ("3", "expected a string"),
        ("[\"env\"]", "expected a string"),
    ] {
        let result = ClientConfig::from_toml_str(&format!("discovery = {value}"));
        let message = result.clone().unwrap_err().to_string();
        assert_eq!(invalid_option(result), "discovery", "{message}");
        assert!(message.contains(needle), "{value}: {message}");
        if value.starts_with('"') {
            assert!(
                message.contains("env, file:PATH, dns:DOMAIN"),
                "the accepted forms are listed: {message}"
            );
        }
    }
}

#[test]
fn discovery_cannot_be_set_per_service() {
    let result = ClientConfig::from_toml_str("[services.memory]\ndiscovery = \"env\"\n");
    let message = result.clone().unwrap_err().to_string();
    assert_eq!(
        invalid_option(result),
        "services.memory.discovery",
        "{message}"
    );
    assert!(message.contains("whole client"), "{message}");
}

#[test]
fn discovery_is_not_read_from_the_environment() {
    let result =
        ClientConfig::default().with_env(env(&[("CORTEX_CLIENT_DISCOVERY", "file:services.toml")]));
    let message = result.clone().unwrap_err().to_string();
    assert_eq!(
        invalid_option(result),
        "CORTEX_CLIENT_DISCOVERY",
        "{message}"
    );
    assert!(message.contains("`discovery`"), "{message}");
    assert!(message.contains("CORTEX_DISCOVERY"), "{message}");

    // The file's choice survives the environment overlay.
    let c = ClientConfig::from_toml_str("discovery = \"dns:service.consul\"")
        .unwrap()
        .with_env(env(&[("CORTEX_CLIENT_MAX_CONNECTIONS", "4")]))
        .unwrap();
    assert_eq!(c.discovery, Some("dns:service.consul".parse().unwrap()));
    assert_eq!(c.max_connections, 4);
}

#[test]
fn from_file_resolves_a_relative_discovery_file_next_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let read = |text: &str| {
        let path = dir.path().join("client.toml");
        std::fs::write(&path, text).unwrap();
        ClientConfig::from_file(&path).unwrap().discovery
    };
    assert_eq!(
        read("discovery = \"file:services.toml\""),
        Some(DiscoverySpec::File(dir.path().join("services.toml")))
    );
    assert_eq!(
        read("discovery = \"file:/etc/cortex/services.toml\""),
        Some(DiscoverySpec::File("/etc/cortex/services.toml".into()))
    );
    assert_eq!(read("discovery = \"env\""), Some(DiscoverySpec::Env));

    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "discovery = \"consul://x\"\n").unwrap();
    let result = ClientConfig::from_file(&path);
    let message = result.clone().unwrap_err().to_string();
    assert_eq!(invalid_option(result), "discovery", "{message}");
}

// --------------------------------------------------------------------- TLS

/// The reason of an `Invalid` error naming `option`.
#[track_caller]
fn reason_for(result: Result<ClientConfig, ConfigError>, option: &str) -> String {
    match result {
        Err(ConfigError::Invalid {
            option: named,
            reason,
        }) if named == option => reason,
        other => panic!("expected `{option}` to be refused, got {other:?}"),
    }
}

/// Writes `text` to a fresh file; its path.
fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = unique_temp_path(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn tls_files_are_checked_when_the_configuration_is_read() {
    tls_files();
    let missing = unique_temp_path("missing.pem");
    let shown = missing.display().to_string();

    // Unreadable: the option and the path, from every source.
    let b = ClientConfig::builder;
    let reason = reason_for(b().ca_file(Some(missing.clone())).build(), "ca_file");
    assert!(
        reason.starts_with("must name a readable PEM file"),
        "{reason}"
    );
    assert!(reason.contains(&format!("cannot read {shown}")), "{reason}");
    assert!(reason.ends_with(&format!("got {shown}")), "{reason}");
    let toml = format!("ca_file = {:?}", shown);
    reason_for(ClientConfig::from_toml_str(&toml), "ca_file");
    let service = format!("[services.memory]\nca_file = {:?}", shown);
    reason_for(
        ClientConfig::from_toml_str(&service),
        "services.memory.ca_file",
    );
    reason_for(
        ClientConfig::default().with_env(env(&[("CORTEX_CLIENT_CA_FILE", &shown)])),
        "CORTEX_CLIENT_CA_FILE",
    );

    // Malformed: not PEM, or PEM without what the option needs.
    let garbage = temp_file("garbage.pem", "hello\n");
    let reason = reason_for(b().ca_file(Some(garbage.clone())).build(), "ca_file");
    assert!(reason.contains("holds no PEM certificate"), "{reason}");
    let key_only = temp_file(
        "key-only.pem",
        &rcgen::KeyPair::generate().unwrap().serialize_pem(),
    );
    let reason = reason_for(
        b().client_cert(Some(key_only.clone()))
            .client_key(Some(key_only.clone()))
            .build(),
        "client_cert",
    );
    assert!(reason.contains("holds no PEM certificate"), "{reason}");
    let reason = reason_for(
        b().client_cert(Some(TLS_CLIENT.into()))
            .client_key(Some(TLS_CA.into()))
            .build(),
        "client_key",
    );
    assert!(reason.contains("holds no PEM private key"), "{reason}");

    // Both or neither.
    let reason = reason_for(
        b().client_cert(Some(TLS_CLIENT.into())).build(),
        "client_cert",
    );
    assert!(reason.contains("client_key is not set"), "{reason}");
    let reason = reason_for(
        b().client_key(Some(TLS_CLIENT.into())).build(),
        "client_key",
    );
    assert!(reason.contains("client_cert is not set"), "{reason}");

    // A key that is not the certificate's.
    let reason = reason_for(
        b().client_cert(Some(TLS_CLIENT.into()))
            .client_key(Some(key_only.clone()))
            .build(),
        "client_key",
    );
    assert!(
        reason.contains("is not the key of the certificate"),
        "{reason}"
    );

    // Valid, and empty meaning none (to undo a file's value per service).
    let c = ClientConfig::from_toml_str(&format!(
        "ca_file = {TLS_CA:?}\n[services.memory]\nca_file = \"\"\n"
    ))
    .unwrap();
    assert_eq!(c.ca_file.as_deref(), Some(Path::new(TLS_CA)));
    assert_eq!(c.for_service("memory").ca_file, None);
    for path in [garbage, key_only] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn tls_defaults_trust_the_system_and_present_no_certificate() {
    let c = ClientConfig::default();
    assert!(c.tls_system_roots);
    assert_eq!((c.ca_file, c.client_cert, c.client_key), (None, None, None));
}

// ---------------------------------------------------------------- warnings

/// Records the `option` field of every WARN event.
struct WarnRecorder(Mutex<Vec<String>>);

impl tracing::Subscriber for WarnRecorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct OptionField(String);
        impl tracing::field::Visit for OptionField {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "option" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut option = OptionField(String::new());
            event.record(&mut option);
            self.0.lock().unwrap().push(option.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn warnings_of(config: &ClientConfig) -> Vec<String> {
    let recorder = std::sync::Arc::new(WarnRecorder(Mutex::new(Vec::new())));
    tracing::subscriber::with_default(recorder.clone(), || config.validate().unwrap());
    recorder.0.lock().unwrap().clone()
}

#[test]
fn values_outside_the_recommended_range_warn_once() {
    assert!(warnings_of(&ClientConfig::default()).is_empty());
    assert!(warnings_of(&all_changed()).is_empty());

    let mut config = ClientConfig {
        max_connections: 50,
        ..ClientConfig::default()
    };
    assert_eq!(warnings_of(&config), ["max_connections"]);

    // A service inheriting the base value is not warned again; its own
    // out-of-range value is.
    config.services.insert(
        "memory".to_owned(),
        ServiceOverrides {
            max_retries: Some(9),
            ..ServiceOverrides::default()
        },
    );
    config
        .services
        .insert("search".to_owned(), ServiceOverrides::default());
    assert_eq!(
        warnings_of(&config),
        ["max_connections", "services.memory.max_retries"]
    );

    let config = ClientConfig {
        idle_timeout: secs(5.0),
        failure_threshold: 1,
        reset_timeout: secs(600.0),
        half_open_max_calls: 10,
        max_retries: 0,
        initial_backoff: secs(0.01),
        backoff_factor: 10.0,
        max_backoff: secs(0.5),
        ..ClientConfig::default()
    };
    assert_eq!(warnings_of(&config).len(), 8);
}

// ---------------------------------------------------------------- messages

/// The exact text of every kind of error, from each source: users and
/// scripts read these, so a change here is a visible change.
#[test]
fn error_messages_are_stable() {
    let b = ClientConfig::builder;
    let built = |builder: ClientConfigBuilder| builder.build().unwrap_err().to_string();
    let zero = Duration::ZERO;
    for (message, expected) in [
        (
            built(b().max_connections(0)),
            "must be between 1 and 10000, got 0",
        ),
        (
            built(b().idle_timeout(zero)),
            "must be greater than 0 s and at most 86400 s (one day), got 0 s",
        ),
        (built(b().failure_threshold(0)), "must be at least 1, got 0"),
        (
            built(b().reset_timeout(zero)),
            "must be greater than 0 s, got 0 s",
        ),
        (
            built(b().half_open_max_calls(0)),
            "must be at least 1, got 0",
        ),
        (
            built(b().max_retries(101)),
            "must be between 0 and 100, got 101",
        ),
        (
            built(b().initial_backoff(zero)),
            "must be greater than 0 s, got 0 s",
        ),
        (
            built(b().backoff_factor(0.5)),
            "must be a finite number of at least 1.0, got 0.5",
        ),
        (
            built(b().max_backoff(secs(0.05))),
            "must be at least initial_backoff (0.1 s), got 0.05 s",
        ),
        (
            built(b().request_timeout(zero)),
            "must be greater than 0 s, got 0 s",
        ),
        (
            built(b().connect_timeout(zero)),
            "must be greater than 0 s, got 0 s",
        ),
        (
            built(b().pool_timeout(zero)),
            "must be greater than 0 s, got 0 s",
        ),
        (
            built(b().stream_idle_timeout(zero)),
            "must be greater than 0 s, got 0 s",
        ),
        (
            built(b().stream_max_backoff(zero)),
            "must be greater than 0 s, got 0 s",
        ),
        (
            built(b().retry_budget_ratio(1000.5)),
            "must be a finite number between 0 and 1000, got 1000.5",
        ),
        (
            built(b().retry_budget_window(secs(0.5))),
            "must be between 1 s and 60 s, got 0.5 s",
        ),
    ] {
        let option = message
            .strip_prefix("invalid value for `")
            .and_then(|rest| rest.split_once("`: "))
            .map(|(option, reason)| (option.to_owned(), reason.to_owned()));
        let (option, reason) = option.unwrap_or_else(|| panic!("{message}"));
        assert_eq!(reason, expected, "{option}");
    }

    let toml = |text: &str| ClientConfig::from_toml_str(text).unwrap_err().to_string();
    let vars = |name: &str, value: &str| {
        ClientConfig::default()
            .with_env(env(&[(name, value)]))
            .unwrap_err()
            .to_string()
    };
    for (message, expected) in [
        (
            toml("max_connections = \"ten\""),
            "invalid value for `max_connections`: expected a non-negative integer, got string \"ten\"",
        ),
        (
            toml("max_connections = -4"),
            "invalid value for `max_connections`: expected a non-negative integer, got -4",
        ),
        (
            toml("max_retries = 5_000_000_000"),
            "invalid value for `max_retries`: 5000000000 is too large",
        ),
        (
            toml("idle_timeout = \"60s\""),
            "invalid value for `idle_timeout`: expected a number of seconds, got string \"60s\"",
        ),
        (
            toml("idle_timeout = -1"),
            "invalid value for `idle_timeout`: seconds must not be negative, got -1",
        ),
        (
            toml("idle_timeout = nan"),
            "invalid value for `idle_timeout`: seconds must be a finite number, got NaN",
        ),
        (
            toml("pool_timeout = 1e20"),
            "invalid value for `pool_timeout`: 100000000000000000000 seconds is too large",
        ),
        (
            toml("backoff_factor = true"),
            "invalid value for `backoff_factor`: expected a number, got boolean true",
        ),
        (
            toml("jitter = 1"),
            "invalid value for `jitter`: expected true or false, got integer 1",
        ),
        (
            toml("jitter = [true]"),
            "invalid value for `jitter`: expected true or false, got a array",
        ),
        (
            toml("services = 3"),
            "invalid value for `services`: expected a table of per-service tables such as \
             [services.memory], got integer 3",
        ),
        (
            toml("[services]\nmemory = 3"),
            "invalid value for `services.memory`: expected a table of options, got integer 3",
        ),
        (
            toml("[services.memory]\nmax_retries = 101"),
            "invalid value for `services.memory.max_retries`: must be between 0 and 100, got 101",
        ),
        (
            toml("max_conections = 4"),
            "unknown configuration option `max_conections`",
        ),
        (
            vars("CORTEX_CLIENT_MAX_CONNECTIONS", "abc"),
            "invalid value for `CORTEX_CLIENT_MAX_CONNECTIONS`: expected a non-negative integer, \
             got \"abc\"",
        ),
        (
            vars("CORTEX_CLIENT_IDLE_TIMEOUT", "60s"),
            "invalid value for `CORTEX_CLIENT_IDLE_TIMEOUT`: expected a number of seconds, got \"60s\"",
        ),
        (
            vars("CORTEX_CLIENT_BACKOFF_FACTOR", "x"),
            "invalid value for `CORTEX_CLIENT_BACKOFF_FACTOR`: expected a number, got \"x\"",
        ),
        (
            vars("CORTEX_CLIENT_JITTER", "maybe"),
            "invalid value for `CORTEX_CLIENT_JITTER`: expected true, false, 1 or 0, got \"maybe\"",
        ),
        (
            vars("CORTEX_CLIENT_MAX_RETRIES", "101"),
            "invalid value for `CORTEX_CLIENT_MAX_RETRIES`: must be between 0 and 100, got 101",
        ),
        (
            vars("CORTEX_CLIENT_X", "1"),
            "unknown configuration option `CORTEX_CLIENT_X`",
        ),
    ] {
        assert_eq!(message, expected);
    }

    let err = serde_json::from_str::<ServiceOverrides>(r#"{"idle_timeout": -1}"#).unwrap_err();
    assert!(
        err.to_string()
            .contains("seconds must be a finite, non-negative number, got -1"),
        "{err}"
    );
}
