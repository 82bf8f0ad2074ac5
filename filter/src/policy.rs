//! The policy a cluster's `backendtls` metadata describes, and the identity check against a leaf.

use crate::contract::{self, keys, san_types, PolicyState};
use crate::pb;
use crate::x509::SubjectAltNames;

/// A name the upstream leaf certificate may carry for the policy to accept it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A DNS name, compared case-insensitively; a leaf's `*.example.com` matches one label.
    Dns(String),
    /// A URI, compared exactly.
    Uri(String),
}

/// A cluster's `backendtls` metadata, parsed. Malformed metadata gives an invalid policy rather
/// than an error: the filter fails closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `"<namespace>/<name>"`; `"unknown"` when the metadata lacks it.
    pub name: String,
    pub hostname: String,
    /// Names the leaf must carry one of: the policy's subject_alt_names, or its hostname when
    /// there are none (Gateway API BackendTLSPolicy semantics).
    pub identities: Vec<Identity>,
    pub state: PolicyState,
    /// Why the policy is invalid (from the metadata, or from parsing it).
    pub reason: Option<String>,
}

/// The raw values of the metadata keys, as either build reads them.
#[derive(Debug, Default)]
pub struct Fields<'a> {
    pub policy: Option<&'a str>,
    pub hostname: Option<&'a str>,
    pub state: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// `subject_alt_names` entries as (type, value); None when the key is absent.
    pub subject_alt_names: Option<Vec<(&'a str, &'a str)>>,
    /// `identities` entries; None when the key is absent.
    pub identities: Option<Vec<&'a str>>,
    /// A structural problem found while reading (e.g. a SAN entry without its value).
    pub error: Option<String>,
}

impl Policy {
    pub fn from_fields(fields: Fields<'_>) -> Policy {
        let name = fields.policy.unwrap_or("unknown").to_owned();
        let hostname = fields.hostname.unwrap_or_default().to_owned();
        let mut problem = fields.error;
        let mut identities = Vec::new();
        if let Some(sans) = &fields.subject_alt_names {
            for (kind, value) in sans {
                match *kind {
                    san_types::HOSTNAME => identities.push(Identity::Dns(value.to_string())),
                    san_types::URI => identities.push(Identity::Uri(value.to_string())),
                    other => {
                        problem
                            .get_or_insert(format!("unsupported subject_alt_names type {other:?}"));
                    }
                }
            }
        } else if let Some(flat) = &fields.identities {
            for entry in flat {
                if let Some(dns) = entry.strip_prefix(contract::IDENTITY_DNS_PREFIX) {
                    identities.push(Identity::Dns(dns.to_owned()));
                } else if let Some(uri) = entry.strip_prefix(contract::IDENTITY_URI_PREFIX) {
                    identities.push(Identity::Uri(uri.to_owned()));
                } else {
                    problem.get_or_insert(format!("malformed identities entry {entry:?}"));
                }
            }
        }
        if identities.is_empty() && !hostname.is_empty() {
            identities.push(Identity::Dns(hostname.clone()));
        }
        if fields.policy.is_none() {
            problem.get_or_insert_with(|| format!("metadata has no {:?}", keys::POLICY));
        }
        if identities.is_empty() {
            problem.get_or_insert_with(|| "metadata names no hostname or subject_alt_names".into());
        }
        let declared = match fields.state.map(PolicyState::parse) {
            Some(Some(state)) => state,
            Some(None) => {
                problem.get_or_insert_with(|| format!("unknown state {:?}", fields.state.unwrap()));
                PolicyState::Invalid
            }
            None => {
                problem.get_or_insert_with(|| format!("metadata has no {:?}", keys::STATE));
                PolicyState::Invalid
            }
        };
        let (state, reason) = match (declared, problem) {
            (_, Some(problem)) => (PolicyState::Invalid, Some(problem)),
            (PolicyState::Invalid, None) => (
                PolicyState::Invalid,
                Some(fields.reason.unwrap_or("the policy is not valid").to_owned()),
            ),
            (PolicyState::Valid, None) => (PolicyState::Valid, None),
        };
        Policy { name, hostname, identities, state, reason }
    }

