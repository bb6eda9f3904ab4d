//! A throwaway PKI for TLS tests: one CA, a server certificate it signed for `localhost` and
//! `127.0.0.1`, and an unrelated self-signed certificate that no client should trust.

use std::{path::Path, sync::Arc};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// CA + server certificates for one test.
pub struct TestPki {
    /// The CA certificate in PEM (give it to the client as its extra CA).
    pub ca_pem: String,
    /// The CA certificate in DER.
    pub ca_der: CertificateDer<'static>,
    /// The server certificate (signed by the CA) and its key, in PEM, for external servers
    /// (aiosmtpd).
    pub server_cert_pem: String,
    pub server_key_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    untrusted_chain: Vec<CertificateDer<'static>>,
    untrusted_key: Vec<u8>,
}

impl TestPki {
    pub fn new() -> Self {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Herald test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");

        let server_key = KeyPair::generate().expect("server key");
        let mut server_params = CertificateParams::new(names.clone()).expect("server params");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = server_params
            .signed_by(&server_key, &ca)
            .expect("server certificate");

        let untrusted = rcgen::generate_simple_self_signed(names).expect("self-signed certificate");

        TestPki {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            server_chain: vec![server_cert.der().clone()],
            server_key: server_key.serialize_der(),
            untrusted_chain: vec![untrusted.cert.der().clone()],
            untrusted_key: untrusted.signing_key.serialize_der(),
        }
    }

    /// A rustls server configuration presenting the CA-signed certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        server_config(self.server_chain.clone(), &self.server_key)
    }

    /// A rustls server configuration presenting a self-signed certificate no client trusts.
    pub fn untrusted_server_config(&self) -> Arc<rustls::ServerConfig> {
        server_config(self.untrusted_chain.clone(), &self.untrusted_key)
    }

    /// Writes the CA certificate as PEM to `dir/ca.pem` and returns the path.
    pub fn write_ca_pem(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA PEM");
        path
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn server_config(chain: Vec<CertificateDer<'static>>, key: &[u8]) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    Arc::new(config)
}
