//! A real headless Chromium for the dashboard's end-to-end tests, driven over WebDriver (fantoccini talking to
//! Debian's `chromedriver`). Include with `mod browser;` (next to `mod common; mod app;`).
//!
//! Each [`Browser`] starts its own `chromedriver` on a port it picks itself (`--port=0`, read back from its
//! output: no race with other tests), with a fresh temporary Chromium profile; dropping it (also when the test
//! panics) ends the browser session and the driver. So browser tests may run in parallel threads of one test
//! binary.
//!
//! Every helper that looks at the page polls until its condition holds or the deadline passes (10 s unless
//! [`Browser::deadline`] is changed), then panics saying what it awaited, what it saw last and the current URL,
//! and saves a screenshot of that moment under `target/screenshots/`.
//!
//! The binaries are `HERALD_CHROMEDRIVER` and `HERALD_CHROMIUM` (`scripts/test` exports them), else
//! `/usr/bin/chromedriver` and `/usr/bin/chromium` (Debian's `chromium-driver` and `chromium`). When they are
//! missing, [`Browser::open`] prints why and returns `None` (the test skips), unless `HERALD_REQUIRE_PEERS` is
//! set (CI), where it fails.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator, error::CmdError, wd::WebDriverCompatibleCommand};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// The flags every session's Chromium gets (plus `--user-data-dir` and `--window-size`).
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// The default wait for every polling helper.
pub const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// A browser window's size in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
    /// Chromium's mobile emulation (a touch screen that honours `<meta name="viewport">`) at this size,
    /// device pixel ratio 1. Needed below 500 px wide, the narrowest window Chromium makes.
    pub mobile: bool,
}

/// A laptop: what [`Browser::open`] gives.
pub const DESKTOP: Viewport = Viewport {
    width: 1280,
    height: 900,
    mobile: false,
};
/// A phone held upright (390×844, an iPhone 12–15): what [`Browser::open_narrow`] gives.
pub const NARROW: Viewport = Viewport {
    width: 390,
    height: 844,
    mobile: true,
};

/// One headless Chromium session on its own chromedriver, pointed at a server's base URL.
pub struct Browser {
    client: Client,
    /// `http://127.0.0.1:PORT` of the app under test; [`Browser::goto`] paths are relative to it.
    pub base: String,
    /// How long each helper waits (default [`DEADLINE`]).
    pub deadline: Duration,
    pub viewport: Viewport,
    console: Mutex<Vec<String>>,
    driver: Driver,
}

/// The chromedriver process and the profile folder; ends the session and the process on drop.
struct Driver {
    child: Child,
    port: u16,
    /// Chromium's `--user-data-dir` and chromedriver's log.
    dir: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver's /shutdown quits its browsers and exits; kill it if it does not within 5 s.
        let _ = http_get(self.port, "/shutdown", Duration::from_secs(5));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking HTTP GET on loopback (used from `Drop`, where nothing can be awaited).
fn http_get(port: u16, path: &str, timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The path of an executable from `var`, else `default`; `None` (with the reason) when it is not there.
fn binary(var: &str, default: &str) -> Result<PathBuf, String> {
    let path = match std::env::var_os(var) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => PathBuf::from(default),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found ({var} or {default}; scripts/test installs Debian's chromium and chromium-driver)",
            path.display()
        ))
    }
}

/// The workspace's root folder (`crates/herald/../..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where [`Browser::screenshot`] writes: `target/screenshots/` under the workspace root.
pub fn screenshot_dir() -> PathBuf {
    workspace_root().join("target/screenshots")
}

impl Browser {
    /// A 1280×900 window on `base` (e.g. `app.base`), or `None` when the browser is not installed here.
    pub async fn open(base: &str) -> Option<Browser> {
        Self::open_with(base, DESKTOP).await
    }

    /// A 390×844 window, as on a phone.
    pub async fn open_narrow(base: &str) -> Option<Browser> {
        Self::open_with(base, NARROW).await
    }

