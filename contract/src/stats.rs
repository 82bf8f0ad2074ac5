//! Stat names. One family, `backendtls`, with the policy as the last part of every name so that
//! it can carry dots; Envoy adds its prefix (`wasmcustom.` for Wasm, the dynamic module's
//! `metrics_namespace`, which the loader sets to [`FAMILY`]).
//!
//! ```text
//! backendtls.requests.policy.<ns>/<name>
//! backendtls.tls_requests.version.<TLSv1_2|TLSv1_3|...>.policy.<ns>/<name>
//! backendtls.handshakes.policy.<ns>/<name>
//! backendtls.verify_failures.reason.<reason>.policy.<ns>/<name>
//! backendtls.rejections.reason.<reason>.policy.<ns>/<name>
//! backendtls.handshakes_verified.policy.<ns>/<name>                  (dynamic-module validator)
//! backendtls.handshake_failures.reason.<reason>.policy.<ns>/<name>  (dynamic-module validator)
//! ```
//!
//! The `reason` values are the labels of [`crate::VerifyFailure`], [`crate::RejectReason`] and
//! [`crate::HandshakeFailure`].

pub const FAMILY: &str = "backendtls";
pub const REQUESTS: &str = "requests";
pub const TLS_REQUESTS: &str = "tls_requests";
pub const HANDSHAKES: &str = "handshakes";
pub const VERIFY_FAILURES: &str = "verify_failures";
pub const REJECTIONS: &str = "rejections";
/// Counted by the dynamic-module certificate validator, once per upstream handshake it checked:
/// verified, or failed by `reason`.
pub const HANDSHAKES_VERIFIED: &str = "handshakes_verified";
pub const HANDSHAKE_FAILURES: &str = "handshake_failures";
/// A gauge set by the dynamic-module certificate validator: per policy, the earliest not-after
/// (Unix seconds) of the backend leaf certificates it saw in the last
/// [`NOT_AFTER_WINDOW_SECONDS`], so that Prometheus can alert before a backend certificate
/// expires (`backendtls.backend_certificate_not_after_seconds.policy.<ns>/<name>`).
pub const BACKEND_CERTIFICATE_NOT_AFTER: &str = "backend_certificate_not_after_seconds";
/// How long a leaf counts towards [`BACKEND_CERTIFICATE_NOT_AFTER`] after it was last presented:
/// a rotated certificate stops holding the gauge down once no backend presents it any more.
pub const NOT_AFTER_WINDOW_SECONDS: u64 = 600;

/// Label names, in the order they appear in the flat names above.
pub const LABEL_POLICY: &str = "policy";
pub const LABEL_VERSION: &str = "version";
pub const LABEL_REASON: &str = "reason";

/// Values of the `version` label (Envoy's `TLSv1.3` with the dot replaced, since a dot separates
/// name parts); `other` for anything Envoy may report in future.
pub const TLS_VERSIONS: [&str; 5] = ["TLSv1", "TLSv1_1", "TLSv1_2", "TLSv1_3", "other"];

/// Envoy `stats_config.stats_tags` rules (tag name, regex) that turn the parts of the Wasm build's
/// flat names into Prometheus labels. The dynamic module defines labelled metrics natively and
/// needs none. In each regex the first group is cut from the name and the second is the tag's
/// value.
pub const TAG_RULES: &[(&str, &str)] = &[
    ("version", r"^wasmcustom\.backendtls\.tls_requests(\.version\.([^.]+))"),
    ("reason", r"^wasmcustom\.backendtls\.(?:verify_failures|rejections)(\.reason\.([^.]+))"),
    ("policy", r"^wasmcustom\.backendtls\.[^.]+(?:\.[^.]+\.[^.]+)?(\.policy\.(.+))$"),
];
