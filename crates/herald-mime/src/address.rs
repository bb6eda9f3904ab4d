//! Addresses and mailboxes: parsed once at the edge, valid everywhere after.
//!
//! An [`Address`] is an `addr-spec` (RFC 5322 §3.4.1) that SMTP can carry
//! (RFC 5321 §4.1.2 and §4.5.3.1, with the UTF-8 extensions of RFC 6531):
//! a dot-atom or quoted local part of at most 64 octets, a domain of
//! LDH labels (Unicode labels allowed, checked through IDNA) or an IP
//! literal, and at most 254 octets in all. A [`Mailbox`] adds an optional
//! display name. Both can only be built through `parse`, so a value of
//! either type is known to be safe to write into a header or an envelope.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// Why a string is not an address that Herald will send to.
///
/// The messages are written for the person who typed the address: the API
/// puts them after the field name (`to[1]: missing '@'`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing (or only blanks) was given.
    #[error("empty address")]
    Empty,
    /// The string contains CR, LF, NUL or another control character, which
    /// could smuggle extra headers or SMTP commands.
    #[error("control character {0:?} not allowed")]
    ControlCharacter(char),
    /// No `@` between the local part and the domain.
    #[error("missing '@'")]
    MissingAt,
    /// Nothing before the `@`.
    #[error("empty local part before '@'")]
    EmptyLocalPart,
    /// Nothing after the `@`.
    #[error("empty domain after '@'")]
    EmptyDomain,
    /// RFC 5321 §4.5.3.1.1: a local part has at most 64 octets.
    #[error("local part is {0} octets long (at most 64)")]
    LocalPartTooLong(usize),
    /// RFC 5321 §4.5.3.1.2: a domain has at most 255 octets.
    #[error("domain is {0} octets long (at most 255)")]
    DomainTooLong(usize),
    /// RFC 5321 §4.5.3.1.3 (a path of 256 octets, minus the angle brackets).
    #[error("address is {0} octets long (at most 254)")]
    TooLong(usize),
    /// The local part is neither a dot-atom nor a quoted string.
    #[error("invalid local part: {0}")]
    InvalidLocalPart(&'static str),
    /// The domain is not a valid host name.
    #[error("invalid domain {domain:?}: {reason}")]
    InvalidDomain {
        /// The domain as given.
        domain: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `[...]` that is neither an IPv4 nor an `IPv6:` address.
    #[error("invalid address literal {0:?}")]
    InvalidIpLiteral(String),
    /// `Name <addr` without the closing bracket, or text after it.
    #[error("malformed angle brackets: {0}")]
    AngleBrackets(&'static str),
    /// A display name with an unterminated quote or a stray backslash.
    #[error("invalid display name: {0}")]
    InvalidDisplayName(&'static str),
    /// [`Address::to_ascii`] on an address whose local part is not ASCII:
    /// only a server that offers SMTPUTF8 can take it.
    #[error("local part {0:?} is not ASCII: the server must offer SMTPUTF8")]
    NeedsSmtpUtf8(String),
}

/// A validated `local@domain` address.
///
/// The domain is kept as given (Unicode or ASCII); its ASCII (punycode)
/// form is computed once at parse time, so [`Address::to_ascii`] is free
/// and headers can be written 7-bit clean for servers without SMTPUTF8.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address {
    local: String,
    domain: String,
    ascii_domain: String,
}

impl Address {
    /// Parses a bare `addr-spec` (no display name, no angle brackets).
    pub fn parse(input: &str) -> Result<Address, AddressError> {
        reject_controls(input)?;
        let input = input.trim_matches([' ', '\t']);
        if input.is_empty() {
            return Err(AddressError::Empty);
        }
        // The last '@': a quoted local part may itself contain '@'.
        let at = input.rfind('@').ok_or(AddressError::MissingAt)?;
        let (local, domain) = (&input[..at], &input[at + 1..]);
        if local.is_empty() {
            return Err(AddressError::EmptyLocalPart);
        }
        if domain.is_empty() {
            return Err(AddressError::EmptyDomain);
        }
        validate_local(local)?;
        let ascii_domain = validate_domain(domain)?;
        let total = local.len() + 1 + domain.len().max(ascii_domain.len());
        if total > 254 {
            return Err(AddressError::TooLong(total));
        }
        Ok(Address {
            local: local.to_owned(),
            domain: domain.to_owned(),
            ascii_domain,
        })
    }

    /// The local part, exactly as given (quotes included when quoted).
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain as given (may be Unicode).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The domain in ASCII (IDNA/punycode) form, for DNS and for servers
    /// without SMTPUTF8.
    pub fn ascii_domain(&self) -> &str {
        &self.ascii_domain
    }

    /// True when only an SMTPUTF8 server can take this address: the local
    /// part is not ASCII (a Unicode domain alone can always be sent as
    /// punycode).
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii()
    }

    /// The address with its domain in ASCII form, for `MAIL FROM`/`RCPT TO`
    /// on a server that does not offer SMTPUTF8.
    pub fn to_ascii(&self) -> Result<String, AddressError> {
        if self.needs_smtputf8() {
            return Err(AddressError::NeedsSmtpUtf8(self.local.clone()));
        }
        Ok(format!("{}@{}", self.local, self.ascii_domain))
    }

    /// The form written into headers: ASCII when the local part allows it
    /// (so the message stays 7-bit), else UTF-8 (RFC 6532, needs SMTPUTF8).
    pub(crate) fn header_form(&self) -> String {
        if self.needs_smtputf8() {
            format!("{}@{}", self.local, self.domain)
        } else {
            format!("{}@{}", self.local, self.ascii_domain)
        }
    }

    /// Key for de-duplicating recipients: the local part is case-sensitive
    /// (RFC 5321 §2.4), the domain is not.
    pub(crate) fn dedup_key(&self) -> (String, String) {
        (self.local.clone(), self.ascii_domain.to_ascii_lowercase())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

/// An address with an optional display name: `"Name" <addr>`, `Name <addr>`,
/// `<addr>` or `addr`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    name: Option<String>,
    address: Address,
}

impl Mailbox {
    /// Builds a mailbox from parts; the name is checked for control
    /// characters (it is encoded when written, so anything else is fine).
    pub fn new(name: Option<&str>, address: Address) -> Result<Mailbox, AddressError> {
        let name = match name {
            Some(n) => {
                reject_controls(n)?;
                let n = n.trim();
                (!n.is_empty()).then(|| n.to_owned())
            }
            None => None,
        };
        Ok(Mailbox { name, address })
    }

    /// Parses the usual forms people type.
    pub fn parse(input: &str) -> Result<Mailbox, AddressError> {
        reject_controls(input)?;
        let s = input.trim_matches([' ', '\t']);
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if !s.ends_with('>') {
            if s.contains('<') {
                return Err(AddressError::AngleBrackets("missing '>' at the end"));
            }
            return Ok(Mailbox {
                name: None,
                address: Address::parse(s)?,
            });
        }
        let open = s
            .rfind('<')
            .ok_or(AddressError::AngleBrackets("'>' without '<'"))?;
        let addr = &s[open + 1..s.len() - 1];
        if addr.contains(['<', '>']) {
            return Err(AddressError::AngleBrackets("nested angle brackets"));
        }
        let address = Address::parse(addr)?;
        let raw_name = s[..open].trim_matches([' ', '\t']);
        let name = if let Some(quoted) = raw_name.strip_prefix('"') {
            let inner = quoted
                .strip_suffix('"')
                .ok_or(AddressError::InvalidDisplayName("unterminated quote"))?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(
                        chars
                            .next()
                            .ok_or(AddressError::InvalidDisplayName("trailing backslash"))?,
                    ),
                    '"' => return Err(AddressError::InvalidDisplayName("unescaped quote")),
                    c => out.push(c),
                }
            }
            out
        } else {
            raw_name.to_owned()
        };
        Mailbox::new(Some(&name), address)
    }

    /// The display name, if any (decoded, without quotes).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The address.
    pub fn address(&self) -> &Address {
        &self.address
    }
}

