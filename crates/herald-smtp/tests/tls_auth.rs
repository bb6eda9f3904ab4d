//! STARTTLS, implicit TLS and AUTH against the test server with certificates made by rcgen.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use common::{connect, message, relay};
use herald_smtp::{Client, Credentials, Envelope, Error, Mechanism, RelayConfig, Security};
use herald_testkit::{Action, Fault, ServerConfig, TestPki, TestServer, When};

fn tls_relay(server: &TestServer, pki: &TestPki, security: Security) -> RelayConfig {
    let mut config = relay(server);
    config.security = security;
    config.extra_roots = vec![pki.ca_der.clone()];
    config
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-smtp-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn starttls_with_the_test_ca_succeeds() {
    let pki = TestPki::new();
    let server = TestServer::start(ServerConfig {
        starttls: Some(pki.server_config()),
        ..ServerConfig::default()
    })
    .await;
    let mut connection = connect(tls_relay(&server, &pki, Security::StartTlsRequired)).await;
    assert!(connection.is_tls());
    assert!(
        !connection.extensions().starttls,
        "EHLO must be repeated after STARTTLS"
    );
    connection
        .send_raw(
            &Envelope::new("a@sender.test", ["b@rcpt.test"]),
            &message("tls"),
        )
        .await
        .unwrap();
    assert!(server.transactions()[0].tls);
}

#[tokio::test]
async fn starttls_with_an_untrusted_certificate_fails_verification() {
    let pki = TestPki::new();
    let server = TestServer::start(ServerConfig {
        starttls: Some(pki.untrusted_server_config()),
        ..ServerConfig::default()
    })
    .await;
    let error = Client::new(tls_relay(&server, &pki, Security::StartTlsRequired))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::CertificateVerification { .. }),
        "{error:?}"
    );
    assert!(error.is_permanent());
    assert!(
        error.to_string().contains("certificate verification"),
        "{error}"
    );
    assert!(server.transactions().is_empty());
}

#[tokio::test]
async fn starttls_against_the_system_roots_only_rejects_the_test_certificate() {
    let pki = TestPki::new();
    let server = TestServer::start(ServerConfig {
        starttls: Some(pki.server_config()),
        ..ServerConfig::default()
    })
    .await;
    let mut config = relay(&server);
    config.security = Security::StartTlsRequired;
    match Client::new(config) {
        // No system roots at all on this machine is a configuration error, also fine.
        Err(Error::TlsConfig(_)) => {}
        Err(other) => panic!("{other:?}"),
        Ok(client) => {
            let error = client.connect().await.unwrap_err();
            assert!(
                matches!(error, Error::CertificateVerification { .. }),
                "{error:?}"
            );
        }
    }
}

#[tokio::test]
async fn required_starttls_that_is_not_offered_is_an_error_and_opportunistic_goes_plain() {
    let pki = TestPki::new();
    let server = TestServer::capture().await;
    let error = Client::new(tls_relay(&server, &pki, Security::StartTlsRequired))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::StartTlsUnavailable { .. }),
        "{error:?}"
    );
    assert!(error.is_permanent());

    let connection = connect(tls_relay(&server, &pki, Security::StartTlsOpportunistic)).await;
    assert!(!connection.is_tls());
}

#[tokio::test]
async fn implicit_tls_with_a_ca_file() {
    let pki = TestPki::new();
    let server = TestServer::start(ServerConfig {
        implicit_tls: Some(pki.server_config()),
        ..ServerConfig::default()
    })
    .await;
    let mut config = relay(&server);
    config.security = Security::ImplicitTls;
    config.extra_ca_file = Some(pki.write_ca_pem(&temp_dir("implicit")));
    let mut connection = connect(config).await;
    assert!(connection.is_tls());
    connection
        .send_raw(
            &Envelope::new("a@sender.test", ["b@rcpt.test"]),
            &message("465"),
        )
        .await
        .unwrap();
    assert!(server.transactions()[0].tls);
}

#[tokio::test]
async fn a_bad_ca_file_is_a_configuration_error() {
    let dir = temp_dir("badca");
    let path = dir.join("not-a-ca.pem");
    std::fs::write(&path, "hello").unwrap();
    let mut config = RelayConfig::new("127.0.0.1", 1);
    config.extra_ca_file = Some(path);
    let error = Client::new(config).unwrap_err();
    assert!(matches!(error, Error::TlsConfig(_)), "{error:?}");
}

