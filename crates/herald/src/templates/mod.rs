//! Stored templates: Jinja (minijinja) for the subject, the text and the HTML of a message.
//!
//! A stored template has up to three parts. Each part is a separate minijinja template named
//! `NAME#subject`, `NAME#text` or `NAME#html` inside the engine, so that `{% extends "layout" %}` in an HTML
//! part means the HTML part of the template `layout`, and the same line in a text part means its text part
//! (see [`join_path`]). Only `#html` parts are HTML-escaped; the subject and the text are not, because
//! `&amp;` in a subject line or a text body is a bug, not a protection.
//!
//! Rendering is strict: a variable missing from the data is an error naming it (`user.name` is undefined),
//! never an empty string that sends "Hello ," to ten thousand people. Every render is bounded: a fuel budget
//! (minijinja counts instructions and the bytes a template makes) and a cap on each part's output, so a
//! template cannot loop the server into the ground (DESIGN.md invariant 5).
//!
//! After rendering, CSS from `<style>` is inlined into `style=""` attributes (mail clients drop `<style>`
//! blocks) and, when the template has no text part, one is made from the HTML. [`Rendered`] is then exactly
//! what goes into the message, which is why the preview endpoint shows it unchanged.
//!
//! This module sits below the service and the store: it is given its templates, as [`TemplateSource`]s
//! passed in or through a [`TemplateSources`] it asks by name (the store implements it in
//! `store/template_sources.rs`), and imports nothing from `service`, `store` or `api`.

mod complexity;
mod error;
mod html;
mod pool;

use std::{
    collections::{BTreeSet, HashMap},
    convert::Infallible,
    future::Future,
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use error::{Location, TemplateError};
pub use html::{inline_css, nesting_depth, text_from_html};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value, syntax::SyntaxConfig};
pub use pool::{PoolConfig, PoolError, Renderer};
use serde_json::Value as Json;

/// A stored template's source: Jinja for the subject, the text and the HTML.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateSource {
    pub name: String,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
}

/// Where a render finds the templates a template refers to (`{% extends %}`, `{% include %}`,
/// `{% import %}`) by name: the store in the service. Rendering asks only for the names it meets, so a
/// template that includes nothing costs one lookup.
pub trait TemplateSources: Sync {
    /// Why a lookup failed (the store's error): carried to the caller in [`LoadError::Store`].
    type Error;

    /// The template named `name`, or `None` when there is none.
    fn template_source(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<TemplateSource>, Self::Error>> + Send;
}

/// Bounds on what one template may cost (DESIGN.md invariant 5).
#[derive(Debug, Clone)]
pub struct Limits {
    /// minijinja fuel per rendered part: about one per instruction plus one per 64 bytes made. 500,000 is a
    /// few milliseconds of work, far more than a notification with a hundred order lines needs.
    pub fuel: u64,
    /// Largest rendered part, in bytes.
    pub output_bytes: usize,
    /// Largest stored part source, in bytes.
    pub source_bytes: usize,
    /// Most distinct templates one render may pull in through extends/include/import.
    pub templates_per_render: usize,
    /// Most operators in one `{{ … }}` or `{% … %}` tag: bounds how deep the compiler recurses (see
    /// `complexity.rs`); the render threads' stack is sized for it.
    pub tag_operators: usize,
    /// Deepest nesting of HTML elements in a rendered HTML part: css-inline and html2text recurse per level.
    pub html_depth: usize,
    /// Most elements × CSS declarations in a rendered HTML part with a `<style>` block: css-inline matches
    /// and copies declarations per element before it writes a byte, so this bounds its time and memory.
    pub css_work: usize,
    /// Wall time of one render (all parts, CSS inlining and the text part): past it the render stops where
    /// it can and the caller answers 422 without waiting for it.
    pub render_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 500_000,
            output_bytes: 2 * 1024 * 1024,
            source_bytes: 512 * 1024,
            templates_per_render: 32,
            tag_operators: 1_000,
            html_depth: 256,
            css_work: 4_000_000,
            render_time: Duration::from_secs(2),
        }
    }
}

