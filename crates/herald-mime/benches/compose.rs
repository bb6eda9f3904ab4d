//! Criterion benchmarks of the "standard notification" (../shared/bench):
//! a full build with nothing cached, a batch build with the image and PDF
//! encoded once, mail-builder building the same tree (the reference that
//! decided for our own writer), and the two body encoders alone.
//!
//! Uses ../shared/bench/fixtures when it sits beside the repository, else
//! synthetic data of the same sizes and character mix.
//!
//! `cargo bench -p herald-mime` (one core; figures in the commit log).

// A benchmark: a failed unwrap is a failed run (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

use std::{hint::black_box, path::PathBuf};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_mime::{Address, ComposeOptions, EncodedPart, Mailbox, Message, Part};

struct Fixtures {
    text: String,
    html: String,
    png: Bytes,
    pdf: Bytes,
    names: Vec<String>,
}

fn fixtures() -> Fixtures {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/bench/fixtures");
    if let (Ok(text), Ok(html), Ok(png), Ok(pdf)) = (
        std::fs::read_to_string(dir.join("body.txt")),
        std::fs::read_to_string(dir.join("body.html")),
        std::fs::read(dir.join("logo.png")),
        std::fs::read(dir.join("invoice.pdf")),
    ) {
        return Fixtures {
            text,
            html,
            png: png.into(),
            pdf: pdf.into(),
            names: names(),
        };
    }
    eprintln!(
        "bench fixtures not found beside the repository: using synthetic data of the same sizes"
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 32) as u8
    };
    let png: Vec<u8> = (0..10_416).map(|_| rnd()).collect();
    let pdf: String = (0..866)
        .map(|i| {
            format!(
                "BT /F1 10 Tf 72 {} Td (Invoice line {i:04} item) Tj ET\n",
                700 - i % 600
            )
        })
        .collect();
    Fixtures {
        text: "您好 {{name}}，感谢您在 Example Shop 购物！订单 {{order_no}} 已发出 🚚。\nThank you for shopping!\n".repeat(12),
        html: "<tr><td style=\"padding:8px;\">订单 {{order_no}} for {{name}}</td></tr>\n".repeat(60)
            + r#"<img src="cid:logo@notify.example">"#,
        png: png.into(),
        pdf: Bytes::from(pdf.into_bytes()),
        names: names(),
    }
}

fn names() -> Vec<String> {
    [
        "王小明",
        "Alice Müller",
        "李雷",
        "José García",
        "韩梅梅",
        "Søren Kierkegaard",
        "陈静",
        "Bob Smith",
    ]
    .map(String::from)
    .to_vec()
}

const CID: &str = "logo@notify.example";
const PDF_NAME: &str = "订单发票_Übersicht.pdf";

fn personalise(f: &Fixtures, i: usize) -> (String, String, String, String, String) {
    let name = format!("{} #{i}", f.names[i % 8]);
    let order = format!("ORD-{}", 100_000_000 + i);
    let subject = format!("【Example Shop】您的订单 {order} 已发货 📦");
    let text = f
        .text
        .replace("{{name}}", &name)
        .replace("{{order_no}}", &order);
    let html = f
        .html
        .replace("{{name}}", &name)
        .replace("{{order_no}}", &order);
    (
        name,
        format!("customer{i}@example.test"),
        subject,
        text,
        html,
    )
}

fn herald(
    f: &Fixtures,
    i: usize,
    shared: Option<&(EncodedPart, EncodedPart)>,
    opts: &ComposeOptions,
) -> usize {
    let (name, to, subject, text, html) = personalise(f, i);
    let b = Message::builder()
        .from(
            Mailbox::new(
                Some("Example Shop 客服"),
                Address::parse("noreply@shop.example").unwrap(),
            )
            .unwrap(),
        )
        .to(Mailbox::new(Some(&name), Address::parse(&to).unwrap()).unwrap())
        .subject(subject)
        .text(text)
        .html(html);
    let b = match shared {
        Some((logo, pdf)) => b.shared_part(logo.clone()).shared_part(pdf.clone()),
        None => b
            .part(
                Part::inline(CID, "image/png", f.png.clone())
                    .unwrap()
                    .with_filename("logo.png")
                    .unwrap(),
            )
            .part(Part::attachment(PDF_NAME, "application/pdf", f.pdf.clone()).unwrap()),
    };
    b.build().unwrap().compose(opts).len()
}

fn mail_builder(f: &Fixtures, i: usize) -> usize {
    use mail_builder::{MessageBuilder, mime::MimePart};
    let (name, to, subject, text, html) = personalise(f, i);
    let body = MimePart::new(
        "multipart/mixed",
        vec![
            MimePart::new(
                "multipart/related",
                vec![
                    MimePart::new(
                        "multipart/alternative",
                        vec![
                            MimePart::new("text/plain", text),
                            MimePart::new("text/html", html),
                        ],
                    ),
                    MimePart::new("image/png", &f.png[..]).inline().cid(CID),
                ],
            ),
            MimePart::new("application/pdf", &f.pdf[..]).attachment(PDF_NAME),
        ],
    );
    MessageBuilder::new()
        .from(("Example Shop 客服", "noreply@shop.example"))
        .to((name, to))
        .subject(subject)
        .body(body)
        .write_to_vec()
        .unwrap()
        .len()
}

fn standard_notification(c: &mut Criterion) {
    let f = fixtures();
    let opts = ComposeOptions {
        allow_8bit: false,
        message_id_domain: Some("shop.example".into()),
    };
    let shared = {
        let logo = Part::inline(CID, "image/png", f.png.clone())
            .unwrap()
            .with_filename("logo.png")
            .unwrap();
        let pdf = Part::attachment(PDF_NAME, "application/pdf", f.pdf.clone()).unwrap();
        (logo.encode(), pdf.encode())
    };
    eprintln!(
        "message sizes: herald {} bytes, mail-builder {} bytes",
        herald(&f, 42, None, &opts),
        mail_builder(&f, 42)
    );
    let mut g = c.benchmark_group("standard_notification");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("herald_full_build", |b| {
        b.iter(|| {
            i += 1;
            black_box(herald(&f, i, None, &opts))
        })
    });
    g.bench_function("herald_batch_shared_parts", |b| {
        b.iter(|| {
            i += 1;
            black_box(herald(&f, i, Some(&shared), &opts))
        })
    });
    g.bench_function("mail_builder_full_build", |b| {
        b.iter(|| {
            i += 1;
            black_box(mail_builder(&f, i))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("encoders");
    let pdf = f.pdf.clone();
    let png = f.png.clone();
    g.throughput(Throughput::Bytes(png.len() as u64));
    g.bench_function("png_part_encode", |b| {
        let p = Part::attachment("logo.png", "image/png", png.clone()).unwrap();
        b.iter(|| black_box(p.encode()))
    });
    g.throughput(Throughput::Bytes(pdf.len() as u64));
    g.bench_function("pdf_part_encode", |b| {
        let p = Part::attachment(PDF_NAME, "application/pdf", pdf.clone()).unwrap();
        b.iter(|| black_box(p.encode()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = standard_notification
}
criterion_main!(benches);