async fn auth_server(pki: &TestPki) -> TestServer {
    TestServer::start(ServerConfig {
        starttls: Some(pki.server_config()),
        auth: Some(("alice".into(), "correct horse".into())),
        ..ServerConfig::default()
    })
    .await
}

#[tokio::test]
async fn auth_plain_login_and_xoauth2_over_starttls() {
    let pki = TestPki::new();
    let server = auth_server(&pki).await;
    for (credentials, forced) in [
        (Credentials::password("alice", "correct horse"), None),
        (
            Credentials::password("alice", "correct horse"),
            Some(Mechanism::Login),
        ),
        (Credentials::oauth2("alice", "correct horse"), None),
    ] {
        let mut config = tls_relay(&server, &pki, Security::StartTlsRequired);
        config.credentials = Some(credentials);
        config.auth_mechanism = forced;
        let mut connection = connect(config).await;
        connection
            .send_raw(
                &Envelope::new("a@sender.test", ["b@rcpt.test"]),
                &message("auth"),
            )
            .await
            .unwrap();
    }
    let transactions = server.transactions();
    assert_eq!(transactions.len(), 3);
    assert!(
        transactions
            .iter()
            .all(|t| t.auth_user.as_deref() == Some("alice") && t.tls)
    );
    let commands = server.commands();
    assert!(
        commands
            .iter()
            .any(|(_, line)| line.starts_with("AUTH PLAIN "))
    );
    assert!(commands.iter().any(|(_, line)| line == "AUTH LOGIN"));
    assert!(
        commands
            .iter()
            .any(|(_, line)| line.starts_with("AUTH XOAUTH2 "))
    );
}

#[tokio::test]
async fn auth_failure_535_is_permanent_and_says_so() {
    let pki = TestPki::new();
    let server = auth_server(&pki).await;
    for credentials in [
        Credentials::password("alice", "wrong password"),
        Credentials::oauth2("alice", "wrong token"),
    ] {
        let mut config = tls_relay(&server, &pki, Security::StartTlsRequired);
        config.credentials = Some(credentials);
        let error = Client::new(config).unwrap().connect().await.unwrap_err();
        assert!(
            matches!(&error, Error::AuthFailed { reply } if reply.code == 535),
            "{error:?}"
        );
        assert!(error.is_permanent());
        let shown = format!("{error} {error:?}");
        assert!(
            shown.contains("authentication failed") && shown.contains("535"),
            "{shown}"
        );
        assert!(!shown.contains("wrong"), "the secret leaked: {shown}");
    }
}

#[tokio::test]
async fn credentials_are_not_sent_without_tls_unless_loopback_is_allowed() {
    let server = TestServer::start(ServerConfig {
        auth: Some(("alice".into(), "pw".into())),
        ..ServerConfig::default()
    })
    .await;
    let mut config = relay(&server);
    config.credentials = Some(Credentials::password("alice", "pw"));
    let error = Client::new(config.clone())
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::AuthWithoutTls { .. }), "{error:?}");
    assert!(
        !server
            .commands()
            .iter()
            .any(|(_, line)| line.starts_with("AUTH"))
    );

    config.allow_plaintext_auth_on_loopback = true;
    let mut connection = connect(config).await;
    connection
        .send_raw(
            &Envelope::new("a@sender.test", ["b@rcpt.test"]),
            &message("loopback"),
        )
        .await
        .unwrap();
    assert_eq!(server.transactions()[0].auth_user.as_deref(), Some("alice"));
}

#[tokio::test]
async fn a_handshake_failure_is_reported_as_tls_not_as_a_certificate_problem() {
    // Implicit TLS against a plain SMTP server: the server answers the ClientHello with a
    // plaintext greeting, which is no TLS record.
    let pki = TestPki::new();
    let server = TestServer::capture().await;
    let error = Client::new(tls_relay(&server, &pki, Security::ImplicitTls))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
    assert!(error.is_transient());
    assert!(
        error
            .to_string()
            .starts_with("TLS handshake with 127.0.0.1 failed"),
        "{error}"
    );
}