    /// Parses the `backendtls` struct out of a serialized `envoy.config.core.v3.Metadata`
    /// (the Wasm build's `xds.cluster_metadata`). `None` when the cluster has no such struct.
    pub fn from_metadata_proto(metadata: &[u8]) -> Option<Policy> {
        let namespace = match pb::filter_metadata(metadata, contract::METADATA_NAMESPACE) {
            Ok(Some(ns)) => ns,
            Ok(None) => return None,
            Err(e) => return Some(Policy::unreadable(e.to_string())),
        };
        let values = match pb::decode_struct(namespace) {
            Ok(values) => values,
            Err(e) => return Some(Policy::unreadable(e.to_string())),
        };
        let string = |key| pb::field(&values, key).and_then(pb::Value::as_str);
        let mut fields = Fields {
            policy: string(keys::POLICY),
            hostname: string(keys::HOSTNAME),
            state: string(keys::STATE),
            reason: string(keys::REASON),
            ..Fields::default()
        };
        match pb::field(&values, keys::SUBJECT_ALT_NAMES) {
            None => {}
            Some(pb::Value::List(entries)) => {
                let mut sans = Vec::with_capacity(entries.len());
                for entry in entries {
                    let pb::Value::Struct(entry) = entry else {
                        fields.error = Some("subject_alt_names entry is not a struct".into());
                        continue;
                    };
                    let kind = pb::field(entry, "type").and_then(pb::Value::as_str).unwrap_or("");
                    let value_key = if kind == san_types::URI { "uri" } else { "hostname" };
                    match pb::field(entry, value_key).and_then(pb::Value::as_str) {
                        Some(value) => sans.push((kind, value)),
                        None => {
                            fields.error =
                                Some(format!("subject_alt_names entry without {value_key}"))
                        }
                    }
                }
                fields.subject_alt_names = Some(sans);
            }
            Some(_) => fields.error = Some("subject_alt_names is not a list".into()),
        }
        if let Some(pb::Value::List(entries)) = pb::field(&values, keys::IDENTITIES) {
            fields.identities = Some(entries.iter().filter_map(pb::Value::as_str).collect());
        }
        Some(Policy::from_fields(fields))
    }

    fn unreadable(reason: String) -> Policy {
        Policy::from_fields(Fields { error: Some(reason), ..Fields::default() })
    }

    pub fn is_valid(&self) -> bool {
        self.state == PolicyState::Valid
    }

    /// Whether one of `names` (a leaf's DNS or URI SANs) satisfies this policy.
    pub fn accepts_dns(&self, name: &str) -> bool {
        self.identities
            .iter()
            .any(|id| matches!(id, Identity::Dns(want) if dns_matches(name, want)))
    }

    pub fn accepts_uri(&self, uri: &str) -> bool {
        self.identities.iter().any(|id| matches!(id, Identity::Uri(want) if want == uri))
    }

    /// Whether any of the leaf's SANs satisfies the policy (all of them are considered).
    pub fn accepts(&self, sans: &SubjectAltNames) -> bool {
        sans.dns.iter().any(|n| self.accepts_dns(n)) || sans.uri.iter().any(|u| self.accepts_uri(u))
    }
}

