//! Property tests: arbitrary Unicode subjects, names, file names and bodies
//! survive composing and parsing back with mail-parser, and every output
//! keeps the byte invariants.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Spec, mb, roundtrip};
use herald_mime::{Address, ComposeOptions, Mailbox};
use proptest::prelude::*;

/// Header text: any Unicode without control characters (which are rejected
/// by design, see the header-injection tests).
fn header_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        any::<char>().prop_filter("no controls", |c| !c.is_control()),
        0..120,
    )
    .prop_map(|v| v.into_iter().collect())
}

/// Like a display name: the parser trims blanks, so a name is compared
/// trimmed (and an empty name means none).
fn name() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(header_text())
}

fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~\r\n\t]{0,3000}",
        proptest::collection::vec(
            prop_oneof![
                Just("\r\n"),
                Just("\n"),
                Just("\r"),
                Just("."),
                Just("From "),
                Just(" "),
                Just("中文"),
                Just("😀"),
                Just("=")
            ],
            0..400
        )
        .prop_map(|v| v.concat()),
    ]
}

proptest! {
    // 192 cases by default; PROPTEST_CASES=5000 for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(192),
        ..ProptestConfig::default()
    })]

    #[test]
    fn subjects_and_names(subject in header_text(), from in name(), to in name()) {
        let spec = Spec {
            from: mb(from.as_deref(), "from@example.com"),
            to: vec![mb(to.as_deref(), "to@example.com")],
            subject: Some(subject),
            text: Some("x".into()),
            ..Spec::default()
        };
        roundtrip(&spec, &ComposeOptions::default());
    }

    #[test]
    fn bodies(text in body(), html in proptest::option::of(body()), eight in any::<bool>()) {
        let spec = Spec {
            from: mb(None, "from@example.com"),
            to: vec![mb(None, "to@example.com")],
            subject: Some("s".into()),
            text: Some(text),
            html,
            ..Spec::default()
        };
        roundtrip(&spec, &ComposeOptions { allow_8bit: eight, ..ComposeOptions::default() });
    }

    #[test]
    fn file_names_and_bytes(
        name in header_text().prop_filter("non-blank", |s| !s.trim().is_empty()),
        data in proptest::collection::vec(any::<u8>(), 0..5000),
    ) {
        let spec = Spec {
            from: mb(None, "from@example.com"),
            to: vec![mb(None, "to@example.com")],
            text: Some("see attachment".into()),
            parts: vec![(name, "application/octet-stream".into(), data, None)],
            ..Spec::default()
        };
        roundtrip(&spec, &ComposeOptions::default());
    }

    #[test]
    fn mostly_ascii_attachments_any_encoding(
        data in proptest::collection::vec(
            prop_oneof![
                40 => 32u8..127,
                1 => Just(b'\n'),
                1 => Just(b'\r'),
                1 => Just(b'.'),
                1 => Just(b'='),
                1 => Just(b' '),
                1 => any::<u8>(),
            ],
            0..6000,
        ),
        prefix in prop_oneof![Just(&b""[..]), Just(&b"From "[..]), Just(&b"."[..]), Just(&b"--=_"[..])],
    ) {
        // Mostly ASCII, so QP (binary mode: CR and LF escaped) and 7bit get
        // chosen as well as base64; the bytes must come back exactly.
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(&data);
        let spec = Spec {
            from: mb(None, "from@example.com"),
            to: vec![mb(None, "to@example.com")],
            text: Some("see attachment".into()),
            parts: vec![("data.bin".into(), "application/octet-stream".into(), bytes, None)],
            ..Spec::default()
        };
        roundtrip(&spec, &ComposeOptions::default());
    }

    #[test]
    fn address_parser_never_panics(s in any::<String>()) {
        let _ = Address::parse(&s);
        let _ = Mailbox::parse(&s);
    }

    #[test]
    fn valid_addresses_have_no_controls(s in "[a-z0-9.!#$%&'*+/=?^_`{|}~-]{1,20}@[a-z0-9-]{1,20}(\\.[a-z]{2,5}){0,2}") {
        if let Ok(a) = Address::parse(&s) {
            prop_assert!(!a.to_string().chars().any(char::is_control));
            prop_assert_eq!(a.to_string(), s);
        }
    }
}
