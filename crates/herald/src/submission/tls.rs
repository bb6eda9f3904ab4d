//! The server side of STARTTLS (RFC 3207) and implicit TLS (RFC 8314): a rustls acceptor from the PEM files
//! `HERALD_SMTP_TLS_CERT` and `HERALD_SMTP_TLS_KEY`, loaded once at start so a bad file stops `herald serve`
//! with the key's name instead of failing each client's handshake.

use std::{path::Path, sync::Arc};

use tokio_rustls::TlsAcceptor;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{key}: {path} holds no {what} in PEM form")]
    Empty {
        key: &'static str,
        path: String,
        what: &'static str,
    },
    #[error(
        "HERALD_SMTP_TLS_CERT/HERALD_SMTP_TLS_KEY: the certificate and key cannot be used together: {0}"
    )]
    Rustls(#[from] rustls::Error),
}

/// Reads the chain and key and builds the acceptor (TLS 1.2 and 1.3, no client certificates).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsSetupError> {
    let read = |name: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TlsSetupError::Read {
            key: name,
            path: path.display().to_string(),
            source,
        })
    };
    let cert_pem = read("HERALD_SMTP_TLS_CERT", cert)?;
    let key_pem = read("HERALD_SMTP_TLS_KEY", key)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|source| TlsSetupError::Read {
            key: "HERALD_SMTP_TLS_CERT",
            path: cert.display().to_string(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::Empty {
            key: "HERALD_SMTP_TLS_CERT",
            path: cert.display().to_string(),
            what: "certificate",
        });
    }
    let private_key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|source| TlsSetupError::Read {
            key: "HERALD_SMTP_TLS_KEY",
            path: key.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsSetupError::Empty {
            key: "HERALD_SMTP_TLS_KEY",
            path: key.display().to_string(),
            what: "private key",
        })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, private_key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
