//! The subjectAltName extension and validity window of an X.509 certificate: a minimal DER walk
//! (the Wasm build's reader; see the module docs for why).
//!
//! The filter does not verify signatures or chains (Envoy did that during the handshake), so a
//! full X.509 parser would be dead weight in the Wasm module. This walks
//! `Certificate -> tbsCertificate -> extensions -> subjectAltName -> GeneralNames` and nothing else
//! (plus the validity window).
#![forbid(unsafe_code)]

use super::{CertError, SubjectAltNames, Validity};

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
            return Err(CertError::Malformed("truncated DER"));
        };
        let (len, rest) = if first & 0x80 == 0 {
            (usize::from(*first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err(CertError::Malformed("bad DER length"));
            }
            let len = rest[..n].iter().fold(0usize, |acc, b| acc << 8 | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err(CertError::Malformed("DER value runs past its container"));
        }
        let (contents, rest) = rest.split_at(len);
        self.0 = rest;
        Ok((*tag, contents))
    }

    fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], CertError> {
        match self.next()? {
            (t, contents) if t == tag => Ok(contents),
            _ => Err(CertError::Malformed(what)),
        }
    }
}

/// The tbsCertificate's fields after the optional version, with the first `skip` of them
/// (serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ...) read past.
fn tbs_fields(der: &[u8], skip: usize) -> Result<Der<'_>, CertError> {
    let certificate = Der(der).expect(TAG_SEQUENCE, "certificate is not a SEQUENCE")?;
    let mut tbs = Der(Der(certificate).expect(TAG_SEQUENCE, "tbsCertificate is not a SEQUENCE")?);
    if tbs.peek_tag() == Some(TAG_VERSION) {
        tbs.next()?;
    }
    for _ in 0..skip {
        tbs.next()?;
    }
    Ok(tbs)
}

/// The subjectAltName DNS and URI names of a DER certificate. A certificate without the
/// extension has none.
pub fn subject_alt_names(der: &[u8]) -> Result<SubjectAltNames, CertError> {
    // Past serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo.
    let mut tbs = tbs_fields(der, 6)?;
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
                let name = std::str::from_utf8(name)
                    .map_err(|_| CertError::Malformed("name not ASCII"))?;
                list.push(name.to_owned());
            }
        }
    }
    Ok(names)
}

/// `UTCTime` and `GeneralizedTime`, the two encodings of an X.509 `Time`.
pub(super) const TAG_UTC_TIME: u8 = 0x17;
pub(super) const TAG_GENERALIZED_TIME: u8 = 0x18;

/// The validity window of a DER certificate. The certificate validator uses it only to say
/// *which* certificate of a chain webpki found expired; webpki itself decides validity.
pub fn validity(der: &[u8]) -> Result<Validity, CertError> {
    // Past serialNumber, signature, issuer.
    let mut tbs = tbs_fields(der, 3)?;
    let mut window = Der(tbs.expect(TAG_SEQUENCE, "validity is not a SEQUENCE")?);
    let not_before = parse_time(window.next()?)?;
    let not_after = parse_time(window.next()?)?;
    Ok(Validity { not_before, not_after })
}

/// `YYMMDDHHMMSSZ` (UTCTime; years 50-99 are 19xx, RFC 5280) or `YYYYMMDDHHMMSSZ`.
pub(super) fn parse_time((tag, text): (u8, &[u8])) -> Result<u64, CertError> {
    let digits = |range: std::ops::Range<usize>| -> Result<i64, CertError> {
        let part = text.get(range).ok_or(CertError::Malformed("truncated time"))?;
        part.iter().try_fold(0i64, |acc, &c| match c {
            b'0'..=b'9' => Ok(acc * 10 + i64::from(c - b'0')),
            _ => Err(CertError::Malformed("time is not digits")),
        })
    };
    let (year, rest) = match tag {
        TAG_UTC_TIME if text.len() == 13 => {
            let yy = digits(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        TAG_GENERALIZED_TIME if text.len() == 15 => (digits(0..4)?, 4),
        _ => return Err(CertError::Malformed("time is neither UTCTime nor GeneralizedTime")),
    };
    if text.last() != Some(&b'Z') {
        return Err(CertError::Malformed("time is not in UTC"));
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
        return Err(CertError::Malformed("time out of range"));
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
