//! The SSRF guard: a webhook URL is given by an API client, and Herald's requests to it come from inside the
//! network, so an endpoint on loopback, a private network, link-local addresses (the cloud metadata service
//! at 169.254.169.254) or other special ranges is refused, unless `HERALD_WEBHOOK_ALLOW_PRIVATE=1`.
//!
//! Checked twice: when the endpoint is created or changed (a clear 422 naming `url`), and at every connection,
//! by the resolver the HTTP client uses, so that a name that resolved to a public address at creation and to
//! 127.0.0.1 later (DNS rebinding) is still refused. Redirects are never followed (a 302 to an internal URL
//! would get past both checks).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Longest endpoint URL accepted.
pub const MAX_URL_LEN: usize = 2_048;

/// Whether `ip` is an address webhooks may not be sent to (without `HERALD_WEBHOOK_ALLOW_PRIVATE`).
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (RFC 6598, carrier-grade NAT), often internal.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments (RFC 6890), benchmarking (RFC 2544), reserved (RFC 1112).
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // An IPv4 address carried in IPv6 is judged as that address: mapped (::ffff:a.b.c.d), NAT64
    // (64:ff9b::/96) and 6to4 (2002::/16).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6] == [0, 0, 0, 0] {
        return is_forbidden_v4(Ipv4Addr::from(
            (u32::from(segments[6]) << 16) | u32::from(segments[7]),
        ));
    }
    if segments[0] == 0x2002 {
        return is_forbidden_v4(Ipv4Addr::from(
            (u32::from(segments[1]) << 16) | u32::from(segments[2]),
        ));
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local (fc00::/7, fd00::/8 included), link-local (fe80::/10), the old site-local (fec0::/10).
        || (segments[0] & 0xfe00) == 0xfc00
        || (segments[0] & 0xffc0) == 0xfe80
        || (segments[0] & 0xffc0) == 0xfec0
        // IPv4-compatible (::a.b.c.d, deprecated) and documentation (2001:db8::/32).
        || (segments[0..6] == [0, 0, 0, 0, 0, 0])
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
}

/// Checks an endpoint URL as given: `http` or `https`, a host, no credentials in it (they would be shown
/// wherever the URL is), not too long. The message is for the `url` field.
pub fn check_url_form(text: &str) -> Result<url::Url, String> {
    if text.len() > MAX_URL_LEN {
        return Err(format!("longer than {MAX_URL_LEN} bytes"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?}: only http and https", url.scheme()));
    }
    if url.host().is_none() {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials in the URL are not accepted (verify the signature instead)".into(),
        );
    }
    if url.fragment().is_some() {
        return Err("has a fragment (#…), which is never sent".into());
    }
    Ok(url)
}

/// Refuses a URL whose host is, or resolves to, a forbidden address (creation and changes; the resolver
/// below checks again at each connection).
pub async fn check_url_target(url: &url::Url, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("{name} does not resolve: {e}"))?
            .collect(),
        None => return Err("has no host".into()),
    };
    if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
        return Err(format!(
            "resolves to {}, a loopback, private, link-local or reserved address (refused unless \
             HERALD_WEBHOOK_ALLOW_PRIVATE=1)",
            bad.ip()
        ));
    }
    Ok(())
}

/// The IP-literal host of a URL that is forbidden, if any (the resolver is not asked about literals).
pub fn forbidden_literal(url: &url::Url, allow_private: bool) -> Option<IpAddr> {
    if allow_private {
        return None;
    }
    let ip = match url.host()? {
        url::Host::Ipv4(ip) => IpAddr::V4(ip),
        url::Host::Ipv6(ip) => IpAddr::V6(ip),
        url::Host::Domain(_) => return None,
    };
    is_forbidden(ip).then_some(ip)
}

/// The HTTP client's resolver: the system's, with forbidden addresses removed, at every connection.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{name} resolves only to loopback, private, link-local or reserved addresses ({addresses}): refused"
)]
struct RefusedName {
    name: String,
    addresses: String,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| allow_private || !is_forbidden(a.ip()))
                .collect();
            if allowed.is_empty() && !found.is_empty() {
                let addresses = found
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(RefusedName {
                    name: host,
                    addresses,
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The resolver, shared by the client.
pub fn resolver(allow_private: bool) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver { allow_private })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_forbidden() {
        for text in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fd00:ec2::254",
        ] {
            assert!(is_forbidden(text.parse().unwrap()), "{text}");
        }
        for text in [
            "93.184.215.14",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_forbidden(text.parse().unwrap()), "{text}");
        }
    }

    #[test]
    fn url_forms_are_checked() {
        assert!(check_url_form("https://hooks.example.com/herald").is_ok());
        assert!(
            check_url_form("ftp://example.com/")
                .unwrap_err()
                .contains("scheme")
        );
        assert!(
            check_url_form("https://user:pw@example.com/")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(check_url_form("not a url").is_err());
        assert!(check_url_form(&format!("https://example.com/{}", "a".repeat(3000))).is_err());
    }

    #[tokio::test]
    async fn literals_and_names_are_checked_at_creation() {
        let url = url::Url::parse("http://169.254.169.254/latest/meta-data").unwrap();
        assert!(
            check_url_target(&url, false)
                .await
                .unwrap_err()
                .contains("169.254.169.254")
        );
        assert!(check_url_target(&url, true).await.is_ok());
        assert_eq!(
            forbidden_literal(&url, false),
            Some("169.254.169.254".parse().unwrap())
        );
        let local = url::Url::parse("http://localhost:9/").unwrap();
        assert!(check_url_target(&local, false).await.is_err());
    }
}
