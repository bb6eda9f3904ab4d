//! TLS: the rustls client configuration (system roots through rustls-platform-verifier, plus extra
//! CA certificates), the handshake for implicit TLS and STARTTLS (RFC 3207), and errors that say
//! whether the handshake or the certificate verification failed.

use std::{io, sync::Arc};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::{config::RelayConfig, error::Error};

/// Builds the client configuration once per relay: loading the system roots is expensive.
pub(crate) fn client_config(relay: &RelayConfig) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut extra: Vec<CertificateDer<'static>> = relay.extra_roots.clone();
    if let Some(path) = &relay.extra_ca_file {
        let pem = std::fs::read(path).map_err(|error| {
            Error::TlsConfig(format!("cannot read CA file {}: {error}", path.display()))
        })?;
        let before = extra.len();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            extra.push(cert.map_err(|error| {
                Error::TlsConfig(format!("bad PEM in CA file {}: {error}", path.display()))
            })?);
        }
        if extra.len() == before {
            return Err(Error::TlsConfig(format!(
                "CA file {} holds no certificate",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
    }
    .map_err(|error| Error::TlsConfig(format!("cannot load trust roots: {error}")))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::TlsConfig(error.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Runs the TLS handshake over `tcp`, verifying the certificate against `name`.
pub(crate) async fn handshake(
    config: Arc<rustls::ClientConfig>,
    name: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, Error> {
    let server_name = ServerName::try_from(name.to_string())
        .map_err(|_| Error::TlsConfig(format!("{name:?} is not a valid TLS server name")))?;
    TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|error| classify(name, error))
}

/// Tells a certificate problem (permanent until someone fixes the certificate or the CA setting)
/// from any other handshake failure.
fn classify(host: &str, error: io::Error) -> Error {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(reason)) => Error::CertificateVerification {
            host: host.to_string(),
            reason: reason.to_string(),
        },
        Some(other) => Error::Tls {
            host: host.to_string(),
            reason: other.to_string(),
        },
        None => Error::Tls {
            host: host.to_string(),
            reason: error.to_string(),
        },
    }
}
