//! Decode what we encode: a battery of tricky messages, composed and parsed
//! back with mail-parser, compared field by field, with the byte invariants
//! (CRLF only, lines ≤ 998, 7-bit clean, segment contract) on every output.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Spec, check_invariants, expected_tree, mb, roundtrip};
use herald_mime::{ComposeError, ComposeOptions, Mailbox, Message, Part, TransferEncoding};

fn opts() -> ComposeOptions {
    ComposeOptions::default()
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn base() -> Spec {
    Spec {
        from: mb(Some("Example Shop 客服"), "noreply@shop.example"),
        to: vec![mb(Some("王小明"), "xiaoming@example.com")],
        subject: Some("Hello".into()),
        text: Some("Hello\n".into()),
        ..Spec::default()
    }
}

const SUBJECTS: &[&str] = &[
    "Your order has shipped",
    "【Example Shop】您的订单 ORD-100000042 已发货 📦",
    "🎉🎉🎉 Party 🎉🎉🎉",
    "مرحبا بكم في متجرنا",
    "שלום עולם — הזמנה 42",
    "Ünïcödé mixed with ASCII and 中文 and עברית",
    "=?utf-8?q?not_really_encoded?=",
    "  leading and trailing spaces  ",
    "tabs\tand  double  spaces",
    "a",
    "",
];

#[test]
fn subjects_in_any_language() {
    let long_mixed = "订单 order 📦 ".repeat(30);
    let long_ascii = "The quick brown fox jumps over the lazy dog ".repeat(7);
    let unfoldable = "x".repeat(2000);
    let mut all: Vec<String> = SUBJECTS.iter().map(|s| s.to_string()).collect();
    all.extend([
        long_mixed.trim_end().to_owned(),
        long_ascii.trim_end().to_owned(),
        unfoldable,
    ]);
    assert!(all.iter().any(|s| s.chars().count() >= 300));
    for s in all {
        let spec = Spec {
            subject: Some(s.clone()),
            ..base()
        };
        let c = roundtrip(&spec, &opts());
        let bytes = c.to_vec();
        let head = String::from_utf8_lossy(
            &bytes[..bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap()],
        )
        .into_owned();
        if s.is_ascii()
            && !s.contains("=?")
            && !s.contains("  ")
            && !s.starts_with(' ')
            && !s.contains('\t')
            && s.len() < 900
            && !s.is_empty()
        {
            // Readable ASCII is left as it is (only folded).
            assert!(!head.contains("Subject: =?"), "{head}");
            assert!(
                head.replace("\r\n ", " ")
                    .contains(&format!("Subject: {s}\r\n")),
                "{head}"
            );
        }
    }
}

#[test]
fn display_names_and_addresses() {
    let names = [
        "王小明",
        "José García",
        "Doe, Jane",
        "\"Quoted\" \\ backslash",
        "محمد الأحمد",
        "🦀 Rustacean 🦀",
        "O'Brien (Sales)",
        "a.b@c",
        &"Very Long Name ".repeat(12),
        &"非常长的名字".repeat(20),
    ];
    for n in names {
        let spec = Spec {
            from: mb(Some(n), "sender@example.com"),
            to: vec![
                mb(Some(n), "a@example.com"),
                mb(None, "b@example.com"),
                mb(Some("B"), "c@bücher.example"),
            ],
            cc: vec![mb(Some(n), "cc@example.org")],
            reply_to: vec![mb(Some(n), "reply@example.net")],
            bcc: vec![mb(Some("Hidden"), "hidden@example.com")],
            ..base()
        };
        let c = roundtrip(&spec, &opts());
        let rcpts: Vec<String> = c
            .envelope()
            .recipients
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            rcpts,
            [
                "a@example.com",
                "b@example.com",
                "c@bücher.example",
                "cc@example.org",
                "hidden@example.com"
            ]
        );
        assert!(
            !c.to_vec().windows(6).any(|w| w == b"hidden"),
            "Bcc is not written"
        );
        assert_eq!(c.envelope().sender.to_string(), "sender@example.com");
        assert!(!c.needs_smtputf8());
    }
}

