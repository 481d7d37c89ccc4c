//! `cortex login URL`: OAuth for an MCP server that requires it. Runs the
//! authorization code flow (PKCE) with a redirect to a loopback port,
//! keeps the token in the data directory (`oauth-tokens.json`, mode 0600),
//! and client commands given `--url URL` (or `--service NAME=URL`) send it
//! from then on, refreshing it as it nears expiry.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use cortex_client::oauth::{FileTokenStore, LoopbackRedirect, OAuth, OAuthConfig, OpenUrl};
use cortex_client::{ClientConfig, Endpoint};

use crate::exit::{Code, Failure};

/// `cortex login`'s flags.
#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// The MCP server to log in to (its MCP endpoint, as given to --url).
    #[arg(value_name = "URL")]
    pub(crate) server: String,
    /// Also try to open the authorization URL in a browser (it is always
    /// printed).
    #[arg(long)]
    pub(crate) open: bool,
    /// The loopback port the browser is sent back to (default: any free one).
    #[arg(long, default_value_t = 0)]
    pub(crate) port: u16,
    /// A scope to ask for (repeatable); default: what the server asks for.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub(crate) scopes: Vec<String>,
    /// A client id registered beforehand at the authorization server;
    /// default: the server's client metadata or dynamic registration.
    #[arg(long, value_name = "ID")]
    pub(crate) client_id: Option<String>,
    /// The secret of --client-id, for a confidential client.
    #[arg(long, env = "CORTEX_OAUTH_CLIENT_SECRET", hide_env_values = true)]
    pub(crate) client_secret: Option<String>,
    /// How long to wait for the authorization in the browser, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub(crate) wait: u64,
    /// Where the token file goes (default: CORTEX_DATA_DIR, else ./.cortex).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

/// The token file of client commands in `data_dir`.
pub(crate) fn token_file(data_dir: &Path) -> PathBuf {
    data_dir.join("oauth-tokens.json")
}

/// `cortex login URL`.
/// `client_config`: the client settings (--config, CORTEX_CLIENT_*), whose
/// proxy, TLS and timeouts the OAuth requests follow.
pub(crate) async fn run(
    args: LoginArgs,
    client_config: &ClientConfig,
    json: bool,
) -> Result<(), Failure> {
    let (endpoint, _) = Endpoint::parse(&args.server).map_err(Failure::usage)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::auth::data_dir_from_env);
    let path = token_file(&data_dir);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| Failure::other(format!("cannot listen on 127.0.0.1:{}: {e}", args.port)))?;
    let open_browser = args.open;
    let open: OpenUrl = Arc::new(move |url: &str| {
        say(&format!(
            "Open this URL in a browser to authorize cortex:\n\n  {url}\n"
        ));
        if open_browser {
            try_open(url);
        }
        say("Waiting for the authorization server to redirect back...");
    });
    let redirect = LoopbackRedirect::new(listener, open, Duration::from_secs(args.wait))
        .map_err(|e| Failure::other(e.to_string()))?;
    let config = OAuthConfig {
        client_id: args.client_id.clone(),
        client_secret: args.client_secret.clone(),
        scopes: (!args.scopes.is_empty()).then(|| args.scopes.clone()),
        ..OAuthConfig::default()
    };
    let store = Arc::new(FileTokenStore::new(&path));
    let oauth = OAuth::new(config)
        .with_handler(Arc::new(redirect))
        .with_store(store);
    let token = oauth
        .login(&endpoint.url, client_config)
        .await
        .map_err(|e| {
            Failure::new(
                Code::ToolError,
                format!("login to {} failed: {e}", endpoint.url),
            )
        })?;
    if json {
        let out = serde_json::json!({
            "url": endpoint.url,
            "issuer": token.issuer,
            "scope": token.scope,
            "expires_at": token.expires_at,
            "refreshable": token.refresh_token.is_some(),
            "token_file": path,
        });
        println!("{out}");
    } else {
        println!(
            "logged in to {} (authorization server {}; scopes: {}; {})",
            endpoint.url,
            token.issuer,
            token.scope.as_deref().unwrap_or("none asked"),
            if token.refresh_token.is_some() {
                "refreshed as needed"
            } else {
                "no refresh token: log in again when it expires"
            }
        );
        println!("token kept in {} (mode 0600)", path.display());
    }
    Ok(())
}

/// Asks the desktop to open `url`; says so when it cannot.
fn try_open(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        "xdg-open"
    };
    match std::process::Command::new(opener)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(_) => say(&format!("(opened with {opener})")),
        Err(e) => say(&format!(
            "(could not run {opener}: {e}; open the URL by hand)"
        )),
    }
}

/// A line on stderr; a closed stderr is no reason to stop the login.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}
