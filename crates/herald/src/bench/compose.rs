//! `herald bench compose`: builds the "standard notification" of
//! ../shared/bench with exactly its personalization rules and prints
//! messages/s, µs/message and bytes/message (median of several rounds).
//!
//! Without `--batch` nothing is cached, as in the Python and lettre
//! baselines: every message parses its addresses and encodes the image and
//! the PDF again. With `--batch` the image and the PDF are encoded once and
//! every message shares those segments, as Herald does for a batch send.
//!
//! `--dkim ed25519|rsa` signs every message as `herald serve` does (issue 13), with a key made for the run,
//! so the figure includes the signature; `--sample` then writes the signed message.

use super::{
    fixtures::{Fixtures, Notification},
    measure::print_whole_run,
};
use std::{hint::black_box, path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use herald_mime::{Address, ComposeOptions, Composed, EncodedPart, Mailbox, Message, Part};

#[derive(Debug, clap::Args)]
pub struct ComposeArgs {
    /// Messages per round.
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Encode the shared parts (image, PDF) once for the whole batch.
    #[arg(long)]
    pub batch: bool,
    /// The bench fixtures (default: ../shared/bench/fixtures beside the repository).
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// Write message number I to --out instead of measuring.
    #[arg(long, requires = "out")]
    pub sample: Option<usize>,
    /// Where --sample writes.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Allow 8bit parts (transport with 8BITMIME).
    #[arg(long = "8bit")]
    pub eight_bit: bool,
    /// Also DKIM-sign every message (issue 13) with a key of this algorithm made for the run.
    #[arg(long, value_parser = ["ed25519", "rsa"])]
    pub dkim: Option<String>,
}

/// A DKIM key ring for the fixture's sender domain, made for the run.
fn bench_keys(algorithm: &str, domain: &str) -> anyhow::Result<herald::dkim::KeyRing> {
    let algorithm: herald::dkim::Algorithm = algorithm.parse()?;
    let key = herald::dkim::generate(domain, "bench", algorithm, None, 0)?;
    Ok(herald::dkim::KeyRing::from_stored(&[key], None)?)
}

/// What `ComposedMessage::sign` does per message: the segments hashed where they are, the shared ones (a
/// batch's image and PDF, `blobs`) from their canonical form made once, the header in front.
fn sign(
    keys: &herald::dkim::KeyRing,
    domain: &str,
    msg: &Composed,
    blobs: &[std::sync::Arc<herald::store::SharedBlob>],
) -> Vec<u8> {
    let segments: Vec<herald::dkim::SignedSegment<'_>> = msg
        .segments()
        .iter()
        .map(|s| herald::dkim::SignedSegment {
            bytes: &s.bytes[..],
            // The same allocation, as `ComposedMessage::new` finds a shared part.
            canonical: blobs
                .iter()
                .find(|b| b.bytes.as_ptr() == s.bytes.as_ptr() && b.bytes.len() == s.bytes.len())
                .and_then(|b| b.canonical()),
        })
        .collect();
    keys.sign_segments(domain, &segments)
        .expect("signing works")
        .expect("the bench domain has a key")
}

/// The fixtures, loaded once (as every baseline does).
pub struct Workload {
    meta: Notification,
    text: String,
    html: String,
    png: Bytes,
    pdf: Bytes,
    opts: ComposeOptions,
}

impl Workload {
    pub(crate) fn load(fixtures: &Fixtures, allow_8bit: bool) -> anyhow::Result<Workload> {
        let meta = fixtures.notification.clone();
        let text = fixtures.read_text(&meta.text_template)?;
        let html = fixtures.read_text(&meta.html_template)?;
        let png = Bytes::from(fixtures.read(&meta.inline_image_file)?);
        let pdf = Bytes::from(fixtures.read(&meta.attachment_file)?);
        let opts = ComposeOptions {
            allow_8bit,
            message_id_domain: Some(meta.message_id_domain.clone()),
        };
        Ok(Workload {
            meta,
            text,
            html,
            png,
            pdf,
            opts,
        })
    }

    pub(crate) fn parts(&self) -> (Part, Part) {
        let logo = Part::inline(&self.meta.inline_image_cid, "image/png", self.png.clone())
            .and_then(|p| p.with_filename("logo.png"))
            .expect("fixture image part");
        let pdf = Part::attachment(
            &self.meta.attachment_filename,
            "application/pdf",
            self.pdf.clone(),
        )
        .expect("fixture pdf part");
        (logo, pdf)
    }

    /// Message `i`, personalized exactly as bench_py.py's `personalise`.
    pub(crate) fn build(&self, i: usize, shared: Option<&(EncodedPart, EncodedPart)>) -> Composed {
        let m = &self.meta;
        let name = format!("{} #{i}", m.names[i % m.names.len()]);
        let order = format!("ORD-{}", m.order_no_base + i as u64);
        let to_addr = format!("customer{i}@example.test");
        let subject = m.subject_template.replace("{{order_no}}", &order);
        let text = self
            .text
            .replace("{{name}}", &name)
            .replace("{{order_no}}", &order);
        let html = self
            .html
            .replace("{{name}}", &name)
            .replace("{{order_no}}", &order);
        let from = Mailbox::new(
            Some(&m.from_name),
            Address::parse(&m.from_addr).expect("from"),
        )
        .expect("from mailbox");
        let to =
            Mailbox::new(Some(&name), Address::parse(&to_addr).expect("to")).expect("to mailbox");
        let b = Message::builder()
            .from(from)
            .to(to)
            .subject(subject)
            .text(text)
            .html(html);
        let b = match shared {
            Some((logo, pdf)) => b.shared_part(logo.clone()).shared_part(pdf.clone()),
            None => {
                let (logo, pdf) = self.parts();
                b.part(logo).part(pdf)
            }
        };
        b.build()
            .expect("standard notification is valid")
            .compose(&self.opts)
    }
}

pub fn run(args: ComposeArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let w = Workload::load(&Fixtures::find(args.fixtures.as_deref())?, args.eight_bit)?;
    let shared = args.batch.then(|| {
        let (logo, pdf) = w.parts();
        (logo.encode(), pdf.encode())
    });
    let domain = Address::parse(&w.meta.from_addr)?.ascii_domain().to_owned();
    let keys = args
        .dkim
        .as_deref()
        .map(|a| bench_keys(a, &domain))
        .transpose()?;
    let blobs: Vec<_> = shared
        .iter()
        .flat_map(|(logo, pdf)| [logo, pdf])
        .map(|part| herald::store::SharedBlob::new(part.segment().bytes.clone()))
        .collect();
    let build = |i: usize| {
        let msg = w.build(i, shared.as_ref());
        let signature = keys.as_ref().map(|k| sign(k, &domain, &msg, &blobs));
        (msg, signature)
    };
    if let Some(i) = args.sample {
        let out = args.out.as_ref().expect("clap requires --out");
        let (msg, signature) = build(i);
        let mut bytes = signature.unwrap_or_default();
        bytes.extend_from_slice(&msg.to_vec());
        std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
        println!(
            "wrote message #{i} ({} bytes) to {}",
            msg.len(),
            out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.count == 0 || args.rounds == 0 {
        bail!("--count and --rounds must be at least 1");
    }
    let bytes = w.build(0, shared.as_ref()).len();
    // Warm-up: page in the buffers and the allocator.
    let warm_up = args.count.min(1000);
    for i in 0..warm_up {
        black_box(build(i));
    }
    // Wall time per round, and this thread's CPU time (Linux schedstat, ns):
    // on a shared machine the CPU figure is the steadier one, as in the
    // baseline's "client CPU µs/msg" column.
    let mut secs = Vec::with_capacity(args.rounds);
    let mut cpu = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let c0 = thread_cpu_ns();
        let t = Instant::now();
        for i in 0..args.count {
            black_box(build(i));
        }
        secs.push(t.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (c0, thread_cpu_ns()) {
            cpu.push((b - a) as f64 / 1e3 / args.count as f64);
        }
    }
    secs.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    let rate = args.count as f64 / median;
    let (lo, hi) = (
        args.count as f64 / secs[secs.len() - 1],
        args.count as f64 / secs[0],
    );
    let cpu_note = match cpu.get(cpu.len() / 2) {
        Some(us) => format!(
            ", CPU {us:.2} µs/msg = {:.0} messages per CPU-second",
            1e6 / us
        ),
        None => String::new(),
    };
    println!(
        "herald compose ({}{}): {:.0} messages/s (min–max {:.0}–{:.0}), {:.2} µs/msg{}, {} bytes/msg; median of {} rounds × {} messages, one thread",
        if args.batch {
            "batch, shared parts encoded once"
        } else {
            "full build, nothing cached"
        },
        match args.dkim.as_deref() {
            Some(a) => format!(", DKIM-signed with {a}"),
            None => String::new(),
        },
        rate,
        lo,
        hi,
        1e6 / rate,
        cpu_note,
        bytes,
        args.rounds,
        args.count
    );
    print_whole_run(
        args.rounds * args.count + warm_up,
        started,
        &format!(
            " ({} rounds × {} messages + {warm_up} to warm up)",
            args.rounds, args.count
        ),
    );
    Ok(ExitCode::SUCCESS)
}

/// CPU time this thread has run, in ns (Linux `/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
