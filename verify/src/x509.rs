//! What the verifier reads from a certificate besides what webpki checks: its validity window
//! (to say *which* certificate of a chain is out of date), its subjectAltNames (the identity
//! check, by the contract's rule) and, for reports, its subject and issuer. On x509-parser.

use backendtls_contract::Presented;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Why a certificate could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable certificate: {0}")]
pub struct CertError(String);

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    let (rest, certificate) =
        X509Certificate::from_der(der).map_err(|e| CertError(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError("trailing data after the certificate".into()));
    }
    Ok(certificate)
}

/// A certificate's validity window, in seconds since the Unix epoch (times before 1970 read as 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: u64,
    pub not_after: u64,
}

pub fn validity(der: &[u8]) -> Result<Validity, CertError> {
    let certificate = parse(der)?;
    let window = certificate.validity();
    let seconds = |t: i64| u64::try_from(t).unwrap_or(0);
    Ok(Validity {
        not_before: seconds(window.not_before.timestamp()),
        not_after: seconds(window.not_after.timestamp()),
    })
}

/// The DNS, URI and IP names of a certificate's subjectAltName extension, in certificate order.
/// A certificate without the extension has none (its subject CN is never a name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectAltNames {
    pub dns: Vec<String>,
    pub uri: Vec<String>,
    pub ip: Vec<std::net::IpAddr>,
}

impl SubjectAltNames {
    /// The names as [`backendtls_contract::Identity::matches`] takes them.
    pub fn presented(&self) -> impl Iterator<Item = Presented<'_>> {
        let dns = self.dns.iter().map(|name| Presented::Dns(name));
        let uri = self.uri.iter().map(|uri| Presented::Uri(uri));
        dns.chain(uri).chain(self.ip.iter().map(|ip| Presented::Ip(*ip)))
    }

    /// Every name in the flat form of the contract (`dns:`, `uri:`, `ip:`), for messages.
    pub fn flat(&self) -> Vec<String> {
        use backendtls_contract::identity::{DNS_PREFIX, URI_PREFIX};
        let dns = self.dns.iter().map(|n| format!("{DNS_PREFIX}{n}"));
        let uri = self.uri.iter().map(|u| format!("{URI_PREFIX}{u}"));
        dns.chain(uri).chain(self.ip.iter().map(|ip| format!("ip:{ip}"))).collect()
    }
}

pub fn subject_alt_names(der: &[u8]) -> Result<SubjectAltNames, CertError> {
    let certificate = parse(der)?;
    let mut names = SubjectAltNames::default();
    let extension = certificate.subject_alternative_name().map_err(|e| CertError(e.to_string()))?;
    for name in extension.iter().flat_map(|e| e.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(dns) => names.dns.push((*dns).to_owned()),
            GeneralName::URI(uri) => names.uri.push((*uri).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => names.ip.push(<[u8; 4]>::try_from(*bytes).unwrap().into()),
                16 => names.ip.push(<[u8; 16]>::try_from(*bytes).unwrap().into()),
                _ => return Err(CertError("an iPAddress name is neither 4 nor 16 bytes".into())),
            },
            _ => {}
        }
    }
    Ok(names)
}

/// What a report says about a certificate: who it is, who issued it, its names and window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub subject: String,
    pub issuer: String,
    pub names: SubjectAltNames,
    pub validity: Validity,
}

pub fn summary(der: &[u8]) -> Result<Summary, CertError> {
    let certificate = parse(der)?;
    Ok(Summary {
        subject: certificate.subject().to_string(),
        issuer: certificate.issuer().to_string(),
        names: subject_alt_names(der)?,
        validity: validity(der)?,
    })
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2026-01-31T12:00:00Z`), for messages.
pub fn format_rfc3339(seconds: u64) -> String {
    let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("@{seconds}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_769_860_800), "2026-01-31T12:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [&b""[..], b"\x30", b"\x30\x03\x02\x01\x00", b"not a certificate"] {
            assert!(subject_alt_names(input).is_err());
            assert!(validity(input).is_err());
        }
    }
}
