//! The browser harness's own helpers (`tests/browser`), on a small page of its own (a `data:` URL), so that a
//! dashboard test that fails points at the dashboard, not at the harness.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod browser;

use std::time::Duration;

use browser::Browser;
use serde_json::json;

/// A form that echoes what is typed on a click, a same-origin frame and a console error on demand.
const PAGE: &str = r#"<!doctype html><html><head><title>harness</title></head><body>
<h1>Harness</h1>
<input id="name" value="old"><button id="go" type="button">Go</button><p id="out"></p>
<iframe id="inner" srcdoc="<p id='deep'>inside the frame</p>"></iframe>
<script>
  document.getElementById("go").addEventListener("click", () => {
    setTimeout(() => { document.getElementById("out").textContent = "hello " + document.getElementById("name").value; }, 200);
  });
</script></body></html>"#;

fn page_url() -> String {
    format!("data:text/html;charset=utf-8,{}", urlencode(PAGE))
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_poll_type_click_read_frames_and_console() {
    let Some(browser) = Browser::open("http://127.0.0.1:9").await else {
        return;
    };
    browser.goto(&page_url()).await;
    assert_eq!(browser.text("h1").await, "Harness");
    browser.fill("#name", "Ada").await;
    browser.click("#go").await;
    // Set 200 ms after the click: wait_for_text polls for it.
    browser.wait_for_text("#out", "hello Ada").await;
    assert_eq!(
        browser.eval("return document.title;").await,
        json!("harness")
    );
    assert_eq!(
        browser.eval("return {a: 1, b: [true, null]};").await,
        json!({"a": 1, "b": [true, null]})
    );

    browser.enter_frame("#inner").await;
    assert_eq!(browser.text("#deep").await, "inside the frame");
    assert!(browser.find("h1").await.is_none(), "still in the frame");
    browser.leave_frame().await;
    assert!(browser.find("h1").await.is_some());

    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser
        .eval("setTimeout(() => { throw new Error('boom from the page'); }, 0); return null;")
        .await;
    let errors = browser
        .wait_until("the page's error in the console log", async || {
            let errors = browser.console_errors().await;
            if errors.iter().any(|e| e.contains("boom from the page")) {
                Ok(errors)
            } else {
                Err(format!("console errors: {errors:?}"))
            }
        })
        .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    // Kept: asking again still reports it.
    assert_eq!(browser.console_errors().await, errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_times_out_says_what_it_awaited_and_where() {
    let Some(mut browser) = Browser::open("http://127.0.0.1:9").await else {
        return;
    };
    browser.deadline = Duration::from_millis(300);
    browser.goto(&page_url()).await;
    let browser = std::sync::Arc::new(browser);
    let waiting = browser.clone();
    // The wait panics: let it do so on a thread of its own (the session lives on this test's runtime).
    let failure = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(waiting.wait_for_text("#out", "never shown"))
    })
    .join()
    .expect_err("the wait should have failed");
    let message = failure.downcast::<String>().map(|s| *s).unwrap_or_default();
    assert!(
        message.contains(
            "waiting for an element matching `#out` with text containing \"never shown\""
        ) && message.contains("at data:text/html")
            && message.contains("screenshot "),
        "{message}"
    );
    // The screenshot of the failure is only for a person debugging: remove this deliberate one.
    let shot = message.rsplit("screenshot ").next().unwrap();
    std::fs::remove_file(shot).unwrap_or_else(|e| panic!("{shot}: {e}"));
}
