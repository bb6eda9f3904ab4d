//! What premailer does, in Rust: CSS from `<style>` into `style=""` attributes, and a text part from the HTML.

use std::{sync::LazyLock, time::Instant};

use css_inline::CSSInliner;

/// Gmail, Outlook and most webmail clients drop `<style>` blocks or parts of them; `style` attributes
/// survive. At-rules (`@media` queries, `@font-face`) cannot be inlined, so they stay in a `<style>` block for
/// the clients that honour them. Remote stylesheets are never fetched: a template must not make the server
/// reach out to a URL (and css-inline is built without its HTTP loader).
static INLINER: LazyLock<CSSInliner<'static>> = LazyLock::new(|| {
    CSSInliner::options()
        .keep_style_tags(false)
        .keep_at_rules(true)
        .keep_link_tags(true)
        .load_remote_stylesheets(false)
        .build()
});

/// Why HTML could not be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HtmlError {
    /// Elements nest deeper than the limit (css-inline and html2text recurse once per level).
    TooDeep { depth: usize, limit: usize },
    /// The inlined HTML would be larger than the limit (inlining copies a rule's declarations into every
    /// element it matches).
    TooLarge { limit: usize },
    /// The render's wall-time budget ran out while inlining.
    TimedOut,
    /// css-inline refused the HTML or the CSS.
    Css(String),
}

/// Inlines the CSS of `<style>` blocks. HTML without a `<style>` block is returned unchanged (the inliner
/// would rewrite it as a whole document, `<html><head></head><body>…`, for nothing). The output is written
/// through a writer that stops at `limit` bytes and at `deadline`, so a small rule matched by a million
/// elements cannot fill memory.
pub fn inline_css(
    html: &str,
    limit: usize,
    deadline: Option<Instant>,
) -> Result<String, HtmlError> {
    if !contains_ignore_ascii_case(html.as_bytes(), b"<style") {
        return Ok(html.to_owned());
    }
    let mut out = super::Capped::new(limit, deadline);
    match INLINER.inline_to(html, &mut out) {
        Ok(()) => Ok(String::from_utf8(out.bytes).map_err(|e| HtmlError::Css(e.to_string()))?),
        Err(_) if out.exceeded => Err(HtmlError::TooLarge { limit }),
        Err(_) if out.timed_out => Err(HtmlError::TimedOut),
        Err(e) => Err(HtmlError::Css(e.to_string())),
    }
}

/// Elements that never have content, so never nest.
const VOID: &[&[u8]] = &[
    b"area", b"base", b"br", b"col", b"embed", b"hr", b"img", b"input", b"link", b"meta", b"param",
    b"source", b"track", b"wbr", b"keygen", b"frame",
];

/// Elements whose content is text up to their end tag (a `<div>` inside `<style>` is not an element).
const RAW_TEXT: &[&[u8]] = &[
    b"script",
    b"style",
    b"textarea",
    b"title",
    b"xmp",
    b"noscript",
    b"iframe",
    b"noembed",
    b"noframes",
    b"plaintext",
];

/// What bounds the work css-inline and html2text do on a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    /// How deep elements nest (see [`shape`]).
    pub depth: usize,
    /// Start tags.
    pub elements: usize,
    /// Declarations and rules in `<style>` blocks (each `:` and each `{`, an over-count): inlining may copy
    /// each into every element.
    pub css_declarations: usize,
}

/// How deep the elements of `html` nest; see [`shape`].
pub fn nesting_depth(html: &str, stop_above: usize) -> usize {
    shape(html, stop_above).depth
}

