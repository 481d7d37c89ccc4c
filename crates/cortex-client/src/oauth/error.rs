//! What an OAuth step can fail with: a small typed error whose kind says
//! which step failed, asked about rather than matched as text.

use std::fmt;

/// Which step of an authorization failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OAuthErrorKind {
    /// A metadata document (protected resource or authorization server)
    /// was missing where required, not JSON, or contradicted itself (an
    /// `issuer` or `resource` that does not match, no PKCE S256).
    Metadata,
    /// No client identity could be had: nothing pre-registered, no client
    /// metadata document, and registration refused or not offered.
    Registration,
    /// The authorization step failed: the user or the server denied it,
    /// the `state` or `iss` of the answer did not match, or no handler was
    /// set to ask the user.
    Authorization,
    /// The token endpoint refused the request or answered something that is
    /// not a token response.
    Token,
    /// An HTTP exchange failed: connection, timeout, or an answer over the
    /// size bound.
    Transport,
    /// The token store could not be read or written.
    Store,
    /// The OAuth configuration cannot be used (a bad key, a bad URL).
    Config,
}

/// A failed OAuth step.
#[derive(Clone)]
pub struct OAuthError {
    kind: OAuthErrorKind,
    message: String,
    /// The OAuth `error` code of the server's answer (`invalid_grant`, ...).
    code: Option<String>,
}

impl OAuthError {
    pub(crate) fn new(kind: OAuthErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            code: None,
        }
    }

    pub(crate) fn metadata(message: impl Into<String>) -> Self {
        Self::new(OAuthErrorKind::Metadata, message)
    }

    pub(crate) fn registration(message: impl Into<String>) -> Self {
        Self::new(OAuthErrorKind::Registration, message)
    }

    pub(crate) fn authorization(message: impl Into<String>) -> Self {
        Self::new(OAuthErrorKind::Authorization, message)
    }

    pub(crate) fn token(message: impl Into<String>) -> Self {
        Self::new(OAuthErrorKind::Token, message)
    }

    pub(crate) fn transport(message: impl Into<String>) -> Self {
        Self::new(OAuthErrorKind::Transport, message)
    }

    pub(crate) fn store(message: impl Into<String>) -> Self {
        Self::new(OAuthErrorKind::Store, message)
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(OAuthErrorKind::Config, message)
    }

    pub(crate) fn with_code(mut self, code: Option<String>) -> Self {
        self.code = code;
        self
    }

    /// Which step failed.
    pub fn kind(&self) -> OAuthErrorKind {
        self.kind
    }

    /// The server's OAuth error code (`invalid_grant`, `access_denied`, ...),
    /// when it gave one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// A metadata document was missing or wrong.
    pub fn is_metadata(&self) -> bool {
        self.kind == OAuthErrorKind::Metadata
    }

    /// The token endpoint refused or answered nonsense.
    pub fn is_token(&self) -> bool {
        self.kind == OAuthErrorKind::Token
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(code) = &self.code {
            write!(f, " ({code})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("code", &self.code)
            .finish()
    }
}

impl std::error::Error for OAuthError {}
