//! One table of identity cases, run through every implementation's own entry point: the loader's
//! generated Envoy SAN matchers, the HTTP filter's identity check and the certificate validator's
//! `verify` (with real certificates). Feature `test-cases`; only tests use it.
//!
//! Each case is a policy (hostname and subjectAltNames, as a user writes them), the names of a
//! backend certificate signed by the policy's CA, and the verdict all three must reach. A policy
//! whose names cannot be identities ([`Verdict::InvalidPolicy`]) must fail closed everywhere:
//! the loader serves the cluster without hosts, the filter answers 503, the validator refuses its
//! configuration.

use std::net::IpAddr;

use crate::identity::{san_types, Identity, IdentityError, Presented};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The certificate satisfies the policy.
    Match,
    /// The certificate does not satisfy the policy.
    NoMatch,
    /// The policy's names are not identities: nothing may be served.
    InvalidPolicy,
}

/// A `subjectAltNames` entry of a policy.
#[derive(Clone, Copy, Debug)]
pub enum San {
    Hostname(&'static str),
    Uri(&'static str),
}

impl San {
    /// `(type, value)` as in the Gateway API.
    pub fn pair(self) -> (&'static str, &'static str) {
        match self {
            San::Hostname(name) => (san_types::HOSTNAME, name),
            San::Uri(uri) => (san_types::URI, uri),
        }
    }

    /// The flat form (`dns:<name>`, `uri:<uri>`) as written, whether or not it is an identity:
    /// what the dynamic module's metadata and the validator's configuration carry.
    pub fn flat(self) -> String {
        match self {
            San::Hostname(name) => format!("{}{name}", crate::identity::DNS_PREFIX),
            San::Uri(uri) => format!("{}{uri}", crate::identity::URI_PREFIX),
        }
    }
}

/// A policy's `validation.hostname` and `validation.subjectAltNames`.
#[derive(Clone, Copy, Debug)]
pub struct PolicyNames {
    pub hostname: &'static str,
    pub subject_alt_names: &'static [San],
}

impl PolicyNames {
    /// The identities, or why the policy has none ([`Identity::of_policy`]).
    pub fn identities(&self) -> Result<Vec<Identity>, IdentityError> {
        Identity::of_policy(self.hostname, self.subject_alt_names.iter().map(|san| san.pair()))
    }
}

/// The names in a backend certificate: its subject CN and its subjectAltNames by type.
#[derive(Clone, Copy, Debug)]
pub struct CertNames {
    pub common_name: &'static str,
    pub dns: &'static [&'static str],
    pub uri: &'static [&'static str],
    pub ip: &'static [&'static str],
}

impl CertNames {
    /// The SANs, as [`Identity::matches`] takes them (the CN is never a name).
    pub fn presented(&self) -> Vec<Presented<'static>> {
        let ip = self.ip.iter().map(|ip| Presented::Ip(ip.parse::<IpAddr>().expect("an IP SAN")));
        self.dns
            .iter()
            .map(|name| Presented::Dns(name))
            .chain(self.uri.iter().map(|uri| Presented::Uri(uri)))
            .chain(ip)
            .collect()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub name: &'static str,
    pub policy: PolicyNames,
    pub certificate: CertNames,
    pub verdict: Verdict,
}

const HOST: &str = "example.com";
const CN: &str = "backend";

const fn hostname_only(hostname: &'static str) -> PolicyNames {
    PolicyNames { hostname, subject_alt_names: &[] }
}

const fn sans(subject_alt_names: &'static [San]) -> PolicyNames {
    PolicyNames { hostname: HOST, subject_alt_names }
}

const fn dns(names: &'static [&'static str]) -> CertNames {
    CertNames { common_name: CN, dns: names, uri: &[], ip: &[] }
}

const fn case(
    name: &'static str,
    policy: PolicyNames,
    certificate: CertNames,
    verdict: Verdict,
) -> Case {
    Case { name, policy, certificate, verdict }
}

use San::{Hostname, Uri};
use Verdict::{InvalidPolicy, Match, NoMatch};

