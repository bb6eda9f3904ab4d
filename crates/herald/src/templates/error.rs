//! Template errors in the template author's terms: which stored template, which part, which line and column.

use std::{collections::HashMap, fmt};

use minijinja::ErrorKind;

use super::{Limits, PartKind, TemplateSource, split_engine_name};

/// Where in a stored template an error is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    /// The stored template (which may be a layout or an include of the one rendered).
    pub template: String,
    pub part: PartKind,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters; `None` when the engine could not point at a span.
    pub column: Option<usize>,
}

impl serde::Serialize for PartKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "template {:?} ({}), line {}",
            self.template,
            self.part.as_str(),
            self.line
        )?;
        if let Some(column) = self.column {
            write!(f, ", column {column}")?;
        }
        Ok(())
    }
}

/// Why a template could not be stored or rendered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TemplateError {
    /// The engine refused: a syntax error, an undefined variable, a missing template, the budget used up …
    #[error("{}{message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
    Engine {
        /// `syntax`, `undefined`, `not_found`, `budget` or `render`.
        kind: &'static str,
        location: Option<Location>,
        message: String,
    },
    #[error("template {template:?} ({}): the rendered output is over {limit} bytes", part.as_str())]
    OutputTooLarge {
        template: String,
        part: PartKind,
        limit: usize,
    },
    #[error("template {template:?} ({}): the source is over {limit} bytes", part.as_str())]
    SourceTooLarge {
        template: String,
        part: PartKind,
        limit: usize,
    },
    #[error("template {template:?} refers to more than {limit} templates")]
    TooManyTemplates { template: String, limit: usize },
    #[error("template {template:?} has neither a text nor an html part")]
    Empty { template: String },
    #[error("template {template:?} (html): the CSS could not be inlined: {message}")]
    Css { template: String, message: String },
    /// A tag chains more operators than the limit (compiling it would recurse that deep).
    #[error(
        "{location}: this tag has {operators} operators, over the limit of {limit}; split the expression \
         (for example with {{% set %}})"
    )]
    TooComplex {
        location: Location,
        operators: usize,
        limit: usize,
    },
    /// Inlining the CSS would copy too many declarations into too many elements.
    #[error(
        "template {template:?} (html): {elements} elements and {declarations} CSS declarations are more \
         than inlining may combine ({limit}); shorten the <style> block or the HTML"
    )]
    CssTooCostly {
        template: String,
        elements: usize,
        declarations: usize,
        limit: usize,
    },
    /// The rendered HTML nests elements deeper than the limit.
    #[error(
        "template {template:?} (html): the rendered HTML nests elements more than {limit} deep"
    )]
    HtmlTooDeep { template: String, limit: usize },
    /// The render ran past its wall-time budget.
    #[error(
        "template {template:?}{}: the render took longer than {limit_ms} ms",
        part.map(|p| format!(" ({})", p.as_str())).unwrap_or_default()
    )]
    TimedOut {
        template: String,
        part: Option<PartKind>,
        limit_ms: u64,
    },
    /// The renderer failed (a panic, caught); the message is the panic's.
    #[error("template {template:?}: the renderer failed: {message}")]
    Failed { template: String, message: String },
}

