//! SDS secrets: CA bundles, the Gateway's client certificates and listener certificates.

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
    // Listener certificates keep their name across a rotation: the version follows the content.
    for (name, certificate) in &ir.listener_certificates {
        let secret = tls::Secret {
            name: name.clone(),
            r#type: Some(tls::secret::Type::TlsCertificate(client_tls_certificate(certificate))),
        };
        let version = crate::digest::parts_hex(
            &[certificate.cert_pem.as_bytes(), certificate.key_pem.as_bytes()],
            12,
        );
        out.push(Versioned { version, resource: secret });
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
