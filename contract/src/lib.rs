//! The contract between the backendtls loader and filter, defined once.
//!
//! Everything a user can see or write by hand lives here: how clusters are named, the metadata
//! namespace on clusters with its keys and values, the stat names and their reason labels, the
//! certificate validator's configuration, and the rule that decides whether a backend
//! certificate's names satisfy a policy ([`Identity::matches`]). The loader writes these values
//! into Envoy's configuration (and turns the identity rule into Envoy SAN matchers); the filter
//! and the certificate validator read them back. A person writing a static Envoy config by hand
//! uses the same names (see README, "Contracts").
//!
//! serde is the only dependency, so the crate builds for the host and for `wasm32-wasip1`.
#![forbid(unsafe_code)]

pub mod identity;
#[cfg(any(test, feature = "test-cases"))]
pub mod identity_cases;
pub mod reasons;
pub mod stats;
pub mod validator;

pub use identity::{san_types, Identity, IdentityError, Presented};
pub use reasons::{HandshakeFailure, RejectReason, Verification, VerifyFailure};

/// Namespace under `metadata.filter_metadata` on a cluster, and the dynamic-metadata namespace the
/// filter writes per request.
pub const METADATA_NAMESPACE: &str = "backendtls";

/// Keys of the `backendtls` metadata struct on a cluster.
pub mod keys {
    /// `"<namespace>/<name>"` of the BackendTLSPolicy that governs the cluster.
    pub const POLICY: &str = "policy";
    /// The policy's `validation.hostname`: the SNI, and the identity unless SANs are given.
    pub const HOSTNAME: &str = "hostname";
    /// The policy's `validation.subjectAltNames`: a list of `{type: Hostname, hostname}` or
    /// `{type: URI, uri}` structs, exactly as in the Gateway API.
    pub const SUBJECT_ALT_NAMES: &str = "subject_alt_names";
    /// [`super::PolicyState`] as a string.
    pub const STATE: &str = "state";
    /// Why the policy is not usable; present only when `state` is `invalid`.
    pub const REASON: &str = "reason";
    /// The same names as `subject_alt_names`, as a list of [`super::Identity`] strings
    /// (`dns:<hostname>` / `uri:<uri>`). The dynamic-module ABI of Envoy 1.40 reads lists of
    /// strings but not lists of structs, so the dynamic-module build takes the SANs from here;
    /// the Wasm build reads `subject_alt_names` and falls back to this key.
    pub const IDENTITIES: &str = "identities";
    /// [`super::IdentityCheck`] as a string: who checks these identities during the handshake.
    /// Absent in hand-written configs unless their author states it.
    pub const IDENTITY_CHECKED_BY: &str = "identity_checked_by";
}

/// Keys the filter writes per request into the dynamic metadata namespace
/// [`METADATA_NAMESPACE`] (dynamic module), or into the JSON object held by the filter state
/// `wasm.backendtls` (Wasm: Envoy 1.40 gives Wasm filters no way to set dynamic metadata).
pub mod tag_keys {
    /// The policy, `"<namespace>/<name>"`.
    pub const POLICY: &str = "policy";
    /// The policy's hostname (the SNI the loader configures).
    pub const HOSTNAME: &str = "hostname";
    /// The upstream TLS version as Envoy reports it (`TLSv1.3`), absent when there was no TLS.
    pub const TLS_VERSION: &str = "tls_version";
    /// [`super::Verification`] as a string.
    pub const VERIFICATION: &str = "verification";
}

/// Whether the policy that governs a cluster can be enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyState {
    /// The policy resolved: TLS with the policy's trust and identity.
    Valid,
    /// The policy applies but cannot be met (e.g. no usable CA): requests must fail with a 5xx.
    Invalid,
}

impl PolicyState {
    pub const fn as_str(self) -> &'static str {
        match self {
            PolicyState::Valid => "valid",
            PolicyState::Invalid => "invalid",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "valid" => Some(PolicyState::Valid),
            "invalid" => Some(PolicyState::Invalid),
            _ => None,
        }
    }
}

/// Who checks, during the upstream TLS handshake, that the backend's certificate carries one of
/// the policy's identities (metadata key [`keys::IDENTITY_CHECKED_BY`]). The loader writes it
/// next to the TLS context it generates from the same identities.
///
/// The HTTP filter's dynamic module sees only the first DNS and URI SAN of the leaf (Envoy 1.40's
/// ABI exposes no more); when neither matches, it relies on this statement instead of failing
/// closed, because the handshake already required a match among all of the leaf's SANs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityCheck {
    /// Envoy's default validator with `match_typed_subject_alt_names` generated from the
    /// identities by the loader.
    EnvoySanMatchers,
    /// The backendtls certificate validator (dynamic module), configured with the identities.
    BackendtlsValidator,
}

impl IdentityCheck {
    pub const fn as_str(self) -> &'static str {
        match self {
            IdentityCheck::EnvoySanMatchers => "envoy_san_matchers",
            IdentityCheck::BackendtlsValidator => "backendtls_validator",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [IdentityCheck::EnvoySanMatchers, IdentityCheck::BackendtlsValidator]
            .into_iter()
            .find(|check| check.as_str() == value)
    }
}

/// The Envoy cluster name of a Service port: `kube_<namespace>_<service>_<port>`, the scheme
/// kgateway uses, so stats such as `cluster.kube_default_nginx_8443.ssl.handshake` read the same.
pub fn cluster_name(namespace: &str, service: &str, port: u16) -> String {
    format!("kube_{namespace}_{service}_{port}")
}

/// The SDS secret name of a Gateway listener certificate: the Kubernetes Secret
/// `<namespace>/<name>` it comes from (`backendtls_listener_<namespace>_<name>`; Kubernetes names
/// hold no `_`). Stable across the Secret's content, so rotating the certificate changes the
/// secret's version, not the Envoy listener that references it.
pub fn listener_certificate_secret_name(namespace: &str, name: &str) -> String {
    format!("backendtls_listener_{namespace}_{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_certificate_secret_names_follow_the_secret() {
        assert_eq!(
            listener_certificate_secret_name("infra", "tls-cert"),
            "backendtls_listener_infra_tls-cert"
        );
    }

    #[test]
    fn cluster_names_follow_kgateway() {
        assert_eq!(cluster_name("default", "nginx", 8443), "kube_default_nginx_8443");
    }

    #[test]
    fn states_and_checks_round_trip() {
        for state in [PolicyState::Valid, PolicyState::Invalid] {
            assert_eq!(PolicyState::parse(state.as_str()), Some(state));
        }
        assert_eq!(PolicyState::parse("Valid"), None);
        for check in [IdentityCheck::EnvoySanMatchers, IdentityCheck::BackendtlsValidator] {
            assert_eq!(IdentityCheck::parse(check.as_str()), Some(check));
        }
        assert_eq!(IdentityCheck::parse("yes"), None);
    }
}
