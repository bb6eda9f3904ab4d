//! Text utilities shared by the service and the templates (which sits below it), so that neither imports
//! the other for them.

/// The text indexed for search: the text part, or the HTML with its tags removed (each tag becomes a space,
/// so words either side of `<br>` stay apart). Also the text part of last resort when html2text fails.
pub fn search_text(text: Option<&str>, html: Option<&str>) -> String {
    if let Some(text) = text {
        return text.to_owned();
    }
    let Some(html) = html else {
        return String::new();
    };
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_falls_back_to_html_without_tags() {
        assert_eq!(
            search_text(None, Some("<p>Hello <b>you</b></p>"))
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["Hello", "you"]
        );
        assert_eq!(search_text(Some("plain"), Some("<p>x</p>")), "plain");
    }
}
