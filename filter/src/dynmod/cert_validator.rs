//! The dynamic module as Envoy's upstream certificate validator
//! (`envoy.tls.cert_validator.dynamic_modules`, `validator_name: backendtls`).
//!
//! The verification itself is [`crate::validator`] (rustls-webpki, host-tested); this adapter
//! parses the configuration once per cluster TLS context, runs the check for each handshake,
//! hands Envoy the error detail and alert, and counts the outcome per policy
//! ([`super::handshake_counters`]).
#![forbid(unsafe_code)]

use crate::validator::{x509, UnixTime};

use super::ffi::{self, LogLevel, ValidationCall};
use super::handshake_counters;
use crate::validator::{Alert, ConfigError, FailureReason, Rejection, ValidatorConfig};
use backendtls_contract::validator::VALIDATOR_NAME;

/// One cluster TLS context's validator. Envoy shares it between its workers, which may verify
/// concurrently: it holds only immutable data.
#[derive(Debug)]
pub(crate) struct CertValidator {
    config: ValidatorConfig,
}

/// Why Envoy gets no validator for a cluster TLS context (it then rejects the cluster).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("unknown certificate validator_name {0:?} (this module provides {VALIDATOR_NAME:?})")]
    UnknownName(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What the hook returns to Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Verified,
    Failed { alert: u8 },
}

impl CertValidator {
    pub(crate) fn new(name: &[u8], config: &[u8]) -> Result<CertValidator, SetupError> {
        if name != VALIDATOR_NAME.as_bytes() {
            return Err(SetupError::UnknownName(String::from_utf8_lossy(name).into_owned()));
        }
        let config = ValidatorConfig::parse(config)?;
        ffi::log(
            LogLevel::Info,
            &format!(
                "backendtls: certificate validator for policy {}: identities [{}], {} trust \
                 anchor(s){}",
                config.policy(),
                config.identities().join(", "),
                config.trust_anchor_count(),
                if handshake_counters::available() {
                    ""
                } else {
                    " (no backendtls HTTP filter configured yet: no per-policy counters until \
                     one is)"
                }
            ),
        );
        Ok(CertValidator { config })
    }

    /// Verifies one upstream handshake's chain (DER, leaf first) and counts the outcome.
    pub(crate) fn verify(
        &self,
        envoy: &ValidationCall,
        chain: &[&[u8]],
        _sni: &[u8],
        is_server: bool,
    ) -> Verdict {
        let outcome = if is_server {
            // The validator's configuration describes a backend; a downstream client certificate
            // is nothing it can judge.
            Err(Rejection {
                reason: FailureReason::Internal,
                alert: Alert::InternalError,
                message: format!(
                    "policy {}: this validator checks backends (upstream TLS), not client \
                     certificates",
                    self.config.policy()
                ),
            })
        } else {
            self.config.verify(chain, UnixTime::now())
        };
        if !is_server {
            // Expiry is worth knowing whatever else is wrong with the chain (an expired leaf most
            // of all); a leaf that does not parse has no date to report.
            if let Some(validity) = chain.first().and_then(|leaf| x509::validity(leaf).ok()) {
                handshake_counters::record_not_after(self.config.policy(), validity.not_after);
            }
        }
        match outcome {
            Ok(()) => {
                handshake_counters::record(self.config.policy(), None);
                Verdict::Verified
            }
            Err(rejection) => {
                handshake_counters::record(self.config.policy(), Some(rejection.reason));
                envoy.set_error_details(&rejection.to_string());
                Verdict::Failed { alert: rejection.alert as u8 }
            }
        }
    }

    /// Mixed by Envoy into the TLS session-id context: a different policy configuration never
    /// resumes another's sessions.
    pub(crate) fn digest(&self) -> &[u8] {
        self.config.digest()
    }
}
