//! The certificate readers on x509-parser (the dynamic module's; see the module docs).
#![forbid(unsafe_code)]

use x509_parser::extensions::GeneralName;

use super::{CertError, SubjectAltNames, Validity};

fn parse(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, CertError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, certificate)| certificate)
        .map_err(|_| CertError::Malformed("not a DER X.509 certificate"))
}

/// The subjectAltName DNS and URI names of a DER certificate. A certificate without the
/// extension has none.
pub fn subject_alt_names(der: &[u8]) -> Result<SubjectAltNames, CertError> {
    let certificate = parse(der)?;
    let extension = certificate
        .subject_alternative_name()
        .map_err(|_| CertError::Malformed("subjectAltName extension"))?;
    let mut names = SubjectAltNames::default();
    for name in extension.iter().flat_map(|e| e.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(name) => names.dns.push((*name).to_owned()),
            GeneralName::URI(uri) => names.uri.push((*uri).to_owned()),
            _ => {}
        }
    }
    Ok(names)
}

/// The validity window of a DER certificate. The certificate validator uses it only to say
/// *which* certificate of a chain webpki found expired; webpki itself decides validity.
pub fn validity(der: &[u8]) -> Result<Validity, CertError> {
    let window = parse(der)?.validity().clone();
    let seconds = |t: x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0);
    Ok(Validity { not_before: seconds(window.not_before), not_after: seconds(window.not_after) })
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2026-01-31T12:00:00Z`), for error details.
pub fn format_rfc3339(seconds: u64) -> String {
    let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("@{seconds}"))
}
