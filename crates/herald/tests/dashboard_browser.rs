//! The dashboard at `/` in a real headless Chromium (see `tests/browser`): what a person sees, end to end.
mod app;
mod browser;
mod common;

use app::{DEFAULTS, Options, spawn_app};
use browser::Browser;
use common::Backend;
use herald_testkit::{Action, Fault, ServerConfig, When};
use serde_json::{Value, json};

/// The count shown next to the word `status` on the page (`queued 3`, `3 queued`, a table row or a tile),
/// read from the page's visible text so that the test does not depend on the dashboard's markup.
async fn count_shown(browser: &Browser, status: &str) -> Option<u64> {
    let js = format!(
        r#"const text = document.body.innerText;
           const after = text.match(/(?:^|\s){status}\s*:?\s*(\d[\d,]*)/i);
           const before = text.match(/(\d[\d,]*)\s*{status}(?:\s|$)/i);
           const m = after || before;
           return m ? Number(m[1].replace(/,/g, "")) : null;"#
    );
    browser.eval(&js).await.as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_shows_counts_that_follow_new_messages() {
    // Messages that stay queued: the relay never greets, so the one message a worker may claim
    // (HERALD_CONCURRENCY=1) hangs in `sending` and the others wait in `queued` until the test ends.
    let options = Options {
        relay: Some(|| ServerConfig::default().fault(Fault::new(When::Greeting, Action::Stall))),
        env: &[("HERALD_CONCURRENCY", "1")],
        ..DEFAULTS
    };
    let Some(app) = spawn_app(Backend::Sqlite, options).await else {
        return;
    };
    let Some(browser) = Browser::open(&app.base).await else {
        return;
    };
    browser.goto("/").await;
    let size = browser
        .eval("return [window.innerWidth, window.innerHeight];")
        .await;
    assert_eq!(size, json!([1280, 900]), "the window is not 1280×900");
    browser.wait_for_text("h1", "Herald").await;
    let before = browser
        .wait_until("a queued count on the page", async || {
            count_shown(&browser, "queued")
                .await
                .ok_or_else(|| "no number next to `queued`".to_string())
        })
        .await;

    for n in 0..3 {
        let accepted: Value = app
            .post_message(&json!({"from": "shop@example.test", "to": format!("u{n}@example.test"), "subject": "hi", "text": "x"}))
            .await
            .json()
            .await
            .unwrap();
        assert!(accepted["id"].is_string(), "{accepted}");
    }
    let after = browser
        .wait_until(
            &format!("the queued count to change from {before} after reloads"),
            async || {
                browser.reload().await;
                match count_shown(&browser, "queued").await {
                    Some(n) if n != before => Ok(n),
                    shown => Err(format!("queued shows {shown:?}")),
                }
            },
        )
        .await;
    assert!(after > before, "queued went from {before} to {after}");

    let png = browser.screenshot("overview").await;
    let size = std::fs::metadata(&png).unwrap().len();
    assert!(size > 5_000, "{} is only {size} bytes", png.display());
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is no PNG",
        png.display()
    );
    browser.assert_no_console_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_fits_a_narrow_window() {
    let Some(app) = spawn_app(Backend::Sqlite, DEFAULTS).await else {
        return;
    };
    let Some(browser) = Browser::open_narrow(&app.base).await else {
        return;
    };
    browser.goto("/").await;
    assert_eq!(browser.text("h1").await, "Herald");
    let size = browser
        .eval("return [window.innerWidth, window.innerHeight];")
        .await;
    assert_eq!(size, json!([390, 844]), "the window is not phone-sized");
    // Nothing wider than the window: no sideways scrolling on a phone.
    let scroll_width = browser
        .eval("return document.documentElement.scrollWidth;")
        .await;
    assert!(
        scroll_width.as_u64().unwrap() <= 390,
        "the page is {scroll_width} px wide in a 390 px window"
    );
    browser.screenshot("overview-narrow").await;
}
