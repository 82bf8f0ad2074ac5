//! SDS secrets: CA bundles, the Gateway's client certificates and listener certificates.

use super::*;
use std::path::{Path, PathBuf};

/// CA bundles and client certificates as SDS secrets. Their names are content-addressed, so the
/// name is the version.
pub(super) fn secrets(ir: &Ir) -> Vec<Versioned<tls::Secret>> {
    let mut out = Vec::new();
    for (name, bundle) in &ir.ca_bundles {
        out.push(Versioned { version: name.clone(), resource: ca_bundle_secret(name, bundle) });
    }
    for (name, certificate) in &ir.client_certificates {
        let resource = tls_certificate_secret(name, certificate);
        out.push(Versioned { version: name.clone(), resource });
    }
    // Listener certificates keep their name across a rotation: the version follows the content.
    for (name, certificate) in &ir.listener_certificates {
        let resource = tls_certificate_secret(name, certificate);
        out.push(Versioned { version: listener_certificate_version(certificate), resource });
    }
    out
}

pub(super) fn ca_bundle_secret(name: &str, bundle: &ir::CaBundle) -> tls::Secret {
    let context = tls::CertificateValidationContext {
        trusted_ca: Some(inline_string(&bundle.pem)),
        ..Default::default()
    };
    tls::Secret {
        name: name.to_string(),
        r#type: Some(tls::secret::Type::ValidationContext(context)),
    }
}

pub(super) fn tls_certificate_secret(
    name: &str,
    certificate: &ir::ClientCertificate,
) -> tls::Secret {
    tls::Secret {
        name: name.to_string(),
        r#type: Some(tls::secret::Type::TlsCertificate(client_tls_certificate(certificate))),
    }
}

/// A listener certificate's secret keeps its name across a rotation: its version follows the
/// content.
pub(super) fn listener_certificate_version(certificate: &ir::ClientCertificate) -> String {
    crate::digest::parts_hex(&[certificate.cert_pem.as_bytes(), certificate.key_pem.as_bytes()], 12)
}

pub(super) fn client_tls_certificate(certificate: &ir::ClientCertificate) -> tls::TlsCertificate {
    tls::TlsCertificate {
        certificate_chain: Some(inline_string(&certificate.cert_pem)),
        private_key: Some(inline_string(&certificate.key_pem)),
        ..Default::default()
    }
}

/// Where a static bootstrap takes the private keys of client certificates from. A rendered
/// bootstrap is a file people copy, commit and paste into tickets, so by default it names a file
/// for each key instead of holding the key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PrivateKeys {
    /// In the bootstrap itself (`render --include-private-keys`).
    Inline,
    /// Envoy reads each key when it starts, from [`private_key_path`] under this directory.
    Files { dir: PathBuf },
}

/// `render`'s default `--private-key-dir`.
pub const DEFAULT_PRIVATE_KEY_DIR: &str = "/etc/backendtls/private-keys";

impl Default for PrivateKeys {
    fn default() -> Self {
        PrivateKeys::Files { dir: DEFAULT_PRIVATE_KEY_DIR.into() }
    }
}

/// `DIR/<namespace>/<name>/tls.key`: the layout of Secrets mounted as volumes, one directory per
/// Secret holding its keys as files.
pub fn private_key_path(dir: &Path, secret: &crate::objects::ObjectKey) -> PathBuf {
    dir.join(&secret.namespace).join(&secret.name).join("tls.key")
}

/// A client certificate inline in a static bootstrap, its key as [`PrivateKeys`] says.
pub fn static_client_certificate(
    certificate: &crate::ir::ClientCertificate,
    keys: &PrivateKeys,
) -> tls::TlsCertificate {
    use super::core::data_source::Specifier;
    let private_key = match keys {
        PrivateKeys::Inline => Specifier::InlineString(certificate.key_pem.clone()),
        PrivateKeys::Files { dir } => Specifier::Filename(
            private_key_path(dir, &certificate.source).to_string_lossy().into_owned(),
        ),
    };
    tls::TlsCertificate {
        certificate_chain: Some(core::DataSource {
            specifier: Some(Specifier::InlineString(certificate.cert_pem.clone())),
            ..Default::default()
        }),
        private_key: Some(core::DataSource { specifier: Some(private_key), ..Default::default() }),
        ..Default::default()
    }
}
