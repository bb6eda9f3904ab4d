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

mod error;
mod html;

use std::{
    collections::{BTreeSet, HashMap},
    io,
    sync::{Arc, Mutex},
};

pub use error::{Location, TemplateError};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value, syntax::SyntaxConfig};
use serde_json::Value as Json;

use crate::store::{Store, StoreError, TemplateSource};

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 500_000,
            output_bytes: 2 * 1024 * 1024,
            source_bytes: 512 * 1024,
            templates_per_render: 32,
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

/// Checks a template before it is stored: sizes, and every part compiles. A syntax error names the part,
/// the line and the column. References to other templates are not checked here: a layout may be stored
/// after the templates that extend it.
pub fn validate(source: &TemplateSource, limits: &Limits) -> Result<(), TemplateError> {
    let env = base_environment(limits);
    for part in PartKind::ALL {
        let Some(text) = part.of(source) else {
            continue;
        };
        if text.len() > limits.source_bytes {
            return Err(TemplateError::SourceTooLarge {
                template: source.name.clone(),
                part,
                limit: limits.source_bytes,
            });
        }
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

/// Why a template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no template named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the engine's loader sees: the stored templates fetched so far, and the names it asked for that were
/// not among them (so the caller can fetch them and render again).
#[derive(Debug, Default)]
struct Catalog {
    sources: HashMap<String, TemplateSource>,
    /// Names looked up in the store and not found there.
    absent: BTreeSet<String>,
    /// No store behind the catalog: every name not in `sources` is absent.
    closed: bool,
    /// Names the engine asked for that are neither in `sources` nor known to be absent.
    misses: Mutex<BTreeSet<String>>,
    /// Engine names that were asked for and could not be served (absent template, or no such part).
    not_found: Mutex<BTreeSet<String>>,
}

/// A stored template with the templates it extends or includes, ready to render many times (a batch renders
/// one set ten thousand times, on several threads: `render` takes `&self`).
pub struct TemplateSet {
    root: String,
    catalog: Arc<Catalog>,
    env: Environment<'static>,
    limits: Limits,
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
fn base_environment(limits: &Limits) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
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
    pub async fn load(store: &Store, name: &str, limits: Limits) -> Result<Self, LoadError> {
        let root = store
            .template(name)
            .await?
            .ok_or_else(|| LoadError::NotFound(name.to_owned()))?;
        let catalog = Catalog {
            sources: HashMap::from([(name.to_owned(), root.source)]),
            ..Default::default()
        };
        Ok(Self::with_catalog(name.to_owned(), catalog, limits))
    }

    /// A set whose root is an unsaved draft (the dashboard's editor); the templates it extends or includes
    /// are loaded from the store as rendering asks for them, as for a stored template.
    pub fn draft(source: TemplateSource, limits: Limits) -> Self {
        let name = source.name.clone();
        let catalog = Catalog {
            sources: HashMap::from([(name.clone(), source)]),
            ..Default::default()
        };
        Self::with_catalog(name, catalog, limits)
    }

    /// A set over sources given directly, with no store behind it: a name not given does not exist.
    pub fn from_sources(
        root: &str,
        sources: impl IntoIterator<Item = TemplateSource>,
        limits: Limits,
    ) -> Result<Self, LoadError> {
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
        Ok(Self::with_catalog(root.to_owned(), catalog, limits))
    }

    fn with_catalog(root: String, catalog: Catalog, limits: Limits) -> Self {
        let catalog = Arc::new(catalog);
        let env = Self::environment(&catalog, &limits);
        Self {
            root,
            catalog,
            env,
            limits,
        }
    }

    fn environment(catalog: &Arc<Catalog>, limits: &Limits) -> Environment<'static> {
        let mut env = base_environment(limits);
        let catalog = catalog.clone();
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

    /// Fetches the named templates from the store (remembering the ones that do not exist) and rebuilds the
    /// engine over them.
    pub async fn load_more(&mut self, store: &Store, names: &[String]) -> Result<(), LoadError> {
        *self = self.extended(store, names).await?;
        Ok(())
    }

    /// A new set with the named templates fetched from the store as well (this one is left as it is, so a
    /// set shared with rendering threads can be extended without taking it back).
    pub async fn extended(&self, store: &Store, names: &[String]) -> Result<Self, LoadError> {
        let mut sources = self.catalog.sources.clone();
        let mut absent = self.catalog.absent.clone();
        for name in names {
            if sources.contains_key(name) || absent.contains(name) {
                continue;
            }
            if sources.len() >= self.limits.templates_per_render {
                return Err(LoadError::Template(TemplateError::TooManyTemplates {
                    template: self.root.clone(),
                    limit: self.limits.templates_per_render,
                }));
            }
            match store.template(name).await? {
                Some(stored) => {
                    sources.insert(name.clone(), stored.source);
                }
                None => {
                    absent.insert(name.clone());
                }
            }
        }
        let catalog = Catalog {
            sources,
            absent,
            closed: self.catalog.closed,
            ..Default::default()
        };
        Ok(Self::with_catalog(
            self.root.clone(),
            catalog,
            self.limits.clone(),
        ))
    }

    /// Renders the set with `data` (a JSON object), fetching referenced templates from the store as needed.
    pub async fn render_loading(
        &mut self,
        store: &Store,
        data: &Json,
    ) -> Result<Rendered, LoadError> {
        loop {
            match self.render(data) {
                Ok(rendered) => return Ok(rendered),
                Err(RenderError::Template(e)) => return Err(e.into()),
                Err(RenderError::Missing(names)) => self.load_more(store, &names).await?,
            }
        }
    }

    /// Renders subject, text and HTML with `data`, inlines the CSS and makes the text part from the HTML when
    /// the template has none.
    pub fn render(&self, data: &Json) -> Result<Rendered, RenderError> {
        let context = Value::from(minijinja::value::Serde(data));
        let source = self.source();
        let subject = self.render_part(PartKind::Subject, &context)?;
        let text = match source.text {
            Some(_) => Some(self.render_part(PartKind::Text, &context)?),
            None => None,
        };
        let html = match source.html {
            Some(_) => {
                let raw = self.render_part(PartKind::Html, &context)?;
                Some(html::inline_css(&raw).map_err(|message| {
                    RenderError::Template(TemplateError::Css {
                        template: self.root.clone(),
                        message,
                    })
                })?)
            }
            None => None,
        };
        let text = match (text, &html) {
            (Some(text), _) => text,
            (None, Some(html)) => html::text_from_html(html),
            (None, None) => String::new(),
        };
        Ok(Rendered {
            subject,
            text,
            html,
        })
    }

    fn render_part(&self, part: PartKind, context: &Value) -> Result<String, RenderError> {
        let name = engine_name(&self.root, part);
        let failed = |e: minijinja::Error| {
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
        let mut out = Capped {
            bytes: Vec::new(),
            limit: self.limits.output_bytes,
            exceeded: false,
        };
        match template.render_captured_to(context.clone(), &mut out) {
            Ok(_) => {}
            Err(_) if out.exceeded => {
                return Err(RenderError::Template(TemplateError::OutputTooLarge {
                    template: self.root.clone(),
                    part,
                    limit: self.limits.output_bytes,
                }));
            }
            Err(e) => return Err(failed(e)),
        }
        // The engine writes only `str`s, so the bytes are UTF-8.
        Ok(String::from_utf8(out.bytes).expect("minijinja writes UTF-8"))
    }
}

/// A writer that refuses to grow past `limit`, so an oversized render stops as soon as it is oversized
/// instead of after it has filled memory.
struct Capped {
    bytes: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("template output over the limit"));
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
