//! What the filter reads from X.509 certificates: every DNS and URI subjectAltName of a leaf, a
//! certificate's validity window (the certificate validator quotes it in its error details), and
//! the DER of the leaf Envoy hands the Wasm build as PEM.
//!
//! Two implementations behind one API, chosen by the numbers in filter/README.md ("Hand-written
//! code or libraries"):
//! - the dynamic module (host) uses libraries: [`x509-parser`](https://docs.rs/x509-parser) for
//!   the certificate and `time` for RFC 3339;
//! - the Wasm build uses a minimal hand-written DER walk ([`walk`]), because x509-parser would
//!   more than double the module. Feature `wasm-x509-parser` builds the Wasm module on the
//!   library instead, to measure it.
//!
//! The PEM text is decoded with the `base64` crate in both builds ([`pem_to_der`]).
#![forbid(unsafe_code)]

/// Why a certificate could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not a DER certificate, or its SAN extension or validity does not parse.
    #[error("unreadable certificate: {0}")]
    Malformed(&'static str),
    /// No `-----BEGIN CERTIFICATE-----` ... `-----END CERTIFICATE-----` block.
    #[error("unreadable certificate: no PEM CERTIFICATE block")]
    NoPem,
    /// The PEM block's body is not base64.
    #[error("unreadable certificate: invalid base64")]
    Base64,
}

/// The DNS and URI names of a certificate's subjectAltName extension, in certificate order.
/// (Other name types, IP addresses among them, never satisfy a policy and are not kept.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectAltNames {
    pub dns: Vec<String>,
    pub uri: Vec<String>,
}

impl SubjectAltNames {
    /// The names as [`backendtls_contract::Identity::matches`] takes them.
    pub fn presented(&self) -> impl Iterator<Item = backendtls_contract::Presented<'_>> {
        use backendtls_contract::Presented;
        let dns = self.dns.iter().map(|name| Presented::Dns(name));
        dns.chain(self.uri.iter().map(|uri| Presented::Uri(uri)))
    }
}

/// A certificate's validity window, in seconds since the Unix epoch (times before 1970 read as 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: u64,
    pub not_after: u64,
}

/// The hand-written DER walk: the Wasm build's reader; on the host only in unit tests and for
/// the fuzz targets (feature `handwritten`, differential against x509-parser), never in the
/// dynamic module.
#[cfg(any(target_arch = "wasm32", test, feature = "handwritten"))]
pub mod walk;

#[cfg(any(not(target_arch = "wasm32"), feature = "wasm-x509-parser"))]
mod library;

#[cfg(any(not(target_arch = "wasm32"), feature = "wasm-x509-parser"))]
pub use library::{format_rfc3339, subject_alt_names, validity};

#[cfg(all(target_arch = "wasm32", not(feature = "wasm-x509-parser")))]
pub use walk::{format_rfc3339, subject_alt_names, validity};

/// The DER of the first `CERTIFICATE` block of a PEM text (Envoy's `upstream.peer_certificate`
/// is the leaf alone, URL-encoded or not depending on version: both are accepted).
pub fn pem_to_der(pem: &[u8]) -> Result<Vec<u8>, CertError> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    use base64::Engine as _;
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    const STANDARD: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let decoded;
    let pem = if find(pem, b"%2D").is_some() || find(pem, b"%0A").is_some() {
        decoded = percent_decode(pem);
        &decoded[..]
    } else {
        pem
    };
    let start = find(pem, BEGIN).ok_or(CertError::NoPem)? + BEGIN.len();
    let len = find(&pem[start..], END).ok_or(CertError::NoPem)?;
    let body: Vec<u8> =
        pem[start..start + len].iter().copied().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(body).map_err(|_| CertError::Base64)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
