//! The DNS TXT record that publishes a key (RFC 6376 §3.6.1), as text to paste into a DNS provider or a zone.

use super::Algorithm;

/// `<selector>._domainkey.<domain>`.
pub fn dns_name(selector: &str, domain: &str) -> String {
    format!("{selector}._domainkey.{domain}")
}

/// The record's text. `k=rsa` is the default and left out by many, but written here so the record says what
/// it is; no `t=y` (testing) flag, so receivers treat failures as failures.
pub fn dns_record(algorithm: Algorithm, public_key: &str) -> String {
    format!("v=DKIM1; k={}; p={public_key}", algorithm.as_str())
}

/// The record as a zone-file line: one TXT record may hold several character strings of at most 255 bytes
/// each (RFC 1035 §3.3.14), which receivers join; an RSA-2048 record needs two.
pub fn zone_line(selector: &str, domain: &str, record: &str) -> String {
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
        .collect();
    format!(
        "{}. 3600 IN TXT ( {} )",
        dns_name(selector, domain),
        strings.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_records_are_split_into_strings_of_255_bytes() {
        let record = dns_record(Algorithm::Rsa, &"A".repeat(400));
        let line = zone_line("s1", "example.com", &record);
        assert!(
            line.starts_with("s1._domainkey.example.com. 3600 IN TXT ( \"v=DKIM1; k=rsa; p=AAA")
        );
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert_eq!(strings.len(), 2);
        assert_eq!(strings.concat(), record);
        assert!(strings.iter().all(|s| s.len() <= 255));
    }
}
