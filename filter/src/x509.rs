//! The subjectAltName extension of an X.509 certificate: a minimal DER walk.
//!
//! The filter needs every DNS and URI name of the upstream leaf, not only the first one Envoy
//! reports. It does not verify signatures or chains (Envoy did that during the handshake), so a
//! full X.509 parser would be dead weight in the Wasm module. This walks
//! `Certificate -> tbsCertificate -> extensions -> subjectAltName -> GeneralNames` and nothing else
//! (plus the validity window, which the certificate validator quotes in its error details).
#![forbid(unsafe_code)]

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertError(&'static str);

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unreadable certificate: {}", self.0)
    }
}

impl std::error::Error for CertError {}

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

const TAG_SEQUENCE: u8 = 0x30;
const TAG_OID: u8 = 0x06;
const TAG_BOOLEAN: u8 = 0x01;
const TAG_OCTET_STRING: u8 = 0x04;
/// `[0] EXPLICIT Version`.
const TAG_VERSION: u8 = 0xa0;
/// `[3] EXPLICIT Extensions`.
const TAG_EXTENSIONS: u8 = 0xa3;
/// GeneralName `[2] IMPLICIT IA5String` (dNSName) and `[6] IMPLICIT IA5String` (URI).
const TAG_DNS_NAME: u8 = 0x82;
const TAG_URI: u8 = 0x86;
/// 2.5.29.17, id-ce-subjectAltName.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// The next TLV: (tag, contents).
    fn next(&mut self) -> Result<(u8, &'a [u8]), CertError> {
        let [tag, first, rest @ ..] = self.0 else {
            return Err(CertError("truncated DER"));
        };
        let (len, rest) = if first & 0x80 == 0 {
            (usize::from(*first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err(CertError("bad DER length"));
            }
            let len = rest[..n].iter().fold(0usize, |acc, b| acc << 8 | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err(CertError("DER value runs past its container"));
        }
        let (contents, rest) = rest.split_at(len);
        self.0 = rest;
        Ok((*tag, contents))
    }

    fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], CertError> {
        match self.next()? {
            (t, contents) if t == tag => Ok(contents),
            _ => Err(CertError(what)),
        }
    }
}

/// The subjectAltName DNS and URI names of a DER certificate. A certificate without the
/// extension has none.
pub fn subject_alt_names(der: &[u8]) -> Result<SubjectAltNames, CertError> {
    let certificate = Der(der).expect(TAG_SEQUENCE, "certificate is not a SEQUENCE")?;
    let mut tbs = Der(Der(certificate).expect(TAG_SEQUENCE, "tbsCertificate is not a SEQUENCE")?);
    if tbs.peek_tag() == Some(TAG_VERSION) {
        tbs.next()?;
    }
    // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo.
    for _ in 0..6 {
        tbs.next()?;
    }
    let mut names = SubjectAltNames::default();
    while !tbs.is_empty() {
        // issuerUniqueID [1] and subjectUniqueID [2] are skipped like any other tag.
        let (tag, contents) = tbs.next()?;
        if tag != TAG_EXTENSIONS {
            continue;
        }
        let mut extensions =
            Der(Der(contents).expect(TAG_SEQUENCE, "extensions are not a SEQUENCE")?);
        while !extensions.is_empty() {
            let mut extension =
                Der(extensions.expect(TAG_SEQUENCE, "extension is not a SEQUENCE")?);
            if extension.expect(TAG_OID, "extension without OID")? != OID_SUBJECT_ALT_NAME {
                continue;
            }
            if extension.peek_tag() == Some(TAG_BOOLEAN) {
                extension.next()?;
            }
            let value = extension.expect(TAG_OCTET_STRING, "extension value")?;
            let mut general_names =
                Der(Der(value).expect(TAG_SEQUENCE, "GeneralNames is not a SEQUENCE")?);
            while !general_names.is_empty() {
                let (tag, name) = general_names.next()?;
                let list = match tag {
                    TAG_DNS_NAME => &mut names.dns,
                    TAG_URI => &mut names.uri,
                    _ => continue,
                };
                let name = std::str::from_utf8(name).map_err(|_| CertError("name not ASCII"))?;
                list.push(name.to_owned());
            }
        }
    }
    Ok(names)
}

/// A certificate's validity window, in seconds since the Unix epoch (times before 1970 read as 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: u64,
    pub not_after: u64,
}

/// `UTCTime` and `GeneralizedTime`, the two encodings of an X.509 `Time`.
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;

/// The validity window of a DER certificate. The certificate validator uses it only to say
/// *which* certificate of a chain webpki found expired; webpki itself decides validity.
pub fn validity(der: &[u8]) -> Result<Validity, CertError> {
    let certificate = Der(der).expect(TAG_SEQUENCE, "certificate is not a SEQUENCE")?;
    let mut tbs = Der(Der(certificate).expect(TAG_SEQUENCE, "tbsCertificate is not a SEQUENCE")?);
    if tbs.peek_tag() == Some(TAG_VERSION) {
        tbs.next()?;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        tbs.next()?;
    }
    let mut window = Der(tbs.expect(TAG_SEQUENCE, "validity is not a SEQUENCE")?);
    let not_before = parse_time(window.next()?)?;
    let not_after = parse_time(window.next()?)?;
    Ok(Validity { not_before, not_after })
}

