//! Bounces and complaints in (issue 12): VERP return paths at delivery, DSNs and ARF reports taken by the
//! SMTP listener for `HERALD_BOUNCE_DOMAIN` without AUTH, applied to their recipient on both stores.
//!
//! Real parts only: a private Postfix (its own `master -d` on a temp directory) bounces to a next hop that
//! refuses the recipient and sends its DSN back to Herald's listener; the other reports are published
//! formats (tests/fixtures/bounces/README.md says where each comes from) handed over a raw SMTP socket.

#![allow(clippy::unwrap_used)]

mod common;
mod submission_harness;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use herald_testkit::{Fault, ServerConfig, TestServer, When};
use serde_json::{Value, json};
use submission_harness::{Herald, Raw, Setup, TOKEN, expect, start};

const DOMAIN: &str = "bounce.test";

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Herald with a bounce domain on `backend` (`None` when PostgreSQL is not available here).
async fn herald(backend: Backend, mut setup: Setup) -> Option<Herald> {
    setup.env.push(("HERALD_BOUNCE_DOMAIN", DOMAIN.into()));
    if let Backend::Postgres = backend {
        setup.env.push((
            "HERALD_DATABASE_URL",
            common::fresh_postgres_database().await?,
        ));
    }
    Some(start(setup).await)
}

