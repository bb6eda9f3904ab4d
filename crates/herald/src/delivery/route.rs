//! Which relay a message leaves through: chosen by the sender's domain, with one default relay.
//!
//! Transactional mail from `shop.example` can go through one provider and newsletters from `news.example`
//! through another, each with its own connection cap, rate and pause; everything else takes the default.

use std::collections::HashMap;

use super::RelayLimits;

/// One relay as the engine sees it.
#[derive(Debug)]
pub struct Route<T> {
    /// How the relay appears in events and logs (never with credentials).
    pub name: String,
    pub transport: T,
    pub limits: RelayLimits,
    /// Sender domains sent through this relay: `example.com` (exactly that domain) or `*.example.com` (its
    /// subdomains). The default relay needs none.
    pub sender_domains: Vec<String>,
}

impl<T> Route<T> {
    pub fn new(name: impl Into<String>, transport: T, limits: RelayLimits) -> Self {
        Self {
            name: name.into(),
            transport,
            limits,
            sender_domains: Vec::new(),
        }
    }

    pub fn for_domains(mut self, domains: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.sender_domains = domains.into_iter().map(Into::into).collect();
        self
    }
}

/// A sender domain given to two relays, or a pattern that is not a domain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("sender domain {domain:?} is given to both relay {first:?} and relay {second:?}")]
    Duplicate {
        domain: String,
        first: String,
        second: String,
    },
    #[error("relay {relay:?}: {domain:?} is not a domain (use example.com or *.example.com)")]
    BadDomain { relay: String, domain: String },
    #[error("no relays")]
    Empty,
}

/// The relays and the table that picks one per message.
#[derive(Debug)]
pub struct Routes<T> {
    relays: Vec<Route<T>>,
    table: RouteTable,
}

/// Sender domain → relay index.
#[derive(Debug, Clone)]
pub struct RouteTable {
    default: usize,
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com`.
    subdomains: HashMap<String, usize>,
}

impl<T> Routes<T> {
    /// One relay for everything.
    pub fn single(route: Route<T>) -> Self {
        Self {
            relays: vec![route],
            table: RouteTable {
                default: 0,
                exact: HashMap::new(),
                subdomains: HashMap::new(),
            },
        }
    }

    /// Several relays; `default` (an index into `relays`) takes mail from every domain no relay names.
    pub fn new(relays: Vec<Route<T>>, default: usize) -> Result<Self, RouteError> {
        if relays.is_empty() || default >= relays.len() {
            return Err(RouteError::Empty);
        }
        let mut exact: HashMap<String, usize> = HashMap::new();
        let mut subdomains: HashMap<String, usize> = HashMap::new();
        for (index, relay) in relays.iter().enumerate() {
            for pattern in &relay.sender_domains {
                let pattern = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
                let (table, domain) = match pattern.strip_prefix("*.") {
                    Some(parent) => (&mut subdomains, parent.to_owned()),
                    None => (&mut exact, pattern.clone()),
                };
                if !is_domain(&domain) {
                    return Err(RouteError::BadDomain {
                        relay: relay.name.clone(),
                        domain: pattern,
                    });
                }
                if let Some(&first) = table.get(&domain)
                    && first != index
                {
                    return Err(RouteError::Duplicate {
                        domain: pattern,
                        first: relays[first].name.clone(),
                        second: relay.name.clone(),
                    });
                }
                table.insert(domain, index);
            }
        }
        Ok(Self {
            relays,
            table: RouteTable {
                default,
                exact,
                subdomains,
            },
        })
    }

    /// The relay for a message from `sender` (see [`RouteTable::pick`]).
    pub fn pick(&self, sender: &str) -> usize {
        self.table.pick(sender)
    }

    pub fn relays(&self) -> &[Route<T>] {
        &self.relays
    }

    pub(super) fn into_parts(self) -> (Vec<Route<T>>, RouteTable) {
        (self.relays, self.table)
    }
}

impl RouteTable {
    /// The relay for a message from `sender`: its exact domain, else the nearest `*.parent` pattern, else the
    /// default.
    pub fn pick(&self, sender: &str) -> usize {
        let Some((_, domain)) = sender.rsplit_once('@') else {
            return self.default;
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&index) = self.exact.get(&domain) {
            return index;
        }
        let mut rest = domain.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(&index) = self.subdomains.get(parent) {
                return index;
            }
            rest = parent;
        }
        self.default
    }
}

fn is_domain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes<()> {
        Routes::new(
            vec![
                Route::new("default", (), RelayLimits::default()),
                Route::new("shop", (), RelayLimits::default())
                    .for_domains(["shop.example", "Example.COM"]),
                Route::new("news", (), RelayLimits::default()).for_domains(["*.example.com"]),
            ],
            0,
        )
        .unwrap()
    }

    #[test]
    fn the_sender_domain_picks_the_relay() {
        let routes = routes();
        assert_eq!(routes.pick("orders@shop.example"), 1);
        assert_eq!(routes.pick("a@EXAMPLE.com"), 1);
        assert_eq!(routes.pick("a@news.example.com"), 2);
        assert_eq!(routes.pick("a@deep.news.example.com"), 2);
        assert_eq!(routes.pick("a@other.example"), 0);
        assert_eq!(routes.pick("a@sub.shop.example"), 0);
        assert_eq!(routes.pick(""), 0, "the null sender takes the default");
    }

    #[test]
    fn a_domain_on_two_relays_or_a_bad_pattern_is_refused() {
        let error = Routes::new(
            vec![
                Route::new("a", (), RelayLimits::default()).for_domains(["x.example"]),
                Route::new("b", (), RelayLimits::default()).for_domains(["X.example"]),
            ],
            0,
        )
        .unwrap_err();
        assert!(matches!(error, RouteError::Duplicate { .. }), "{error}");
        let error = Routes::new(
            vec![Route::new("a", (), RelayLimits::default()).for_domains(["not a domain"])],
            0,
        )
        .unwrap_err();
        assert!(matches!(error, RouteError::BadDomain { .. }), "{error}");
        assert_eq!(Routes::<()>::new(vec![], 0).unwrap_err(), RouteError::Empty);
    }
}
