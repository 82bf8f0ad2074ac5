//! The names a policy accepts, and the one rule that decides whether a certificate presents one.
//!
//! A BackendTLSPolicy names its backend with DNS names (`validation.hostname`, or the `Hostname`
//! entries of `validation.subjectAltNames`, which may start with `*.`) and URIs (`URI` entries,
//! e.g. SPIFFE IDs). An [`Identity`] is one such name, checked and normalised once when parsed;
//! [`Identity::matches`] decides whether one name a certificate presents ([`Presented`])
//! satisfies it. The loader turns the same rule into Envoy SAN matchers, the HTTP filter and the
//! certificate validator call it directly, and one table of cases (`identity_cases`) runs through
//! all three.
//!
//! # The rules
//!
//! DNS names (a policy's hostname or `Hostname` SAN against a certificate's dNSName SANs):
//!
//! - Compared ASCII case-insensitively; one trailing dot on either side is ignored
//!   (`Example.COM.` is `example.com`), two are not.
//! - A policy wildcard `*.example.com` matches exactly one more left-most label: `a.example.com`,
//!   not `example.com`, not `a.b.example.com`. That label is any run of ASCII letters, digits,
//!   hyphens and underscores, or a certificate's own `*`.
//! - A certificate wildcard `*.example.com` matches a policy's exact name one label below it
//!   (`a.example.com`), and only when at least two labels follow the `*` (`*.com` matches nothing,
//!   as in rustls-webpki, NSS and browsers). `*` is a wildcard only as the whole left-most label:
//!   a certificate's `a*.example.com` matches nothing.
//! - Internationalised names are compared in their A-label (punycode, `xn--`) form, as ASCII.
//!   Nothing is converted: a policy name that is not ASCII is refused when parsed, and a
//!   certificate name that is not ASCII matches nothing.
//! - A policy name must be a DNS name: letters, digits, hyphens (not at a label's edge) and
//!   underscores, labels of 1 to 63 characters, at most 253 in all, and a last label that is not
//!   all digits (so an IP address such as `10.0.0.5` is refused: Gateway API hostnames are names).
//!
//! URIs (a policy's `URI` SAN against a certificate's uniformResourceIdentifier SANs) match only
//! byte for byte: no case folding, no normalisation. A URI identity never matches a DNS SAN and a
//! DNS identity never matches a URI SAN.
//!
//! IP address SANs never match (DNS identities cannot name an address), and the subject's common
//! name is never a name: a certificate without subjectAltNames matches nothing, as in
//! rustls-webpki and in Envoy's SAN matchers.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Prefix of a DNS identity in its flat string form (`dns:example.com`).
pub const DNS_PREFIX: &str = "dns:";
/// Prefix of a URI identity in its flat string form (`uri:spiffe://td/ns/app`).
pub const URI_PREFIX: &str = "uri:";
/// The longest DNS name, not counting a trailing dot.
pub const MAX_DNS_NAME_LEN: usize = 253;
/// The longest label of a DNS name.
pub const MAX_LABEL_LEN: usize = 63;

/// Values of the `type` field of a Gateway API `subjectAltNames` entry.
pub mod san_types {
    pub const HOSTNAME: &str = "Hostname";
    pub const URI: &str = "URI";
}

/// A name the backend certificate must present for a policy to accept it.
///
/// Its `Display` and `FromStr` forms are the flat strings of the cluster metadata's
/// `identities` list and the validator configuration: `dns:<name>` / `uri:<uri>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    Dns(DnsName),
    Uri(Uri),
}

/// A DNS name or wildcard, valid and normalised: lower case, no trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName {
    /// The name, or for a wildcard the part after `*.`.
    base: String,
    wildcard: bool,
}

/// A URI identity, kept exactly as written (URIs compare byte for byte).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uri(String);

