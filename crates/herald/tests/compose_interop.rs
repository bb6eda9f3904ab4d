//! Interop with Python's `email` package: scripts/interop_python.py composes a
//! battery of tricky requests with the built `herald compose` and checks
//! that Python (policy.default) decodes the same subject, addresses, text,
//! HTML, file names and attachment bytes.
//!
//! Every message is also DKIM-signed (`herald compose --sign`, issue 13) and verified twice: by dkimpy in the
//! script and, here, by mail-auth, both against the records of the keys the script made.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod dkim_check;

use std::{path::Path, process::Command};

#[tokio::test]
async fn python_email_decodes_what_herald_composes() {
    let signed = tempfile::tempdir().unwrap();
    let python = std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/interop_python.py");
    let out = match Command::new(&python)
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_herald"))
        .arg(signed.path())
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

    let records: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(signed.path().join("records.json")).unwrap())
            .unwrap();
    let records = dkim_check::Records(records);
    let mut verified = 0;
    for entry in std::fs::read_dir(signed.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "eml") {
            let message = std::fs::read(&path).unwrap();
            if let Err(e) = dkim_check::mail_auth_verify(&records, &message).await {
                panic!("mail-auth refuses {}: {e}", path.display());
            }
            verified += 1;
        }
    }
    println!("mail-auth: {verified} signed messages of the battery verified");
    assert!(verified > 100, "only {verified} signed messages");
}