impl From<Address> for Mailbox {
    fn from(address: Address) -> Self {
        Mailbox {
            name: None,
            address,
        }
    }
}

impl FromStr for Mailbox {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mailbox::parse(s)
    }
}

impl fmt::Display for Mailbox {
    /// Human form (not the encoded header form): `Name <addr>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n:?} <{}>", self.address),
            None => write!(f, "{}", self.address),
        }
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mailbox({self})")
    }
}

/// CR, LF and NUL would end a header or an SMTP command early; other C0
/// controls and DEL have no business in an address or a name either.
fn reject_controls(s: &str) -> Result<(), AddressError> {
    match s.chars().find(|&c| c.is_control() && c != '\t') {
        Some(c) => Err(AddressError::ControlCharacter(c)),
        None => Ok(()),
    }
}

/// RFC 5322 §3.2.3 `atext`, extended to non-ASCII by RFC 6531 §3.3.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn validate_local(local: &str) -> Result<(), AddressError> {
    if local.len() > 64 {
        return Err(AddressError::LocalPartTooLong(local.len()));
    }
    if let Some(inner) = local.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or(AddressError::InvalidLocalPart("unterminated quoted string"))?;
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e) if e == ' ' || e.is_ascii_graphic() => {}
                    _ => {
                        return Err(AddressError::InvalidLocalPart(
                            "bad escape in quoted string",
                        ));
                    }
                },
                '"' => return Err(AddressError::InvalidLocalPart("unescaped quote")),
                '\t' => {
                    return Err(AddressError::InvalidLocalPart("tab in quoted string"));
                }
                _ => {}
            }
        }
        return Ok(());
    }
    if local.starts_with('.') || local.ends_with('.') {
        return Err(AddressError::InvalidLocalPart("starts or ends with '.'"));
    }
    if local.contains("..") {
        return Err(AddressError::InvalidLocalPart("two dots in a row"));
    }
    if let Some(c) = local.chars().find(|&c| c != '.' && !is_atext(c)) {
        return Err(AddressError::InvalidLocalPart(match c {
            ' ' | '\t' => "unquoted space",
            '"' => "stray quote",
            '@' => "more than one '@'",
            _ => "character not allowed unquoted (quote the local part)",
        }));
    }
    Ok(())
}