/// One name a certificate presents in its subjectAltName extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// A dNSName, as the certificate spells it (possibly `*.`, upper case or a trailing dot).
    Dns(&'a str),
    /// A uniformResourceIdentifier.
    Uri(&'a str),
    /// An iPAddress: never matches any identity.
    Ip(IpAddr),
}

/// Why a name cannot be an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityError {
    /// The name as given.
    pub name: String,
    pub problem: Problem,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    Empty,
    NotAscii,
    TooLong,
    EmptyLabel,
    LabelTooLong,
    BadCharacter(char),
    HyphenAtLabelEdge,
    NumericLastLabel,
    MisplacedWildcard,
    WildcardTooBroad,
    /// A wildcard where only an exact name can be (the hostname, which is also the SNI).
    WildcardNotAllowed,
    NotAnAbsoluteUri,
    /// A flat identity that starts with neither `dns:` nor `uri:`.
    UnknownPrefix,
    /// A `subjectAltNames` type other than `Hostname` and `URI`.
    UnknownSanType(String),
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "identity {:?}: ", self.name)?;
        match &self.problem {
            Problem::Empty => f.write_str("is empty"),
            Problem::NotAscii => f.write_str(
                "is not ASCII: write an internationalised name in its A-label (xn--) form",
            ),
            Problem::TooLong => write!(f, "is longer than {MAX_DNS_NAME_LEN} characters"),
            Problem::EmptyLabel => f.write_str("has an empty label"),
            Problem::LabelTooLong => write!(f, "has a label longer than {MAX_LABEL_LEN}"),
            Problem::BadCharacter(c) => {
                write!(f, "has {c:?}, which is not a letter, digit, hyphen, underscore or dot")
            }
            Problem::HyphenAtLabelEdge => f.write_str("has a label that starts or ends with '-'"),
            Problem::NumericLastLabel => {
                f.write_str("ends in an all-numeric label (an IP address is not a DNS name)")
            }
            Problem::MisplacedWildcard => {
                f.write_str("'*' is allowed only as the whole left-most label, as in *.example.com")
            }
            Problem::WildcardTooBroad => f.write_str(
                "a wildcard must be followed by at least two labels (*.example.com, not *.com)",
            ),
            Problem::WildcardNotAllowed => {
                f.write_str("a hostname (the SNI) cannot be a wildcard; use subjectAltNames")
            }
            Problem::NotAnAbsoluteUri => f.write_str(
                "is not an absolute URI (scheme:...) of printable ASCII characters without spaces",
            ),
            Problem::UnknownPrefix => {
                write!(f, "starts with neither {DNS_PREFIX} nor {URI_PREFIX}")
            }
            Problem::UnknownSanType(kind) => write!(
                f,
                "subjectAltNames type {kind:?} is not {:?} or {:?}",
                san_types::HOSTNAME,
                san_types::URI
            ),
        }
    }
}

impl std::error::Error for IdentityError {}

fn error(name: &str, problem: Problem) -> IdentityError {
    IdentityError { name: name.to_owned(), problem }
}

impl DnsName {
    /// A DNS name or a `*.` wildcard, by the rules in the module documentation.
    pub fn parse(text: &str) -> Result<DnsName, IdentityError> {
        let bad = |problem| error(text, problem);
        let name = text.strip_suffix('.').unwrap_or(text);
        if name.is_empty() {
            return Err(bad(Problem::Empty));
        }
        if !name.is_ascii() {
            return Err(bad(Problem::NotAscii));
        }
        if name.len() > MAX_DNS_NAME_LEN {
            return Err(bad(Problem::TooLong));
        }
        let (wildcard, base) = match name.strip_prefix("*.") {
            Some(base) => (true, base),
            None => (false, name),
        };
        let mut labels = 0;
        let mut last_is_numeric = false;
        for label in base.split('.') {
            labels += 1;
            if label.is_empty() {
                return Err(bad(Problem::EmptyLabel));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(bad(Problem::LabelTooLong));
            }
            if let Some(c) = label.chars().find(|&c| !is_label_char(c)) {
                return Err(bad(if c == '*' {
                    Problem::MisplacedWildcard
                } else {
                    Problem::BadCharacter(c)
                }));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad(Problem::HyphenAtLabelEdge));
            }
            last_is_numeric = label.bytes().all(|b| b.is_ascii_digit());
        }
        if last_is_numeric {
            return Err(bad(Problem::NumericLastLabel));
        }
        if wildcard && labels < 2 {
            return Err(bad(Problem::WildcardTooBroad));
        }
        Ok(DnsName { base: base.to_ascii_lowercase(), wildcard })
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The name; for a wildcard, the part after `*.`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether `presented` (a certificate's dNSName) satisfies this name.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = presented.strip_suffix('.').unwrap_or(presented);
        if self.wildcard {
            // Exactly one more label, then the base.
            return presented.split_once('.').is_some_and(|(label, rest)| {
                (label == "*" || is_presented_label(label)) && rest.eq_ignore_ascii_case(&self.base)
            });
        }
        if presented.eq_ignore_ascii_case(&self.base) {
            return true;
        }
        // A certificate wildcard one label above this name, with at least two labels after it.
        match (presented.strip_prefix("*."), self.base.split_once('.')) {
            (Some(suffix), Some((_, parent))) => {
                parent.contains('.') && suffix.eq_ignore_ascii_case(parent)
            }
            _ => false,
        }
    }