/// One part of a stored template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartKind {
    Subject,
    Text,
    Html,
}

impl PartKind {
    pub const ALL: [PartKind; 3] = [PartKind::Subject, PartKind::Text, PartKind::Html];

    /// The request field this part comes from: `subject`, `text` or `html`.
    pub fn as_str(self) -> &'static str {
        match self {
            PartKind::Subject => "subject",
            PartKind::Text => "text",
            PartKind::Html => "html",
        }
    }

    fn parse(s: &str) -> Option<PartKind> {
        PartKind::ALL.into_iter().find(|p| p.as_str() == s)
    }

    fn of(self, source: &TemplateSource) -> Option<&str> {
        match self {
            PartKind::Subject => Some(&source.subject),
            PartKind::Text => source.text.as_deref(),
            PartKind::Html => source.html.as_deref(),
        }
    }
}

/// The engine's name for one part of a stored template: `welcome#html`.
fn engine_name(template: &str, part: PartKind) -> String {
    format!("{template}#{}", part.as_str())
}

/// Splits an engine name back into the stored template's name and the part.
fn split_engine_name(name: &str) -> Option<(&str, PartKind)> {
    let (template, part) = name.rsplit_once('#')?;
    Some((template, PartKind::parse(part)?))
}

/// `{% extends "layout" %}` inside `welcome#html` loads `layout#html`: a reference takes the part of the
/// template it is written in. A reference may name a part explicitly (`"layout#text"`).
fn join_path<'s>(name: &'s str, parent: &'s str) -> std::borrow::Cow<'s, str> {
    if split_engine_name(name).is_some() {
        return name.into();
    }
    match split_engine_name(parent) {
        Some((_, part)) => engine_name(name, part).into(),
        None => name.into(),
    }
}

/// Checks a template name: 1 to 128 of `A-Z a-z 0-9 _ . -`, starting with a letter or digit. Names appear in
/// URLs (`/v1/templates/{name}`) and in `{% extends "name" %}`, so they stay plain.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a template name: use 1 to 128 letters, digits, '_', '.' or '-', starting with a \
             letter or digit"
        ))
    }
}

/// Checks a template's source: sizes, operators per tag, and every part compiles. Compiling recurses as
/// deep as the source nests, so call it on a render thread ([`check`] does). A syntax error names the part,
/// the line and the column. References to other templates are not checked here: a layout may be stored
/// after the templates that extend it.
pub fn validate(source: &TemplateSource, limits: &Limits) -> Result<(), TemplateError> {
    let env = base_environment(limits, UndefinedBehavior::Strict);
    for part in PartKind::ALL {
        let Some(text) = part.of(source) else {
            continue;
        };
        check_part(&source.name, part, text, limits)?;
        if let Err(e) = env.template_from_named_str(&engine_name(&source.name, part), text) {
            let sources = HashMap::from([(source.name.clone(), source.clone())]);
            return Err(TemplateError::from_engine(&e, &sources, &[], limits));
        }
    }
    if source.text.is_none() && source.html.is_none() {
        return Err(TemplateError::Empty {
            template: source.name.clone(),
        });
    }
    Ok(())
}

/// The checks made on a part's source before it is compiled: its size and its operators per tag.
fn check_part(
    template: &str,
    part: PartKind,
    text: &str,
    limits: &Limits,
) -> Result<(), TemplateError> {
    if text.len() > limits.source_bytes {
        return Err(TemplateError::SourceTooLarge {
            template: template.to_owned(),
            part,
            limit: limits.source_bytes,
        });
    }
    if let Some((line, column, operators)) =
        complexity::first_overlong_tag(text, limits.tag_operators)
    {
        return Err(TemplateError::TooComplex {
            location: Location {
                template: template.to_owned(),
                part,
                line,
                column: Some(column),
            },
            operators,
            limit: limits.tag_operators,
        });
    }
    Ok(())
}

