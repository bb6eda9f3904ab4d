//! Fuzz template source: whatever a client stores as a template, compiling it, rendering it (with a little
//! data), inlining its CSS and making its text part either succeed or fail with a `TemplateError`; never a
//! panic, a stack overflow or a hang. Everything runs on Herald's own render threads, as in the service, so
//! a crash here is a crash there.
//!
//!   RUSTC_BOOTSTRAP=1 cargo fuzz run template -s none -- -max_total_time=600 -max_len=4096

#![no_main]

use std::sync::{Arc, LazyLock};

use arbitrary::Arbitrary;
use herald::{
    store::TemplateSource,
    templates::{Limits, RenderError, Renderer, TemplateSet, validate},
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    subject: String,
    text: Option<String>,
    html: Option<String>,
    /// A second template the first may extend or include, as `other`.
    other_html: Option<String>,
    name: String,
}

static RENDERER: LazyLock<Renderer> = LazyLock::new(Renderer::default);

/// Small budgets so that a slow input shows up as a slow run, not as time spent legitimately.
fn limits() -> Limits {
    Limits {
        fuel: 50_000,
        output_bytes: 256 * 1024,
        ..Limits::default()
    }
}

fuzz_target!(|input: Input| {
    let root = TemplateSource {
        name: "t".into(),
        subject: input.subject,
        text: input.text,
        html: input.html,
    };
    let other = TemplateSource {
        name: "other".into(),
        subject: "s".into(),
        text: None,
        html: input.other_html,
    };
    let data = serde_json::json!({
        "name": input.name,
        "items": [1, 2, 3],
        "user": {"name": "Ana", "admin": true},
    });
    let result = RENDERER.run_blocking(move || {
        let limits = limits();
        if validate(&root, &limits).is_err() {
            return;
        }
        let Ok(set) = TemplateSet::from_sources("t", [root, other], limits) else {
            return;
        };
        let set = Arc::new(set);
        match set.render(&data) {
            Ok(rendered) => {
                assert!(rendered.text.len() <= 256 * 1024);
                if let Some(html) = &rendered.html {
                    assert!(html.len() <= 256 * 1024);
                }
            }
            Err(RenderError::Template(_)) => {}
            Err(RenderError::Missing(names)) => panic!("a closed set never misses: {names:?}"),
        }
    });
    if let Err(e) = result {
        panic!("the render job failed: {e}");
    }
});