    /// The name of the certificate wildcard that also satisfies this exact name (`*.example.com`
    /// for `a.example.com`), if any: at least two labels must follow the `*`.
    pub fn covering_wildcard(&self) -> Option<&str> {
        match self.base.split_once('.') {
            Some((_, parent)) if !self.wildcard && parent.contains('.') => Some(parent),
            _ => None,
        }
    }
}

/// A character of a DNS label: ASCII letter, digit, hyphen or underscore (underscores appear in
/// real certificates; rustls-webpki accepts them too).
fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// The one label a policy wildcard adds, as a certificate may spell it.
fn is_presented_label(label: &str) -> bool {
    !label.is_empty() && label.chars().all(is_label_char)
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.base)
    }
}

impl Uri {
    /// An absolute URI (`scheme:` then at least one character) of printable ASCII.
    pub fn parse(text: &str) -> Result<Uri, IdentityError> {
        let scheme_ok = text.split_once(':').is_some_and(|(scheme, rest)| {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && !rest.is_empty()
        });
        if text.is_empty() {
            Err(error(text, Problem::Empty))
        } else if !scheme_ok || !text.bytes().all(|b| b.is_ascii_graphic()) {
            Err(error(text, Problem::NotAnAbsoluteUri))
        } else {
            Ok(Uri(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Identity {
    /// A DNS identity (a `Hostname` subjectAltName): an exact name or a `*.` wildcard.
    pub fn dns(name: &str) -> Result<Identity, IdentityError> {
        DnsName::parse(name).map(Identity::Dns)
    }

    /// A URI identity (a `URI` subjectAltName).
    pub fn uri(uri: &str) -> Result<Identity, IdentityError> {
        Uri::parse(uri).map(Identity::Uri)
    }

    /// The policy's `validation.hostname` as the identity it stands for when the policy has no
    /// subjectAltNames: an exact DNS name (it is also the SNI, which cannot be a wildcard).
    pub fn hostname(hostname: &str) -> Result<Identity, IdentityError> {
        let name = DnsName::parse(hostname)?;
        if name.is_wildcard() {
            return Err(error(hostname, Problem::WildcardNotAllowed));
        }
        Ok(Identity::Dns(name))
    }

    /// A Gateway API `subjectAltNames` entry: `type` ([`san_types`]) and its value.
    pub fn from_san(san_type: &str, value: &str) -> Result<Identity, IdentityError> {
        match san_type {
            san_types::HOSTNAME => Identity::dns(value),
            san_types::URI => Identity::uri(value),
            other => Err(error(value, Problem::UnknownSanType(other.to_owned()))),
        }
    }

    /// The identities a policy accepts: its subjectAltNames, or its hostname when it has none
    /// (Gateway API BackendTLSPolicy semantics). `sans` are `(type, value)` pairs.
    pub fn of_policy<'a>(
        hostname: &str,
        sans: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Vec<Identity>, IdentityError> {
        let identities: Vec<Identity> = sans
            .into_iter()
            .map(|(kind, value)| Identity::from_san(kind, value))
            .collect::<Result<_, _>>()?;
        if identities.is_empty() {
            return Ok(vec![Identity::hostname(hostname)?]);
        }
        Ok(identities)
    }

    /// Whether `presented` satisfies this identity (see the module documentation).
    pub fn matches(&self, presented: Presented<'_>) -> bool {
        match (self, presented) {
            (Identity::Dns(name), Presented::Dns(dns)) => name.matches(dns),
            (Identity::Uri(uri), Presented::Uri(presented)) => uri.0 == presented,
            // A DNS identity never matches a URI or IP SAN, a URI identity never a DNS or IP SAN.
            _ => false,
        }
    }
}

/// Whether any of `presented` (all of a certificate's SANs) satisfies any of `identities`.
pub fn any_matches<'a>(
    identities: &[Identity],
    presented: impl IntoIterator<Item = Presented<'a>>,
) -> bool {
    presented.into_iter().any(|name| identities.iter().any(|identity| identity.matches(name)))
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Dns(name) => write!(f, "{DNS_PREFIX}{name}"),
            Identity::Uri(uri) => write!(f, "{URI_PREFIX}{uri}"),
        }
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    /// The flat form: `dns:<name>` or `uri:<uri>`.
    fn from_str(flat: &str) -> Result<Identity, IdentityError> {
        if let Some(name) = flat.strip_prefix(DNS_PREFIX) {
            Identity::dns(name)
        } else if let Some(uri) = flat.strip_prefix(URI_PREFIX) {
            Identity::uri(uri)
        } else {
            Err(error(flat, Problem::UnknownPrefix))
        }
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Identity, D::Error> {
        struct Flat;
        impl serde::de::Visitor<'_> for Flat {
            type Value = Identity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an identity string ({DNS_PREFIX}<name> or {URI_PREFIX}<uri>)")
            }
            fn visit_str<E: serde::de::Error>(self, flat: &str) -> Result<Identity, E> {
                flat.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Flat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(name: &str) -> Identity {
        Identity::dns(name).unwrap()
    }

    #[test]
    fn names_are_normalised_once() {
        assert_eq!(dns("Example.COM.").to_string(), "dns:example.com");
        assert_eq!(dns("*.Example.com").to_string(), "dns:*.example.com");
        assert_eq!(Identity::uri("spiffe://TD/ns/a").unwrap().to_string(), "uri:spiffe://TD/ns/a");
        for flat in ["dns:a.example", "dns:*.a.example", "uri:spiffe://td/x"] {
            assert_eq!(flat.parse::<Identity>().unwrap().to_string(), flat);
        }
    }

    #[test]
    fn bad_names_say_why() {
        let problem = |text: &str| DnsName::parse(text).unwrap_err().problem;
        assert_eq!(problem(""), Problem::Empty);
        assert_eq!(problem("."), Problem::Empty);
        assert_eq!(problem("example.com.."), Problem::EmptyLabel);
        assert_eq!(problem("bücher.example"), Problem::NotAscii);
        assert_eq!(problem("10.0.0.5"), Problem::NumericLastLabel);
        assert_eq!(problem("*.com"), Problem::WildcardTooBroad);
        assert_eq!(problem("a*.example.com"), Problem::MisplacedWildcard);
        assert_eq!(problem("*.*.example.com"), Problem::MisplacedWildcard);
        assert_eq!(problem("*"), Problem::MisplacedWildcard);
        assert_eq!(problem("-a.example"), Problem::HyphenAtLabelEdge);
        assert_eq!(problem("a b.example"), Problem::BadCharacter(' '));
        assert_eq!(problem(&format!("{}.example", "a".repeat(64))), Problem::LabelTooLong);
        assert_eq!(problem(&format!("{}.example", "a.".repeat(127))), Problem::TooLong);
        assert!(DnsName::parse(&format!("{}example", "a.".repeat(123))).is_ok());
        assert_eq!(
            Identity::hostname("*.example.com").unwrap_err().problem,
            Problem::WildcardNotAllowed
        );
        assert_eq!(Identity::uri("no-scheme").unwrap_err().problem, Problem::NotAnAbsoluteUri);
        assert_eq!(Identity::uri("spiffe://a b").unwrap_err().problem, Problem::NotAnAbsoluteUri);
        assert_eq!("ip:1.2.3.4".parse::<Identity>().unwrap_err().problem, Problem::UnknownPrefix);
        let message = Identity::dns("*.com").unwrap_err().to_string();
        assert!(message.contains("\"*.com\"") && message.contains("two labels"), "{message}");
    }

    #[test]
    fn the_policy_hostname_stands_in_for_missing_sans() {
        assert_eq!(Identity::of_policy("example.com", []).unwrap(), [dns("example.com")]);
        let sans = [("Hostname", "*.example.com"), ("URI", "spiffe://td/x")];
        assert_eq!(
            Identity::of_policy("example.com", sans).unwrap(),
            [dns("*.example.com"), Identity::uri("spiffe://td/x").unwrap()]
        );
        assert!(Identity::of_policy("example.com", [("IPAddress", "10.0.0.1")]).is_err());
    }

    #[test]
    fn serde_uses_the_flat_form() {
        let json = "[\"dns:*.example.com\",\"uri:spiffe://td/x\"]";
        let identities: Vec<Identity> = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&identities).unwrap(), json);
        assert!(serde_json::from_str::<Identity>("\"dns:*.com\"").is_err());
    }

    #[test]
    fn covering_wildcards_need_two_labels_after_the_star() {
        let name = |n: &str| DnsName::parse(n).unwrap();
        assert_eq!(name("a.example.com").covering_wildcard(), Some("example.com"));
        assert_eq!(name("example.com").covering_wildcard(), None);
        assert_eq!(name("*.example.com").covering_wildcard(), None);
    }
}
