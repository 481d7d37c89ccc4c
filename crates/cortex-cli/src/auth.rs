//! Authentication as the `cortex` command sees it: the services it runs
//! check bearer tokens (JWT), and its client commands send them.
//!
//! - **The local secret.** `cortex up` and `cortex serve` sign and check
//!   HS256 tokens with `JWT_SECRET_KEY`, or else with the secret in the
//!   data directory (`--data-dir`, `CORTEX_DATA_DIR`, default `./.cortex`),
//!   file `jwt-secret`, made on first start: 32 random bytes as 64 hex
//!   characters, mode 0600, in a directory made with mode 0700. Its text is
//!   the secret, so `JWT_SECRET_KEY=$(cat .cortex/jwt-secret)` is the same
//!   key.
//! - **Other keys.** `--jwks-url` (`JWKS_URL`) checks RS256/ES256/EdDSA
//!   tokens of an identity provider instead; `--jwt-issuer` and
//!   `--jwt-audience` require those claims.
//! - **Off.** `--no-auth` or `AUTH_ENABLED=false`, with a warning.
//! - **Client commands** send `--token` (`CORTEX_TOKEN`). Without one, when
//!   they find the secret (`JWT_SECRET_KEY`, or the data directory's file),
//!   they make their own short-lived tokens: for `--user NAME`, NAME's
//!   token with no role; without `--user`, a token of the login name with
//!   the role `admin`. Whoever can read the secret can sign any token, so
//!   the owner of a local `cortex up` acts for every user, and the README's
//!   tour needs no extra step. They mint nothing for a `--url` server off
//!   this machine: the token would leave it.
//! - **`cortex token`** prints a token signed with that secret.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use clap::Args;
use cortex_client::{Endpoint, TokenProvider};
use cortex_service::AuthConfig;
use cortex_service::auth::{
    ADMIN_ROLE, JwksSettings, MIN_SECRET_BYTES, SERVICE_ROLE, TokenClaims, mint_hs256,
};
use serde_json::json;

use crate::exit::Failure;

/// The secret's file name in the data directory.
pub(crate) const SECRET_FILE: &str = "jwt-secret";

/// The data directory when neither a flag nor `CORTEX_DATA_DIR` names one.
pub(crate) const DEFAULT_DATA_DIR: &str = "./.cortex";

/// How long a token a client command makes for itself lives. Short: it
/// never leaves the command; a longer command (a stream) makes new ones.
const CLIENT_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

/// The longest `cortex token --ttl`.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// The authentication flags of `cortex up` and `cortex serve`.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct AuthArgs {
    /// Serve without authentication: every caller reads and changes every
    /// user's data. Also AUTH_ENABLED=false.
    #[arg(long)]
    pub(crate) no_auth: bool,
    /// Check tokens signed by the keys at this JWKS URL (RS256, ES256,
    /// EdDSA; https://, or http:// on a trusted network) instead of an
    /// HS256 secret.
    #[arg(long, env = "JWKS_URL", value_name = "URL")]
    pub(crate) jwks_url: Option<String>,
    /// Trust the CA certificates in this PEM file, besides the system's,
    /// for an https:// --jwks-url (a private identity provider's CA).
    #[arg(long, env = "JWKS_CA_FILE", value_name = "FILE", requires = "jwks_url")]
    pub(crate) jwks_ca: Option<PathBuf>,
    /// Require this `iss` claim.
    #[arg(long, env = "JWT_ISSUER", value_name = "ISSUER")]
    pub(crate) jwt_issuer: Option<String>,
    /// Require this `aud` claim.
    #[arg(long, env = "JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub(crate) jwt_audience: Option<String>,
    /// An authorization server clients get tokens from, published in the
    /// OAuth protected-resource metadata (repeatable; comma-separated in
    /// the variable).
    #[arg(
        long = "authorization-server",
        env = "AUTHORIZATION_SERVERS",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub(crate) authorization_servers: Vec<String>,
    /// The services' public base URL, published as the protected resource
    /// (default: http:// and the Host a request came to).
    #[arg(long, env = "PUBLIC_URL", value_name = "URL")]
    pub(crate) public_url: Option<String>,
    /// Serve /metrics without a token (by default it needs the role
    /// `admin` or `metrics`: `cortex token --role metrics`).
    #[arg(long)]
    pub(crate) open_metrics: bool,
}