/// How deep the elements of `html` nest, as an HTML parser would build the tree, stopping early once the
/// depth is over `stop_above`; with the number of elements and CSS declarations. End tags close what they match; an element whose end tag may be left out
/// (`<p>`, `<li>`, `<td>` …) is closed by the next one of its kind, as the parser does. `<div/>` counts as an
/// open `<div>`, as it does in HTML. It is a cheap, linear count, close to the parser's depth: it exists so
/// that css-inline and html2text never get a tree deep enough to exhaust their stack or their time.
pub fn shape(html: &str, stop_above: usize) -> Shape {
    let bytes = html.as_bytes();
    let mut open: Vec<Vec<u8>> = Vec::new();
    let mut deepest = 0;
    let mut elements = 0;
    let mut css_declarations = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..].iter().position(|&b| b == b'<') {
        i += at + 1;
        let rest = &bytes[i..];
        if rest.starts_with(b"!--") {
            i = find(bytes, i + 3, b"-->").map_or(bytes.len(), |end| end + 3);
            continue;
        }
        let closing = rest.first() == Some(&b'/');
        let name_start = i + usize::from(closing);
        let name_len = bytes[name_start..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':'))
            .count();
        if name_len == 0 || !bytes[name_start].is_ascii_alphabetic() {
            // `<!doctype>`, `<?xml?>`, or a lone `<` in text.
            continue;
        }
        let name = bytes[name_start..name_start + name_len].to_ascii_lowercase();
        i = tag_end(bytes, name_start + name_len);
        if closing {
            if let Some(at) = open.iter().rposition(|n| *n == name) {
                open.truncate(at);
            }
            continue;
        }
        elements += 1;
        if VOID.contains(&name.as_slice()) {
            continue;
        }
        let closes: &[&[u8]] = match name.as_slice() {
            b"p" => &[b"p"],
            b"li" => &[b"li"],
            b"dt" | b"dd" => &[b"dt", b"dd"],
            b"td" | b"th" => &[b"td", b"th"],
            b"tr" => &[b"td", b"th", b"tr"],
            b"thead" | b"tbody" | b"tfoot" => &[b"td", b"th", b"tr", b"thead", b"tbody", b"tfoot"],
            b"option" => &[b"option"],
            b"optgroup" => &[b"option", b"optgroup"],
            b"rt" | b"rp" => &[b"rt", b"rp"],
            _ => &[],
        };
        while open
            .last()
            .is_some_and(|top| closes.contains(&top.as_slice()))
        {
            open.pop();
        }
        if RAW_TEXT.contains(&name.as_slice()) {
            // Skip to the end tag; the element itself is one level, closed there.
            let mut end_tag = b"</".to_vec();
            end_tag.extend_from_slice(&name);
            let end = find_ignore_ascii_case(bytes, i, &end_tag).unwrap_or(bytes.len());
            if name == b"style" {
                css_declarations += bytes[i..end]
                    .iter()
                    .filter(|&&b| b == b':' || b == b'{')
                    .count();
            }
            i = end;
            deepest = deepest.max(open.len() + 1);
            continue;
        }
        open.push(name);
        deepest = deepest.max(open.len());
        if deepest > stop_above {
            break;
        }
    }
    Shape {
        depth: deepest,
        elements,
        css_declarations,
    }
}

/// The index after the `>` that ends the tag whose attributes start at `from` (quoted values may hold `>`).
fn tag_end(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    let mut quote = None;
    while i < bytes.len() {
        match (quote, bytes[i]) {
            (None, b'>') => return i + 1,
            (None, q @ (b'"' | b'\'')) => quote = Some(q),
            (Some(q), b) if b == q => quote = None,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| from + at)
}

fn find_ignore_ascii_case(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
        .map(|at| from + at)
}

/// Whether `haystack` contains `needle` (which starts with `<`), ASCII case-insensitively. Jumps from one
/// `<` to the next instead of comparing six bytes at every offset (a batch scans ten thousand bodies).
fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    debug_assert_eq!(needle.first(), Some(&b'<'));
    let mut rest = haystack;
    while let Some(at) = rest.iter().position(|&b| b == b'<') {
        rest = &rest[at..];
        if rest.len() >= needle.len() && rest[..needle.len()].eq_ignore_ascii_case(needle) {
            return true;
        }
        rest = &rest[1..];
    }
    false
}