impl TemplateError {
    /// A short machine-readable kind, for the API's `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            TemplateError::Engine { kind: "syntax", .. } => "template_syntax",
            TemplateError::Engine { .. } => "template_error",
            TemplateError::OutputTooLarge { .. }
            | TemplateError::SourceTooLarge { .. }
            | TemplateError::TooManyTemplates { .. }
            | TemplateError::CssTooCostly { .. } => "template_too_large",
            TemplateError::Empty { .. } => "template_empty",
            TemplateError::Css { .. } => "template_css",
            TemplateError::TooComplex { .. } => "template_too_complex",
            TemplateError::HtmlTooDeep { .. } => "template_html_too_deep",
            TemplateError::TimedOut { .. } => "template_timeout",
            TemplateError::Failed { .. } => "template_failed",
        }
    }

    /// Whether the error is about what a render costs (size, depth, time, fuel, a crash) rather than about
    /// the data given: such a template fails with any data, so it is refused when stored.
    pub fn is_resource_limit(&self) -> bool {
        match self {
            TemplateError::Engine { kind, .. } => *kind == "budget",
            TemplateError::OutputTooLarge { .. }
            | TemplateError::SourceTooLarge { .. }
            | TemplateError::TooManyTemplates { .. }
            | TemplateError::TooComplex { .. }
            | TemplateError::HtmlTooDeep { .. }
            | TemplateError::CssTooCostly { .. }
            | TemplateError::TimedOut { .. }
            | TemplateError::Failed { .. } => true,
            TemplateError::Empty { .. } | TemplateError::Css { .. } => false,
        }
    }

    /// The stored template the error is in (for an error inside a layout or an include, that one).
    pub fn template(&self) -> Option<&str> {
        match self {
            TemplateError::Engine { location, .. } => {
                location.as_ref().map(|l| l.template.as_str())
            }
            TemplateError::OutputTooLarge { template, .. }
            | TemplateError::SourceTooLarge { template, .. }
            | TemplateError::TooManyTemplates { template, .. }
            | TemplateError::Empty { template }
            | TemplateError::Css { template, .. }
            | TemplateError::HtmlTooDeep { template, .. }
            | TemplateError::CssTooCostly { template, .. }
            | TemplateError::TimedOut { template, .. }
            | TemplateError::Failed { template, .. } => Some(template),
            TemplateError::TooComplex { location, .. } => Some(&location.template),
        }
    }

    pub fn location(&self) -> Option<&Location> {
        match self {
            TemplateError::Engine { location, .. } => location.as_ref(),
            TemplateError::TooComplex { location, .. } => Some(location),
            _ => None,
        }
    }

    /// The part the error is in, when known.
    pub fn part(&self) -> Option<PartKind> {
        match self {
            TemplateError::Engine { location, .. } => location.as_ref().map(|l| l.part),
            TemplateError::OutputTooLarge { part, .. }
            | TemplateError::SourceTooLarge { part, .. } => Some(*part),
            TemplateError::Css { .. }
            | TemplateError::HtmlTooDeep { .. }
            | TemplateError::CssTooCostly { .. } => Some(PartKind::Html),
            TemplateError::TooComplex { location, .. } => Some(location.part),
            TemplateError::TimedOut { part, .. } => *part,
            TemplateError::TooManyTemplates { .. }
            | TemplateError::Empty { .. }
            | TemplateError::Failed { .. } => None,
        }
    }

    /// Translates an engine error. The innermost error of the chain is the one the author needs (an error
    /// inside an included template arrives wrapped in "could not render include"); its span becomes a line and
    /// column in the stored source, and engine names (`layout#html`) become template and part.
    pub(super) fn from_engine(
        error: &minijinja::Error,
        sources: &HashMap<String, TemplateSource>,
        not_found: &[String],
        limits: &Limits,
    ) -> TemplateError {
        let mut inner = error;
        while let Some(next) =
            std::error::Error::source(inner).and_then(|s| s.downcast_ref::<minijinja::Error>())
        {
            inner = next;
        }
        let location = inner
            .name()
            .and_then(split_engine_name)
            .map(|(template, part)| {
                let source = sources.get(template).and_then(|s| part.of(s));
                let (line, column) = match (source, inner.range()) {
                    (Some(source), Some(range)) if range.start <= source.len() => {
                        let before = &source[..floor_char_boundary(source, range.start)];
                        let line = before.matches('\n').count() + 1;
                        let column =
                            before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                        (line, Some(column))
                    }
                    _ => (inner.line().unwrap_or(1), None),
                };
                Location {
                    template: template.to_owned(),
                    part,
                    line,
                    column,
                }
            });
        let detail = inner.detail().map(str::to_owned);
        let (kind, message) = match inner.kind() {
            ErrorKind::SyntaxError => (
                "syntax",
                format!("syntax error: {}", detail.unwrap_or_default()),
            ),
            ErrorKind::UndefinedError => (
                "undefined",
                match detail {
                    Some(d) => d,
                    None => "a value is undefined (give it in data, or test it with `is defined`)"
                        .to_owned(),
                },
            ),
            ErrorKind::OutOfFuel => (
                "budget",
                format!(
                    "the render used up its budget of {} steps (a loop too long, or output too large)",
                    limits.fuel
                ),
            ),
            ErrorKind::TemplateNotFound => {
                let wanted = not_found
                    .iter()
                    .find(|n| detail.as_deref().is_some_and(|d| d.contains(n.as_str())))
                    .or(not_found.first());
                let message = match wanted.and_then(|n| split_engine_name(n)) {
                    Some((template, part)) if sources.contains_key(template) => {
                        format!("template {template:?} has no {} part", part.as_str())
                    }
                    Some((template, _)) => format!("no template named {template:?}"),
                    None => match wanted {
                        Some(name) => format!("no template named {name:?}"),
                        None => detail.unwrap_or_else(|| "template not found".to_owned()),
                    },
                };
                ("not_found", message)
            }
            kind => (
                "render",
                match detail {
                    Some(d) => format!("{kind}: {d}"),
                    None => kind.to_string(),
                },
            ),
        };
        TemplateError::Engine {
            kind,
            location,
            message,
        }
    }
}

/// The largest char boundary at or before `i` (str::floor_char_boundary is not stable on 1.95).
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
