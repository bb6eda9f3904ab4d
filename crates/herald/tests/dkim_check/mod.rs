//! Two independent DKIM verifiers for the tests (issue 13), both answered from DNS records given in the test,
//! never the network: mail-auth (its TXT cache filled with the records, and a resolver with no name server)
//! and Python's dkimpy (scripts/dkim_verify.py, its `dnsfunc` answering from the records).
#![allow(dead_code)]

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashMap},
    hash::Hash,
    path::Path,
    sync::Mutex,
};

use base64::Engine as _;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
    common::parse::TxtRecordParser as _,
    common::verify::DomainKey,
    hickory_resolver::config::{ResolverConfig, ResolverOpts},
};
use serde_json::{Value, json};

/// DNS TXT records by name (`sel._domainkey.example.com`): what a test publishes.
#[derive(Debug, Clone, Default)]
pub struct Records(pub BTreeMap<String, String>);

impl Records {
    /// The records of every key `/v1/dkim` (or `herald dkim list --json`) lists.
    pub fn from_keys(items: &[Value]) -> Self {
        Self(
            items
                .iter()
                .map(|k| {
                    (
                        k["dns_name"].as_str().unwrap().to_owned(),
                        k["dns_record"].as_str().unwrap().to_owned(),
                    )
                })
                .collect(),
        )
    }
}

struct TxtCache(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _valid_until: std::time::Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

/// mail-auth's verdict on every DKIM signature of `message`: `Ok(selectors)` when there is at least one
/// and all pass, else the results.
pub async fn mail_auth_verify(records: &Records, message: &[u8]) -> Result<Vec<String>, String> {
    let cache = TxtCache(Mutex::new(
        records
            .0
            .iter()
            .map(|(name, record)| {
                let name = format!("{}.", name.trim_end_matches('.'));
                (
                    name.into_boxed_str(),
                    Txt::from(DomainKey::parse(record.as_bytes())),
                )
            })
            .collect(),
    ));
    // No name server at all: a record not given by the test is a lookup error, never a query.
    let authenticator = MessageAuthenticator::new(
        ResolverConfig::from_parts(None, vec![], vec![]),
        ResolverOpts::default(),
    )
    .unwrap();
    let parsed =
        AuthenticatedMessage::parse(message).ok_or("mail-auth cannot parse the message")?;
    let results = authenticator
        .verify_dkim(Parameters::new(&parsed).with_txt_cache(&cache))
        .await;
    if results.is_empty() {
        return Err("no DKIM-Signature".into());
    }
    if results.iter().all(|r| r.result() == &DkimResult::Pass) {
        Ok(results
            .iter()
            .filter_map(|r| r.signature().map(|s| s.s.clone()))
            .collect())
    } else {
        Err(format!(
            "{:?}",
            results.iter().map(|r| r.result()).collect::<Vec<_>>()
        ))
    }
}

/// dkimpy's verdict on each message (by name): `true` when every signature verifies. `None` when Python with
/// dkimpy cannot run here and `HERALD_REQUIRE_PEERS` is unset (the caller skips with a message).
pub fn dkimpy_verify(
    records: &Records,
    messages: &[(String, Vec<u8>)],
) -> Option<BTreeMap<String, Value>> {
    let python = std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/dkim_verify.py");
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("request.json");
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = json!({
        "records": records.0,
        "messages": messages.iter().map(|(name, bytes)| (name.clone(), Value::String(b64.encode(bytes)))).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(&request, body.to_string()).unwrap();
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&request)
        .output();
    let fail_or_skip = |why: String| {
        if std::env::var_os("HERALD_REQUIRE_PEERS").is_some() {
            panic!("dkimpy: {why}");
        }
        println!("skipped dkimpy: {why}; set HERALD_REQUIRE_PEERS to make this a failure");
        None
    };
    match out {
        Ok(out) if out.status.success() => {
            let parsed: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
            Some(parsed)
        }
        Ok(out) => fail_or_skip(format!(
            "{python} {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => fail_or_skip(format!("cannot run {python}: {e}")),
    }
}

/// Both verifiers on `messages`: each must pass both (or, with `expect_pass == false`, fail both).
pub async fn assert_both(records: &Records, messages: &[(String, Vec<u8>)], expect_pass: bool) {
    for (name, bytes) in messages {
        let verdict = mail_auth_verify(records, bytes).await;
        assert_eq!(
            verdict.is_ok(),
            expect_pass,
            "mail-auth on {name}: {verdict:?}\n{}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(1500)])
        );
    }
    if let Some(results) = dkimpy_verify(records, messages) {
        for (name, _) in messages {
            assert_eq!(
                results[name]["ok"].as_bool(),
                Some(expect_pass),
                "dkimpy on {name}: {}",
                results[name]
            );
        }
    }
}