/// What `--no-auth` and `AUTH_ENABLED` say.
fn auth_enabled(args: &AuthArgs) -> Result<bool, Failure> {
    if args.no_auth {
        return Ok(false);
    }
    match std::env::var("AUTH_ENABLED") {
        Err(_) => Ok(true),
        Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
            "" | "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            other => Err(Failure::usage(format!(
                "AUTH_ENABLED `{other}` is neither true nor false"
            ))),
        },
    }
}

/// `JWT_SECRET_KEY`, when set (trimmed, so a file's trailing newline does
/// not change the key).
fn secret_from_env() -> Option<String> {
    std::env::var("JWT_SECRET_KEY")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The data directory of client commands and `cortex token`:
/// `CORTEX_DATA_DIR`, else `./.cortex`.
pub(crate) fn data_dir_from_env() -> PathBuf {
    std::env::var_os("CORTEX_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// The authentication of a service `cortex up` or `cortex serve` runs, and
/// one line saying what it is (printed by `up`, logged by `serve`).
pub(crate) fn service_auth(
    args: &AuthArgs,
    data_dir: &Path,
) -> Result<(AuthConfig, String), Failure> {
    if !auth_enabled(args)? {
        return Ok((
            AuthConfig::disabled(),
            "auth: OFF: every caller can read and change every user's data".into(),
        ));
    }
    let (config, summary) = match (&args.jwks_url, secret_from_env()) {
        (Some(_), Some(_)) => {
            return Err(Failure::usage(
                "both JWKS_URL (--jwks-url) and JWT_SECRET_KEY are set; choose one key source",
            ));
        }
        (Some(url), None) => (
            match &args.jwks_ca {
                None => AuthConfig::jwks(url),
                Some(ca) => AuthConfig::jwks_trusting(url, JwksSettings::default(), ca),
            }
            .map_err(|e| Failure::usage(e.to_string()))?,
            format!("auth: JWT from the keys at {url}"),
        ),
        (None, Some(secret)) => (
            AuthConfig::hs256(secret.as_bytes())
                .map_err(|e| Failure::usage(format!("JWT_SECRET_KEY: {e}")))?,
            "auth: JWT (HS256, secret from JWT_SECRET_KEY)".to_string(),
        ),
        (None, None) => {
            let (secret, path) = load_or_create_secret(data_dir)?;
            (
                AuthConfig::hs256(secret.as_bytes())
                    .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?,
                format!(
                    "auth: JWT (HS256, secret {}); `cortex token --user NAME` makes a token",
                    path.display()
                ),
            )
        }
    };
    let mut config = config
        .with_authorization_servers(args.authorization_servers.clone())
        .with_open_metrics(args.open_metrics);
    if let Some(issuer) = &args.jwt_issuer {
        config = config.with_issuer(issuer);
    }
    if let Some(audience) = &args.jwt_audience {
        config = config.with_audience(audience);
    }
    if let Some(url) = &args.public_url {
        config = config.with_resource(url);
    }
    Ok((config, summary))
}

/// One warning line on stderr, `cortex: warning: …` (nothing when stderr
/// is closed: a warning is no reason to stop a service).
pub(crate) fn warn(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "cortex: warning: {text}");
}

/// The secret in `dir`, made (with the directory) when missing, and its
/// path.
pub(crate) fn load_or_create_secret(dir: &Path) -> Result<(String, PathBuf), Failure> {
    let path = dir.join(SECRET_FILE);
    if !path.exists() {
        create_secret(dir, &path)?;
    }
    read_secret(&path).map(|secret| (secret, path))
}

/// The secret in `dir`, if there is one.
fn find_secret(dir: &Path) -> Result<Option<String>, Failure> {
    let path = dir.join(SECRET_FILE);
    if path.exists() {
        read_secret(&path).map(Some)
    } else {
        Ok(None)
    }
}

fn read_secret(path: &Path) -> Result<String, Failure> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| Failure::other(format!("cannot read {}: {e}", path.display())))?
            .permissions()
            .mode();
        // As ssh does with keys: a secret others can read is not one.
        if mode & 0o077 != 0 {
            return Err(Failure::other(format!(
                "{} is readable by other users (mode {:o}); make it private with `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            )));
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::other(format!("cannot read {}: {e}", path.display())))?;
    let secret = text.trim().to_string();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(Failure::other(format!(
            "{} holds {} bytes; a JWT secret needs at least {MIN_SECRET_BYTES}",
            path.display(),
            secret.len()
        )));
    }
    Ok(secret)
}

/// Writes a new random secret to `path`, atomically: it is written to a
/// private temporary file first and linked into place only if no secret is
/// there yet, so two processes starting at once agree on one secret and no
/// reader ever sees half of one.
fn create_secret(dir: &Path, path: &Path) -> Result<(), Failure> {
    let io = |what: &str, e: std::io::Error| {
        Failure::other(format!("cannot {what} {}: {e}", path.display()))
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| io("create the directory of", e))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Failure::other(format!("no random numbers from the system: {e}")))?;
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let temporary = dir.join(format!(
        ".{SECRET_FILE}.{}.{}",
        std::process::id(),
        getrandom::u64().unwrap_or_default()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temporary).and_then(|mut file| {
        use std::io::Write;
        file.write_all(format!("{text}\n").as_bytes())?;
        file.sync_all()
    });
    let linked = written.and_then(|()| match std::fs::hard_link(&temporary, path) {
        // Another process made it first: theirs is the secret.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = std::fs::remove_file(&temporary);
    linked.map_err(|e| io("write", e))
}

/// The login name: `$USER`, else `$LOGNAME`, else `user`.
pub(crate) fn login_name() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "user".into())
}

/// `iss` and `aud` for minted tokens, as the services are told to check.
fn claims_for(user: &str, roles: Vec<String>, ttl: Duration) -> TokenClaims {
    TokenClaims {
        roles,
        issuer: std::env::var("JWT_ISSUER").ok().filter(|s| !s.is_empty()),
        audience: std::env::var("JWT_AUDIENCE").ok().filter(|s| !s.is_empty()),
        ..TokenClaims::new(user, ttl)
    }
}

/// Tokens a client command makes for itself from the local secret,
/// renewed before they expire (a stream may run for hours).
struct LocalTokens {
    secret: String,
    claims: TokenClaims,
    current: Mutex<Option<(String, Instant)>>,
}

#[async_trait]
impl TokenProvider for LocalTokens {
    async fn token(&self) -> Option<String> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, made)) = current.as_ref()
            && made.elapsed() < self.claims.ttl / 2
        {
            return Some(token.clone());
        }
        match mint_hs256(self.secret.as_bytes(), &self.claims) {
            Ok(token) => {
                *current = Some((token.clone(), Instant::now()));
                Some(token)
            }
            Err(error) => {
                tracing::warn!(%error, "could not make a token from the local secret");
                None
            }
        }
    }
}

