//! Kubernetes object-name rules, checked as the API server checks them.
//!
//! Envoy resource names are built from object names (`kube_<namespace>_<service>_<port>`,
//! `gateway_<namespace>_<name>_<port>`). Namespaces and Services are RFC 1123/1035 labels and
//! every other name an RFC 1123 subdomain, none of which may contain `_`: once names are checked,
//! two different objects can never share an Envoy name. Without the check, Service `y_q` in
//! namespace `z` and Service `q` in namespace `z_y` would share one cluster.

/// The rule an object's name must follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 label: namespaces.
    Dns1123Label,
    /// RFC 1035 label (an RFC 1123 label starting with a letter): Services.
    Dns1035Label,
    /// RFC 1123 subdomain: most other kinds.
    Dns1123Subdomain,
}

impl NameRule {
    /// Checks `name`; the error is the API server's wording.
    pub fn check(self, name: &str) -> Result<(), NameError> {
        let ok = match self {
            NameRule::Dns1123Label => is_label(name),
            NameRule::Dns1035Label => {
                is_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
            }
            NameRule::Dns1123Subdomain => {
                name.len() <= 253 && !name.is_empty() && name.split('.').all(is_subdomain_part)
            }
        };
        if ok {
            return Ok(());
        }
        Err(NameError { name: shorten(name), rule: self })
    }

    /// The rule in the API server's words.
    pub fn description(self) -> &'static str {
        match self {
            NameRule::Dns1123Label => "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', start and end with an alphanumeric character, and be at most 63 characters",
            NameRule::Dns1035Label => "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, end with an alphanumeric character, and be at most 63 characters",
            NameRule::Dns1123Subdomain => "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', start and end with an alphanumeric character, and be at most 253 characters",
        }
    }
}

/// A name that breaks its rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid name: {}", rule.description())]
pub struct NameError {
    /// The name, shortened for messages (see [`shorten`]).
    pub name: String,
    pub rule: NameRule,
}

fn is_label(name: &str) -> bool {
    name.len() <= 63 && is_subdomain_part(name)
}

/// One dot-separated part of a subdomain (the API server checks the whole subdomain against one
/// pattern, which amounts to this per part, with no length limit of its own).
fn is_subdomain_part(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Names in messages stay short: a 10 MB name must not become a 10 MB log line.
pub(crate) fn shorten(name: &str) -> String {
    const MAX: usize = 80;
    match name.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &name[..at]),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::NameRule::*;

    #[test]
    fn names_follow_the_api_servers_rules() {
        for ok in ["a", "nginx", "ns-1", "0abc"] {
            assert!(Dns1123Label.check(ok).is_ok(), "{ok}");
        }
        for bad in ["", "z_y", "A", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(Dns1123Label.check(bad).is_err(), "{bad}");
        }
        assert!(Dns1035Label.check("nginx").is_ok());
        assert!(Dns1035Label.check("0nginx").is_err());
        assert!(Dns1035Label.check("y_q").is_err());
        for ok in ["a.b", "ca-bundle", "x.example.com", "0"] {
            assert!(Dns1123Subdomain.check(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "a_b", "A.b", &"a".repeat(254)] {
            assert!(Dns1123Subdomain.check(bad).is_err(), "{bad}");
        }
        let long = Dns1123Subdomain.check(&"_".repeat(10_000)).unwrap_err().to_string();
        assert!(long.len() < 400, "{long}");
        assert_eq!(
            Dns1035Label.check("y_q").unwrap_err().to_string(),
            "\"y_q\" is not a valid name: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, end with an alphanumeric character, and be at most 63 characters"
        );
    }
}