/// Checks a template before it is stored, on a render thread: [`validate`], then a trial render without
/// data (missing values render as empty), fetching the templates it refers to from `sources`. A template
/// whose trial render is too large, too deep, too slow or out of fuel would be so for every message, so it
/// is refused now rather than at send time; errors that depend on the data (an undefined value, a layout
/// not stored yet) are left to the real render.
pub async fn check<S: TemplateSources>(
    renderer: &Renderer,
    sources: &S,
    source: &TemplateSource,
    limits: &Limits,
) -> Result<(), LoadError<S::Error>> {
    check_source(renderer, source, limits).await?;
    let mut set = Arc::new(TemplateSet::from_root(source.clone(), limits.clone()).lenient());
    match render_loading(
        &mut set,
        renderer,
        sources,
        &Json::Object(Default::default()),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(LoadError::Template(e)) if e.is_resource_limit() => Err(LoadError::Template(e)),
        Err(LoadError::Template(_) | LoadError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// [`validate`] on a render thread, within the render's wall-time budget.
pub async fn check_source<E>(
    renderer: &Renderer,
    source: &TemplateSource,
    limits: &Limits,
) -> Result<(), LoadError<E>> {
    let (job_source, job_limits) = (source.clone(), limits.clone());
    renderer
        .run(limits.render_time, move || {
            validate(&job_source, &job_limits)
        })
        .await
        .map_err(|e| LoadError::from_pool(e, &source.name))?
        .map_err(LoadError::Template)
}

/// Renders `set` with `data` on a render thread, fetching referenced templates from `sources` (and
/// replacing `set` by the extended one) as rendering asks for them.
pub async fn render_loading<S: TemplateSources>(
    set: &mut Arc<TemplateSet>,
    renderer: &Renderer,
    sources: &S,
    data: &Json,
) -> Result<Rendered, LoadError<S::Error>> {
    let data = Arc::new(data.clone());
    loop {
        let (job_set, job_data) = (set.clone(), data.clone());
        let stage = Arc::new(Stage::default());
        let job_stage = stage.clone();
        let outcome = renderer
            .run(set.limits.render_time, move || {
                job_set.render_staged(&job_data, &job_stage)
            })
            .await
            .map_err(|e| match e {
                // The render is still running: say which part it is stuck in.
                PoolError::TimedOut(limit) => LoadError::Template(TemplateError::TimedOut {
                    template: set.root.clone(),
                    part: stage.part(),
                    limit_ms: limit.as_millis() as u64,
                }),
                e => LoadError::from_pool(e, &set.root),
            })?;
        match outcome {
            Ok(rendered) => return Ok(rendered),
            Err(RenderError::Template(e)) => return Err(e.into()),
            Err(RenderError::Missing(names)) => {
                *set = Arc::new(set.extended(sources, &names).await?)
            }
        }
    }
}

/// The part a render is working on, shared with the caller waiting for it.
#[derive(Debug, Default)]
struct Stage(std::sync::atomic::AtomicU8);

impl Stage {
    fn set(&self, part: PartKind) {
        let code = PartKind::ALL.iter().position(|p| *p == part).unwrap_or(0) as u8 + 1;
        self.0.store(code, std::sync::atomic::Ordering::Relaxed);
    }

    fn part(&self) -> Option<PartKind> {
        let code = self.0.load(std::sync::atomic::Ordering::Relaxed);
        PartKind::ALL
            .get(usize::from(code).checked_sub(1)?)
            .copied()
    }
}

/// What a template renders to: exactly what goes into the message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rendered {
    pub subject: String,
    /// The text part: the template's own, or made from the HTML when it has none.
    pub text: String,
    /// The HTML part with its CSS inlined; `None` when the template has no HTML.
    pub html: Option<String>,
}

/// Why a render could not finish.
#[derive(Debug)]
pub enum RenderError {
    /// The template refers to templates not loaded yet: load them ([`TemplateSet::load_more`]) and try again.
    Missing(Vec<String>),
    Template(TemplateError),
}

/// Why a template could not be loaded or rendered; `E` is the error of the [`TemplateSources`] it was
/// loaded from.
#[derive(Debug, thiserror::Error)]
pub enum LoadError<E> {
    #[error("no template named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The sources (the store) could not be read.
    #[error(transparent)]
    Store(E),
    /// Every render thread is taken and the queue is full (or stopped): try again.
    #[error("{0}")]
    Busy(PoolError),
}

impl<E> LoadError<E> {
    /// A render that did not come back: a time-out or a panic is the template's error (422), a full queue
    /// is the server's (503).
    pub fn from_pool(error: PoolError, template: &str) -> Self {
        match error {
            PoolError::TimedOut(limit) => LoadError::Template(TemplateError::TimedOut {
                template: template.to_owned(),
                part: None,
                limit_ms: limit.as_millis() as u64,
            }),
            PoolError::Panicked(message) => LoadError::Template(TemplateError::Failed {
                template: template.to_owned(),
                message,
            }),
            PoolError::Busy | PoolError::Stopped => LoadError::Busy(error),
        }
    }
}

/// What the engine's loader sees: the stored templates fetched so far, and the names it asked for that were
/// not among them (so the caller can fetch them and render again).
#[derive(Debug, Default)]
struct Catalog {
    sources: HashMap<String, TemplateSource>,
    /// Names looked up in the sources and not found there.
    absent: BTreeSet<String>,
    /// No sources behind the catalog: every name not in `sources` is absent.
    closed: bool,
    /// Names the engine asked for that are neither in `sources` nor known to be absent.
    misses: Mutex<BTreeSet<String>>,
    /// Engine names that were asked for and could not be served (absent template, or no such part).
    not_found: Mutex<BTreeSet<String>>,
    /// A source the loader refused to compile (too large or too complex: stored before today's limits, or a
    /// layout); reported instead of the engine's generic error.
    refused: Mutex<Option<TemplateError>>,
}

/// A stored template with the templates it extends or includes, ready to render many times (a batch renders
/// one set ten thousand times, on several threads: `render` takes `&self`).
pub struct TemplateSet {
    root: String,
    catalog: Arc<Catalog>,
    env: Environment<'static>,
    limits: Limits,
    /// Strict for real renders; chainable for the trial render made when a template is stored (it has no
    /// data, and what it looks for is output that would crash or stall the renderer with any data).
    undefined: UndefinedBehavior,
}

impl std::fmt::Debug for TemplateSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateSet")
            .field("root", &self.root)
            .field("loaded", &self.catalog.sources.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The engine settings every template shares.
fn base_environment(limits: &Limits, undefined: UndefinedBehavior) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(undefined);
    // Debug mode makes an undefined-variable error say which variable (`user.name` is undefined). It costs
    // only when an error happens.
    env.set_debug(true);
    env.set_fuel(Some(limits.fuel));
    env.set_auto_escape_callback(|name| {
        if name.ends_with("#html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env.set_path_join_callback(join_path);
    // A text body ends the way its author wrote it; Jinja would drop one trailing newline.
    let syntax = SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env
}

impl TemplateSet {
    /// Loads the stored template `name` and then, as rendering asks for them, the templates it refers to.
    pub async fn load<S: TemplateSources>(
        sources: &S,
        name: &str,
        limits: Limits,
    ) -> Result<Self, LoadError<S::Error>> {
        let root = sources
            .template_source(name)
            .await
            .map_err(LoadError::Store)?
            .ok_or_else(|| LoadError::NotFound(name.to_owned()))?;
        let catalog = Catalog {
            sources: HashMap::from([(name.to_owned(), root)]),
            ..Default::default()
        };
        Ok(Self::with_catalog(
            name.to_owned(),
            catalog,
            limits,
            UndefinedBehavior::Strict,
        ))
    }

    /// A set whose root is given rather than fetched: an unsaved draft (the dashboard's editor), or a stored
    /// template its caller has read already. The templates it extends or includes are loaded from the
    /// sources as rendering asks for them, as by [`TemplateSet::load`].
    pub fn from_root(source: TemplateSource, limits: Limits) -> Self {
        let name = source.name.clone();
        let catalog = Catalog {
            sources: HashMap::from([(name.clone(), source)]),
            ..Default::default()
        };
        Self::with_catalog(name, catalog, limits, UndefinedBehavior::Strict)
    }

    /// A set over sources given directly, with nothing behind them: a name not given does not exist.
    pub fn from_sources(
        root: &str,
        sources: impl IntoIterator<Item = TemplateSource>,
        limits: Limits,
    ) -> Result<Self, LoadError<Infallible>> {
        let sources: HashMap<String, TemplateSource> =
            sources.into_iter().map(|s| (s.name.clone(), s)).collect();
        if !sources.contains_key(root) {
            return Err(LoadError::NotFound(root.to_owned()));
        }
        let catalog = Catalog {
            sources,
            closed: true,
            ..Default::default()
        };
        Ok(Self::with_catalog(
            root.to_owned(),
            catalog,
            limits,
            UndefinedBehavior::Strict,
        ))
    }

    /// The same set, rendering missing values as empty instead of failing (the trial render of [`check`]).
    fn lenient(self) -> Self {
        let catalog = Catalog {
            sources: self.catalog.sources.clone(),
            absent: self.catalog.absent.clone(),
            closed: self.catalog.closed,
            ..Default::default()
        };
        Self::with_catalog(
            self.root,
            catalog,
            self.limits,
            UndefinedBehavior::Chainable,
        )
    }

    fn with_catalog(
        root: String,
        catalog: Catalog,
        limits: Limits,
        undefined: UndefinedBehavior,
    ) -> Self {
        let catalog = Arc::new(catalog);
        let env = Self::environment(&catalog, &limits, undefined);
        Self {
            root,
            catalog,
            env,
            limits,
            undefined,
        }
    }

    fn environment(
        catalog: &Arc<Catalog>,
        limits: &Limits,
        undefined: UndefinedBehavior,
    ) -> Environment<'static> {
        let mut env = base_environment(limits, undefined);
        let catalog = catalog.clone();
        let limits = limits.clone();
        env.set_loader(move |name| {
            let Some((template, part)) = split_engine_name(name) else {
                catalog
                    .not_found
                    .lock()
                    .expect("not poisoned")
                    .insert(name.to_owned());
                return Ok(None);
            };
            if let Some(source) = catalog.sources.get(template) {
                let text = part.of(source).map(str::to_owned);
                if let Some(text) = &text
                    && let Err(refused) = check_part(template, part, text, &limits)
                {
                    let message = refused.to_string();
                    *catalog.refused.lock().expect("not poisoned") = Some(refused);
                    return Err(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        message,
                    ));
                }
                if text.is_none() {
                    catalog
                        .not_found
                        .lock()
                        .expect("not poisoned")
                        .insert(name.to_owned());
                }
                return Ok(text);
            }
            if catalog.closed || catalog.absent.contains(template) {
                catalog
                    .not_found
                    .lock()
                    .expect("not poisoned")
                    .insert(name.to_owned());
            } else {
                catalog
                    .misses
                    .lock()
                    .expect("not poisoned")
                    .insert(template.to_owned());
            }
            Ok(None)
        });
        env
    }

    /// The stored template this set renders.
    pub fn name(&self) -> &str {
        &self.root
    }

    /// The root template's source.
    pub fn source(&self) -> &TemplateSource {
        &self.catalog.sources[&self.root]
    }

    /// Fetches the named templates from `sources` (remembering the ones that do not exist) and rebuilds the
    /// engine over them.
    pub async fn load_more<S: TemplateSources>(
        &mut self,
        sources: &S,
        names: &[String],
    ) -> Result<(), LoadError<S::Error>> {
        *self = self.extended(sources, names).await?;
        Ok(())
    }

    /// A new set with the named templates fetched from `sources` as well (this one is left as it is, so a
    /// set shared with rendering threads can be extended without taking it back).
    pub async fn extended<S: TemplateSources>(
        &self,
        sources: &S,
        names: &[String],
    ) -> Result<Self, LoadError<S::Error>> {
        let mut known = self.catalog.sources.clone();
        let mut absent = self.catalog.absent.clone();
        for name in names {
            if known.contains_key(name) || absent.contains(name) {
                continue;
            }
            if known.len() >= self.limits.templates_per_render {
                return Err(LoadError::Template(TemplateError::TooManyTemplates {
                    template: self.root.clone(),
                    limit: self.limits.templates_per_render,
                }));
            }
            match sources
                .template_source(name)
                .await
                .map_err(LoadError::Store)?
            {
                Some(source) => {
                    known.insert(name.clone(), source);
                }
                None => {
                    absent.insert(name.clone());
                }
            }
        }
        let catalog = Catalog {
            sources: known,
            absent,
            closed: self.catalog.closed,
            ..Default::default()
        };
        Ok(Self::with_catalog(
            self.root.clone(),
            catalog,
            self.limits.clone(),
            self.undefined,
        ))
    }

    /// Renders subject, text and HTML with `data`, inlines the CSS and makes the text part from the HTML when
    /// the template has none. Runs on the calling thread: call it on a render thread ([`Renderer`]), whose
    /// stack is sized for what [`validate`] lets through. The wall-time budget starts now.
    pub fn render(&self, data: &Json) -> Result<Rendered, RenderError> {
        self.render_staged(data, &Stage::default())
    }

    /// [`Self::render`], recording in `stage` the part it is working on (read by a caller that stopped
    /// waiting, to name the part in its error).
    fn render_staged(&self, data: &Json, stage: &Stage) -> Result<Rendered, RenderError> {
        let deadline = Instant::now() + self.limits.render_time;
        let context = Value::from(minijinja::value::Serde(data));
        let source = self.source();
        stage.set(PartKind::Subject);
        let subject = self.render_part(PartKind::Subject, &context, deadline)?;
        let text = match source.text {
            Some(_) => {
                stage.set(PartKind::Text);
                Some(self.render_part(PartKind::Text, &context, deadline)?)
            }
            None => None,
        };
        let html = match source.html {
            Some(_) => {
                stage.set(PartKind::Html);
                let raw = self.render_part(PartKind::Html, &context, deadline)?;
                Some(self.inline(&raw, deadline)?)
            }
            None => None,
        };
        let text = match (text, &html) {
            (Some(text), _) => text,
            (None, Some(html)) => {
                stage.set(PartKind::Text);
                if Instant::now() > deadline {
                    return Err(self.timed_out(Some(PartKind::Text)));
                }
                let text = html::text_from_html(html);
                if text.len() > self.limits.output_bytes {
                    return Err(RenderError::Template(TemplateError::OutputTooLarge {
                        template: self.root.clone(),
                        part: PartKind::Text,
                        limit: self.limits.output_bytes,
                    }));
                }
                text
            }
            (None, None) => String::new(),
        };
        Ok(Rendered {
            subject,
            text,
            html,
        })
    }

    /// The HTML part with its CSS inlined, after checking it nests no deeper than the limit (the text part is
    /// made from this same HTML, so the check covers html2text too).
    fn inline(&self, raw: &str, deadline: Instant) -> Result<String, RenderError> {
        let shape = html::shape(raw, self.limits.html_depth);
        if shape.depth > self.limits.html_depth {
            return Err(RenderError::Template(TemplateError::HtmlTooDeep {
                template: self.root.clone(),
                limit: self.limits.html_depth,
            }));
        }
        if shape.elements.saturating_mul(shape.css_declarations) > self.limits.css_work {
            return Err(RenderError::Template(TemplateError::CssTooCostly {
                template: self.root.clone(),
                elements: shape.elements,
                declarations: shape.css_declarations,
                limit: self.limits.css_work,
            }));
        }
        html::inline_css(raw, self.limits.output_bytes, Some(deadline)).map_err(|e| {
            RenderError::Template(match e {
                html::HtmlError::TooLarge { limit } => TemplateError::OutputTooLarge {
                    template: self.root.clone(),
                    part: PartKind::Html,
                    limit,
                },
                html::HtmlError::TimedOut => return self.timed_out(Some(PartKind::Html)),
                html::HtmlError::TooDeep { limit, .. } => TemplateError::HtmlTooDeep {
                    template: self.root.clone(),
                    limit,
                },
                html::HtmlError::Css(message) => TemplateError::Css {
                    template: self.root.clone(),
                    message,
                },
            })
        })
    }

    fn timed_out(&self, part: Option<PartKind>) -> RenderError {
        RenderError::Template(TemplateError::TimedOut {
            template: self.root.clone(),
            part,
            limit_ms: self.limits.render_time.as_millis() as u64,
        })
    }

    fn render_part(
        &self,
        part: PartKind,
        context: &Value,
        deadline: Instant,
    ) -> Result<String, RenderError> {
        let name = engine_name(&self.root, part);
        let failed = |e: minijinja::Error| {
            if let Some(refused) = self.catalog.refused.lock().expect("not poisoned").clone() {
                return RenderError::Template(refused);
            }
            // Not drained: on a batch's threads, every render that hit a missing name must see it, until
            // `load_more` replaces the catalog.
            let misses: Vec<String> = self
                .catalog
                .misses
                .lock()
                .expect("not poisoned")
                .iter()
                .cloned()
                .collect();
            if !misses.is_empty() {
                return RenderError::Missing(misses);
            }
            let not_found: Vec<String> = self
                .catalog
                .not_found
                .lock()
                .expect("not poisoned")
                .iter()
                .cloned()
                .collect();
            RenderError::Template(TemplateError::from_engine(
                &e,
                &self.catalog.sources,
                &not_found,
                &self.limits,
            ))
        };
        let template = self.env.get_template(&name).map_err(failed)?;
        let mut out = Capped::new(self.limits.output_bytes, Some(deadline));
        match template.render_captured_to(context.clone(), &mut out) {
            Ok(_) => {}
            Err(_) if out.exceeded => {
                return Err(RenderError::Template(TemplateError::OutputTooLarge {
                    template: self.root.clone(),
                    part,
                    limit: self.limits.output_bytes,
                }));
            }
            Err(_) if out.timed_out => return Err(self.timed_out(Some(part))),
            Err(e) => return Err(failed(e)),
        }
        if Instant::now() > deadline {
            return Err(self.timed_out(Some(part)));
        }
        // The engine writes only `str`s, so the bytes are UTF-8.
        Ok(String::from_utf8(out.bytes).expect("minijinja writes UTF-8"))
    }
}

/// A writer that refuses to grow past `limit` or to go on past `deadline`, so an oversized render stops as
/// soon as it is oversized instead of after it has filled memory, and a slow one stops at its next write.
struct Capped {
    bytes: Vec<u8>,
    limit: usize,
    exceeded: bool,
    deadline: Option<Instant>,
    timed_out: bool,
    writes: u32,
}

impl Capped {
    fn new(limit: usize, deadline: Option<Instant>) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
            exceeded: false,
            deadline,
            timed_out: false,
            writes: 0,
        }
    }
}

impl io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("template output over the limit"));
        }
        // Reading the clock costs tens of nanoseconds; writes come by the thousand.
        self.writes = self.writes.wrapping_add(1);
        if self.writes.is_multiple_of(64)
            && let Some(deadline) = self.deadline
            && Instant::now() > deadline
        {
            self.timed_out = true;
            return Err(io::Error::other("template render over its time"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