#[test]
fn utf8_local_part_needs_smtputf8() {
    let spec = Spec {
        to: vec![mb(Some("用户"), "用户@例子.广告")],
        ..base()
    };
    let c = spec.message().compose(&opts());
    check_invariants(&c);
    assert!(c.needs_smtputf8());
    assert!(
        String::from_utf8(c.to_vec())
            .unwrap()
            .contains("<用户@例子.广告>")
    );
}

#[test]
fn duplicate_recipients_are_sent_once() {
    let spec = Spec {
        to: vec![mb(None, "a@Example.com"), mb(None, "a@example.COM")],
        cc: vec![mb(None, "a@example.com")],
        bcc: vec![mb(None, "A@example.com")],
        ..base()
    };
    let c = spec.message().compose(&opts());
    let rcpts: Vec<String> = c
        .envelope()
        .recipients
        .iter()
        .map(|a| a.to_string())
        .collect();
    // Local parts are case-sensitive (RFC 5321 §2.4), domains are not.
    assert_eq!(rcpts, ["a@Example.com", "A@example.com"]);
}

#[test]
fn bodies_long_lines_newlines_dots_and_from() {
    let bodies = [
        "x".repeat(5000),
        "中".repeat(5000),
        format!("{}\n{}\n", "word ".repeat(1000), "é".repeat(3000)),
        "one\rtwo\nthree\r\nfour\n\rfive".into(),
        ".\n..\n.leading dot\nFrom the start\nFrom: not a header\n--=_looks like a boundary\n"
            .into(),
        "trailing spaces   \ntrailing tab\t\nend with space ".into(),
        "nul \0 and bell \x07 and del \x7f".into(),
        "=3D=20 equals signs == ?= =?".into(),
        String::new(),
        "\n\n\n".into(),
        "plain ascii, short lines\nsecond line\n".into(),
    ];
    for body in &bodies {
        for html in [false, true] {
            let spec = Spec {
                text: (!html).then(|| body.clone()),
                html: html.then(|| body.clone()),
                ..base()
            };
            roundtrip(&spec, &opts());
            roundtrip(
                &spec,
                &ComposeOptions {
                    allow_8bit: true,
                    ..opts()
                },
            );
        }
    }
}

#[test]
fn every_structure() {
    let png = random_bytes(10_000, 1);
    let pdf = random_bytes(50_000, 2);
    let inline = (
        "logo.png".to_string(),
        "image/png".to_string(),
        png,
        Some("logo@notify.example".to_string()),
    );
    let attach = (
        "订单发票_Übersicht.pdf".to_string(),
        "application/pdf".to_string(),
        pdf,
        None,
    );
    let html = r#"<p>Hi <img src="cid:logo@notify.example"></p>"#.to_string();
    let cases: Vec<Spec> = vec![
        Spec {
            text: Some("t".into()),
            html: None,
            ..base()
        },
        Spec {
            text: None,
            html: Some("<b>h</b>".into()),
            ..base()
        },
        Spec {
            text: Some("t".into()),
            html: Some("<b>h</b>".into()),
            ..base()
        },
        Spec {
            text: None,
            html: Some(html.clone()),
            parts: vec![inline.clone()],
            ..base()
        },
        Spec {
            text: Some("t".into()),
            html: Some(html.clone()),
            parts: vec![inline.clone()],
            ..base()
        },
        Spec {
            text: Some("t".into()),
            html: Some(html.clone()),
            parts: vec![inline.clone(), attach.clone()],
            ..base()
        },
        Spec {
            text: Some("t".into()),
            html: None,
            parts: vec![attach.clone()],
            ..base()
        },
        Spec {
            text: None,
            html: None,
            parts: vec![attach.clone()],
            ..base()
        },
        Spec {
            text: None,
            html: None,
            ..base()
        },
        // Inline part without HTML: nothing to relate it to, so it goes to mixed.
        Spec {
            text: Some("t".into()),
            html: None,
            parts: vec![inline.clone()],
            ..base()
        },
        Spec {
            text: Some(String::new()),
            html: Some(String::new()),
            parts: vec![attach.clone()],
            ..base()
        },
    ];
    for spec in &cases {
        roundtrip(spec, &opts());
    }
    assert_eq!(
        expected_tree(&cases[5]),
        "mixed[related[alternative[text/plain,text/html],image/png],application/pdf]"
    );
}

