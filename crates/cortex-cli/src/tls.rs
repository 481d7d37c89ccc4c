//! `--tls-cert`, `--tls-key` and `--tls-client-ca` of `cortex serve` and
//! `cortex up`: the services' TLS, and what the clients inside `cortex up`
//! trust so that they reach those services over `https://`.

use std::path::PathBuf;

use cortex_client::ClientConfig;
use cortex_service::TlsConfig;
use cortex_service::tls::TlsFile;

use crate::exit::Failure;

/// The TLS flags of the commands that run services.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TlsArgs {
    /// Serve over TLS (https://) with the certificate chain in FILE (PEM,
    /// the service's certificate first, then any intermediates); needs
    /// --tls-key. The TLS files are read again every 10 s: renewed files
    /// are used for new connections without a restart (files that cannot
    /// be used are logged, and the previous ones kept). The chain's expiry
    /// is on /metrics (cortex_tls_certificate_expiry_timestamp_seconds),
    /// and the log warns once renewal is overdue (a sixth of the
    /// certificate's lifetime left).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1; may be
    /// the same file).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Require a client certificate signed by one of the CA certificates
    /// in FILE (PEM) from every client: mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The services' TLS: `None` without `--tls-cert`. A file that cannot
    /// be read or used is a usage error naming the flag and the file.
    pub(crate) fn server(&self) -> Result<Option<TlsConfig>, Failure> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            // clap's `requires` makes the flags come in pairs.
            return Ok(None);
        };
        TlsConfig::from_pem_files(cert, key, self.tls_client_ca.as_deref())
            .map(Some)
            .map_err(|error| {
                let flag = match error.file() {
                    TlsFile::Key => "--tls-key",
                    TlsFile::ClientCa => "--tls-client-ca",
                    _ => "--tls-cert",
                };
                Failure::usage(format!("{flag}: {error}"))
            })
    }

    /// The client settings of a client inside `cortex up` (cognition's of
    /// memory, the readiness probe), which reach its own services: what
    /// `config` (from `--config` and the environment) says, and where it
    /// says nothing, the service's files. The service's certificate file
    /// is trusted as `ca_file` (enough when it is self-signed, or holds
    /// the chain up to a local CA), and with `--tls-client-ca` the
    /// service's certificate and key are the client's identity (its
    /// certificate must then be valid for client authentication too).
    /// Without `--tls-cert`, `config` as it is.
    pub(crate) fn internal_client(&self, mut config: ClientConfig) -> ClientConfig {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return config;
        };
        if config.ca_file.is_none() {
            config.ca_file = Some(cert.clone());
        }
        if self.tls_client_ca.is_some() && config.client_cert.is_none() {
            config.client_cert = Some(cert.clone());
            config.client_key = Some(key.clone());
        }
        config
    }
}
