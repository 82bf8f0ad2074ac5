//! The policy a cluster's `backendtls` metadata describes, and the identity check against a leaf.
#![forbid(unsafe_code)]

use backendtls_contract::identity::any_matches;
use backendtls_contract::{keys, san_types, Identity, IdentityCheck, PolicyState, Presented};

use crate::pb;
use crate::x509::{CertError, SubjectAltNames};

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
    /// Who checks the identities during the handshake, when the metadata says so (the loader
    /// does; see [`IdentityCheck`]).
    pub identity_checked_by: Option<IdentityCheck>,
}

/// The outcome of [`Policy::check_leaf_pem`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeafCheck {
    Accepted,
    /// None of these names (all of the leaf's) satisfies the policy.
    Refused(SubjectAltNames),
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
    pub identity_checked_by: Option<&'a str>,
    /// A structural problem found while reading (e.g. a SAN entry without its value).
    pub error: Option<String>,
}

impl Policy {
    pub fn from_fields(fields: Fields<'_>) -> Policy {
        let name = fields.policy.unwrap_or("unknown").to_owned();
        let hostname = fields.hostname.unwrap_or_default().to_owned();
        let mut problem = fields.error;
        // The names, by the contract's rules: a name that is not an identity makes the whole
        // policy invalid (the loader would not have served it either).
        let listed: Result<Vec<Identity>, _> = match (&fields.subject_alt_names, &fields.identities)
        {
            (Some(sans), _) => {
                sans.iter().map(|(kind, value)| Identity::from_san(kind, value)).collect()
            }
            (None, Some(flat)) => flat.iter().map(|entry| entry.parse()).collect(),
            (None, None) => Ok(Vec::new()),
        };
        let identities = match listed {
            Ok(listed) if !listed.is_empty() => listed,
            Ok(_) if hostname.is_empty() => {
                problem.get_or_insert_with(|| {
                    "metadata names no hostname or subject_alt_names".into()
                });
                Vec::new()
            }
            Ok(_) => match Identity::hostname(&hostname) {
                Ok(identity) => vec![identity],
                Err(e) => {
                    problem.get_or_insert(e.to_string());
                    Vec::new()
                }
            },
            Err(e) => {
                problem.get_or_insert(e.to_string());
                Vec::new()
            }
        };
        let identity_checked_by = match fields.identity_checked_by.map(IdentityCheck::parse) {
            None => None,
            Some(Some(check)) => Some(check),
            Some(None) => {
                problem.get_or_insert_with(|| {
                    format!(
                        "unknown {} {:?}",
                        keys::IDENTITY_CHECKED_BY,
                        fields.identity_checked_by.unwrap_or_default()
                    )
                });
                None
            }
        };
        if fields.policy.is_none() {
            problem.get_or_insert_with(|| format!("metadata has no {:?}", keys::POLICY));
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
        Policy { name, hostname, identities, state, reason, identity_checked_by }
    }

    /// Parses the `backendtls` struct out of a serialized `envoy.config.core.v3.Metadata`
    /// (the Wasm build's `xds.cluster_metadata`). `None` when the cluster has no such struct.
    pub fn from_metadata_proto(metadata: &[u8]) -> Option<Policy> {
        let values = match pb::filter_metadata(metadata, backendtls_contract::METADATA_NAMESPACE) {
            Ok(Some(values)) => values,
            Ok(None) => return None,
            Err(e) => return Some(Policy::unreadable(e.to_string())),
        };
        let string = |key| pb::string(&values, key);
        let mut fields = Fields {
            policy: string(keys::POLICY),
            hostname: string(keys::HOSTNAME),
            state: string(keys::STATE),
            reason: string(keys::REASON),
            identity_checked_by: string(keys::IDENTITY_CHECKED_BY),
            ..Fields::default()
        };
        let list = |key| values.fields.get(key).map(|v| v.kind.as_ref());
        match list(keys::SUBJECT_ALT_NAMES) {
            None => {}
            Some(Some(pb::Kind::ListValue(entries))) => {
                let mut sans = Vec::with_capacity(entries.values.len());
                for entry in &entries.values {
                    let Some(pb::Kind::StructValue(entry)) = &entry.kind else {
                        fields.error = Some("subject_alt_names entry is not a struct".into());
                        continue;
                    };
                    let kind = pb::string(entry, "type").unwrap_or("");
                    let value_key = if kind == san_types::URI { "uri" } else { "hostname" };
                    match pb::string(entry, value_key) {
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
        if let Some(Some(pb::Kind::ListValue(entries))) = list(keys::IDENTITIES) {
            let strings = entries.values.iter().filter_map(|v| match &v.kind {
                Some(pb::Kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            });
            fields.identities = Some(strings.collect());
        }
        Some(Policy::from_fields(fields))
    }

    fn unreadable(reason: String) -> Policy {
        Policy::from_fields(Fields { error: Some(reason), ..Fields::default() })
    }

    pub fn is_valid(&self) -> bool {
        self.state == PolicyState::Valid
    }

    /// Whether one presented name satisfies the policy ([`Identity::matches`]).
    pub fn accepts_name(&self, presented: Presented<'_>) -> bool {
        self.identities.iter().any(|identity| identity.matches(presented))
    }

    /// Whether any of the leaf's SANs satisfies the policy (all of them are considered).
    pub fn accepts(&self, sans: &SubjectAltNames) -> bool {
        any_matches(&self.identities, sans.presented())
    }

    /// Whether the leaf certificate, in PEM as the Wasm build reads `upstream.peer_certificate`,
    /// carries a name the policy accepts.
    pub fn check_leaf_pem(&self, pem: &[u8]) -> Result<LeafCheck, CertError> {
        let sans = crate::x509::subject_alt_names(&crate::x509::pem_to_der(pem)?)?;
        Ok(if self.accepts(&sans) { LeafCheck::Accepted } else { LeafCheck::Refused(sans) })
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

    fn dns(name: &str) -> Identity {
        Identity::dns(name).unwrap()
    }

    fn uri(uri: &str) -> Identity {
        Identity::uri(uri).unwrap()
    }

    #[test]
    fn hostname_is_the_identity_without_sans() {
        let p = Policy::from_fields(valid_fields());
        assert!(p.is_valid());
        assert_eq!(p.identities, [dns("example.com")]);
        assert!(p.accepts_name(Presented::Dns("EXAMPLE.com")));
        assert!(!p.accepts_name(Presented::Dns("other.com")));
        assert_eq!(p.identity_checked_by, None);
    }

    #[test]
    fn sans_replace_the_hostname() {
        let p = Policy::from_fields(Fields {
            subject_alt_names: Some(vec![("Hostname", "a.example"), ("URI", "spiffe://td/x")]),
            ..valid_fields()
        });
        assert!(p.is_valid(), "{p:?}");
        assert!(!p.accepts_name(Presented::Dns("example.com")));
        assert!(p.accepts_name(Presented::Dns("a.example")));
        assert!(p.accepts_name(Presented::Uri("spiffe://td/x")));
        let leaf =
            SubjectAltNames { dns: vec!["first.example".into(), "a.example".into()], uri: vec![] };
        assert!(p.accepts(&leaf), "a matching SAN that is not the first must be accepted");
    }

    #[test]
    fn a_policy_wildcard_accepts_one_label() {
        // Issue 11: with the filter on, a policy `*.example.com` and a certificate for
        // `a.example.com` was refused with identity_mismatch.
        let p = Policy::from_fields(Fields {
            subject_alt_names: Some(vec![("Hostname", "*.example.com")]),
            ..valid_fields()
        });
        let leaf = |name: &str| SubjectAltNames { dns: vec![name.into()], uri: vec![] };
        assert!(p.accepts(&leaf("a.example.com")));
        assert!(!p.accepts(&leaf("example.com")));
        assert!(!p.accepts(&leaf("a.b.example.com")));
    }

    #[test]
    fn flat_identities_are_read_when_sans_are_absent() {
        let p = Policy::from_fields(Fields {
            identities: Some(vec!["dns:a.example", "uri:spiffe://td/x"]),
            identity_checked_by: Some("envoy_san_matchers"),
            ..valid_fields()
        });
        assert_eq!(p.identities, [dns("a.example"), uri("spiffe://td/x")]);
        assert_eq!(p.identity_checked_by, Some(IdentityCheck::EnvoySanMatchers));
        for bad in ["ip:1.2.3.4", "dns:*.com", "dns:10.0.0.5"] {
            let p = Policy::from_fields(Fields { identities: Some(vec![bad]), ..valid_fields() });
            assert!(!p.is_valid(), "{bad}");
            assert!(p.reason.as_deref().unwrap().contains(bad.split_once(':').unwrap().1), "{p:?}");
        }
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
            Fields { hostname: Some("10.0.0.5"), ..valid_fields() },
            Fields { identity_checked_by: Some("somebody"), ..valid_fields() },
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
                ("identity_checked_by", V::S("backendtls_validator")),
                ("state", V::S("valid")),
            ],
        )]);
        let p = Policy::from_metadata_proto(&md).unwrap();
        assert_eq!(p.name, "default/nginx-tls-policy");
        assert!(p.is_valid());
        assert_eq!(p.identities, [dns("a.example"), uri("spiffe://td/x")]);
        assert_eq!(p.identity_checked_by, Some(IdentityCheck::BackendtlsValidator));
        assert_eq!(Policy::from_metadata_proto(&metadata(&[("other", vec![])])), None);
        let broken = Policy::from_metadata_proto(&md[..md.len() - 2]).unwrap();
        assert!(!broken.is_valid());
    }
}
