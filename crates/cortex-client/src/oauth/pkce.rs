//! PKCE (RFC 7636, S256 only) and the `state` of an authorization request:
//! secrets from the operating system's generator.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::error::OAuthError;

/// One authorization request's PKCE pair.
pub(crate) struct Pkce {
    /// Sent to the token endpoint; 43 characters of base64url.
    pub(crate) verifier: String,
    /// `BASE64URL(SHA256(verifier))`, sent with the authorization request.
    pub(crate) challenge: String,
}

impl Pkce {
    pub(crate) fn new() -> Result<Self, OAuthError> {
        let verifier = random_token(32)?;
        let challenge = challenge_of(&verifier);
        Ok(Self {
            verifier,
            challenge,
        })
    }
}

/// The S256 challenge of `verifier`.
pub(crate) fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// `bytes` random bytes from the operating system, as base64url.
pub(crate) fn random_token(bytes: usize) -> Result<String, OAuthError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer)
        .map_err(|e| OAuthError::config(format!("no random numbers from the system: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(buffer))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected value is Python's
    /// `base64.urlsafe_b64encode(hashlib.sha256(verifier).digest())`
    /// without padding.
    #[test]
    fn s256_is_unpadded_base64url_of_sha256() {
        assert_eq!(
            challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWjOEjXk"),
            "VYFANLqdx_HDV6BqEhluZJ63rtrIPROSSFdB3P6G83I"
        );
    }

    #[test]
    fn verifiers_are_long_enough_and_differ() {
        let (a, b) = (
            Pkce::new().unwrap_or_else(|e| panic!("{e}")),
            Pkce::new().unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(a.verifier.len(), 43);
        assert_ne!(a.verifier, b.verifier);
    }
}
