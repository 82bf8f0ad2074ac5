//! The echo's TLS side: rustls server settings, the handshake, and what it reports about it.

use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{Acceptor, ClientHello, WebPkiClientVerifier};
use rustls::{
    ProtocolVersion, RootCertStore, ServerConfig, ServerConnection, SupportedProtocolVersion,
};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::report::{CertificateNames, TlsReport};
use crate::certs::CertifiedKey;

/// The first byte of every TLS record that opens a handshake (content type `handshake`).
pub(crate) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// Which client certificates the echo asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ClientAuth {
    /// Asks for none (upstream `tls-backend`).
    None,
    /// Asks for one and verifies it against the CA when given, but accepts clients without one
    /// (upstream's `TLS_CLIENT_CACERTS`, Go's `VerifyClientCertIfGiven`).
    VerifyIfGiven(String),
    /// Refuses the handshake without a certificate from the CA.
    Require(String),
}

/// How a TLS port of the echo serves: certificate, client certificates, ALPN, versions.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    cert: CertifiedKey,
    client_auth: ClientAuth,
    alpn: Vec<String>,
    /// Refuse handshakes that agree on no ALPN protocol (grpc-go's default since 1.67).
    require_alpn: bool,
    versions: &'static [&'static SupportedProtocolVersion],
}

/// A TLS port's settings as the accept loop uses them.
#[derive(Clone)]
pub(crate) struct TlsServer {
    config: Arc<ServerConfig>,
    require_alpn: bool,
}

impl TlsOptions {
    /// Serves `cert` (chain PEM, leaf first) with TLS 1.2 and 1.3, offering ALPN `h2` and
    /// `http/1.1` like the upstream Go echo, without asking for client certificates.
    pub fn new(cert: &CertifiedKey) -> TlsOptions {
        TlsOptions {
            cert: cert.clone(),
            client_auth: ClientAuth::None,
            alpn: vec!["h2".into(), "http/1.1".into()],
            require_alpn: false,
            versions: rustls::ALL_VERSIONS,
        }
    }

    /// The ALPN protocols to agree on, in preference order; empty: no ALPN at all (the echo then
    /// speaks HTTP/1.1 unless the client starts with the HTTP/2 preface).
    pub fn alpn(mut self, protocols: &[&str]) -> TlsOptions {
        self.alpn = protocols.iter().map(|p| p.to_string()).collect();
        self
    }

    /// Serves gRPC the way grpc-go does (the upstream gRPC echo): ALPN `h2` only, and a
    /// handshake that agrees on no ALPN protocol fails (recorded as a handshake failure).
    pub fn grpc(mut self) -> TlsOptions {
        self.alpn = vec!["h2".into()];
        self.require_alpn = true;
        self
    }

    /// Asks clients for a certificate and verifies it against `ca_pem` when one is presented;
    /// clients without one still connect (what the upstream echo does with a client CA).
    pub fn verify_client_certificates(mut self, ca_pem: &str) -> TlsOptions {
        self.client_auth = ClientAuth::VerifyIfGiven(ca_pem.to_string());
        self
    }

    /// Refuses handshakes that do not present a certificate issued by `ca_pem`.
    pub fn require_client_certificate(mut self, ca_pem: &str) -> TlsOptions {
        self.client_auth = ClientAuth::Require(ca_pem.to_string());
        self
    }

    pub fn tls12_only(mut self) -> TlsOptions {
        self.versions = TLS12_ONLY;
        self
    }

    pub fn tls13_only(mut self) -> TlsOptions {
        self.versions = TLS13_ONLY;
        self
    }

    pub(crate) fn server(&self) -> TlsServer {
        TlsServer { config: self.server_config(), require_alpn: self.require_alpn }
    }

