//! Bounds on how deep a template's source can make the engine recurse, checked before it is compiled.
//!
//! minijinja guards nesting of brackets and blocks (150 levels) but not chains: `1+1+…+1`, `not not … x` and
//! `x|abs|abs…` each build a syntax tree as deep as the chain is long, which the compiler then walks (and
//! drops) recursively. 7,000 terms were enough to overflow a 2 MiB stack. Counting the operators in each
//! `{{ … }}` and `{% … %}` tag bounds that depth; the render threads' stack is sized for the largest count
//! allowed, with a margin measured by the `deepest_allowed_*` tests.

/// The first tag of `source` with more than `limit` operators: its 1-based line and column (in characters)
/// and how many operators it has.
pub(super) fn first_overlong_tag(source: &str, limit: usize) -> Option<(usize, usize, usize)> {
    let bytes = source.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        let (open, close) = match (bytes[i], bytes[i + 1]) {
            (b'{', b'{') => (i, b'}'),
            (b'{', b'%') => (i, b'%'),
            (b'{', b'#') => {
                // A comment: nothing inside is compiled.
                i = find(bytes, i + 2, b"#}").map_or(bytes.len(), |end| end + 2);
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        let (operators, end) = count_tag(bytes, open + 2, close);
        if operators > limit {
            let before = &source[..open];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Some((line, column, operators));
        }
        i = end;
    }
    None
}

/// Counts the operators of the tag whose body starts at `start`, up to the closing `close` + `}` (string
/// literals skipped); returns the count and the index after the tag.
fn count_tag(bytes: &[u8], start: usize, close: u8) -> (usize, usize) {
    let mut operators = 0;
    let mut i = start;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' | b'\'' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            _ if b == close && bytes.get(i + 1) == Some(&b'}') => return (operators, i + 2),
            b'+' | b'-' | b'*' | b'/' | b'%' | b'~' | b'|' | b'.' | b'[' | b'(' | b'<' | b'>'
            | b'=' | b'!' => operators += 1,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let word_start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                if matches!(
                    &bytes[word_start..i],
                    b"not" | b"and" | b"or" | b"in" | b"is" | b"if" | b"else"
                ) {
                    operators += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    (operators, bytes.len())
}

fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| from + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_operators_per_tag_and_skips_strings_and_comments() {
        assert_eq!(first_overlong_tag("{{ a + b }}", 1), None);
        assert_eq!(first_overlong_tag("{{ a + b - c }}", 1), Some((1, 1, 2)));
        assert_eq!(
            first_overlong_tag("x\n  {% if not a and b %}", 2),
            Some((2, 3, 3))
        );
        // Words that merely contain a keyword, operators inside strings and comments do not count.
        assert_eq!(
            first_overlong_tag("{{ notice ~ \"+-*/|.\" }}{# + + + #}", 1),
            None
        );
        // Text outside tags is not counted, and tags are counted separately.
        assert_eq!(first_overlong_tag("1+1+1 {{ a|b }} {{ c|d }}", 1), None);
        let chain = format!("{{{{ {} }}}}", vec!["1"; 7000].join("+"));
        assert_eq!(first_overlong_tag(&chain, 1000), Some((1, 1, 6999)));
        let nots = format!("{{{{ {}x }}}}", "not ".repeat(20_000));
        assert_eq!(first_overlong_tag(&nots, 1000).map(|t| t.2), Some(20_000));
        let filters = format!("{{{{ 1{} }}}}", "|abs".repeat(10_000));
        assert_eq!(
            first_overlong_tag(&filters, 1000).map(|t| t.2),
            Some(10_000)
        );
        // An unclosed tag is counted to the end of the source.
        assert_eq!(first_overlong_tag("{{ a.b.c", 1).map(|t| t.2), Some(2));
    }
}
