//! Interop with Python's `email` package: scripts/interop_python.py composes a
//! battery of tricky requests with the built `herald compose` and checks
//! that Python (policy.default) decodes the same subject, addresses, text,
//! HTML, file names and attachment bytes.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command};

#[test]
fn python_email_decodes_what_herald_composes() {
    let python = std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/interop_python.py");
    let out = match Command::new(&python)
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_herald"))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            if std::env::var_os("HERALD_REQUIRE_PEERS").is_some() {
                panic!("cannot run {python}: {e}");
            }
            println!(
                "skipped: cannot run {python} ({e}); set HERALD_REQUIRE_PEERS to make this a failure"
            );
            return;
        }
    };
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "interop failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains(" 0 failures"));
}
