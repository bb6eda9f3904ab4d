//! `herald compose` and `herald bench compose` as a user runs them: the
//! built binary, real files, exit codes and messages.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "herald-compose-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn herald(args: &[&str]) -> Output {
    Command::new(HERALD)
        .args(args)
        .output()
        .expect("run herald")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn welcome_example_composes_to_stdout_and_out_file() {
    let dir = temp_dir();
    let out = dir.join("welcome.eml");
    let example = repo_root().join("examples/welcome.json");
    let o = herald(&[
        "compose",
        example.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.starts_with("From: Herald Demo <hello@herald.example>\r\n"),
        "{s}"
    );
    assert!(s.contains("\r\nSubject: Welcome to Herald, =?utf-8?"));
    assert!(s.contains("Content-Type: multipart/mixed;"));
    assert!(s.contains("Content-ID: <logo@herald.example>"));
    assert!(!s.contains("audit@example.com"), "Bcc never written");
    assert!(s.is_ascii(), "7-bit clean without --8bit");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        o.stdout,
        "--out holds the same bytes"
    );
}

#[test]
fn reads_stdin_and_resolves_paths_against_the_request_directory() {
    let dir = temp_dir();
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/notes.txt"), "hello from a file\r\n").unwrap();
    let req = r#"{"from":"a@b.example","to":"c@d.example","text":"see file","attachments":[{"filename":"notes.txt","path":"files/notes.txt"}]}"#;
    std::fs::write(dir.join("req.json"), req).unwrap();
    // From another working directory: the path is relative to the request file.
    let o = Command::new(HERALD)
        .current_dir(std::env::temp_dir())
        .args(["compose", dir.join("req.json").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("Content-Type: text/plain; name=notes.txt"),
        "{s}"
    );
    assert!(s.contains("\r\nhello from a file\r\n"), "{s}");

    let mut child = Command::new(HERALD)
        .args(["compose", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            br#"{"from":"a@b.example","to":"c@d.example","subject":"from stdin","text":"hi\n"}"#,
        )
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Subject: from stdin\r\n"));
}

#[test]
fn invalid_requests_name_the_field_and_fail() {
    let dir = temp_dir();
    let cases = [
        (
            r#"{"from":"a@b.example","to":["x@y.example","nope"]}"#,
            "to[1]: missing '@'",
        ),
        (
            r#"{"from":"a@b.example","to":"x@y.example","attachments":[{"filename":"a.pdf","content_base64":"!!"}]}"#,
            "attachments[0].content_base64: invalid base64",
        ),
        (
            r#"{"from":"a@b.example","to":"x@y.example","subject":"a\r\nBcc: e@x.example"}"#,
            "subject: control character '\\r'",
        ),
        (
            r#"{"from":"a@b.example","to":"x@y.example","headers":{"Content-Type":"text/html"}}"#,
            "headers.Content-Type",
        ),
        (
            r#"{"from":"a@b.example","to":"x@y.example","headers":{"X-Bad Name":"v"}}"#,
            "headers.X-Bad Name",
        ),
        (
            r#"{"from":"a@b.example","to":"x@y.example","html":"<img src=\"cid:nope@x\">"}"#,
            "html: html references cid:nope@x",
        ),
        (r#"{"from":"a@b.example"}"#, "to: no recipients"),
        (
            r#"{"from":"a@b..example","to":"x@y.example"}"#,
            "from: invalid domain",
        ),
        (
            r#"{"from":"a@b.example","to":"x@y.example","subjet":"typo"}"#,
            "unknown field `subjet`",
        ),
        (
            r#"{"from":"a@b.example","to":"x@y.example","attachments":[{"filename":"a","path":"missing.bin"}]}"#,
            "attachments[0].path: cannot read",
        ),
        (
            r#"{"from":"a@b.example","to":"x@y.example","attachments":[{"filename":"a","content_base64":"","content_type":"bad"}]}"#,
            "attachments[0].content_type",
        ),
    ];
    for (req, want) in cases {
        let path = dir.join("bad.json");
        std::fs::write(&path, req).unwrap();
        let o = herald(&["compose", path.to_str().unwrap()]);
        assert!(!o.status.success(), "{req} should fail");
        assert!(o.stdout.is_empty(), "nothing written on failure");
        assert!(
            stderr(&o).contains(want),
            "{req}: want {want:?} in {:?}",
            stderr(&o)
        );
    }
    let o = herald(&["compose", dir.join("does-not-exist.json").to_str().unwrap()]);
    assert!(!o.status.success());
}

#[test]
fn eight_bit_only_when_asked() {
    let dir = temp_dir();
    let path = dir.join("req.json");
    std::fs::write(
        &path,
        r#"{"from":"a@b.example","to":"c@d.example","text":"中文内容，很多中文。\n第二行。\n"}"#,
    )
    .unwrap();
    let seven = herald(&["compose", path.to_str().unwrap()]);
    assert!(seven.status.success());
    assert!(seven.stdout.is_ascii());
    let eight = herald(&["compose", "--8bit", path.to_str().unwrap()]);
    assert!(eight.status.success());
    assert!(stdout(&eight).contains("Content-Transfer-Encoding: 8bit\r\n"));
    assert!(stdout(&eight).contains("中文内容"));
}

#[test]
fn bench_compose_reports_rates() {
    let Some(fixtures) = shared_bench().map(|d| d.join("fixtures")) else {
        return skip("bench fixtures");
    };
    for batch in [false, true] {
        let mut args = vec![
            "bench",
            "compose",
            "--count",
            "200",
            "--rounds",
            "1",
            "--fixtures",
            fixtures.to_str().unwrap(),
        ];
        if batch {
            args.push("--batch");
        }
        let o = herald(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let s = stdout(&o);
        assert!(
            s.contains("messages/s") && s.contains("µs/msg") && s.contains("bytes/msg"),
            "{s}"
        );
    }
}

#[test]
fn bench_sample_passes_the_baseline_verifier() {
    let Some(bench) = shared_bench() else {
        return skip("../shared/bench");
    };
    let python = std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = temp_dir();
    for batch in [false, true] {
        let out = dir.join(format!("herald-42-{batch}.eml"));
        let mut args = vec![
            "bench",
            "compose",
            "--sample",
            "42",
            "--out",
            out.to_str().unwrap(),
        ];
        if batch {
            args.push("--batch");
        }
        let o = Command::new(HERALD)
            .current_dir(repo_root())
            .args(&args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let v = Command::new(&python)
            .arg(bench.join("verify.py"))
            .arg(format!("herald={}", out.display()))
            .output()
            .expect("run verify.py");
        let report = String::from_utf8_lossy(&v.stdout);
        println!("{report}");
        assert!(
            v.status.success(),
            "verify.py failed:\n{report}{}",
            String::from_utf8_lossy(&v.stderr)
        );
        let size: usize = report
            .split_whitespace()
            .skip_while(|w| *w != "herald")
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            size <= 92_655,
            "{size} bytes, Python's email.mime writes 92,655"
        );
    }
}

/// ../shared/bench beside the repository (as on CI), if present.
fn shared_bench() -> Option<PathBuf> {
    let root = repo_root();
    [root.join("../shared/bench"), root.join("shared/bench")]
        .into_iter()
        .find(|d| d.join("verify.py").is_file() && d.join("fixtures/notification.json").is_file())
}

fn skip(what: &str) {
    if std::env::var_os("HERALD_REQUIRE_PEERS").is_some() {
        panic!("{what} not found and HERALD_REQUIRE_PEERS is set");
    }
    println!("skipped: {what} not found (set HERALD_REQUIRE_PEERS to make this a failure)");
}