/// `YYMMDDHHMMSSZ` (UTCTime; years 50-99 are 19xx, RFC 5280) or `YYYYMMDDHHMMSSZ`.
fn parse_time((tag, text): (u8, &[u8])) -> Result<u64, CertError> {
    let digits = |range: std::ops::Range<usize>| -> Result<i64, CertError> {
        let part = text.get(range).ok_or(CertError("truncated time"))?;
        part.iter().try_fold(0i64, |acc, &c| match c {
            b'0'..=b'9' => Ok(acc * 10 + i64::from(c - b'0')),
            _ => Err(CertError("time is not digits")),
        })
    };
    let (year, rest) = match tag {
        TAG_UTC_TIME if text.len() == 13 => {
            let yy = digits(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        TAG_GENERALIZED_TIME if text.len() == 15 => (digits(0..4)?, 4),
        _ => return Err(CertError("time is neither UTCTime nor GeneralizedTime")),
    };
    if text.last() != Some(&b'Z') {
        return Err(CertError("time is not in UTC"));
    }
    let field = |i: usize| digits(rest + 2 * i..rest + 2 * i + 2);
    let (month, day, hour, minute, second) =
        (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(CertError("time out of range"));
    }
    let days = days_from_civil(year, month, day);
    Ok(u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).unwrap_or(0))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2026-01-31T12:00:00Z`), for error details.
pub fn format_rfc3339(seconds: u64) -> String {
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX / 2);
    let rem = seconds % 86_400;
    // The inverse of `days_from_civil`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// The DER of the first `CERTIFICATE` block of a PEM text (Envoy's `upstream.peer_certificate`
/// is the leaf alone, URL-encoded or not depending on version: both are accepted).
pub fn pem_to_der(pem: &[u8]) -> Result<Vec<u8>, CertError> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let decoded;
    let pem = if find(pem, b"%2D").is_some() || find(pem, b"%0A").is_some() {
        decoded = percent_decode(pem);
        &decoded[..]
    } else {
        pem
    };
    let start = find(pem, BEGIN).ok_or(CertError("no BEGIN CERTIFICATE"))? + BEGIN.len();
    let len = find(&pem[start..], END).ok_or(CertError("no END CERTIFICATE"))?;
    base64_decode(&pem[start..start + len])
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

fn base64_decode(text: &[u8]) -> Result<Vec<u8>, CertError> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in text {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' | b' ' | b'\t' => continue,
            _ => return Err(CertError("invalid base64")),
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert(sans: Vec<SanType>) -> rcgen::Certificate {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&KeyPair::generate().unwrap()).unwrap()
    }

    #[test]
    fn reads_every_dns_and_uri_name_in_order() {
        let c = cert(vec![
            SanType::DnsName("first.example".try_into().unwrap()),
            SanType::IpAddress("10.0.0.1".parse().unwrap()),
            SanType::URI("spiffe://cluster/ns/default".try_into().unwrap()),
            SanType::DnsName("example.com".try_into().unwrap()),
        ]);
        let names = subject_alt_names(c.der()).unwrap();
        assert_eq!(names.dns, ["first.example", "example.com"]);
        assert_eq!(names.uri, ["spiffe://cluster/ns/default"]);
        assert_eq!(pem_to_der(c.pem().as_bytes()).unwrap(), c.der().to_vec());
    }

    #[test]
    fn certificate_without_sans_has_none() {
        let names = subject_alt_names(cert(vec![]).der()).unwrap();
        assert_eq!(names, SubjectAltNames::default());
    }

    #[test]
    fn url_encoded_pem_is_accepted() {
        let c = cert(vec![SanType::DnsName("example.com".try_into().unwrap())]);
        let encoded = c.pem().replace('-', "%2D").replace('\n', "%0A").replace('+', "%2B");
        assert_eq!(pem_to_der(encoded.as_bytes()).unwrap(), c.der().to_vec());
    }

    #[test]
    fn reads_the_validity_window() {
        let mut params = CertificateParams::default();
        params.not_before = rcgen::date_time_ymd(2001, 2, 3);
        params.not_after = rcgen::date_time_ymd(2051, 12, 31);
        let c = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        let window = validity(c.der()).unwrap();
        assert_eq!(format_rfc3339(window.not_before), "2001-02-03T00:00:00Z");
        assert_eq!(format_rfc3339(window.not_after), "2051-12-31T00:00:00Z");
        assert_eq!(window.not_before, 981_158_400);
    }

    #[test]
    fn both_time_encodings_parse() {
        assert_eq!(parse_time((TAG_UTC_TIME, b"700101000000Z")), Ok(0));
        assert_eq!(parse_time((TAG_UTC_TIME, b"491231235959Z")), Ok(2_524_607_999));
        assert_eq!(parse_time((TAG_GENERALIZED_TIME, b"20240229120000Z")), Ok(1_709_208_000));
        assert_eq!(format_rfc3339(1_709_208_000), "2024-02-29T12:00:00Z");
        assert!(parse_time((TAG_UTC_TIME, b"700101000000")).is_err());
        assert!(parse_time((TAG_GENERALIZED_TIME, b"2024022912000Z")).is_err());
        assert!(parse_time((TAG_UTC_TIME, b"701301000000Z")).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let c = cert(vec![SanType::DnsName("example.com".try_into().unwrap())]);
        let der = c.der().to_vec();
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            let _ = subject_alt_names(&der[..cut]);
            let _ = validity(&der[..cut]);
        }
        assert!(subject_alt_names(b"\x30\x84\xff\xff\xff\xff").is_err());
        assert!(pem_to_der(b"no pem here").is_err());
        assert!(pem_to_der(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err());
    }
}