pub const CASES: &[Case] = &[
    // Exact names.
    case("exact", hostname_only("example.com"), dns(&["example.com"]), Match),
    case("exact, other name", hostname_only("example.com"), dns(&["example.org"]), NoMatch),
    case("exact, subdomain", hostname_only("example.com"), dns(&["a.example.com"]), NoMatch),
    case("exact, parent", sans(&[Hostname("a.example.com")]), dns(&["example.com"]), NoMatch),
    // Case.
    case("case in certificate", hostname_only("example.com"), dns(&["EXAMPLE.Com"]), Match),
    case("case in policy", sans(&[Hostname("A.Example.COM")]), dns(&["a.example.com"]), Match),
    // Trailing dots.
    case(
        "trailing dot in certificate",
        hostname_only("example.com"),
        dns(&["example.com."]),
        Match,
    ),
    case("trailing dot in policy", hostname_only("example.com."), dns(&["example.com"]), Match),
    case("two trailing dots", hostname_only("example.com"), dns(&["example.com.."]), NoMatch),
    case(
        "two trailing dots in policy",
        hostname_only("example.com.."),
        dns(&[HOST]),
        InvalidPolicy,
    ),
    // Wildcard in the policy: exactly one more label.
    case("policy wildcard", sans(&[Hostname("*.example.com")]), dns(&["a.example.com"]), Match),
    case(
        "policy wildcard, case",
        sans(&[Hostname("*.Example.com")]),
        dns(&["A.EXAMPLE.com."]),
        Match,
    ),
    case("policy wildcard, bare domain", sans(&[Hostname("*.example.com")]), dns(&[HOST]), NoMatch),
    case(
        "policy wildcard, two labels",
        sans(&[Hostname("*.example.com")]),
        dns(&["a.b.example.com"]),
        NoMatch,
    ),
    case(
        "policy wildcard, other domain",
        sans(&[Hostname("*.example.com")]),
        dns(&["a.example.org"]),
        NoMatch,
    ),
    case(
        "policy wildcard, certificate wildcard",
        sans(&[Hostname("*.example.com")]),
        dns(&["*.example.com"]),
        Match,
    ),
    case(
        "policy wildcard, partial-label certificate wildcard",
        sans(&[Hostname("*.example.com")]),
        dns(&["a*.example.com"]),
        NoMatch,
    ),
    case(
        "policy wildcard, deeper certificate wildcard",
        sans(&[Hostname("*.example.com")]),
        dns(&["*.a.example.com"]),
        NoMatch,
    ),
    case("policy wildcard over a TLD", sans(&[Hostname("*.com")]), dns(&[HOST]), InvalidPolicy),
    case(
        "policy wildcard not left-most",
        sans(&[Hostname("a.*.example.com")]),
        dns(&["a.b.example.com"]),
        InvalidPolicy,
    ),
    case(
        "wildcard hostname",
        hostname_only("*.example.com"),
        dns(&["a.example.com"]),
        InvalidPolicy,
    ),
    // Wildcard in the certificate: one label, at least two labels after it.
    case(
        "certificate wildcard",
        sans(&[Hostname("a.example.com")]),
        dns(&["*.example.com"]),
        Match,
    ),
    case(
        "certificate wildcard, case",
        sans(&[Hostname("a.example.com")]),
        dns(&["*.EXAMPLE.com"]),
        Match,
    ),
    case(
        "certificate wildcard, bare domain",
        hostname_only(HOST),
        dns(&["*.example.com"]),
        NoMatch,
    ),
    case(
        "certificate wildcard, two labels",
        sans(&[Hostname("a.b.example.com")]),
        dns(&["*.example.com"]),
        NoMatch,
    ),
    case("certificate wildcard over a TLD", hostname_only(HOST), dns(&["*.com"]), NoMatch),
    case(
        "certificate partial-label wildcard",
        sans(&[Hostname("abc.example.com")]),
        dns(&["a*.example.com"]),
        NoMatch,
    ),
    // Internationalised names: A-labels compared as ASCII, nothing converted.
    case(
        "punycode",
        sans(&[Hostname("xn--bcher-kva.example")]),
        dns(&["xn--bcher-kva.example"]),
        Match,
    ),
    case(
        "punycode, case",
        sans(&[Hostname("xn--bcher-kva.example")]),
        dns(&["XN--BCHER-KVA.example"]),
        Match,
    ),
    case(
        "punycode under a certificate wildcard",
        sans(&[Hostname("xn--bcher-kva.example.com")]),
        dns(&["*.example.com"]),
        Match,
    ),
    case(
        "punycode under a policy wildcard",
        sans(&[Hostname("*.example.com")]),
        dns(&["xn--bcher-kva.example.com"]),
        Match,
    ),
    case(
        "other punycode",
        sans(&[Hostname("xn--bcher-kva.example")]),
        dns(&["xn--bcher-kvb.example"]),
        NoMatch,
    ),
    case("unicode policy name", sans(&[Hostname("bücher.example")]), dns(&[HOST]), InvalidPolicy),
    // Several names on either side: any one pair suffices.
    case(
        "matching SAN is not the first",
        hostname_only(HOST),
        dns(&["first.example", "second.example", "example.com"]),
        Match,
    ),
    case(
        "second policy name",
        sans(&[Hostname("a.example"), Hostname("b.example")]),
        dns(&["b.example"]),
        Match,
    ),
    case(
        "no pair matches",
        sans(&[Hostname("a.example"), Hostname("b.example")]),
        dns(&["c.example", "d.example"]),
        NoMatch,
    ),
    // URIs: exact, and only against URI SANs.
    case(
        "SPIFFE ID",
        sans(&[Uri("spiffe://cluster.local/ns/default/sa/nginx")]),
        CertNames {
            common_name: CN,
            dns: &["example.com"],
            uri: &["spiffe://cluster.local/ns/default/sa/nginx"],
            ip: &[],
        },
        Match,
    ),
    case(
        "SPIFFE ID, other workload",
        sans(&[Uri("spiffe://cluster.local/ns/default/sa/nginx")]),
        CertNames {
            common_name: CN,
            dns: &[],
            uri: &["spiffe://cluster.local/ns/default/sa/other"],
            ip: &[],
        },
        NoMatch,
    ),
    case(
        "SPIFFE ID, case",
        sans(&[Uri("spiffe://cluster.local/ns/default/sa/nginx")]),
        CertNames {
            common_name: CN,
            dns: &[],
            uri: &["spiffe://Cluster.local/ns/default/sa/nginx"],
            ip: &[],
        },
        NoMatch,
    ),
    case(
        "SPIFFE ID, prefix",
        sans(&[Uri("spiffe://cluster.local/ns/default")]),
        CertNames {
            common_name: CN,
            dns: &[],
            uri: &["spiffe://cluster.local/ns/default/sa/nginx"],
            ip: &[],
        },
        NoMatch,
    ),
    case(
        "URI identity, DNS SANs only",
        sans(&[Uri("spiffe://example.com")]),
        dns(&["example.com"]),
        NoMatch,
    ),
    case(
        "DNS identity, URI SAN with that text",
        sans(&[Hostname("example.com")]),
        CertNames { common_name: CN, dns: &[], uri: &["example.com"], ip: &[] },
        NoMatch,
    ),
    case(
        "DNS or URI, URI matches",
        sans(&[Hostname("a.example"), Uri("spiffe://td/app")]),
        CertNames { common_name: CN, dns: &["b.example"], uri: &["spiffe://td/app"], ip: &[] },
        Match,
    ),
    case("URI without scheme", sans(&[Uri("cluster.local/ns/a")]), dns(&[HOST]), InvalidPolicy),
    // IP addresses are never DNS names.
    case(
        "IP SAN against a DNS identity",
        hostname_only(HOST),
        CertNames { common_name: CN, dns: &[], uri: &[], ip: &["127.0.0.1"] },
        NoMatch,
    ),
    case(
        "IP address as the hostname",
        hostname_only("10.0.0.5"),
        CertNames { common_name: "10.0.0.5", dns: &[], uri: &[], ip: &["10.0.0.5"] },
        InvalidPolicy,
    ),
    case(
        "IP address as a SAN",
        sans(&[Hostname("10.0.0.5")]),
        CertNames { common_name: CN, dns: &["example.com"], uri: &[], ip: &["10.0.0.5"] },
        InvalidPolicy,
    ),
    // The subject CN is not a name.
    case(
        "CN only",
        hostname_only(HOST),
        CertNames { common_name: "example.com", dns: &[], uri: &[], ip: &[] },
        NoMatch,
    ),
    case(
        "CN matches, SAN does not",
        hostname_only(HOST),
        CertNames { common_name: "example.com", dns: &["other.example"], uri: &[], ip: &[] },
        NoMatch,
    ),
];

/// The verdict of [`Identity::matches`] itself, the reference the other implementations meet.
pub fn reference_verdict(case: &Case) -> Verdict {
    match case.policy.identities() {
        Err(_) => Verdict::InvalidPolicy,
        Ok(identities) => {
            if crate::identity::any_matches(&identities, case.certificate.presented()) {
                Verdict::Match
            } else {
                Verdict::NoMatch
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_matches_gives_every_expected_verdict() {
        let mut failures = Vec::new();
        for case in CASES {
            let got = reference_verdict(case);
            if got != case.verdict {
                failures.push(format!("{}: expected {:?}, got {got:?}", case.name, case.verdict));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn case_names_are_unique() {
        let mut names: Vec<_> = CASES.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
    }
}