/// `tls=opportunistic` goes plaintext only when STARTTLS is not offered. Once offered, a failed upgrade
/// (untrusted certificate, a refused STARTTLS, a broken handshake) is an error: falling back then would
/// let anyone on the path downgrade the session by breaking the handshake.
#[tokio::test]
async fn opportunistic_starttls_never_falls_back_after_a_failed_upgrade() {
    let pki = TestPki::new();
    let untrusted = TestServer::start(ServerConfig {
        starttls: Some(pki.untrusted_server_config()),
        ..ServerConfig::default()
    })
    .await;
    let error = Client::new(tls_relay(&untrusted, &pki, Security::StartTlsOpportunistic))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::CertificateVerification { .. }),
        "{error:?}"
    );

    let refused = TestServer::start(
        ServerConfig {
            starttls: Some(pki.server_config()),
            ..ServerConfig::default()
        }
        .fault(Fault::reply(
            When::StartTls,
            "454 4.7.0 TLS not available now",
        )),
    )
    .await;
    let error = Client::new(tls_relay(&refused, &pki, Security::StartTlsOpportunistic))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Rejected { reply, .. } if reply.code == 454),
        "{error:?}"
    );

    let dropped = TestServer::start(
        ServerConfig {
            starttls: Some(pki.server_config()),
            ..ServerConfig::default()
        }
        .fault(Fault::new(When::StartTls, Action::Drop)),
    )
    .await;
    Client::new(tls_relay(&dropped, &pki, Security::StartTlsOpportunistic))
        .unwrap()
        .connect()
        .await
        .unwrap_err();

    for server in [&untrusted, &refused, &dropped] {
        let after_starttls: Vec<String> = server
            .commands()
            .into_iter()
            .map(|(_, line)| line)
            .skip_while(|line| line != "STARTTLS")
            .skip(1)
            .collect();
        assert!(
            after_starttls.iter().all(|line| line == "QUIT"),
            "nothing but QUIT may follow a failed STARTTLS in plaintext: {after_starttls:?}"
        );
        assert!(server.transactions().is_empty());
        assert_eq!(server.connections(), 1, "no second, plaintext connection");
    }

    // Not offered at all: plaintext, and the mail goes.
    let plain = TestServer::capture().await;
    let mut connection = connect(tls_relay(&plain, &pki, Security::StartTlsOpportunistic)).await;
    assert!(!connection.is_tls());
    connection
        .send_raw(
            &Envelope::new("a@sender.test", ["b@rcpt.test"]),
            &message("plain"),
        )
        .await
        .unwrap();
    assert!(!plain.transactions()[0].tls);
}

/// A relay that echoes the AUTH line (or the password) in its refusal: the credential never reaches the
/// error, whatever the mechanism.
#[tokio::test]
async fn a_relay_echoing_the_credentials_has_them_redacted() {
    let pki = TestPki::new();
    let server = TestServer::start(
        ServerConfig {
            starttls: Some(pki.server_config()),
            auth: Some(("alice".into(), "correct horse battery".into())),
            ..ServerConfig::default()
        }
        .fault(Fault::new(
            When::Auth,
            Action::Echo("535 5.7.8 refused: ".into()),
        )),
    )
    .await;
    let secret = "correct horse battery";
    for (credentials, forced) in [
        (Credentials::password("alice", secret), None),
        (
            Credentials::password("alice", secret),
            Some(Mechanism::Login),
        ),
        (
            Credentials::oauth2("alice", secret),
            Some(Mechanism::XOAuth2),
        ),
    ] {
        let mut config = tls_relay(&server, &pki, Security::StartTlsRequired);
        config.credentials = Some(credentials);
        config.auth_mechanism = forced;
        let error = Client::new(config).unwrap().connect().await.unwrap_err();
        let (_, echoed) = server.commands().last().cloned().unwrap();
        let shown = format!("{error} {error:?}");
        assert!(shown.contains("535"), "{shown}");
        assert!(!shown.contains(secret), "{shown}");
        let echoed_secret = echoed.rsplit(' ').next().unwrap();
        if !echoed_secret.is_empty() {
            assert!(
                !shown.contains(echoed_secret),
                "the echoed AUTH data {echoed:?} leaked: {shown}"
            );
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }
}