/// Checks the domain and returns its ASCII form.
fn validate_domain(domain: &str) -> Result<String, AddressError> {
    if domain.len() > 255 {
        return Err(AddressError::DomainTooLong(domain.len()));
    }
    if let Some(lit) = domain.strip_prefix('[') {
        let lit = lit
            .strip_suffix(']')
            .ok_or_else(|| AddressError::InvalidIpLiteral(domain.to_owned()))?;
        let ok = match lit.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("IPv6:") => lit[5..].parse::<Ipv6Addr>().is_ok(),
            _ => lit.parse::<Ipv4Addr>().is_ok(),
        };
        return if ok {
            Ok(domain.to_owned())
        } else {
            Err(AddressError::InvalidIpLiteral(domain.to_owned()))
        };
    }
    let invalid = |reason| AddressError::InvalidDomain {
        domain: domain.to_owned(),
        reason,
    };
    if domain.starts_with('.') || domain.ends_with('.') {
        return Err(invalid("starts or ends with '.'"));
    }
    if domain.contains("..") {
        return Err(invalid("empty label"));
    }
    let ascii = if domain.is_ascii() {
        domain.to_owned()
    } else {
        idna::domain_to_ascii_strict(domain)
            .map_err(|_| invalid("not a valid internationalized name"))?
    };
    if ascii.len() > 255 {
        return Err(AddressError::DomainTooLong(ascii.len()));
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(invalid("empty label"));
        }
        if label.len() > 63 {
            return Err(invalid("label longer than 63 octets"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("label starts or ends with '-'"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid("only letters, digits and '-' are allowed"));
        }
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let m = Mailbox::parse("\"Doe, Jane\" <jane@example.com>").unwrap();
        assert_eq!(m.name(), Some("Doe, Jane"));
        assert_eq!(m.address().to_string(), "jane@example.com");
        let m = Mailbox::parse("Jane Doe <jane@example.com>").unwrap();
        assert_eq!(m.name(), Some("Jane Doe"));
        let m = Mailbox::parse("<jane@example.com>").unwrap();
        assert_eq!(m.name(), None);
        let m = Mailbox::parse("  jane@example.com ").unwrap();
        assert_eq!(m.name(), None);
        let m = Mailbox::parse(r#""a \"b\" \\c" <x@y.z>"#).unwrap();
        assert_eq!(m.name(), Some(r#"a "b" \c"#));
    }

    #[test]
    fn specific_errors() {
        use AddressError::*;
        assert_eq!(Address::parse("jane.example.com"), Err(MissingAt));
        assert_eq!(Address::parse(""), Err(Empty));
        assert_eq!(Address::parse("@x.com"), Err(EmptyLocalPart));
        assert_eq!(Address::parse("a@"), Err(EmptyDomain));
        assert_eq!(Address::parse("a\r\n@x.com"), Err(ControlCharacter('\r')));
        assert_eq!(Address::parse("a\0@x.com"), Err(ControlCharacter('\0')));
        assert_eq!(
            Address::parse(&format!("{}@x.com", "a".repeat(65))),
            Err(LocalPartTooLong(65))
        );
        assert!(matches!(
            Address::parse("a..b@x.com"),
            Err(InvalidLocalPart(_))
        ));
        assert!(matches!(
            Address::parse(".a@x.com"),
            Err(InvalidLocalPart(_))
        ));
        assert!(matches!(
            Address::parse("a b@x.com"),
            Err(InvalidLocalPart(_))
        ));
        assert!(matches!(
            Address::parse("a@-x.com"),
            Err(InvalidDomain { .. })
        ));
        assert!(matches!(
            Address::parse("a@x..com"),
            Err(InvalidDomain { .. })
        ));
        assert!(matches!(
            Address::parse("a@x_y.com"),
            Err(InvalidDomain { .. })
        ));
        assert!(matches!(
            Address::parse(&format!("a@{}.com", "b".repeat(64))),
            Err(InvalidDomain { .. })
        ));
        let long = format!(
            "{}@{}.{}.{}.{}",
            "a".repeat(60),
            "b".repeat(60),
            "c".repeat(60),
            "d".repeat(60),
            "e".repeat(20)
        );
        assert!(matches!(Address::parse(&long), Err(TooLong(_))));
        assert!(matches!(
            Address::parse("a@[1.2.3]"),
            Err(InvalidIpLiteral(_))
        ));
        assert!(matches!(
            Mailbox::parse("Jane <a@b.c"),
            Err(AngleBrackets(_))
        ));
        assert!(matches!(
            Mailbox::parse("\"Jane <a@b.c>"),
            Err(InvalidDisplayName(_))
        ));
        assert!(matches!(
            Mailbox::parse("Ja\nne <a@b.c>"),
            Err(ControlCharacter('\n'))
        ));
    }

    #[test]
    fn quoted_local_parts_and_literals() {
        assert!(Address::parse("\"john doe\"@example.com").is_ok());
        assert!(Address::parse("\"a@b\"@example.com").is_ok());
        assert!(Address::parse("user@[192.0.2.1]").is_ok());
        assert!(Address::parse("user@[IPv6:2001:db8::1]").is_ok());
        assert!(Address::parse("user@localhost").is_ok());
        assert!(Address::parse("a+tag!#$%&'*/=?^_`{|}~-@x.io").is_ok());
    }

    #[test]
    fn idn_and_utf8_local_parts() {
        let a = Address::parse("user@bücher.example").unwrap();
        assert_eq!(a.domain(), "bücher.example");
        assert_eq!(a.ascii_domain(), "xn--bcher-kva.example");
        assert_eq!(a.to_ascii().unwrap(), "user@xn--bcher-kva.example");
        assert!(!a.needs_smtputf8());
        let a = Address::parse("用户@例子.广告").unwrap();
        assert!(a.needs_smtputf8());
        assert!(matches!(a.to_ascii(), Err(AddressError::NeedsSmtpUtf8(_))));
    }
}
