//! The same cases through both readers: the library (dynamic module) and the walk (Wasm).
use super::*;
use rcgen::{CertificateParams, KeyPair, SanType};

type Names = fn(&[u8]) -> Result<SubjectAltNames, CertError>;
type Window = fn(&[u8]) -> Result<Validity, CertError>;
type Rfc3339 = fn(u64) -> String;

const READERS: [(&str, Names, Window, Rfc3339); 2] = [
    ("x509-parser", library::subject_alt_names, library::validity, library::format_rfc3339),
    ("walk", walk::subject_alt_names, walk::validity, walk::format_rfc3339),
];

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
    for (reader, names, ..) in READERS {
        let names = names(c.der()).unwrap();
        assert_eq!(names.dns, ["first.example", "example.com"], "{reader}");
        assert_eq!(names.uri, ["spiffe://cluster/ns/default"], "{reader}");
    }
    assert_eq!(pem_to_der(c.pem().as_bytes()).unwrap(), c.der().to_vec());
}

#[test]
fn certificate_without_sans_has_none() {
    let c = cert(vec![]);
    for (reader, names, ..) in READERS {
        assert_eq!(names(c.der()).unwrap(), SubjectAltNames::default(), "{reader}");
    }
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
    for (reader, _, validity, format) in READERS {
        let window = validity(c.der()).unwrap();
        assert_eq!(format(window.not_before), "2001-02-03T00:00:00Z", "{reader}");
        assert_eq!(format(window.not_after), "2051-12-31T00:00:00Z", "{reader}");
        assert_eq!(window.not_before, 981_158_400, "{reader}");
        assert_eq!(format(1_709_208_000), "2024-02-29T12:00:00Z", "{reader}");
        assert_eq!(format(0), "1970-01-01T00:00:00Z", "{reader}");
    }
}

#[test]
fn both_time_encodings_parse() {
    use walk::{parse_time, TAG_GENERALIZED_TIME, TAG_UTC_TIME};
    assert_eq!(parse_time((TAG_UTC_TIME, b"700101000000Z")), Ok(0));
    assert_eq!(parse_time((TAG_UTC_TIME, b"491231235959Z")), Ok(2_524_607_999));
    assert_eq!(parse_time((TAG_GENERALIZED_TIME, b"20240229120000Z")), Ok(1_709_208_000));
    assert!(parse_time((TAG_UTC_TIME, b"700101000000")).is_err());
    assert!(parse_time((TAG_GENERALIZED_TIME, b"2024022912000Z")).is_err());
    assert!(parse_time((TAG_UTC_TIME, b"701301000000Z")).is_err());
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let c = cert(vec![SanType::DnsName("example.com".try_into().unwrap())]);
    let der = c.der().to_vec();
    for (_, names, validity, _) in READERS {
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            assert!(names(&der[..cut]).is_err());
            assert!(validity(&der[..cut]).is_err());
        }
        assert!(names(b"\x30\x84\xff\xff\xff\xff").is_err());
    }
    assert_eq!(pem_to_der(b"no pem here"), Err(CertError::NoPem));
    let bad = b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----";
    assert_eq!(pem_to_der(bad), Err(CertError::Base64));
}
