//! The reasons users see: label values of the counters, the per-request `verification` tag, and
//! the filter's answers.

macro_rules! labelled {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order (`ALL[v as usize] == v`).
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value, as in stat names and tags.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// The value a label names.
            pub fn from_label(label: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.label() == label)
            }
        }
    };
}

labelled! {
    /// Why Envoy's upstream TLS handshake failed, as the HTTP filter classifies the transport
    /// failure reason: the `reason` label of `verify_failures`.
    VerifyFailure {
        UnknownCa => "unknown_ca",
        SanMismatch => "san_mismatch",
        Expired => "expired",
        HandshakeError => "handshake_error",
    }
}

labelled! {
    /// Why the HTTP filter refused a request or replaced a response: the `reason` label of
    /// `rejections`.
    RejectReason {
        Plaintext => "plaintext",
        IdentityMismatch => "identity_mismatch",
        InvalidPolicy => "invalid_policy",
    }
}

labelled! {
    /// Why the certificate validator refused a handshake: the `reason` label of
    /// `handshake_failures`, and the word after [`crate::validator::DETAIL_PREFIX`] in its error
    /// detail.
    HandshakeFailure {
        /// No path from the leaf to the policy's trust anchors.
        UnknownIssuer => "unknown_issuer",
        /// A certificate of the path (or its anchor) is past its notAfter.
        Expired => "expired",
        /// A certificate of the path (or its anchor) is before its notBefore.
        NotYetValid => "not_yet_valid",
        /// The chain is trusted, but the leaf names none of the policy's identities.
        NameMismatch => "name_mismatch",
        /// A certificate's extended key usage excludes TLS server authentication.
        BadKeyUsage => "bad_key_usage",
        /// A signature does not verify, or uses an algorithm (or key) that is not accepted.
        BadSignature => "bad_signature",
        /// The chain breaks a structural rule: an issuer that is not a CA, a CA certificate as
        /// the leaf, path length or name constraints, or a path too deep or too costly to build.
        InvalidChain => "invalid_chain",
        /// A certificate does not parse, or the backend sent none.
        Malformed => "malformed",
        /// The validator could not decide (a bug, or it was used for a downstream certificate).
        Internal => "internal",
    }
}

labelled! {
    /// The per-request outcome the HTTP filter records in the `verification` tag.
    Verification {
        /// TLS, and the leaf certificate carries a name the policy accepts.
        Verified => "verified",
        /// The request failed before any upstream response because the TLS handshake failed.
        UnknownCa => "unknown_ca",
        SanMismatch => "san_mismatch",
        Expired => "expired",
        HandshakeError => "handshake_error",
        /// The filter replaced or refused the response.
        Plaintext => "plaintext",
        IdentityMismatch => "identity_mismatch",
        InvalidPolicy => "invalid_policy",
    }
}

impl Verification {
    pub const fn as_str(self) -> &'static str {
        self.label()
    }
}

impl From<VerifyFailure> for Verification {
    fn from(failure: VerifyFailure) -> Verification {
        match failure {
            VerifyFailure::UnknownCa => Verification::UnknownCa,
            VerifyFailure::SanMismatch => Verification::SanMismatch,
            VerifyFailure::Expired => Verification::Expired,
            VerifyFailure::HandshakeError => Verification::HandshakeError,
        }
    }
}

impl From<RejectReason> for Verification {
    fn from(reason: RejectReason) -> Verification {
        match reason {
            RejectReason::Plaintext => Verification::Plaintext,
            RejectReason::IdentityMismatch => Verification::IdentityMismatch,
            RejectReason::InvalidPolicy => Verification::InvalidPolicy,
        }
    }
}

impl RejectReason {
    /// HTTP status of the filter's answer.
    pub const fn status(self) -> u32 {
        match self {
            RejectReason::InvalidPolicy => 503,
            RejectReason::Plaintext | RejectReason::IdentityMismatch => 502,
        }
    }

    /// `%RESPONSE_CODE_DETAILS%` of the filter's answer.
    pub const fn details(self) -> &'static str {
        match self {
            RejectReason::Plaintext => "backendtls_plaintext_upstream",
            RejectReason::IdentityMismatch => "backendtls_identity_mismatch",
            RejectReason::InvalidPolicy => "backendtls_invalid_policy",
        }
    }

    /// The header on the filter's answers that names the reason.
    pub const HEADER: &'static str = "x-backendtls-reject";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order_and_labels_round_trip() {
        for (i, v) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
            assert_eq!(HandshakeFailure::from_label(v.label()), Some(*v));
        }
        for (i, v) in Verification::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
        }
        assert_eq!(VerifyFailure::from_label("nope"), None);
        assert_eq!(Verification::from(RejectReason::Plaintext).as_str(), "plaintext");
    }
}
