//! Test certificate authorities and the leaf certificates they issue.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Clone, Debug)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A self-signed certificate authority that can issue server certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl TestCa {
    /// A new CA whose subject is `CN=<common_name>`. Two CAs made here never trust each other's
    /// leaves, which is what the "wrong CA" cases need.
    pub fn new(common_name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate (serverAuth) for `dns_names`, signed by this CA; the first name is
    /// also the subject common name.
    pub fn issue(&self, dns_names: &[&str]) -> CertifiedKey {
        self.issue_server(dns_names.first().copied().unwrap_or(""), dns_names, &[])
    }

    /// A serverAuth certificate with subject `CN=<common_name>` (none when empty), the given DNS
    /// SANs and URI SANs.
    pub fn issue_server(
        &self,
        common_name: &str,
        dns_names: &[&str],
        uris: &[&str],
    ) -> CertifiedKey {
        let names: Vec<String> = dns_names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("valid DNS names");
        for uri in uris {
            let uri = (*uri).try_into().expect("URI SAN is IA5");
            params.subject_alt_names.push(SanType::URI(uri));
        }
        if !common_name.is_empty() {
            params.distinguished_name.push(DnType::CommonName, common_name);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// Like [`TestCa::issue`], valid only from `not_before` to `not_after` (`(year, month, day)`):
    /// for expired and not-yet-valid certificates.
    pub fn issue_with_validity(
        &self,
        dns_names: &[&str],
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> CertifiedKey {
        let names: Vec<String> = dns_names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("valid DNS names");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        self.sign(params)
    }

    /// A clientAuth certificate with subject `CN=<common_name>` and no SANs.
    pub fn issue_client(&self, common_name: &str) -> CertifiedKey {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> CertifiedKey {
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf certificate");
        CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}
