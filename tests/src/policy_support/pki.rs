//! The conformance certificates, plus a client CA and a client certificate.

use crate::certs::CertifiedKey;

/// The harness's CA, which issues server certificates with any SANs and client certificates.
pub use crate::certs::TestCa as Ca;

/// The subject NGINX logs (`$ssl_client_s_dn`) for [`Pki::client_cert`].
pub const CLIENT_COMMON_NAME: &str = "backendtls e2e gateway client";
pub const BACKEND_DNS_SANS: [&str; 2] = ["abc.example.com", "other.example.com"];
pub const BACKEND_URI_SAN: &str = "spiffe://abc.example.com/test-identity";

/// The conformance suite's certificates, plus a client CA and a client certificate.
pub struct Pki {
    /// Signed the backend certificate; held by ConfigMap [`CA_CONFIG_MAP`].
    pub ca: Ca,
    /// Trusts nothing the backend presents; held by ConfigMap [`MISMATCH_CA_CONFIG_MAP`].
    pub mismatch_ca: Ca,
    /// CN `default`, DNS SANs abc.example.com and other.example.com, URI SAN
    /// spiffe://abc.example.com/test-identity.
    pub backend_cert: CertifiedKey,
    /// Signed [`Pki::client_cert`]; NGINX requires client certificates from it when asked to.
    pub client_ca: Ca,
    pub client_cert: CertifiedKey,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = Ca::new("backendtls e2e conformance CA");
        let backend_cert = ca.issue_server("default", &BACKEND_DNS_SANS, &[BACKEND_URI_SAN]);
        let client_ca = Ca::new("backendtls e2e client CA");
        let client_cert = client_ca.issue_client(CLIENT_COMMON_NAME);
        Pki {
            ca,
            mismatch_ca: Ca::new("backendtls e2e mismatch CA"),
            backend_cert,
            client_ca,
            client_cert,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
