//! The contract between herald-mime and herald-smtp: composed segments (dot-safe base64/QP parts,
//! scanned headers and text) arrive at the server byte for byte as composed.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use herald_mime::{Address, ComposeOptions, Mailbox, Message, Part};
use herald_smtp::{BodySegment, Client, Envelope, Pool, PoolConfig, RelayConfig, Security};
use herald_testkit::TestServer;

#[tokio::test]
async fn composed_segments_arrive_exactly_as_composed() {
    let server = TestServer::capture().await;
    let mut relay = RelayConfig::new("127.0.0.1", server.port());
    relay.security = Security::None;
    let pool = Pool::new(Client::new(relay).unwrap(), PoolConfig::default());

    // Lines that start with a dot in every kind of part: text (encoded or not), QP, base64.
    let text = ".starts with a dot\n.\n..two dots\nplain line\n";
    let attachment: Vec<u8> = b".dot at the start of a QP-able attachment\n.\nend\n".to_vec();
    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let message = Message::builder()
        .from(Mailbox::new(Some("Shop"), Address::parse("shop@sender.test").unwrap()).unwrap())
        .to(Mailbox::parse("Ann <ann@rcpt.test>").unwrap())
        .subject("Dots 📦")
        .text(text)
        .html("<p>.dot</p>\n.\n")
        .part(Part::attachment("notes.txt", "text/plain", Bytes::from(attachment)).unwrap())
        .part(
            Part::attachment("blob.bin", "application/octet-stream", Bytes::from(binary)).unwrap(),
        )
        .build()
        .unwrap();
    for allow_8bit in [false, true] {
        let composed = message.compose(&ComposeOptions {
            allow_8bit,
            message_id_domain: None,
        });
        let segments: Vec<BodySegment> = composed
            .segments()
            .iter()
            .map(|s| BodySegment {
                bytes: s.bytes.clone(),
                dot_safe: s.dot_safe,
            })
            .collect();
        let mut envelope = Envelope::new(
            composed.envelope().sender.to_ascii().unwrap(),
            composed
                .envelope()
                .recipients
                .iter()
                .map(|a| a.to_ascii().unwrap()),
        );
        envelope.eight_bit = composed.needs_8bitmime();
        let delivery = pool.send(&envelope, &segments).await.unwrap();
        assert!(delivery.all_accepted());
        let received = server.transactions().last().unwrap().content.clone();
        assert_eq!(received, composed.to_vec(), "allow_8bit={allow_8bit}");
    }
}
