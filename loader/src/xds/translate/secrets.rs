//! SDS secrets: CA bundles and the Gateway's client certificates.

use super::*;

/// CA bundles and client certificates as SDS secrets. Their names are content-addressed, so the
/// name is the version.
pub(super) fn secrets(ir: &Ir) -> Vec<Versioned<tls::Secret>> {
    let mut out = Vec::new();
    for (name, bundle) in &ir.ca_bundles {
        let context = tls::CertificateValidationContext {
            trusted_ca: Some(inline_string(&bundle.pem)),
            ..Default::default()
        };
        let secret = tls::Secret {
            name: name.clone(),
            r#type: Some(tls::secret::Type::ValidationContext(context)),
        };
        out.push(Versioned { version: name.clone(), resource: secret });
    }
    for (name, certificate) in &ir.client_certificates {
        let secret = tls::Secret {
            name: name.clone(),
            r#type: Some(tls::secret::Type::TlsCertificate(client_tls_certificate(certificate))),
        };
        out.push(Versioned { version: name.clone(), resource: secret });
    }
    out
}

pub(super) fn client_tls_certificate(certificate: &ir::ClientCertificate) -> tls::TlsCertificate {
    tls::TlsCertificate {
        certificate_chain: Some(inline_string(&certificate.cert_pem)),
        private_key: Some(inline_string(&certificate.key_pem)),
        ..Default::default()
    }
}
