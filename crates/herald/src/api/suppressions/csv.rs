//! The suppression list as CSV (RFC 4180): what export writes, import reads back.
//!
//! Columns `address,scope,reason,expires_at,source_message,created_at`; a header line names them, in any
//! order, and only `address` is required (`reason` defaults to `manual`; `created_at` is written for the
//! reader and ignored on import, an imported entry being created when it is imported). Every line is
//! checked before anything is stored: the first bad one is a `422` whose field is `line N` (1-based, the
//! header being line 1) and whose message names the column.

use crate::{
    app::ApiError,
    service::format_rfc3339,
    store::{NewSuppression, Suppression},
};

pub const HEADER: &str = "address,scope,reason,expires_at,source_message,created_at";

/// One line of the export.
pub fn write_line(out: &mut String, entry: &Suppression) {
    let fields = [
        entry.address.clone(),
        entry.scope.clone().unwrap_or_default(),
        entry.reason.to_string(),
        entry.expires_at.map(format_rfc3339).unwrap_or_default(),
        entry.source_message.clone().unwrap_or_default(),
        format_rfc3339(entry.created_at),
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        quote(out, field);
    }
    out.push_str("\r\n");
}

fn quote(out: &mut String, field: &str) {
    // A leading `=`, `+`, `-` or `@` would be a formula to a spreadsheet opening the export; addresses can
    // start with them, so such a field is quoted and prefixed with `'` (OWASP's CSV-injection advice).
    let formula = field.starts_with(['=', '+', '-', '@']);
    if formula || field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        if formula {
            out.push('\'');
        }
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// Parses an import. `line N` in errors counts physical lines (a quoted field may span several).
pub fn read(body: &[u8]) -> Result<Vec<NewSuppression>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid("body", format!("the CSV is not UTF-8: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Records::new(text);
    let Some((_, header)) = records.next().transpose()? else {
        return Err(ApiError::invalid(
            "line 1",
            format!("empty CSV: the first line names the columns ({HEADER})"),
        ));
    };
    let mut columns: [Option<usize>; 5] = [None; 5];
    let names = ["address", "scope", "reason", "expires_at", "source_message"];
    for (i, name) in header.iter().enumerate() {
        let name = name.trim().to_ascii_lowercase();
        if let Some(slot) = names.iter().position(|n| *n == name) {
            columns[slot] = Some(i);
        } else if name != "created_at" {
            return Err(ApiError::invalid(
                "line 1",
                format!("unknown column {name:?} (the columns are {HEADER})"),
            ));
        }
    }
    if columns[0].is_none() {
        return Err(ApiError::invalid(
            "line 1",
            "no `address` column (the first line names the columns)",
        ));
    }
    let mut entries = Vec::new();
    for record in records {
        let (line, fields) = record?;
        if fields.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let get = |slot: usize| {
            columns[slot]
                .and_then(|i| fields.get(i))
                .map(|f| f.strip_prefix('\'').unwrap_or(f))
        };
        let where_ = |column: &str| format!("line {line}, {column}");
        let entry = super::entry_from(get(0), get(1), get(2), get(3), get(4), &|column| {
            where_(column)
        })
        .map_err(|mut e| {
            // `line N` is the field; the column goes in the message.
            if let Some(field) = e.field.take() {
                let (line, column) = field.split_once(", ").unwrap_or((&field, ""));
                e.message = format!("{column}: {}", e.message);
                e.field = Some(line.to_owned());
            }
            e
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

/// RFC 4180 records with the physical line each starts on.
struct Records<'a> {
    rest: &'a str,
    line: usize,
}

impl<'a> Records<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            rest: text,
            line: 1,
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<(usize, Vec<String>), ApiError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let start = self.line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut chars = self.rest.char_indices().peekable();
        let mut quoted = false;
        let mut at_field_start = true;
        loop {
            let Some((i, c)) = chars.next() else {
                if quoted {
                    return Some(Err(ApiError::invalid(
                        &format!("line {start}"),
                        "a quoted field is not closed",
                    )));
                }
                fields.push(std::mem::take(&mut field));
                self.rest = "";
                return Some(Ok((start, fields)));
            };
            match c {
                '"' if at_field_start => {
                    quoted = true;
                    at_field_start = false;
                }
                '"' if quoted => {
                    if chars.peek().map(|(_, c)| *c) == Some('"') {
                        chars.next();
                        field.push('"');
                    } else {
                        quoted = false;
                    }
                }
                ',' if !quoted => {
                    fields.push(std::mem::take(&mut field));
                    at_field_start = true;
                }
                '\n' | '\r' if !quoted => {
                    let mut end = i + 1;
                    if c == '\r' && chars.peek().map(|(_, c)| *c) == Some('\n') {
                        end += 1;
                    }
                    fields.push(std::mem::take(&mut field));
                    self.rest = &self.rest[end..];
                    self.line += 1;
                    return Some(Ok((start, fields)));
                }
                c => {
                    if c == '\n' {
                        self.line += 1;
                    }
                    field.push(c);
                    at_field_start = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SuppressionReason;

    #[test]
    fn quoted_fields_and_header_order_are_read() {
        let entries = read(
            b"reason,address,scope\r\nhard_bounce,\"\"\"a,b\"\"@x.example\",\r\n\r\n,b@x.example,news\n",
        )
        .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].address, "\"a,b\"@x.example");
        assert_eq!(entries[0].reason, SuppressionReason::HardBounce);
        assert_eq!(entries[1].scope.as_deref(), Some("news"));
        assert_eq!(entries[1].reason, SuppressionReason::Manual);
    }

    #[test]
    fn a_bad_line_is_named_with_its_column() {
        let error =
            read(b"address,reason\nok@x.example,manual\nnot-an-address,manual\n").unwrap_err();
        assert_eq!(error.field.as_deref(), Some("line 3"));
        assert!(error.message.starts_with("address:"), "{}", error.message);
        let error = read(b"address,reason\nok@x.example,sometimes\n").unwrap_err();
        assert_eq!(error.field.as_deref(), Some("line 2"));
        assert!(error.message.starts_with("reason:"), "{}", error.message);
        assert_eq!(
            read(b"email\nx@y.example\n").unwrap_err().field.as_deref(),
            Some("line 1")
        );
    }

    #[test]
    fn formula_like_fields_are_defused_on_export_and_restored_on_import() {
        let mut out = String::from(HEADER);
        out.push_str("\r\n");
        write_line(
            &mut out,
            &Suppression {
                address: "=cmd@x.example".into(),
                scope: None,
                reason: SuppressionReason::Complaint,
                source_message: None,
                created_at: 0,
                expires_at: None,
            },
        );
        assert!(out.contains("\"'=cmd@x.example\""), "{out}");
        let back = read(out.as_bytes()).unwrap();
        assert_eq!(back[0].address, "=cmd@x.example");
        assert_eq!(back[0].reason, SuppressionReason::Complaint);
    }
}