#[test]
fn attachments_binary_text_and_names() {
    let names = [
        "订单发票_Übersicht.pdf",
        "résumé.txt",
        "📎 emoji file.bin",
        "ملف.dat",
        "quote\"and\\backslash.bin",
        "semi;colon,comma=equals.bin",
        &format!("{}.bin", "很长的文件名".repeat(30)),
        &format!("{}.bin", "long-ascii-name-".repeat(20)),
        "plain.bin",
    ];
    let datas: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        b".".to_vec(),
        random_bytes(1, 3),
        random_bytes(2, 4),
        random_bytes(3, 5),
        random_bytes(57, 6),
        random_bytes(58, 7),
        random_bytes(100_000, 8),
        b"ascii text\nwith LF only\n.dot line\nFrom me\n".to_vec(),
        b"crlf text\r\nlines\r\n".to_vec(),
        b"one very long line ".repeat(200),
        b"no newline at end".to_vec(),
    ];
    for (i, name) in names.iter().enumerate() {
        for (j, data) in datas.iter().enumerate() {
            if (i + j) % 3 != 0 && j > 3 {
                continue; // a spread, not the full product
            }
            let spec = Spec {
                parts: vec![(
                    name.to_string(),
                    "application/octet-stream".into(),
                    data.clone(),
                    None,
                )],
                ..base()
            };
            roundtrip(&spec, &opts());
        }
    }
}

