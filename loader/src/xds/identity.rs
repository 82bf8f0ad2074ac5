//! A policy's identities, checked, and as Envoy SAN matchers that accept exactly the names
//! [`Identity::matches`] accepts.
//!
//! Envoy's `exact` matcher for DNS SANs applies its own DNS rules (`dnsNameMatch`): it accepts a
//! certificate's `*.com` for `example.com` and a partial-label wildcard (`a*.example.com`) for
//! `abc.example.com`, and it does not ignore a trailing dot, so it would disagree with the
//! filter and the certificate validator. Every DNS identity therefore becomes `safe_regex`
//! matchers, which Envoy applies to the SAN text as it is (RE2, full match; its `(?i)` folds
//! ASCII letters only): one for the name itself and, for an exact name, one for the certificate
//! wildcard that covers it. URI identities use `exact`, which Envoy compares byte for byte.
//! IP SANs are never matched (no matcher has `san_type: IP_ADDRESS`) and the subject CN is never
//! consulted by SAN matchers.

use backendtls_contract::identity::DnsName;
use backendtls_contract::Identity;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;

use crate::ir::{self, SubjectAltName};

/// Envoy refuses a regex whose RE2 program is larger than the runtime value
/// `re2.max_program_size.error_level`, 100 by default. The program of the regexes below is never
/// larger than their length in bytes (each literal character is at most one instruction, and
/// escapes and syntax take more bytes than instructions; `tests/tests/san_matchers.rs`
/// checks it with Envoy at the bound), so a regex of at most
/// this many bytes is accepted by every Envoy with the default setting.
pub const ENVOY_REGEX_MAX_LEN: usize = 100;

/// Who verifies backend certificates during the handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Validator {
    /// Envoy's own validation: the CA bundle (over SDS) and SAN matchers.
    #[default]
    Envoy,
    /// The filter's dynamic module (`envoy.tls.cert_validator.dynamic_modules`, rustls-webpki),
    /// with the policy's anchors and identities in its config. Envoy finds
    /// `lib<DYNAMIC_MODULE_NAME>.so` through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
    DynamicModule,
}

/// Why a policy's identities cannot be checked as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentitiesError {
    /// A name the contract's rules refuse.
    #[error(transparent)]
    Name(#[from] backendtls_contract::IdentityError),
    /// A DNS identity whose SAN matcher regex (`regex_len` bytes) Envoy's default RE2 limit refuses.
    #[error("identity \"{name}\" needs a SAN matcher ({regex_len} bytes of regex) larger than Envoy's default RE2 program size limit allows; DNS names of up to about 85 characters fit, or use --validator dynamic-module, which has no such limit")]
    TooLongForEnvoy { name: String, regex_len: usize },
}

/// The identities of a policy (its subjectAltNames, or its hostname), refused with a reason
/// when Envoy would not accept them: names that are not identities by the contract's rules, a
/// hostname (the SNI) that is not an exact DNS name, or a DNS identity too long for Envoy's
/// default regex limit when Envoy's validator checks it.
pub fn checked_identities(
    policy: &ir::BackendTls,
    validator: Validator,
) -> Result<Vec<Identity>, IdentitiesError> {
    // The hostname is the SNI whatever the identities are.
    Identity::hostname(&policy.hostname)?;
    let sans = policy.subject_alt_names.iter().map(|san| match san {
        SubjectAltName::Hostname(name) => (backendtls_contract::san_types::HOSTNAME, name.as_str()),
        SubjectAltName::Uri(uri) => (backendtls_contract::san_types::URI, uri.as_str()),
    });
    let identities = Identity::of_policy(&policy.hostname, sans)?;
    if validator == Validator::Envoy {
        for identity in &identities {
            let Identity::Dns(name) = identity else { continue };
            if let Some(regex) =
                dns_regexes(name).into_iter().find(|r| r.len() > ENVOY_REGEX_MAX_LEN)
            {
                let (name, regex_len) = (name.to_string(), regex.len());
                return Err(IdentitiesError::TooLongForEnvoy { name, regex_len });
            }
        }
    }
    Ok(identities)
}

