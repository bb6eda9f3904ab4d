//! `herald token` (the real binary) against a running `herald serve`: tokens created on the command line
//! open the API, revoked ones stop working, and a store holding tokens closes an API that had no
//! `HERALD_API_TOKEN`. Every test runs on SQLite and on PostgreSQL.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod app;
mod common;

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use app::{DEFAULTS, Options, TestApp, error_of, spawn_app};
use common::Backend;
use serde_json::json;

/// Runs `herald token ARGS` on the app's database, as an operator would (HERALD_DATABASE_URL in the
/// environment).
fn herald_token(app: &TestApp, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("token")
        .args(args)
        .env("HERALD_DATABASE_URL", &app.database_url)
        .env_remove("HERALD_API_TOKEN")
        .output()
        .expect("run the herald binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// The status of `GET /v1/templates` with `token` (or none).
async fn status_with(app: &TestApp, token: Option<&str>) -> u16 {
    let mut request = app.client.get(format!("{}/v1/templates", app.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Polls until `GET /v1/templates` with `token` answers `status` (the API trusts what it learnt about
/// stored tokens for `herald::app::TOKEN_CACHE_TTL`).
async fn wait_for(app: &TestApp, token: Option<&str>, status: u16) {
    let start = Instant::now();
    loop {
        let now = status_with(app, token).await;
        if now == status {
            return;
        }
        assert!(
            start.elapsed() < herald::app::TOKEN_CACHE_TTL + Duration::from_secs(5),
            "still {now}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cli_tokens_open_and_close_a_running_server(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    assert_eq!(
        status_with(&app, None).await,
        200,
        "no token anywhere: open (loopback)"
    );
    let listed = herald_token(&app, &["list"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(stderr(&listed).contains("no tokens"));

    let created = herald_token(&app, &["create", "ci"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let ci = stdout(&created).trim().to_owned();
    assert!(ci.starts_with("herald_") && ci.len() > 40, "{ci:?}");
    assert!(stderr(&created).contains("not shown again"));
    let ops = stdout(&herald_token(&app, &["create", "ops"]))
        .trim()
        .to_owned();
    assert_ne!(ci, ops);

    // A stored token now exists: the API requires one, and takes either.
    wait_for(&app, None, 401).await;
    assert_eq!(status_with(&app, Some(&ci)).await, 200);
    assert_eq!(status_with(&app, Some(&ops)).await, 200);
    let response = app
        .client
        .get(format!("{}/v1/templates", app.base))
        .bearer_auth(format!("{ci}x"))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 401);
    assert!(
        !error.to_string().contains(&ci),
        "errors never echo a token"
    );
    assert_eq!(
        app.client
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200,
        "probes need no token"
    );

    let listed = herald_token(&app, &["list"]);
    let table = stdout(&listed);
    assert!(table.contains("ci") && table.contains("ops"), "{table}");
    assert!(
        !table.contains(&ci) && !table.contains(&ops),
        "list never shows a token: {table}"
    );

    let duplicate = herald_token(&app, &["create", "ci"]);
    assert!(!duplicate.status.success());
    assert!(
        stderr(&duplicate).contains("exists already"),
        "{}",
        stderr(&duplicate)
    );
    let bad = herald_token(&app, &["create", "has space"]);
    assert!(!bad.status.success());

    let revoked = herald_token(&app, &["revoke", "ci"]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    wait_for(&app, Some(&ci), 401).await;
    assert_eq!(status_with(&app, Some(&ops)).await, 200);
    let again = herald_token(&app, &["revoke", "ci"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("no token named \"ci\""));

    // A message sent with a CLI token is accepted like any other.
    let mut authorized = app;
    authorized.token = Some(ops);
    let response = authorized
        .post_message(
            &json!({"from": "a@example.test", "to": "b@example.test", "subject": "s", "text": "t"}),
        )
        .await;
    assert_eq!(response.status().as_u16(), 202);
    authorized.stop().await;
}

async fn the_env_token_and_stored_tokens_both_work(backend: Backend) {
    let Some(app) = spawn_app(
        backend,
        Options {
            api_token: Some("env-secret-token"),
            ..DEFAULTS
        },
    )
    .await
    else {
        return;
    };
    assert_eq!(status_with(&app, None).await, 401);
    assert_eq!(status_with(&app, Some("env-secret-token")).await, 200);
    let created = herald_token(&app, &["create", "billing"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let billing = stdout(&created).trim().to_owned();
    assert_eq!(
        status_with(&app, Some(&billing)).await,
        200,
        "a new token works at once"
    );
    assert_eq!(status_with(&app, Some("env-secret-token")).await, 200);
    assert!(herald_token(&app, &["revoke", "billing"]).status.success());
    wait_for(&app, Some(&billing), 401).await;
    assert_eq!(status_with(&app, Some("env-secret-token")).await, 200);
    app.stop().await;
}

on_both_backends!(
    cli_tokens_open_and_close_a_running_server,
    the_env_token_and_stored_tokens_both_work,
);
