//! What premailer does, in Rust: CSS from `<style>` into `style=""` attributes, and a text part from the HTML.

use std::sync::LazyLock;

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

/// Inlines the CSS of `<style>` blocks. HTML without a `<style>` block is returned unchanged (the inliner
/// would rewrite it as a whole document, `<html><head></head><body>…`, for nothing).
pub fn inline_css(html: &str) -> Result<String, String> {
    if !contains_ignore_ascii_case(html.as_bytes(), b"<style") {
        return Ok(html.to_owned());
    }
    INLINER.inline(html).map_err(|e| e.to_string())
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
        .unwrap_or_else(|_| crate::service::search_text(None, Some(html)));
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
        let out = inline_css(html).unwrap();
        assert!(out.contains("<p style=\"color: red;\">Hi</p>"), "{out}");
        assert!(out.contains("@media (max-width: 600px)"), "{out}");
        assert_eq!(inline_css("<p>as is</p>").unwrap(), "<p>as is</p>");
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
}
