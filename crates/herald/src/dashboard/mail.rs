//! A stored message taken apart for reading: the HTML and text bodies, headers and attachments, parsed
//! from the exact bytes that were sent.

use std::borrow::Cow;

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// What the detail page shows of a message's bytes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MailView {
    pub headers: Vec<(String, String)>,
    /// The text part, cut at [`TEXT_PREVIEW_LIMIT`] bytes.
    pub text: Option<String>,
    /// The text part is longer than what `text` shows.
    pub text_truncated: bool,
    pub has_html: bool,
    pub attachments: Vec<AttachmentView>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachmentView {
    /// Position among the message's attachments (the download URL's `{n}`).
    pub index: usize,
    pub name: String,
    pub content_type: String,
    pub size: usize,
    /// Referenced from the HTML as `cid:` (an inline image) rather than a file to open.
    pub inline: bool,
}

/// The most of a text part a page shows (the inbox shows the newest message by itself, so one message must
/// not make every visit to it large); the whole message stays downloadable as `.eml`.
pub const TEXT_PREVIEW_LIMIT: usize = 1024 * 1024;

pub fn parse(raw: &[u8]) -> Option<MailView> {
    let message = MessageParser::default().parse(raw)?;
    let headers = message
        .headers_raw()
        .map(|(name, value)| (name.to_owned(), unfold(value)))
        .collect();
    let mut text = message.text_bodies().find_map(|part| match &part.body {
        PartType::Text(text) => Some(text.to_string()),
        _ => None,
    });
    let text_truncated = text.as_ref().is_some_and(|t| t.len() > TEXT_PREVIEW_LIMIT);
    if let Some(text) = text.as_mut().filter(|_| text_truncated) {
        let mut end = TEXT_PREVIEW_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    let has_html = message
        .html_bodies()
        .any(|part| matches!(part.body, PartType::Html(_)));
    let attachments = message
        .attachments()
        .enumerate()
        .map(|(index, part)| AttachmentView {
            index,
            name: part
                .attachment_name()
                .map_or_else(|| format!("attachment-{}", index + 1), str::to_owned),
            content_type: content_type_of(part),
            size: part.contents().len(),
            inline: part.content_id().is_some()
                && !part
                    .content_disposition()
                    .is_some_and(|d| d.is_attachment()),
        })
        .collect();
    Some(MailView {
        headers,
        text,
        text_truncated,
        has_html,
        attachments,
    })
}

fn unfold(value: &str) -> String {
    value
        .split("\r\n")
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn content_type_of(part: &mail_parser::MessagePart<'_>) -> String {
    part.content_type().map_or_else(
        || "application/octet-stream".to_owned(),
        |ct| match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase(),
            None => ct.ctype().to_ascii_lowercase(),
        },
    )
}

/// The HTML body with every `cid:` reference to one of the message's parts replaced by `part_url(n)` (the
/// relative URL `attachments/{n}`, next to the `/messages/{id}/html` the frame loads), so that each inline image
/// is sent once however often the HTML names it. (A `data:` URL per reference made a 277 KB message with one
/// image named 500 times a 133 MB page.)
pub fn html_body(raw: &[u8], part_url: impl Fn(usize) -> String) -> Option<String> {
    let message = MessageParser::default().parse(raw)?;
    let html = message.html_bodies().find_map(|part| match &part.body {
        PartType::Html(html) => Some(html.clone()),
        _ => None,
    })?;
    if !html.contains("cid:") {
        return Some(html.into_owned());
    }
    let parts: std::collections::HashMap<&str, usize> = message
        .attachments()
        .enumerate()
        .filter_map(|(index, part)| Some((part.content_id()?.trim_matches(['<', '>']), index)))
        .collect();
    Some(replace_cids(&html, |id| {
        parts.get(id).map(|index| part_url(*index))
    }))
}

fn replace_cids(html: &str, resolve: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(at) = rest.find("cid:") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 4..];
        let end = after
            .find(|c: char| matches!(c, '"' | '\'' | ')' | '>' | '<') || c.is_whitespace())
            .unwrap_or(after.len());
        let id = &after[..end];
        match resolve(id) {
            Some(url) => out.push_str(&url),
            None => {
                out.push_str("cid:");
                out.push_str(id);
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Attachment `index` of the message: its file name, content type and decoded bytes.
pub fn attachment(raw: &[u8], index: usize) -> Option<(String, String, Vec<u8>)> {
    let message = MessageParser::default().parse(raw)?;
    let part = message.attachments().nth(index)?;
    let name: Cow<'_, str> = part
        .attachment_name()
        .map_or_else(|| format!("attachment-{}", index + 1).into(), Cow::Borrowed);
    Some((
        name.into_owned(),
        content_type_of(part),
        part.contents().to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_references_become_part_urls_and_unknown_ones_stay() {
        let html = r#"<img src="cid:logo@x"><img src='cid:nope'>"#;
        let out = replace_cids(html, |id| (id == "logo@x").then(|| "attachments/0".into()));
        assert_eq!(out, r#"<img src="attachments/0"><img src='cid:nope'>"#);
    }
}
