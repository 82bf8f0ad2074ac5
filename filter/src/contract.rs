//! The contract between the loader and the filter, defined once.
//!
//! Everything a user can see or write by hand lives here: the name of the metadata namespace on
//! clusters, its keys and values, and how clusters are named. The loader writes these values into
//! Envoy's configuration; the filter reads them back. A person writing a static Envoy config by hand
//! uses the same names (see README, "Metadata contract").

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
    /// The same names as `subject_alt_names`, flattened to a list of strings `dns:<hostname>` /
    /// `uri:<uri>` (see [`super::identity_string`]). The dynamic-module ABI of Envoy 1.40 reads
    /// lists of strings but not lists of structs, so the dynamic-module build takes the SANs from
    /// here; the Wasm build reads `subject_alt_names` and falls back to this key.
    pub const IDENTITIES: &str = "identities";
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

/// The per-request outcome the filter records under [`tag_keys::VERIFICATION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// TLS, and the leaf certificate carries a name the policy accepts.
    Verified,
    /// The request failed before any upstream response because the TLS handshake failed.
    UnknownCa,
    SanMismatch,
    Expired,
    HandshakeError,
    /// The filter replaced or refused the response.
    Plaintext,
    IdentityMismatch,
    InvalidPolicy,
}

impl Verification {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verification::Verified => "verified",
            Verification::UnknownCa => "unknown_ca",
            Verification::SanMismatch => "san_mismatch",
            Verification::Expired => "expired",
            Verification::HandshakeError => "handshake_error",
            Verification::Plaintext => "plaintext",
            Verification::IdentityMismatch => "identity_mismatch",
            Verification::InvalidPolicy => "invalid_policy",
        }
    }
}

/// Prefix of a DNS entry in [`keys::IDENTITIES`].
pub const IDENTITY_DNS_PREFIX: &str = "dns:";
/// Prefix of a URI entry in [`keys::IDENTITIES`].
pub const IDENTITY_URI_PREFIX: &str = "uri:";

/// One `subject_alt_names` entry in the flat form of [`keys::IDENTITIES`]: `san_type` is
/// [`san_types::HOSTNAME`] or [`san_types::URI`]; anything else gives `None`.
pub fn identity_string(san_type: &str, value: &str) -> Option<String> {
    match san_type {
        san_types::HOSTNAME => Some(format!("{IDENTITY_DNS_PREFIX}{value}")),
        san_types::URI => Some(format!("{IDENTITY_URI_PREFIX}{value}")),
        _ => None,
    }
}

/// The dynamic-module certificate validator's configuration
/// (`envoy.tls.cert_validator.dynamic_modules` with `validator_name`
/// [`validator::VALIDATOR_NAME`]): a JSON object passed as a `google.protobuf.StringValue` in
/// `validator_config`, e.g.
///
/// ```json
/// {"policy": "default/nginx-tls-policy", "hostname": "example.com",
///  "identities": ["dns:example.com"], "trust_anchors_pem": "-----BEGIN CERTIFICATE-----..."}
/// ```
///
/// Everything the handshake check needs is inline, so a CA or identity change is a change of the
/// cluster's TLS context, which Envoy applies to every new upstream connection.
pub mod validator {
    /// `validator_name` in `DynamicModuleCertValidatorConfig`.
    pub const VALIDATOR_NAME: &str = "backendtls";
    /// The `name` of the `custom_validator_config` extension.
    pub const EXTENSION_NAME: &str = "envoy.tls.cert_validator.dynamic_modules";
    /// Keys of the JSON object.
    pub mod keys {
        /// `"<namespace>/<name>"` of the policy: the `policy` label of the validator's counters.
        pub const POLICY: &str = "policy";
        /// The policy's hostname (the SNI); the identity when `identities` is empty.
        pub const HOSTNAME: &str = "hostname";
        /// Names the leaf must carry one of, in the flat form of [`super::super::identity_string`]
        /// (`dns:example.com`, `dns:*.example.com`, `uri:spiffe://...`).
        pub const IDENTITIES: &str = "identities";
        /// The policy's CA certificates (PEM, one or more): the only trust anchors.
        pub const TRUST_ANCHORS_PEM: &str = "trust_anchors_pem";
    }
    /// Every error detail the validator hands Envoy starts with this, then the failure reason
    /// label and `: ` (`backendtls: unknown_issuer: ...`), so that the HTTP filter and access logs
    /// can tell the validator's verdicts apart from BoringSSL's.
    pub const DETAIL_PREFIX: &str = "backendtls: ";
}