/// Whether `endpoint` is on this machine.
fn is_loopback(endpoint: &Endpoint) -> bool {
    let Some(authority) = endpoint.authority() else {
        return false;
    };
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority.as_str(),
    };
    let host = host.trim_matches(['[', ']']);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The token provider of a client command without `--token`: tokens made
/// from the local secret, or none when there is no secret (or the `--url`
/// server is elsewhere).
pub(crate) fn local_tokens(
    user: Option<&str>,
    url: Option<&Endpoint>,
) -> Result<Option<std::sync::Arc<dyn TokenProvider>>, Failure> {
    if url.is_some_and(|endpoint| !is_loopback(endpoint)) {
        return Ok(None);
    }
    let secret = match secret_from_env() {
        Some(secret) => secret,
        None => match find_secret(&data_dir_from_env())? {
            Some(secret) => secret,
            None => return Ok(None),
        },
    };
    let claims = match user {
        Some(user) => claims_for(user, Vec::new(), CLIENT_TOKEN_TTL),
        None => claims_for(&login_name(), vec![ADMIN_ROLE.into()], CLIENT_TOKEN_TTL),
    };
    // Fail now, with the reason, rather than on the first call.
    mint_hs256(secret.as_bytes(), &claims).map_err(|e| Failure::usage(e.to_string()))?;
    Ok(Some(std::sync::Arc::new(LocalTokens {
        secret,
        claims,
        current: Mutex::new(None),
    })))
}

/// The user core's own tokens name (with the `service` role).
pub(crate) const CORE_USER: &str = "cortex-core";

