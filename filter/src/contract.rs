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
/// ```
pub mod stats {
    pub const FAMILY: &str = "backendtls";
    pub const REQUESTS: &str = "requests";
    pub const TLS_REQUESTS: &str = "tls_requests";
    pub const HANDSHAKES: &str = "handshakes";
    pub const VERIFY_FAILURES: &str = "verify_failures";
    pub const REJECTIONS: &str = "rejections";

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
    fn policy_state_round_trips() {
        for state in [PolicyState::Valid, PolicyState::Invalid] {
            assert_eq!(PolicyState::parse(state.as_str()), Some(state));
        }
        assert_eq!(PolicyState::parse("Valid"), None);
    }
}