/// The Envoy SAN matchers for `identities`: a certificate passes when any of its SANs satisfies
/// any matcher, which is when [`backendtls_contract::identity::any_matches`] holds.
pub fn san_matchers(identities: &[Identity]) -> Vec<tls::SubjectAltNameMatcher> {
    use matcher::string_matcher::MatchPattern;
    use tls::subject_alt_name_matcher::SanType;
    let mut out = Vec::new();
    let mut push = |san_type: SanType, pattern: MatchPattern| {
        out.push(tls::SubjectAltNameMatcher {
            san_type: san_type as i32,
            matcher: Some(matcher::StringMatcher {
                match_pattern: Some(pattern),
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    for identity in identities {
        match identity {
            Identity::Dns(name) => {
                for regex in dns_regexes(name) {
                    push(
                        SanType::Dns,
                        MatchPattern::SafeRegex(matcher::RegexMatcher {
                            regex,
                            ..Default::default()
                        }),
                    );
                }
            }
            Identity::Uri(uri) => push(SanType::Uri, MatchPattern::Exact(uri.as_str().to_owned())),
        }
    }
    out
}

/// RE2 regexes (full match) whose union is the set of dNSName SANs that satisfy `name`:
///
/// - `a.example.com`: itself in any ASCII case, with one optional trailing dot, and the
///   certificate wildcard `*.example.com` when two or more labels follow its `*`;
/// - `*.example.com`: one label of letters, digits, `-` and `_` (or a certificate's own `*`),
///   then `example.com`, with one optional trailing dot.
fn dns_regexes(name: &DnsName) -> Vec<String> {
    let base = escape(name.base());
    if name.is_wildcard() {
        return vec![format!(r"(?i)(?:[a-z0-9_-]+|\*)\.{base}\.?")];
    }
    let mut regexes = vec![format!(r"(?i){base}\.?")];
    if let Some(parent) = name.covering_wildcard() {
        regexes.push(format!(r"(?i)\*\.{}\.?", escape(parent)));
    }
    regexes
}

/// A valid DNS name as a regex literal: its only metacharacter is `.`.
fn escape(name: &str) -> String {
    name.replace('.', r"\.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regexes(name: &str) -> Vec<String> {
        match Identity::dns(name).unwrap() {
            Identity::Dns(name) => dns_regexes(&name),
            Identity::Uri(_) => unreachable!(),
        }
    }

    fn policy(hostname: &str, sans: &[&str]) -> ir::BackendTls {
        ir::BackendTls {
            policy: crate::objects::ObjectKey::new("default", "p"),
            hostname: hostname.into(),
            subject_alt_names: sans
                .iter()
                .map(|s| SubjectAltName::Hostname(s.to_string()))
                .collect(),
            params: ir::TlsParams::default(),
            trust: ir::Trust::Ca { secret: "ca".into() },
            client_certificate: None,
        }
    }

    #[test]
    fn names_too_long_for_envoys_regex_limit_need_the_module_validator() {
        let long = format!("{}.{}.example.com", "a".repeat(63), "b".repeat(20));
        let error = checked_identities(&policy("example.com", &[&long]), Validator::Envoy)
            .expect_err("too long for Envoy's default RE2 limit");
        assert!(matches!(&error, IdentitiesError::TooLongForEnvoy { name, .. } if *name == long));
        let error = error.to_string();
        assert!(error.contains("RE2 program size") && error.contains(&long), "{error}");
        let identities =
            checked_identities(&policy("example.com", &[&long]), Validator::DynamicModule)
                .expect("no regex with the module validator");
        assert_eq!(identities, [Identity::dns(&long).unwrap()]);
    }

    #[test]
    fn the_sni_must_be_an_exact_dns_name_whatever_the_sans() {
        for hostname in ["10.0.0.5", "*.example.com", "bücher.example"] {
            let error = checked_identities(&policy(hostname, &["a.example.com"]), Validator::Envoy)
                .expect_err(hostname)
                .to_string();
            assert!(error.contains(hostname), "{error}");
        }
        assert!(checked_identities(&policy("example.com", &["*.com"]), Validator::Envoy).is_err());
    }

    #[test]
    fn regexes_are_readable() {
        assert_eq!(regexes("Example.com"), [r"(?i)example\.com\.?"]);
        assert_eq!(
            regexes("a.example.com"),
            [r"(?i)a\.example\.com\.?", r"(?i)\*\.example\.com\.?"]
        );
        assert_eq!(regexes("*.example.com"), [r"(?i)(?:[a-z0-9_-]+|\*)\.example\.com\.?"]);
    }
}