/// The token provider of a service that acts for its users on its own
/// (core, whose drain stores inputs long after their callers left): tokens
/// with the `service` role made from JWT_SECRET_KEY or the secret in
/// `data_dir`; `None` when there is neither (the services then need no
/// token, or core is told one with CORTEX_TOKEN).
pub(crate) fn service_tokens(
    data_dir: &Path,
) -> Result<Option<std::sync::Arc<dyn TokenProvider>>, Failure> {
    let secret = match secret_from_env() {
        Some(secret) => secret,
        None => match find_secret(data_dir)? {
            Some(secret) => secret,
            None => return Ok(None),
        },
    };
    let claims = claims_for(CORE_USER, vec![SERVICE_ROLE.into()], CLIENT_TOKEN_TTL);
    mint_hs256(secret.as_bytes(), &claims).map_err(|e| Failure::usage(e.to_string()))?;
    Ok(Some(std::sync::Arc::new(LocalTokens {
        secret,
        claims,
        current: Mutex::new(None),
    })))
}

/// `cortex token`'s own flags (`--user` is global).
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// How long the token is valid: `90s`, `15m`, `1h`, `7d`, or seconds.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub(crate) ttl: Duration,
    /// A role in the token's `roles` claim (repeatable): `admin` reads and
    /// changes any user's data and reads /metrics, `service` acts for any
    /// user, `metrics` reads /metrics.
    #[arg(long = "role", value_name = "ROLE")]
    pub(crate) roles: Vec<String>,
    /// Where the secret is (default: CORTEX_DATA_DIR, else ./.cortex);
    /// JWT_SECRET_KEY wins over it.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

/// A duration as people write one: `90s`, `15m`, `1h`, `7d`, or seconds.
pub(crate) fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 90s, 15m, 1h or 7d"))?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit is one of s, m, h, d")),
    };
    let ttl = Duration::from_secs(number.saturating_mul(unit));
    if ttl.is_zero() {
        return Err("the lifetime must be positive".into());
    }
    if ttl > MAX_TTL {
        return Err("the lifetime may be at most 366d".into());
    }
    Ok(ttl)
}

/// `cortex token`: prints a token signed with `JWT_SECRET_KEY` or the
/// local secret.
pub(crate) fn token(args: TokenArgs, user: Option<String>, json: bool) -> Result<(), Failure> {
    let secret = match secret_from_env() {
        Some(secret) => secret,
        None => {
            let dir = args.data_dir.clone().unwrap_or_else(data_dir_from_env);
            find_secret(&dir)?.ok_or_else(|| {
                Failure::usage(format!(
                    "no secret to sign with: JWT_SECRET_KEY is not set and {} does not exist \
                     (`cortex up` makes it on first start; --data-dir or CORTEX_DATA_DIR name \
                     another directory)",
                    dir.join(SECRET_FILE).display()
                ))
            })?
        }
    };
    let user = user.unwrap_or_else(login_name);
    let claims = claims_for(&user, args.roles, args.ttl);
    let token =
        mint_hs256(secret.as_bytes(), &claims).map_err(|e| Failure::usage(e.to_string()))?;
    if json {
        let expires_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .saturating_add(claims.ttl.as_secs());
        let value = json!({
            "token": token,
            "user": claims.user,
            "roles": claims.roles,
            "expires_at": expires_at,
        });
        crate::output::json(&value, true)
    } else {
        crate::output::line(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_ttl("120"), Ok(Duration::from_secs(120)));
        for bad in ["", "h", "1w", "0s", "-1h", "1.5h", "400d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_endpoints() {
        for url in [
            "http://127.0.0.1:9000",
            "http://localhost:1/mcp",
            "http://[::1]:3",
        ] {
            assert!(is_loopback(&Endpoint::new(url)), "{url}");
        }
        for url in ["http://10.0.0.1:9000", "http://example.com/mcp"] {
            assert!(!is_loopback(&Endpoint::new(url)), "{url}");
        }
    }

    #[test]
    fn a_secret_is_made_once_privately_and_reused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = dir.path().join("data");
        let (first, path) = load_or_create_secret(&data).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.len(), 64);
        let (again, _) = load_or_create_secret(&data).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| {
                std::fs::metadata(p)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or_else(|e| panic!("{e}"))
            };
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(&data), 0o700);
            // A secret others can read is refused.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(load_or_create_secret(&data).is_err());
        }
        // Only the secret is left: no temporary file.
        let names: Vec<_> = std::fs::read_dir(&data)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(SECRET_FILE)]);
    }
}
