//! The dynamic-module certificate validator (`envoy.tls.cert_validator.dynamic_modules` with
//! `validator_name` [`VALIDATOR_NAME`]): its names and its configuration, which the loader writes
//! and the module reads.

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, IdentityError};

/// `validator_name` in `DynamicModuleCertValidatorConfig`.
pub const VALIDATOR_NAME: &str = "backendtls";
/// The `name` of the `custom_validator_config` extension.
pub const EXTENSION_NAME: &str = "envoy.tls.cert_validator.dynamic_modules";
/// Every error detail the validator hands Envoy starts with this, then the failure reason label
/// ([`crate::HandshakeFailure`]) and `: ` (`backendtls: unknown_issuer: ...`), so that the HTTP
/// filter and access logs can tell the validator's verdicts apart from BoringSSL's.
pub const DETAIL_PREFIX: &str = "backendtls: ";

/// The validator's configuration: JSON in a `google.protobuf.StringValue` (`validator_config`),
/// e.g.
///
/// ```json
/// {"policy": "default/nginx-tls-policy", "hostname": "example.com",
///  "identities": ["dns:example.com"], "trust_anchors_pem": "-----BEGIN CERTIFICATE-----..."}
/// ```
///
/// Everything the handshake check needs is inline, so a CA or identity change is a change of the
/// cluster's TLS context, which Envoy applies to every new upstream connection. Unknown keys are
/// errors, so a typo cannot silently drop a check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `"<namespace>/<name>"` of the policy: the `policy` label of the validator's counters.
    pub policy: String,
    /// The policy's hostname (the SNI); the identity when `identities` is empty.
    pub hostname: String,
    /// Names the leaf must carry one of (flat form, `dns:*.example.com`, `uri:spiffe://...`).
    #[serde(default)]
    pub identities: Vec<Identity>,
    /// The policy's CA certificates (PEM, one or more): the only trust anchors.
    pub trust_anchors_pem: String,
}

impl Config {
    /// The identities to check: `identities`, or the hostname when there are none.
    pub fn effective_identities(&self) -> Result<Vec<Identity>, IdentityError> {
        if self.identities.is_empty() {
            Ok(vec![Identity::hostname(&self.hostname)?])
        } else {
            Ok(self.identities.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_keys() {
        let config = Config {
            policy: "default/p".into(),
            hostname: "example.com".into(),
            identities: vec![Identity::dns("*.example.com").unwrap()],
            trust_anchors_pem: "PEM".into(),
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), config);
        let typo = json.replace("\"identities\"", "\"identitys\"");
        assert!(serde_json::from_str::<Config>(&typo).unwrap_err().to_string().contains("unknown"));
        let bare = r#"{"policy": "a/b", "hostname": "h.example", "trust_anchors_pem": ""}"#;
        let bare: Config = serde_json::from_str(bare).unwrap();
        assert_eq!(bare.effective_identities().unwrap(), [Identity::dns("h.example").unwrap()]);
    }
}