#[test]
fn encodings_are_the_smallest_safe() {
    let pick = |text: &str, allow_8bit: bool| -> String {
        let m = Message::builder()
            .from(Mailbox::parse("a@b.example").unwrap())
            .to(Mailbox::parse("c@d.example").unwrap())
            .text(text)
            .build()
            .unwrap();
        let c = m.compose(&ComposeOptions {
            allow_8bit,
            ..opts()
        });
        let s = String::from_utf8_lossy(&c.to_vec()).into_owned();
        s.lines()
            .find_map(|l| {
                l.strip_prefix("Content-Transfer-Encoding: ")
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "7bit".into())
    };
    assert_eq!(pick("plain ascii\n", false), "7bit");
    assert_eq!(pick(&"中文内容，".repeat(100), false), "base64");
    assert_eq!(
        pick(&format!("<p>{}é</p>", "ascii html ".repeat(100)), false),
        "quoted-printable"
    );
    assert_eq!(pick(&"中文内容，\n".repeat(100), true), "8bit");
    assert_eq!(
        pick(&"中".repeat(400), true),
        "base64",
        "a 1,200-octet line cannot go 8bit"
    );
    assert_eq!(pick("From the start\n", false), "quoted-printable");
    assert_eq!(pick(&"x".repeat(999), false), "quoted-printable");

    // Attachments: base64 for binary, QP for mostly-ASCII, 7bit for canonical text.
    let att = |data: Vec<u8>| {
        let p = Part::attachment("f", "application/octet-stream", data).unwrap();
        p.encode().encoding()
    };
    assert_eq!(att(random_bytes(5000, 9)), TransferEncoding::Base64);
    assert_eq!(
        att(b"%PDF-1.4\n".repeat(500)),
        TransferEncoding::QuotedPrintable
    );
    assert_eq!(att(b"a,b\r\n1,2\r\n".to_vec()), TransferEncoding::SevenBit);
}

#[test]
fn custom_headers() {
    let spec = Spec {
        headers: vec![
            ("X-Campaign".into(), "spring-sale".into()),
            (
                "X-Unsubscribe-Url".into(),
                "<https://example.com/unsub?id=42>".into(),
            ),
            ("X-Unicode".into(), "Grüße aus 北京 📦".into()),
            ("X-Long".into(), "word ".repeat(100).trim_end().to_owned()),
            ("X-Tag".into(), "one".into()),
        ],
        ..base()
    };
    roundtrip(&spec, &opts());
}

#[test]
fn header_injection_is_impossible() {
    let ok = || {
        Message::builder()
            .from(Mailbox::parse("a@b.example").unwrap())
            .to(Mailbox::parse("c@d.example").unwrap())
    };
    let inj = [
        "x\r\nBcc: evil@x.example",
        "x\nBcc: evil",
        "x\rBcc: evil",
        "x\0y",
    ];
    for v in inj {
        assert!(
            matches!(
                ok().subject(v).build(),
                Err(ComposeError::ControlCharacter { .. })
            ),
            "{v:?}"
        );
        assert!(matches!(
            ok().header("X-A", v).build(),
            Err(ComposeError::ControlCharacter { .. })
        ));
        assert!(Mailbox::parse(&format!("{v} <a@b.example>")).is_err());
        assert!(Mailbox::parse(&format!("a{v}@b.example")).is_err());
        assert!(Mailbox::new(Some(v), "a@b.example".parse().unwrap()).is_err());
        assert!(Part::attachment(v, "text/plain", "x").is_err());
        assert!(Part::attachment("f", &format!("text/plain; charset={v}"), "x").is_err());
        assert!(Part::inline(v, "image/png", "x").is_err());
        assert!(matches!(
            ok().message_id(v).build(),
            Err(ComposeError::InvalidMessageId(_))
        ));
    }
    for name in ["X-A:B", "X A", "", "X-\u{e9}", &"X".repeat(77), "X-\r\n"] {
        assert!(
            matches!(
                ok().header(name, "v").build(),
                Err(ComposeError::InvalidHeaderName(_))
            ),
            "{name:?}"
        );
    }
    for name in [
        "Bcc",
        "bcc",
        "From",
        "Content-Type",
        "MIME-Version",
        "Message-ID",
        "Subject",
        "Content-Transfer-Encoding",
    ] {
        assert!(
            matches!(
                ok().header(name, "v").build(),
                Err(ComposeError::ReservedHeader(_))
            ),
            "{name}"
        );
    }
    assert!(Part::attachment("f", "multipart/mixed", "x").is_err());
    assert!(Part::attachment("f", "text/plain; boundary=x", "x").is_err());
    assert!(Part::attachment("f", "nope", "x").is_err());
}

#[test]
fn cid_references_must_resolve() {
    let b = || {
        Message::builder()
            .from(Mailbox::parse("a@b.example").unwrap())
            .to(Mailbox::parse("c@d.example").unwrap())
    };
    let err = b()
        .html(r#"<img src="cid:missing@x">"#)
        .build()
        .unwrap_err();
    assert_eq!(err, ComposeError::MissingContentId("missing@x".into()));
    assert_eq!(
        err.to_string(),
        "html references cid:missing@x but no inline part has that content_id"
    );
    // An attachment with that Content-ID is not an inline part.
    let p = Part::attachment("a.png", "image/png", "x")
        .unwrap()
        .with_content_id("a@x")
        .unwrap();
    assert!(b().html(r#"<img src="cid:a@x">"#).part(p).build().is_err());
    let p = Part::inline("<a@x>", "image/png", "x").unwrap();
    assert!(
        b().html(r#"<img src="cid:a%40x">"#)
            .part(p.clone())
            .build()
            .is_ok()
    );
    assert!(matches!(
        b().html("x").part(p.clone()).part(p).build(),
        Err(ComposeError::DuplicateContentId(_))
    ));
    assert_eq!(b().build().map(|_| ()).err(), None);
    assert_eq!(
        Message::builder()
            .to(Mailbox::parse("c@d.example").unwrap())
            .build()
            .unwrap_err(),
        ComposeError::MissingFrom
    );
    assert_eq!(
        Message::builder()
            .from(Mailbox::parse("c@d.example").unwrap())
            .build()
            .unwrap_err(),
        ComposeError::NoRecipients
    );
}

#[test]
fn shared_parts_are_one_allocation_and_boundaries_differ() {
    let pdf = Part::attachment("invoice.pdf", "application/pdf", random_bytes(50_000, 10)).unwrap();
    let logo = Part::inline("logo@x", "image/png", random_bytes(10_000, 11)).unwrap();
    let (pdf_e, logo_e) = (pdf.encode(), logo.encode());
    let msgs: Vec<_> = (0..3)
        .map(|i| {
            Message::builder()
                .from(Mailbox::parse("a@b.example").unwrap())
                .to(Mailbox::parse(&format!("user{i}@d.example")).unwrap())
                .text(format!("hello {i}"))
                .html(r#"<img src="cid:logo@x">"#)
                .shared_part(logo_e.clone())
                .shared_part(pdf_e.clone())
                .build()
                .unwrap()
                .compose(&opts())
        })
        .collect();
    for c in &msgs {
        check_invariants(c);
        let ptrs: Vec<*const u8> = c.segments().iter().map(|s| s.bytes.as_ptr()).collect();
        assert!(
            ptrs.contains(&pdf_e.segment().bytes.as_ptr()),
            "PDF segment shared, not copied"
        );
        assert!(ptrs.contains(&logo_e.segment().bytes.as_ptr()));
        assert!(c.segments().iter().all(|s| s.dot_safe));
    }
    let boundary = |c: &herald_mime::Composed| {
        let s = String::from_utf8(c.to_vec()).unwrap();
        let i = s.find("boundary=\"").unwrap() + 10;
        s[i..i + 24].to_owned()
    };
    assert_ne!(boundary(&msgs[0]), boundary(&msgs[1]));
    assert_ne!(msgs[0].message_id(), msgs[1].message_id());
    // A shared segment holds no boundary.
    assert!(!pdf_e.segment().bytes.windows(3).any(|w| w == b"--="));
    // Shared and per-message encoding give the same decoded message.
    let spec = Spec {
        html: Some(r#"<img src="cid:logo@x">"#.into()),
        parts: vec![
            (
                "logo.png".into(),
                "image/png".into(),
                logo.data().to_vec(),
                Some("logo@x".into()),
            ),
            (
                "invoice.pdf".into(),
                "application/pdf".into(),
                pdf.data().to_vec(),
                None,
            ),
        ],
        ..base()
    };
    roundtrip(&spec, &opts());
}

#[test]
fn dot_safety_is_reported_for_literal_parts() {
    let m = Message::builder()
        .from(Mailbox::parse("a@b.example").unwrap())
        .to(Mailbox::parse("c@d.example").unwrap())
        .text("line\n.starts with a dot\n")
        .build()
        .unwrap()
        .compose(&opts());
    check_invariants(&m);
    assert!(
        m.segments().iter().any(|s| !s.dot_safe),
        "a 7bit body with a leading dot is not dot-safe"
    );
}

#[test]
fn header_named_dot_is_not_dot_safe() {
    // Found by fuzzing: ".x" is a valid RFC 5322 field name.
    let m = Message::builder()
        .from(Mailbox::parse("a@b.example").unwrap())
        .to(Mailbox::parse("c@d.example").unwrap())
        .header(".x", "v")
        .build()
        .unwrap()
        .compose(&opts());
    check_invariants(&m);
}

#[test]
fn fixed_message_id_and_date() {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_655_000);
    let m = Message::builder()
        .from(Mailbox::parse("a@b.example").unwrap())
        .to(Mailbox::parse("c@d.example").unwrap())
        .message_id("<fixed.1@b.example>")
        .date(when)
        .build()
        .unwrap();
    let a = m.compose(&opts());
    let b = m.compose(&opts());
    assert_eq!(a.message_id(), "fixed.1@b.example");
    let s = String::from_utf8(a.to_vec()).unwrap();
    assert!(s.contains("Date: Thu, 26 Nov 2026 01:03:20 +0000\r\n"));
    assert!(s.contains("Message-ID: <fixed.1@b.example>\r\n"));
    assert_eq!(a.message_id(), b.message_id());
    let d = Message::builder()
        .from(Mailbox::parse("a@b.example").unwrap())
        .to(Mailbox::parse("c@d.example").unwrap())
        .build()
        .unwrap()
        .compose(&ComposeOptions {
            message_id_domain: Some("mail.example".into()),
            ..opts()
        });
    assert!(d.message_id().ends_with("@mail.example"));
    let bad = Message::builder()
        .from(Mailbox::parse("a@b.example").unwrap())
        .to(Mailbox::parse("c@d.example").unwrap())
        .build()
        .unwrap()
        .compose(&ComposeOptions {
            message_id_domain: Some("evil\r\nBcc: x@y.example".into()),
            ..opts()
        });
    check_invariants(&bad);
    assert!(bad.message_id().ends_with("@b.example"));
}

#[test]
fn envelope_sender_and_accessors() {
    let m = Message::builder()
        .from(Mailbox::parse("Shop <noreply@shop.example>").unwrap())
        .envelope_from("bounces+42@shop.example".parse().unwrap())
        .to(Mailbox::parse("a@x.example").unwrap())
        .cc(Mailbox::parse("b@x.example").unwrap())
        .bcc(Mailbox::parse("c@x.example").unwrap())
        .subject("s")
        .build()
        .unwrap();
    assert_eq!(m.envelope_sender().to_string(), "bounces+42@shop.example");
    assert_eq!((m.to().len(), m.cc().len(), m.bcc().len()), (1, 1, 1));
    assert_eq!(m.subject(), Some("s"));
    let c = m.compose(&opts());
    assert_eq!(c.envelope().sender.to_string(), "bounces+42@shop.example");
    let s = String::from_utf8(c.to_vec()).unwrap();
    assert!(s.starts_with("From: Shop <noreply@shop.example>\r\n"));
    assert!(
        !s.contains("bounces+42"),
        "the envelope sender is not a header"
    );
}

#[test]
fn rfc2047_name_fallback_decodes_on_its_own() {
    use mail_parser::{MessageParser, MimeHeaders};
    // Older clients read only Content-Type's name=; it must decode alone too.
    for name in [
        "订单发票_Übersicht.pdf",
        &format!("{}.pdf", "很长的文件名".repeat(20)),
        "plain.pdf",
        "a \"quoted\" name.pdf",
    ] {
        let m = Message::builder()
            .from(Mailbox::parse("a@b.example").unwrap())
            .to(Mailbox::parse("c@d.example").unwrap())
            .text("x")
            .part(Part::attachment(name, "application/pdf", vec![1u8, 2, 3]).unwrap())
            .build()
            .unwrap()
            .compose(&opts());
        check_invariants(&m);
        let bytes = m.to_vec();
        let parsed = MessageParser::default().parse(&bytes[..]).unwrap();
        let att = parsed.attachment(0).unwrap();
        assert_eq!(
            att.content_type().and_then(|c| c.attribute("name")),
            Some(name),
            "name= of {name}"
        );
        assert_eq!(
            att.content_disposition()
                .and_then(|c| c.attribute("filename")),
            Some(name)
        );
    }
}
