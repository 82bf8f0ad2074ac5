//! Trust material targets: the loader's CA bundle and `kubernetes.io/tls` key-pair parsing.

use backendtls_loader::objects::{ObjectMeta, Secret};
use backendtls_loader::resolve::trust;

/// `ca_bundle` on the input as PEM text.
pub fn ca_bundle(data: &[u8]) {
    check_bundle(&String::from_utf8_lossy(data));
}

/// `ca_bundle` on the input as DER: each piece between `0xff 0x00` separators is wrapped in its
/// own PEM block, so the X.509 and trust-anchor parsers see arbitrary DER.
pub fn ca_bundle_der(data: &[u8]) {
    let mut pem = String::new();
    for der in split_bytes(data, b"\xff\x00") {
        pem.push_str(&crate::pem("CERTIFICATE", der));
    }
    check_bundle(&pem);
}

fn check_bundle(pem: &str) {
    if let Ok(bundle) = trust::ca_bundle(pem) {
        // What the loader sends Envoy must read back as the same usable certificates.
        assert!(bundle.pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{bundle:?}");
        assert_eq!(bundle.secret_name, backendtls_loader::ir::ca_secret_name(&bundle.pem));
        let again = trust::ca_bundle(&bundle.pem).expect("a usable bundle's PEM is usable");
        assert_eq!(again.pem, bundle.pem);
    }
}

/// `tls_key_pair` on a Secret whose `tls.crt` and `tls.key` are the input's two halves (split
/// at the first `0xff 0x00`), as `stringData` and, base64-encoded, as `data`.
pub fn tls_key_pair(data: &[u8]) {
    let mut halves = split_bytes(data, b"\xff\x00").into_iter();
    let cert = String::from_utf8_lossy(halves.next().unwrap_or_default()).into_owned();
    let key = String::from_utf8_lossy(halves.next().unwrap_or_default()).into_owned();
    let secret = |string_data: bool| {
        let mut secret = Secret {
            metadata: ObjectMeta::default(),
            data: Default::default(),
            string_data: Default::default(),
            kind: Some("kubernetes.io/tls".into()),
        };
        let map = if string_data { &mut secret.string_data } else { &mut secret.data };
        let encode =
            |v: &str| if string_data { v.to_string() } else { crate::base64(v.as_bytes()) };
        map.insert("tls.crt".into(), &encode(&cert));
        map.insert("tls.key".into(), &encode(&key));
        secret
    };
    let plain = trust::tls_key_pair(&secret(true));
    let encoded = trust::tls_key_pair(&secret(false));
    assert_eq!(
        plain.is_ok(),
        encoded.is_ok(),
        "stringData and data disagree: {plain:?} {encoded:?}"
    );
    if let Err(error) = plain {
        // Errors reach logs and /status: never the key material.
        let error = error.to_string();
        let key = key.trim();
        assert!(key.len() < 16 || !error.contains(key), "the error echoes tls.key: {error}");
    }
}

/// Splits at every occurrence of `separator`.
pub fn split_bytes<'a>(data: &'a [u8], separator: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(separator.len()).position(|w| w == separator) {
        out.push(&rest[..at]);
        rest = &rest[at + separator.len()..];
    }
    out.push(rest);
    out
}