/// Values of the `type` field of a subject_alt_names entry.
pub mod san_types {
    pub const HOSTNAME: &str = "Hostname";
    pub const URI: &str = "URI";
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

/// Stat names. One family, `backendtls`, with the policy as the last part of every name so that
/// it can carry dots; Envoy adds its prefix (`wasmcustom.` for Wasm, the dynamic module's
/// `metrics_namespace`, which the loader sets to [`stats::FAMILY`]).
///
/// ```text
/// backendtls.requests.policy.<ns>/<name>
/// backendtls.tls_requests.version.<TLSv1_2|TLSv1_3|...>.policy.<ns>/<name>
/// backendtls.handshakes.policy.<ns>/<name>
/// backendtls.verify_failures.reason.<reason>.policy.<ns>/<name>
/// backendtls.rejections.reason.<reason>.policy.<ns>/<name>
/// backendtls.handshakes_verified.policy.<ns>/<name>                  (dynamic-module validator)
/// backendtls.handshake_failures.reason.<reason>.policy.<ns>/<name>  (dynamic-module validator)
/// ```
pub mod stats {
    pub const FAMILY: &str = "backendtls";
    pub const REQUESTS: &str = "requests";
    pub const TLS_REQUESTS: &str = "tls_requests";
    pub const HANDSHAKES: &str = "handshakes";
    pub const VERIFY_FAILURES: &str = "verify_failures";
    pub const REJECTIONS: &str = "rejections";

    /// Label names, in the order they appear in the flat names above.
    pub const LABEL_POLICY: &str = "policy";
    pub const LABEL_VERSION: &str = "version";
    pub const LABEL_REASON: &str = "reason";

    /// Values of the `version` label (Envoy's `TLSv1.3` with the dot replaced, since a dot
    /// separates name parts); `other` for anything Envoy may report in future.
    pub const TLS_VERSIONS: [&str; 5] = ["TLSv1", "TLSv1_1", "TLSv1_2", "TLSv1_3", "other"];
    /// Values of the `reason` label of `verify_failures`.
    pub const VERIFY_FAILURE_REASONS: [&str; 4] =
        ["unknown_ca", "san_mismatch", "expired", "handshake_error"];
    /// Values of the `reason` label of `rejections`.
    pub const REJECTION_REASONS: [&str; 3] = ["plaintext", "identity_mismatch", "invalid_policy"];

    /// Counted by the dynamic-module certificate validator, once per upstream handshake it
    /// checked (see `validator` below): verified, or failed by `reason`.
    pub const HANDSHAKES_VERIFIED: &str = "handshakes_verified";
    pub const HANDSHAKE_FAILURES: &str = "handshake_failures";
    /// Values of the `reason` label of `handshake_failures`.
    pub const HANDSHAKE_FAILURE_REASONS: [&str; 9] = [
        "unknown_issuer",
        "expired",
        "not_yet_valid",
        "name_mismatch",
        "bad_key_usage",
        "bad_signature",
        "invalid_chain",
        "malformed",
        "internal",
    ];

    /// Envoy `stats_config.stats_tags` rules (tag name, regex) that turn the parts of the Wasm
    /// build's flat names into Prometheus labels. The dynamic module defines labelled metrics
    /// natively and needs none. In each regex the first group is cut from the name and the second
    /// is the tag's value.
    pub const TAG_RULES: &[(&str, &str)] = &[
        ("version", r"^wasmcustom\.backendtls\.tls_requests(\.version\.([^.]+))"),
        ("reason", r"^wasmcustom\.backendtls\.(?:verify_failures|rejections)(\.reason\.([^.]+))"),
        ("policy", r"^wasmcustom\.backendtls\.[^.]+(?:\.[^.]+\.[^.]+)?(\.policy\.(.+))$"),
    ];
}

/// The Envoy cluster name of a Service port: `kube_<namespace>_<service>_<port>`, the scheme
/// kgateway uses, so stats such as `cluster.kube_default_nginx_8443.ssl.handshake` read the same.
pub fn cluster_name(namespace: &str, service: &str, port: u16) -> String {
    format!("kube_{namespace}_{service}_{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_follow_kgateway() {
        assert_eq!(cluster_name("default", "nginx", 8443), "kube_default_nginx_8443");
    }

    #[test]
    fn identity_strings_are_prefixed_by_type() {
        assert_eq!(identity_string("Hostname", "a.example").as_deref(), Some("dns:a.example"));
        assert_eq!(identity_string("URI", "spiffe://x/y").as_deref(), Some("uri:spiffe://x/y"));
        assert_eq!(identity_string("IPAddress", "10.0.0.1"), None);
    }

    #[test]
    fn policy_state_round_trips() {
        for state in [PolicyState::Valid, PolicyState::Invalid] {
            assert_eq!(PolicyState::parse(state.as_str()), Some(state));
        }
        assert_eq!(PolicyState::parse("Valid"), None);
    }
}
