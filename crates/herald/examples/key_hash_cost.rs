//! What the attachment cache key costs per call (service/parts.rs): SHA-256 against BLAKE3 over the
//! standard notification's attachments as base64 (the PNG and the PDF, about 80 KB), on one thread.
//! `cargo run --release -p herald --example key_hash_cost`
use std::time::Instant;

use base64::Engine as _;
use sha2::Digest as _;

fn main() {
    let mut bytes = vec![0u8; 60 * 1024];
    let mut x: u32 = 1;
    for b in &mut bytes {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let base64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let rounds = 5;
    let count = 20_000;
    for round in 1..=rounds {
        let start = Instant::now();
        let mut sink = 0u8;
        for _ in 0..count {
            sink ^= sha2::Sha256::digest(base64.as_bytes())[0];
        }
        let sha = start.elapsed().as_secs_f64() * 1e6 / count as f64;
        let start = Instant::now();
        for _ in 0..count {
            sink ^= blake3::hash(base64.as_bytes()).as_bytes()[0];
        }
        let blake = start.elapsed().as_secs_f64() * 1e6 / count as f64;
        println!(
            "round {round}: {} bytes of base64: SHA-256 {sha:.1} µs, BLAKE3 {blake:.1} µs ({:.1}x) [{sink}]",
            base64.len(),
            sha / blake
        );
    }
    println!("whole run: {} hashes of each", rounds * count);
}