    /// A window of this size.
    pub async fn open_with(base: &str, viewport: Viewport) -> Option<Browser> {
        let found = binary("HERALD_CHROMEDRIVER", "/usr/bin/chromedriver").and_then(|driver| {
            binary("HERALD_CHROMIUM", "/usr/bin/chromium").map(|chromium| (driver, chromium))
        });
        let (chromedriver, chromium) = match found {
            Ok(paths) => paths,
            Err(why) => {
                assert!(
                    std::env::var_os("HERALD_REQUIRE_PEERS").is_none(),
                    "HERALD_REQUIRE_PEERS is set but the browser tests cannot run: {why}"
                );
                eprintln!("skipping: {why}");
                return None;
            }
        };
        let driver = start_driver(&chromedriver).await;
        let profile = driver.dir.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push(format!(
            "--window-size={},{}",
            viewport.width, viewport.height
        ));
        let mut chrome_options = json!({"binary": chromium, "args": args});
        if viewport.mobile {
            chrome_options["mobileEmulation"] = json!({"deviceMetrics": {
                "width": viewport.width, "height": viewport.height, "pixelRatio": 1, "mobile": true, "touch": true,
            }});
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": chrome_options,
            // Console messages, read back through chromedriver's log endpoint (see `console_errors`).
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{}", driver.port);
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "could not open a Chromium session on chromedriver {url}: {e}\nchromedriver log:\n{}",
                    driver_log(&driver)
                )
            });
        if !viewport.mobile {
            // --window-size is the outer window: grow it by what the (headless) window frame takes, so
            // that the page itself gets the viewport's size.
            let frame = client
                .execute(
                    "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];",
                    Vec::new(),
                )
                .await
                .expect("measure the window frame");
            let extra = |i: usize| frame[i].as_u64().unwrap_or(0) as u32;
            client
                .set_window_size(viewport.width + extra(0), viewport.height + extra(1))
                .await
                .expect("resize the window");
        }
        Some(Browser {
            client,
            base: base.trim_end_matches('/').to_string(),
            deadline: DEADLINE,
            viewport,
            console: Mutex::new(Vec::new()),
            driver,
        })
    }

    /// The fantoccini client, for anything the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `path` on the app (`/`, `/messages?status=queued`); a full URL (`http:`, `data:`, `about:`) is used
    /// as it is.
    pub fn url(&self, path: &str) -> String {
        if ["http://", "https://", "data:", "about:"]
            .iter()
            .any(|scheme| path.starts_with(scheme))
        {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Navigates to `path` and waits for the page to load (WebDriver's normal page load strategy).
    pub async fn goto(&self, path: &str) {
        let url = self.url(path);
        if let Err(e) = self.client.goto(&url).await {
            self.fail(&format!("loading {url}"), &e.to_string()).await
        }
    }

    /// Reloads the current page.
    pub async fn reload(&self) {
        if let Err(e) = self.client.refresh().await {
            self.fail("reloading the page", &e.to_string()).await
        }
    }

    /// The current URL.
    pub async fn current_url(&self) -> String {
        match self.client.current_url().await {
            Ok(url) => url.to_string(),
            Err(e) => format!("(no URL: {e})"),
        }
    }

    /// Polls `check` until it returns `Ok`, or panics after the deadline with `what` and the last `Err`.
    /// `check` should not itself wait: use [`Browser::find`], [`Browser::find_all`], [`Browser::eval`].
    pub async fn wait_until<T>(
        &self,
        what: &str,
        mut check: impl AsyncFnMut() -> Result<T, String>,
    ) -> T {
        let start = Instant::now();
        loop {
            let last = match check().await {
                Ok(value) => return value,
                Err(last) => last,
            };
            if start.elapsed() >= self.deadline {
                return self.fail(what, &last).await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The first element matching `css` now, without waiting.
    pub async fn find(&self, css: &str) -> Option<Element> {
        self.client.find(Locator::Css(css)).await.ok()
    }

    /// Every element matching `css` now, without waiting.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_default()
    }

    /// Waits for an element matching `css` to be on the page.
    pub async fn wait_for(&self, css: &str) -> Element {
        self.wait_until(&format!("an element matching `{css}`"), async || {
            self.client
                .find(Locator::Css(css))
                .await
                .map_err(|e| describe(&e))
        })
        .await
    }

    /// Waits for an element matching `css` whose visible text contains `text`, and returns it.
    pub async fn wait_for_text(&self, css: &str, text: &str) -> Element {
        self.wait_until(
            &format!("an element matching `{css}` with text containing {text:?}"),
            async || {
                let elements = self
                    .client
                    .find_all(Locator::Css(css))
                    .await
                    .map_err(|e| describe(&e))?;
                let mut seen = Vec::new();
                for element in elements {
                    if let Ok(shown) = element.text().await {
                        if shown.contains(text) {
                            return Ok(element);
                        }
                        seen.push(shown);
                    }
                }
                Err(if seen.is_empty() {
                    "no element matched".to_string()
                } else {
                    format!("texts were {seen:?}")
                })
            },
        )
        .await
    }

    /// The visible text of the first element matching `css` (waiting for it to exist).
    pub async fn text(&self, css: &str) -> String {
        self.wait_until(&format!("the text of `{css}`"), async || {
            let element = self
                .client
                .find(Locator::Css(css))
                .await
                .map_err(|e| describe(&e))?;
            element.text().await.map_err(|e| describe(&e))
        })
        .await
    }

    /// Clicks the first element matching `css`, waiting until it exists and takes the click (not covered,
    /// not stale).
    pub async fn click(&self, css: &str) {
        self.wait_until(&format!("a click on `{css}`"), async || {
            let element = self
                .client
                .find(Locator::Css(css))
                .await
                .map_err(|e| describe(&e))?;
            element.click().await.map_err(|e| describe(&e))
        })
        .await
    }

    /// Clears the first input or textarea matching `css`, then types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) {
        self.wait_until(&format!("typing {text:?} into `{css}`"), async || {
            let element = self
                .client
                .find(Locator::Css(css))
                .await
                .map_err(|e| describe(&e))?;
            element.clear().await.map_err(|e| describe(&e))?;
            element.send_keys(text).await.map_err(|e| describe(&e))
        })
        .await
    }

    /// Runs `js` as a function body in the page and returns what it returns (`return document.title;`).
    /// Arguments are not passed; a thrown error fails the test.
    pub async fn eval(&self, js: &str) -> Value {
        match self.client.execute(js, Vec::new()).await {
            Ok(value) => value,
            Err(e) => self.fail(&format!("running {js:?}"), &describe(&e)).await,
        }
    }

    /// Switches into the `<iframe>` matching `css` (waiting for it); later lookups search inside it.
    pub async fn enter_frame(&self, css: &str) {
        self.wait_until(&format!("entering the frame `{css}`"), async || {
            let frame = self
                .client
                .find(Locator::Css(css))
                .await
                .map_err(|e| describe(&e))?;
            frame.enter_frame().await.map_err(|e| describe(&e))
        })
        .await
    }

    /// Back out of the frame entered last, to its parent (the page, for a frame in the page).
    pub async fn leave_frame(&self) {
        if let Err(e) = self.client.enter_parent_frame().await {
            self.fail("leaving the frame", &describe(&e)).await
        }
    }

    /// Saves a PNG of the window as `target/screenshots/<name>.png` (under the workspace root) and returns
    /// its path. `name` is a file name without `.png`: letters, digits, `-`, `_`, `.`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {}", describe(&e)));
        save_screenshot(name, &png)
    }

    /// The console messages at level SEVERE (errors, uncaught exceptions, failed loads) since the session
    /// opened. Each entry is `"<source> <message>"` as chromedriver reports it. The 404 of the
    /// `/favicon.ico` Chromium asks every site for by itself is left out.
    pub async fn console_errors(&self) -> Vec<String> {
        let mut console = self.console.lock().unwrap().clone();
        // chromedriver hands each log entry out once: keep what it returned for the next call.
        if let Ok(Value::Array(entries)) = self.client.issue_cmd(BrowserLog).await {
            let new: Vec<String> = entries
                .iter()
                .filter(|e| e["level"] == "SEVERE")
                .filter(|e| {
                    !e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("/favicon.ico - "))
                })
                .map(|e| {
                    format!(
                        "{} {}",
                        e["source"].as_str().unwrap_or("?"),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect();
            console.extend(new.iter().cloned());
            self.console.lock().unwrap().extend(new);
        }
        console
    }

    /// Fails the test when the page has logged any console error.
    pub async fn assert_no_console_errors(&self) {
        let errors = self.console_errors().await;
        assert!(
            errors.is_empty(),
            "console errors at {}:\n{}",
            self.current_url().await,
            errors.join("\n")
        );
    }

    /// Panics with `what` was awaited, the last state seen and the current URL, after saving a screenshot.
    async fn fail<T>(&self, what: &str, last: &str) -> T {
        static FAILURES: AtomicU64 = AtomicU64::new(0);
        let url = self.current_url().await;
        let shot = match self.client.screenshot().await {
            Ok(png) => {
                let n = FAILURES.fetch_add(1, Ordering::Relaxed);
                let name = format!("failure-{}-{n}", std::process::id());
                format!("; screenshot {}", save_screenshot(&name, &png).display())
            }
            Err(_) => String::new(),
        };
        panic!(
            "timed out after {:?} waiting for {what} at {url}: {last}{shot}",
            self.deadline
        )
    }
}

fn save_screenshot(name: &str, png: &[u8]) -> PathBuf {
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "screenshot name {name:?}: use letters, digits, `-`, `_`, `.`"
    );
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.canonicalize().unwrap_or(path)
}

/// A WebDriver error, shortly (fantoccini's `Display` of a missing element is long).
fn describe(error: &CmdError) -> String {
    match error {
        CmdError::Standard(e) => format!("{}: {}", e.error, e.message),
        other => other.to_string(),
    }
}

/// chromedriver's own endpoint for the browser console (`goog:loggingPrefs` turns it on).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// Starts chromedriver on a port of its choosing and waits until it says which. With `--port=0` chromedriver
/// picks a free port and then binds it again, so a parallel test can take the port in between ("IPv4 port
/// not available. Exiting..."): that start is tried again, up to three times.
async fn start_driver(chromedriver: &Path) -> Driver {
    let mut printed = String::new();
    for _ in 0..3 {
        match start_driver_once(chromedriver).await {
            Ok(driver) => return driver,
            Err(output) if output.contains("port not available") => printed = output,
            Err(output) => {
                printed = output;
                break;
            }
        }
    }
    panic!(
        "{} did not report its port within {DEADLINE:?}; it printed:\n{printed}",
        chromedriver.display()
    )
}

async fn start_driver_once(chromedriver: &Path) -> Result<Driver, String> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chromedriver.log");
    let mut child = Command::new(chromedriver)
        .arg("--port=0")
        .arg(format!("--log-path={}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let seen = Arc::new(Mutex::new(String::new()));
    let seen_by_reader = seen.clone();
    // Reads "ChromeDriver was started successfully on port N." and then drains the rest, so that the
    // driver never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            seen_by_reader
                .lock()
                .unwrap()
                .push_str(&format!("{line}\n"));
            if let Some(port) = line
                .strip_prefix("ChromeDriver was started successfully on port ")
                .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok())
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(port);
            }
        }
    });
    let port = match tokio::time::timeout(DEADLINE, rx).await {
        Ok(Ok(port)) => port,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(seen.lock().unwrap().clone());
        }
    };
    Ok(Driver { child, port, dir })
}

fn driver_log(driver: &Driver) -> String {
    let text =
        std::fs::read_to_string(driver.dir.path().join("chromedriver.log")).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}