    /// The rustls server configuration; panics on unusable test certificates.
    fn server_config(&self) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(self.versions)
            .expect("ring supports TLS 1.2 and 1.3");
        let builder = match &self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::VerifyIfGiven(ca) | ClientAuth::Require(ca) => {
                let roots = Arc::new(root_store(ca));
                let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
                if matches!(self.client_auth, ClientAuth::VerifyIfGiven(_)) {
                    verifier = verifier.allow_unauthenticated();
                }
                builder.with_client_cert_verifier(verifier.build().expect("client CA is usable"))
            }
        };
        let chain = certificates(&self.cert.cert_pem);
        let key = PrivateKeyDer::from_pem_slice(self.cert.key_pem.as_bytes())
            .expect("echo private key is PEM");
        let mut config =
            builder.with_single_cert(chain, key).expect("echo certificate matches its key");
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

/// What the client said in its ClientHello: known even when the handshake then fails.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    pub sni: Option<String>,
    pub alpn_offered: Vec<String>,
}

impl Hello {
    fn of(hello: &ClientHello<'_>) -> Hello {
        Hello {
            sni: hello.server_name().map(str::to_string),
            alpn_offered: hello
                .alpn()
                .map(|offered| offered.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                .unwrap_or_default(),
        }
    }
}

/// Runs the server side of a handshake; on failure returns what the ClientHello said (when one
/// arrived) and why it failed.
pub(crate) async fn handshake(
    tcp: TcpStream,
    server: TlsServer,
) -> Result<(TlsStream<TcpStream>, TlsReport), (Hello, String)> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), tcp)
        .await
        .map_err(|e| (Hello::default(), format!("reading the ClientHello: {e}")))?;
    let hello = Hello::of(&start.client_hello());
    let stream =
        start.into_stream(server.config).await.map_err(|e| (hello.clone(), e.to_string()))?;
    if server.require_alpn && stream.get_ref().1.alpn_protocol().is_none() {
        return Err((hello, "no ALPN protocol agreed (h2 is required)".to_string()));
    }
    let report = report(stream.get_ref().1, hello);
    Ok((stream, report))
}

fn report(connection: &ServerConnection, hello: Hello) -> TlsReport {
    let peer: Vec<&CertificateDer<'_>> =
        connection.peer_certificates().map(|chain| chain.iter().collect()).unwrap_or_default();
    TlsReport {
        version: match connection.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
            other => format!("{other:?}"),
        },
        server_name: hello.sni.unwrap_or_default(),
        negotiated_protocol: connection
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
        cipher_suite: connection
            .negotiated_cipher_suite()
            .map(|suite| {
                let suite = suite.suite();
                suite.as_str().map(str::to_string).unwrap_or_else(|| format!("{suite:?}"))
            })
            .unwrap_or_default(),
        peer_certificates: peer.iter().map(|der| pem_encode(der)).collect(),
        alpn_offered: hello.alpn_offered,
        client_certificate: peer.first().map(|leaf| certificate_names(leaf)),
    }
}

/// A certificate's subject and SANs; a certificate x509-parser cannot read gets its error as
/// subject, so a test sees why rather than a missing field.
pub fn certificate_names(der: &[u8]) -> CertificateNames {
    use x509_parser::extensions::GeneralName;
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert,
        Err(e) => {
            return CertificateNames { subject: format!("<unparsable: {e}>"), ..Default::default() }
        }
    };
    let mut names = CertificateNames { subject: cert.subject().to_string(), ..Default::default() };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.dns_names.push(dns.to_string()),
                GeneralName::URI(uri) => names.uris.push(uri.to_string()),
                _ => {}
            }
        }
    }
    names
}

/// Every certificate in a PEM text, in order.
pub fn certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificates are PEM")
}

fn root_store(ca_pem: &str) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem) {
        roots.add(cert).expect("CA certificate is usable as a trust anchor");
    }
    roots
}

/// PEM as Go's `pem.EncodeToMemory` writes it (what the upstream echo reports).
pub fn pem_encode(der: &[u8]) -> String {
    let base64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in base64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}
