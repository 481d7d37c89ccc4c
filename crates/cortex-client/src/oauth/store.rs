//! Where tokens are kept between calls and between runs: per MCP server
//! and authorization server, with what refreshing them needs (the token
//! endpoint, the client's identity). [`MemoryTokenStore`] for a process,
//! [`FileTokenStore`] for a user's cache (a JSON file of mode 0600).
//! Secrets never reach a log: every `Debug` here redacts them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::OAuthError;
use crate::engine::lock;

/// The tokens of one MCP server from one authorization server, and what
/// refreshing them needs.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredToken {
    /// The MCP server (its canonical URI, the `resource` asked for).
    pub resource: String,
    /// The authorization server that issued the token.
    pub issuer: String,
    /// The bearer token.
    pub access_token: String,
    /// The refresh token, when one was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the access token expires, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The scopes granted, space-separated (those asked for when the
    /// server did not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Where refreshing goes.
    pub token_endpoint: String,
    /// The client's id at the authorization server.
    pub client_id: String,
    /// The client's secret, for a confidential client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// How the client authenticates at the token endpoint: `none`,
    /// `client_secret_basic` or `client_secret_post`.
    pub auth_method: String,
}

impl StoredToken {
    /// Whether the access token expires within `margin` seconds (false
    /// when its lifetime is unknown).
    pub fn expires_within(&self, margin: u64) -> bool {
        self.expires_at
            .is_some_and(|at| at <= now_secs().saturating_add(margin))
    }

    /// The granted scopes.
    pub fn scopes(&self) -> Vec<&str> {
        self.scope
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .collect()
    }
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |present: bool| if present { "<redacted>" } else { "none" };
        f.debug_struct("StoredToken")
            .field("resource", &self.resource)
            .field("issuer", &self.issuer)
            .field("access_token", &"<redacted>")
            .field("refresh_token", &redacted(self.refresh_token.is_some()))
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &redacted(self.client_secret.is_some()))
            .field("auth_method", &self.auth_method)
            .finish()
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Keeps tokens per (MCP server, authorization server).
pub trait TokenStore: Send + Sync + 'static {
    /// The token kept for the MCP server `resource` (from any
    /// authorization server; the one saved last when there are several).
    fn load(&self, resource: &str) -> Result<Option<StoredToken>, OAuthError>;
    /// Keeps `token`, replacing the one of the same server and issuer.
    fn save(&self, token: &StoredToken) -> Result<(), OAuthError>;
    /// Forgets every token of `resource`.
    fn remove(&self, resource: &str) -> Result<(), OAuthError>;
}

/// The file's content: tokens by `"<resource> <issuer>"`, and the order in
/// which they were saved.
#[derive(Default, Serialize, Deserialize)]
struct Tokens {
    tokens: BTreeMap<String, StoredToken>,
    #[serde(default)]
    order: Vec<String>,
}

impl Tokens {
    fn load(&self, resource: &str) -> Option<StoredToken> {
        self.order
            .iter()
            .rev()
            .filter_map(|key| self.tokens.get(key))
            .chain(self.tokens.values())
            .find(|t| t.resource == resource)
            .cloned()
    }

    fn save(&mut self, token: &StoredToken) {
        let key = format!("{} {}", token.resource, token.issuer);
        self.order.retain(|k| *k != key);
        self.order.push(key.clone());
        self.tokens.insert(key, token.clone());
    }

    fn remove(&mut self, resource: &str) {
        self.tokens.retain(|_, t| t.resource != resource);
        let tokens = &self.tokens;
        self.order.retain(|k| tokens.contains_key(k));
    }
}

/// Tokens in memory, for the life of the process.
#[derive(Default)]
pub struct MemoryTokenStore {
    tokens: Mutex<Tokens>,
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for MemoryTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTokenStore")
            .field("tokens", &lock(&self.tokens).tokens.len())
            .finish()
    }
}

impl TokenStore for MemoryTokenStore {
    fn load(&self, resource: &str) -> Result<Option<StoredToken>, OAuthError> {
        Ok(lock(&self.tokens).load(resource))
    }

    fn save(&self, token: &StoredToken) -> Result<(), OAuthError> {
        lock(&self.tokens).save(token);
        Ok(())
    }

    fn remove(&self, resource: &str) -> Result<(), OAuthError> {
        lock(&self.tokens).remove(resource);
        Ok(())
    }
}

/// Tokens in a JSON file only its owner can read or write (mode 0600; its
/// directory is made 0700 when it has to be created). Each save rewrites
/// the file through a temporary file of the same mode, renamed over it,
/// so a reader never sees half a file.
pub struct FileTokenStore {
    path: PathBuf,
    /// Serializes this process's read-modify-write cycles.
    guard: Mutex<()>,
}

impl FileTokenStore {
    /// A store in the file `path` (made at the first save).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            guard: Mutex::new(()),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<Tokens, OAuthError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                OAuthError::store(format!("{} is not a token file: {e}", self.path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tokens::default()),
            Err(e) => Err(OAuthError::store(format!(
                "cannot read {}: {e}",
                self.path.display()
            ))),
        }
    }

    fn write(&self, tokens: &Tokens) -> Result<(), OAuthError> {
        let failed = |e: std::io::Error| {
            OAuthError::store(format!("cannot write {}: {e}", self.path.display()))
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(failed)?;
        }
        let text = serde_json::to_vec_pretty(tokens)
            .map_err(|e| OAuthError::store(format!("cannot encode the tokens: {e}")))?;
        let temporary = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        write_private(&temporary, &text).map_err(failed)?;
        std::fs::rename(&temporary, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            failed(e)
        })
    }
}

impl fmt::Debug for FileTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileTokenStore")
            .field("path", &self.path)
            .finish()
    }
}

impl TokenStore for FileTokenStore {
    fn load(&self, resource: &str) -> Result<Option<StoredToken>, OAuthError> {
        let _guard = lock(&self.guard);
        Ok(self.read()?.load(resource))
    }

    fn save(&self, token: &StoredToken) -> Result<(), OAuthError> {
        let _guard = lock(&self.guard);
        let mut tokens = self.read()?;
        tokens.save(token);
        self.write(&tokens)
    }

    fn remove(&self, resource: &str) -> Result<(), OAuthError> {
        let _guard = lock(&self.guard);
        let mut tokens = self.read()?;
        tokens.remove(resource);
        self.write(&tokens)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // A file that existed keeps its mode through `open`: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}