/// Lines of the text part wrap at this width (RFC 5322 §2.1.1 recommends 78 characters).
const TEXT_WIDTH: usize = 78;

/// A plain-text rendering of the HTML for the text/plain part: headings, paragraphs and lists as text, links
/// as numbered footnotes (`[View order][1]` … `[1]: https://…`), layout tables without borders. Trailing
/// spaces are trimmed (html2text pads table cells) and runs of blank lines are folded to one.
pub fn text_from_html(html: &str) -> String {
    let rendered = html2text::config::plain_no_decorate()
        .no_table_borders()
        .link_footnotes(true)
        .string_from_read(html.as_bytes(), TEXT_WIDTH)
        // html2text fails only on a writer error or a width too small for its layout; fall back to the
        // tags-stripped text rather than fail the message.
        .unwrap_or_else(|_| crate::text::search_text(None, Some(html)));
    let mut out = String::with_capacity(rendered.len());
    let mut blank = 0;
    for line in rendered.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_blocks_are_inlined_and_media_queries_kept() {
        let html = "<html><head><style>p { color: red } @media (max-width: 600px) { p { font-size: 18px } }\
                    </style></head><body><p>Hi</p></body></html>";
        let out = inline_css(html, 1 << 20, None).unwrap();
        assert!(out.contains("<p style=\"color: red;\">Hi</p>"), "{out}");
        assert!(out.contains("@media (max-width: 600px)"), "{out}");
        assert_eq!(
            inline_css("<p>as is</p>", 1 << 20, None).unwrap(),
            "<p>as is</p>"
        );
        assert!(contains_ignore_ascii_case(b"x<b><STYLE>", b"<style"));
        assert!(!contains_ignore_ascii_case(b"<styl", b"<style"));
        assert!(!contains_ignore_ascii_case(b"style <p>", b"<style"));
    }

    #[test]
    fn text_keeps_words_and_links_without_padding() {
        let text = text_from_html(
            "<table><tr><td><h1>Hello Ana &amp; Bob</h1><p>Your order <b>#1234</b> shipped. \
             <a href=\"https://shop.example/t/1234\">Track it</a>.</p></td></tr></table>",
        );
        assert!(text.contains("Hello Ana & Bob"), "{text}");
        assert!(text.contains("Your order #1234 shipped."), "{text}");
        assert!(text.contains("https://shop.example/t/1234"), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()), "{text:?}");
        assert!(!text.contains("\n\n\n"), "{text:?}");
    }

    #[test]
    fn nesting_depth_follows_the_parser() {
        assert_eq!(nesting_depth("<p>plain</p>", 100), 1);
        assert_eq!(
            nesting_depth("<div><div><br><img src=x></div></div>", 100),
            2
        );
        // Paragraphs, list items and cells whose end tag is left out close each other.
        assert_eq!(nesting_depth(&"<p>para".repeat(1000), 100), 1);
        assert_eq!(
            nesting_depth(&format!("<ul>{}</ul>", "<li>item".repeat(1000)), 100),
            2
        );
        assert_eq!(
            nesting_depth("<table><tr><td>a<td>b<tr><td>c</table>", 100),
            3
        );
        // `<div/>` opens a div in HTML; nested tables nest.
        assert_eq!(nesting_depth(&"<div/>".repeat(50), 100), 50);
        assert_eq!(nesting_depth(&"<table><tr><td>".repeat(10), 100), 30);
        // Comments, quoted `>` and the text of <style> are not elements.
        assert_eq!(
            nesting_depth(
                "<!-- <div><div> --><a title=\"<b>\">x</a><style>div>p{}<div></style>",
                100
            ),
            1
        );
        // Counting stops early once over the limit.
        assert_eq!(nesting_depth(&"<div>".repeat(300_000), 256), 257);
    }
}