fn authorized(herald: &Herald, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match &herald.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

async fn api_get(herald: &Herald, path: &str) -> Value {
    authorized(herald, herald.client.get(format!("{}{path}", herald.base)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Queues a message to `to` through the API; its id.
async fn send(herald: &Herald, to: &[&str]) -> String {
    let response = authorized(
        herald,
        herald.client.post(format!("{}/v1/messages", herald.base)),
    )
    .json(&json!({"from": "Shop <noreply@shop.example>", "to": to,
                  "subject": "Your order has shipped", "text": "Hello"}))
    .send()
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// The envelope sender and Message-ID of the relay's `index`th transaction, once it arrived.
async fn relayed(herald: &Herald, index: usize) -> (String, String) {
    herald
        .relay
        .wait_until("the relay received the message", |relay| {
            relay.transactions().len() > index
        })
        .await;
    let transaction = &herald.relay.transactions()[index];
    let content = String::from_utf8_lossy(&transaction.content).into_owned();
    let message_id = content
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: <"))
        .and_then(|l| l.strip_suffix('>'))
        .unwrap_or_else(|| panic!("no Message-ID in {content}"))
        .to_owned();
    (transaction.mail_from.clone(), message_id)
}

/// A fixture with its placeholders filled in, with CRLF line ends.
fn fixture(name: &str, return_path: &str, recipient: &str, message_id: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bounces")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap()
        .replace("{{RETURN_PATH}}", return_path)
        .replace("{{RECIPIENT}}", recipient)
        .replace("{{MESSAGE_ID}}", message_id)
        .replace("{{TO}}", &format!("fbl@{DOMAIN}"))
        .replace('\n', "\r\n")
}

/// Hands `mail` to Herald's listener as a mail system would (null reverse path, no AUTH); the final reply.
async fn report(herald: &Herald, rcpt: &str, mail: &str) -> String {
    let mut smtp = Raw::greeted(herald.smtp).await;
    expect(&smtp.command("MAIL FROM:<>").await, "250 ");
    expect(&smtp.command(&format!("RCPT TO:<{rcpt}>")).await, "250 ");
    expect(&smtp.command("DATA").await, "354 ");
    let stuffed = mail.replace("\r\n.", "\r\n..");
    smtp.send(format!("{stuffed}.\r\n").as_bytes()).await;
    let reply = smtp.reply().await;
    smtp.command("QUIT").await;
    reply
}

/// Polls message `id` until its recipient `address` has `status` (deadline 30 s).
async fn wait_for_recipient(herald: &Herald, id: &str, address: &str, status: &str) -> Value {
    let start = Instant::now();
    loop {
        let view = herald.message(id).await;
        let found = view["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["address"] == address)
            .cloned()
            .unwrap_or_else(|| panic!("no recipient {address}: {view:#}"));
        if found["status"] == status {
            return view;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{address} of {id} never became {status}: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `address` is on the suppression list: a new message to it gets the recipient status
/// `suppressed` at accept (the suppress module's check).
async fn is_suppressed(herald: &Herald, address: &str) -> bool {
    let id = send(herald, &[address]).await;
    let view = herald.message(&id).await;
    recipient(&view, address)["status"] == "suppressed"
}

fn recipient<'a>(view: &'a Value, address: &str) -> &'a Value {
    view["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == address)
        .unwrap()
}

fn events_of<'a>(view: &'a Value, kind: &str) -> Vec<&'a Value> {
    view["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

async fn inbound(herald: &Herald) -> Vec<Value> {
    api_get(herald, "/v1/inbound").await["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// The VERP return path names the message (and its one recipient), fits the local-part limit, and the
/// DSNs of the common MTAs bounce their recipient, with the status, diagnostic and a `bounced` event.
async fn published_dsns_bounce_their_recipient(backend: Backend) {
    let Some(herald) = herald(backend, Setup::default()).await else {
        return;
    };
    for (index, name, status) in [
        (0, "postfix.eml", "5.1.1"),
        (1, "exim.eml", "5.0.0"),
        (2, "gmail.eml", "5.1.1"),
        (3, "office365.eml", "5.1.10"),
    ] {
        let address = format!("gone{index}@example.net");
        let id = send(&herald, &[&address]).await;
        let (return_path, message_id) = relayed(&herald, index).await;
        let (local, domain) = return_path.rsplit_once('@').unwrap();
        assert_eq!(domain, DOMAIN);
        assert!(
            local.starts_with("bounces+") && local.len() <= 64,
            "{return_path}"
        );
        herald.wait_for_status(&id, "delivered").await;
        let reply = report(
            &herald,
            &return_path,
            &fixture(name, &return_path, &address, &message_id),
        )
        .await;
        expect(&reply, "250 2.0.0 report applied to 1 recipient");
        let view = wait_for_recipient(&herald, &id, &address, "bounced").await;
        let bounced = recipient(&view, &address);
        assert_eq!(bounced["enhanced_status"], status, "{name}: {view:#}");
        assert_eq!(bounced["smtp_code"], 550, "{name}: {view:#}");
        assert!(
            bounced["smtp_reply"].as_str().unwrap().contains("5.1."),
            "{name}: {view:#}"
        );
        let events = events_of(&view, "bounced");
        assert_eq!(events.len(), 1, "{name}: {view:#}");
        assert_eq!(events[0]["recipient"], address.as_str());
        // The message left, and its status says so; the recipient says it bounced.
        assert_eq!(view["status"], "delivered");
        // A hard bounce suppresses the address, said on the message's timeline too.
        let suppressed = events_of(&view, "suppressed");
        assert_eq!(suppressed.len(), 1, "{name}: {view:#}");
        assert!(is_suppressed(&herald, &address).await, "{name}");
    }
    // The same DSN again (an MTA retrying): nothing new.
    let (return_path, message_id) = relayed(&herald, 0).await;
    let again = report(
        &herald,
        &return_path,
        &fixture(
            "postfix.eml",
            &return_path,
            "gone0@example.net",
            &message_id,
        ),
    )
    .await;
    expect(&again, "250 2.0.0 report applied to 1 recipient");
    assert!(inbound(&herald).await.is_empty());
    herald.stop().await;
}

/// Complaints: Yahoo's names its recipient, AOL's redacts it; both come to a feedback-loop address (no
/// token in the envelope) and are matched by the VERP address they carry.
async fn complaints_mark_their_recipient(backend: Backend) {
    let Some(herald) = herald(backend, Setup::default()).await else {
        return;
    };
    for (index, name) in [(0, "yahoo-arf.eml"), (1, "aol-arf.eml")] {
        let address = format!("reader{index}@example.org");
        let id = send(&herald, &[&address]).await;
        let (return_path, message_id) = relayed(&herald, index).await;
        herald.wait_for_status(&id, "delivered").await;
        let reply = report(
            &herald,
            &format!("fbl@{DOMAIN}"),
            &fixture(name, &return_path, &address, &message_id),
        )
        .await;
        expect(&reply, "250 2.0.0 report applied to 1 recipient");
        let view = wait_for_recipient(&herald, &id, &address, "complained").await;
        let events = events_of(&view, "complained");
        assert_eq!(events.len(), 1, "{name}: {view:#}");
        assert!(
            events[0]["detail"]
                .as_str()
                .unwrap()
                .starts_with("feedback-type abuse"),
            "{view:#}"
        );
        assert!(is_suppressed(&herald, &address).await, "{name}");
    }
    herald.stop().await;
}

/// A message with two recipients goes in one transaction with the whole-message token; the DSN's
/// Final-Recipient picks the recipient. A delay only adds an event; a soft failure too.
async fn several_recipients_share_a_token_and_delays_only_add_an_event(backend: Backend) {
    let Some(herald) = herald(backend, Setup::default()).await else {
        return;
    };
    let id = send(&herald, &["ann@example.net", "bob@example.net"]).await;
    let (return_path, message_id) = relayed(&herald, 0).await;
    assert_eq!(herald.relay.transactions().len(), 1);
    herald.wait_for_status(&id, "delivered").await;
    let delayed = fixture("postfix.eml", &return_path, "ann@example.net", &message_id)
        .replace("Action: failed", "Action: delayed")
        .replace("Status: 5.1.1", "Status: 4.4.1");
    expect(
        &report(&herald, &return_path, &delayed).await,
        "250 2.0.0 report applied",
    );
    let bounce = fixture("postfix.eml", &return_path, "bob@example.net", &message_id);
    expect(
        &report(&herald, &return_path, &bounce).await,
        "250 2.0.0 report applied",
    );
    let view = wait_for_recipient(&herald, &id, "bob@example.net", "bounced").await;
    assert_eq!(recipient(&view, "ann@example.net")["status"], "delivered");
    let delays = events_of(&view, "delayed");
    assert_eq!(delays.len(), 1, "{view:#}");
    assert_eq!(delays[0]["recipient"], "ann@example.net");
    // A delay suppresses nobody; the hard bounce does.
    assert!(!is_suppressed(&herald, "ann@example.net").await);
    assert!(is_suppressed(&herald, "bob@example.net").await);
    // A DSN naming nobody of the message is kept, not applied to someone else.
    let stranger = fixture(
        "postfix.eml",
        &return_path,
        "carol@example.net",
        &message_id,
    );
    expect(
        &report(&herald, &return_path, &stranger).await,
        "250 2.0.0 kept for inspection as ",
    );
    let kept = inbound(&herald).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["reason"], "unmatched");
    assert_eq!(kept[0]["message_id"], id.as_str());
    herald.stop().await;
}

/// A forged token is never applied, and mail Herald cannot read is kept with its bytes; both listed by
/// `/v1/inbound`.
async fn forged_and_unreadable_mail_is_kept(backend: Backend) {
    let Some(herald) = herald(backend, Setup::default()).await else {
        return;
    };
    let id = send(&herald, &["victim@example.net"]).await;
    let (return_path, message_id) = relayed(&herald, 0).await;
    herald.wait_for_status(&id, "delivered").await;
    // One character of the token changed.
    let at = "bounces+".len() + 5;
    let mut forged = return_path.clone().into_bytes();
    forged[at] = if forged[at] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).unwrap();
    let reply = report(
        &herald,
        &forged,
        &fixture("postfix.eml", &forged, "victim@example.net", &message_id),
    )
    .await;
    expect(&reply, "250 2.0.0 kept for inspection as ");
    let legacy = fixture(
        "gmail-legacy-text.eml",
        &return_path,
        "victim@example.net",
        &message_id,
    );
    expect(
        &report(&herald, &return_path, &legacy).await,
        "250 2.0.0 kept for inspection as ",
    );
    let empty = fixture(
        "google-workspace-empty-status.eml",
        &return_path,
        "victim@example.net",
        &message_id,
    );
    expect(
        &report(&herald, &return_path, &empty).await,
        "250 2.0.0 kept for inspection as ",
    );
    let view = herald.message(&id).await;
    assert_eq!(
        recipient(&view, "victim@example.net")["status"],
        "delivered"
    );
    assert!(events_of(&view, "bounced").is_empty(), "{view:#}");
    let kept = inbound(&herald).await;
    let reasons: Vec<&str> = kept.iter().map(|k| k["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        ["unparseable", "unparseable", "forged"],
        "{kept:#?}"
    );
    // The unreadable ones name the message their token names.
    assert_eq!(kept[0]["message_id"], id.as_str());
    assert_eq!(kept[2]["rcpt_to"][0], forged.as_str());
    let raw = authorized(
        &herald,
        herald.client.get(format!(
            "{}/v1/inbound/{}/raw",
            herald.base,
            kept[1]["id"].as_str().unwrap()
        )),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(raw.status().as_u16(), 200);
    assert_eq!(
        raw.headers()["content-disposition"],
        "attachment; filename=\"inbound.eml\""
    );
    assert_eq!(raw.text().await.unwrap(), legacy);
    // Paging.
    let page = api_get(&herald, "/v1/inbound?limit=2").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = api_get(&herald, &format!("/v1/inbound?limit=2&cursor={cursor}")).await;
    assert_eq!(rest["items"][0]["reason"], "forged");
    let bad = api_get(&herald, "/v1/inbound?limit=0").await;
    assert_eq!(bad["error"]["field"], "limit", "{bad}");
    // Retention: kept mail received before the cut-off goes, the rest stays.
    let store = &herald.server.as_ref().unwrap().store;
    assert_eq!(store.prune_inbound(0).await.unwrap(), 0);
    assert_eq!(store.prune_inbound(i64::MAX).await.unwrap(), 3);
    assert!(inbound(&herald).await.is_empty());
    herald.stop().await;
}

/// With a token required, mail without AUTH is taken only for the bounce domain: no open relay; the two
/// kinds never share a transaction.
async fn only_the_bounce_domain_is_open(backend: Backend) {
    let Some(herald) = herald(
        backend,
        Setup {
            token: true,
            ..Setup::default()
        },
    )
    .await
    else {
        return;
    };
    let mut smtp = Raw::greeted(herald.smtp).await;
    expect(&smtp.command("MAIL FROM:<>").await, "250 ");
    expect(
        &smtp.command("RCPT TO:<someone@example.com>").await,
        "530 5.7.0",
    );
    expect(
        &smtp.command(&format!("RCPT TO:<x@{DOMAIN}>")).await,
        "250 ",
    );
    expect(&smtp.command("RSET").await, "250 ");
    expect(
        &smtp.command("MAIL FROM:<spammer@example.com>").await,
        "250 ",
    );
    expect(
        &smtp.command("RCPT TO:<victim@example.com>").await,
        "530 5.7.0",
    );
    expect(&smtp.command("QUIT").await, "221 ");
    // Authenticated: a submission cannot take a bounce-domain recipient in the same transaction.
    let mut smtp = Raw::greeted(herald.smtp).await;
    let plain = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("\0app\0{TOKEN}"),
    );
    expect(&smtp.command(&format!("AUTH PLAIN {plain}")).await, "235 ");
    expect(&smtp.command("MAIL FROM:<app@example.com>").await, "250 ");
    expect(&smtp.command("RCPT TO:<ann@example.com>").await, "250 ");
    expect(
        &smtp.command(&format!("RCPT TO:<x@{DOMAIN}>")).await,
        "452 4.5.3",
    );
    expect(&smtp.command("RSET").await, "250 ");
    // The null reverse path is for reports only.
    expect(&smtp.command("MAIL FROM:<>").await, "250 ");
    expect(
        &smtp.command("RCPT TO:<ann@example.com>").await,
        "553 5.1.7",
    );
    expect(&smtp.command("QUIT").await, "221 ");
    herald.stop().await;
}

/// A private Postfix: its own `master -d` on a temp directory, smtpd on `port`, relaying everything to
/// `next_hop` except mail for the bounce domain, which goes to `bounces_to` (Herald's listener).
struct Postfix {
    master: Child,
    dir: tempfile::TempDir,
}

impl Postfix {
    /// `None` (with a message) where Postfix cannot run: not installed, or not root (master needs root to
    /// hand its queue to the `postfix` user).
    fn start(port: u16, next_hop: u16, bounces_to: u16) -> Option<Postfix> {
        let master = Path::new("/usr/lib/postfix/sbin/master");
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if !master.exists() || !root {
            assert!(
                std::env::var_os("HERALD_REQUIRE_PEERS").is_none(),
                "Postfix cannot run here (installed: {}, root: {root}) but HERALD_REQUIRE_PEERS is set",
                master.exists()
            );
            eprintln!("skipping: a private Postfix needs /usr/lib/postfix/sbin/master and root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        for sub in ["queue", "data"] {
            std::fs::create_dir(base.join(sub)).unwrap();
        }
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {base}/queue\n\
             data_directory = {base}/data\n\
             meta_directory = /etc/postfix\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = postfix.test\n\
             mydomain = postfix.test\n\
             myorigin = postfix.test\n\
             mydestination =\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             smtp_dns_support_level = disabled\n\
             smtp_host_lookup = native\n\
             relayhost = [127.0.0.1]:{next_hop}\n\
             transport_maps = inline:{{{DOMAIN}=smtp:[127.0.0.1]:{bounces_to}}}\n\
             alias_maps =\n\
             alias_database =\n\
             maillog_file = {base}/maillog\n\
             maillog_file_prefixes = {base}\n\
             queue_run_delay = 1s\n\
             minimal_backoff_time = 1s\n\
             maximal_backoff_time = 2s\n",
            base = base.display()
        );
        std::fs::write(base.join("main.cf"), main_cf).unwrap();
        let services = [
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ];
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n{}\n",
            services.join("\n")
        );
        std::fs::write(base.join("master.cf"), master_cf).unwrap();
        let status = Command::new("chown")
            .args(["-R", "postfix"])
            .arg(base.join("queue"))
            .arg(base.join("data"))
            .status()
            .unwrap();
        assert!(status.success());
        let created = Command::new("postfix")
            .arg("-c")
            .arg(base)
            .args(["post-install", "create-missing"])
            .output()
            .unwrap();
        assert!(created.status.success(), "{created:?}");
        let master = Command::new(master)
            .arg("-c")
            .arg(base)
            .arg("-d")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Some(Postfix { master, dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // SIGTERM: master stops its children and exits.
        let _ = Command::new("kill")
            .arg(self.master.id().to_string())
            .status();
        let _ = self.master.wait();
    }
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The whole loop on the default settings (only the bounce domain, the SMTP listener and the relay set):
/// Herald delivers to Postfix (250, so `delivered`), Postfix's next hop refuses the recipient, Postfix's
/// own bounce daemon writes the DSN to Herald's VERP address, and the recipient becomes `bounced`.
async fn a_real_postfix_bounce_comes_back(backend: Backend) {
    let refuser = TestServer::start(ServerConfig::default().fault(Fault::reply(
        When::RcptTo(None),
        "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown",
    )))
    .await;
    let postfix_port = free_port();
    let smtp_port = free_port();
    let Some(herald) = herald(
        backend,
        Setup {
            listen: Box::leak(format!("127.0.0.1:{smtp_port}").into_boxed_str()),
            env: vec![(
                "HERALD_RELAY_URL",
                format!("smtp://127.0.0.1:{postfix_port}?tls=none"),
            )],
            ..Setup::default()
        },
    )
    .await
    else {
        return;
    };
    let Some(postfix) = Postfix::start(postfix_port, refuser.port(), smtp_port) else {
        herald.stop().await;
        return;
    };
    let id = send(&herald, &["gone@example.net"]).await;
    let start = Instant::now();
    loop {
        let view = herald.message(&id).await;
        if recipient(&view, "gone@example.net")["status"] == "bounced" {
            let bounced = recipient(&view, "gone@example.net");
            assert_eq!(bounced["enhanced_status"], "5.1.1", "{view:#}");
            assert_eq!(bounced["smtp_code"], 550);
            assert!(
                bounced["smtp_reply"]
                    .as_str()
                    .unwrap()
                    .contains("User unknown"),
                "{view:#}"
            );
            assert_eq!(events_of(&view, "bounced").len(), 1, "{view:#}");
            // Postfix relayed it first: the attempt itself was a success.
            assert_eq!(events_of(&view, "delivered").len(), 1, "{view:#}");
            assert!(is_suppressed(&herald, "gone@example.net").await);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no bounce came back: {view:#}\nPostfix log:\n{}",
            postfix.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Postfix took the message from Herald's VERP address and sent its DSN there.
    assert!(
        postfix.log().contains(&format!("@{DOMAIN}>")),
        "{}",
        postfix.log()
    );
    assert!(inbound(&herald).await.is_empty());
    drop(postfix);
    herald.stop().await;
}

const SECRET: &str = "bounce-test-secret-0123456789abcdef";

/// `List-Unsubscribe: <mailto:unsub+TOKEN@…>` (RFC 2369): mail to the address suppresses the message's
/// recipient; a forged token is kept, not acted on.
async fn unsubscribe_by_mail(backend: Backend) {
    let Some(herald) = herald(
        backend,
        Setup {
            env: vec![("HERALD_SECRET_KEY", SECRET.into())],
            ..Setup::default()
        },
    )
    .await
    else {
        return;
    };
    let id = send(&herald, &["reader@example.org"]).await;
    herald.wait_for_status(&id, "delivered").await;
    let tokens = herald::link_tokens::LinkTokens::from_secret(SECRET).unwrap();
    let token = tokens.sign(
        herald::service::UNSUBSCRIBE_PURPOSE,
        uuid::Uuid::parse_str(&id).unwrap().as_bytes(),
    );
    let mail =
        "From: reader@example.org\r\nTo: unsub@bounce.test\r\nSubject: unsubscribe\r\n\r\n\r\n";
    let forged = format!(
        "unsub+{}@{DOMAIN}",
        token.replace('a', "b").replace('c', "a")
    );
    expect(
        &report(&herald, &forged, mail).await,
        "250 2.0.0 kept for inspection as ",
    );
    assert!(!is_suppressed(&herald, "reader@example.org").await);
    expect(
        &report(&herald, &format!("unsub+{token}@{DOMAIN}"), mail).await,
        "250 2.0.0 report applied to 1 recipient",
    );
    assert!(is_suppressed(&herald, "reader@example.org").await);
    let kept = inbound(&herald).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["reason"], "forged");
    herald.stop().await;
}

macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )+
        }
    };
}

on_both_backends!(
    a_real_postfix_bounce_comes_back,
    published_dsns_bounce_their_recipient,
    complaints_mark_their_recipient,
    several_recipients_share_a_token_and_delays_only_add_an_event,
    forged_and_unreadable_mail_is_kept,
    only_the_bounce_domain_is_open,
    unsubscribe_by_mail,
);