/// RFC 6125 matching of a certificate's DNS name against an expected hostname: ASCII
/// case-insensitive, with a leftmost `*` label in the certificate matching exactly one label.
pub fn dns_matches(presented: &str, expected: &str) -> bool {
    let presented = presented.trim_end_matches('.');
    let expected = expected.trim_end_matches('.');
    if presented.eq_ignore_ascii_case(expected) {
        return true;
    }
    let Some(suffix) = presented.strip_prefix("*.") else {
        return false;
    };
    // A wildcard must leave at least two labels: `*.com` matches nothing.
    if !suffix.contains('.') || suffix.contains('*') {
        return false;
    }
    match expected.split_once('.') {
        Some((label, rest)) => {
            !label.is_empty() && !label.contains('*') && rest.eq_ignore_ascii_case(suffix)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::encode::{metadata, V};

    fn valid_fields() -> Fields<'static> {
        Fields {
            policy: Some("default/p"),
            hostname: Some("example.com"),
            state: Some("valid"),
            ..Fields::default()
        }
    }

    #[test]
    fn hostname_is_the_identity_without_sans() {
        let p = Policy::from_fields(valid_fields());
        assert!(p.is_valid());
        assert_eq!(p.identities, [Identity::Dns("example.com".into())]);
        assert!(p.accepts_dns("EXAMPLE.com"));
        assert!(!p.accepts_dns("other.com"));
    }

    #[test]
    fn sans_replace_the_hostname() {
        let p = Policy::from_fields(Fields {
            subject_alt_names: Some(vec![("Hostname", "a.example"), ("URI", "spiffe://td/x")]),
            ..valid_fields()
        });
        assert!(p.is_valid(), "{p:?}");
        assert!(!p.accepts_dns("example.com"));
        assert!(p.accepts_dns("a.example"));
        assert!(p.accepts_uri("spiffe://td/x"));
        let leaf =
            SubjectAltNames { dns: vec!["first.example".into(), "a.example".into()], uri: vec![] };
        assert!(p.accepts(&leaf), "a matching SAN that is not the first must be accepted");
    }

    #[test]
    fn flat_identities_are_read_when_sans_are_absent() {
        let p = Policy::from_fields(Fields {
            identities: Some(vec!["dns:a.example", "uri:spiffe://td/x"]),
            ..valid_fields()
        });
        assert_eq!(
            p.identities,
            [Identity::Dns("a.example".into()), Identity::Uri("spiffe://td/x".into())]
        );
        let bad =
            Policy::from_fields(Fields { identities: Some(vec!["ip:1.2.3.4"]), ..valid_fields() });
        assert!(!bad.is_valid());
    }

    #[test]
    fn invalid_state_keeps_the_loader_reason() {
        let p = Policy::from_fields(Fields {
            state: Some("invalid"),
            reason: Some("CA ConfigMap default/ca not found"),
            ..valid_fields()
        });
        assert!(!p.is_valid());
        assert_eq!(p.reason.as_deref(), Some("CA ConfigMap default/ca not found"));
    }

    #[test]
    fn malformed_metadata_fails_closed() {
        for fields in [
            Fields { state: None, ..valid_fields() },
            Fields { state: Some("Valid"), ..valid_fields() },
            Fields { policy: None, ..valid_fields() },
            Fields { hostname: None, ..valid_fields() },
            Fields { subject_alt_names: Some(vec![("IPAddress", "10.0.0.1")]), ..valid_fields() },
        ] {
            let p = Policy::from_fields(fields);
            assert!(!p.is_valid());
            assert!(p.reason.is_some());
        }
    }

    #[test]
    fn reads_the_loader_metadata_shape_from_protobuf() {
        let md = metadata(&[(
            "backendtls",
            vec![
                ("policy", V::S("default/nginx-tls-policy")),
                ("hostname", V::S("example.com")),
                (
                    "subject_alt_names",
                    V::List(vec![
                        V::Struct(vec![
                            ("type", V::S("Hostname")),
                            ("hostname", V::S("a.example")),
                        ]),
                        V::Struct(vec![("type", V::S("URI")), ("uri", V::S("spiffe://td/x"))]),
                    ]),
                ),
                ("state", V::S("valid")),
            ],
        )]);
        let p = Policy::from_metadata_proto(&md).unwrap();
        assert_eq!(p.name, "default/nginx-tls-policy");
        assert!(p.is_valid());
        assert_eq!(
            p.identities,
            [Identity::Dns("a.example".into()), Identity::Uri("spiffe://td/x".into())]
        );
        assert_eq!(Policy::from_metadata_proto(&metadata(&[("other", vec![])])), None);
        let broken = Policy::from_metadata_proto(&md[..md.len() - 2]).unwrap();
        assert!(!broken.is_valid());
    }

    #[test]
    fn wildcards_match_exactly_one_label() {
        assert!(dns_matches("*.example.com", "a.example.com"));
        assert!(dns_matches("*.Example.com.", "A.example.COM"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("a.example.com", "*.example.com"));
        assert!(!dns_matches("*.com", "example.org"));
    }
}
