//! Preflight probes: a TLS handshake with every endpoint a BackendTLSPolicy governs, as Envoy
//! would make it, to say what will fail before a request does.
//!
//! Each probe offers the policy's SNI, ALPN and TLS versions and the Gateway's client
//! certificate, and verifies the backend's chain with [`backendtls_verify`], the rules the
//! dynamic-module validator applies inside Envoy (the contract's identity matching included).
//! A probe completes the handshake (or fails it) and closes with `close_notify`: it never sends
//! application data, and only connects to the endpoints the objects name.

use crate::ir::{BackendTls, Cluster, Endpoints, Ir, SubjectAltName, TlsVersion, Trust};
use crate::objects::ObjectKey;
use backendtls_contract::validator::Config as ValidatorJson;
use backendtls_contract::Identity;
use backendtls_verify::x509::{self, Summary};
use backendtls_verify::{FailureReason, Rejection, ValidatorConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What one probe found. The labels are the `result` label of `backendtls_probe_result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The handshake succeeded and the certificate meets the policy.
    Ok,
    /// The chain does not lead to the policy's CA certificates.
    UnknownIssuer,
    /// The certificate's names match none of the policy's identities.
    NameMismatch,
    Expired,
    NotYetValid,
    /// Another reason the certificate is refused (key usage, signature, chain constraints,
    /// malformed): [`Report::detail`] says which.
    BadCertificate,
    /// The port answered, but not with TLS.
    PlaintextOnly,
    /// The backend and the policy share no TLS version.
    TlsVersionMismatch,
    /// The backend refused the Gateway's client certificate (or wanted one and got none).
    ClientCertificateRejected,
    /// Another handshake failure (the detail has the TLS alert or error).
    HandshakeFailed,
    /// The connection was refused or the address cannot be reached.
    Unreachable,
    /// No answer within the probe timeout.
    Timeout,
    /// The policy cannot be met as written (for example no usable CA certificate): nothing to
    /// probe, every request fails closed.
    PolicyInvalid,
}

impl Outcome {
    pub const ALL: &'static [Outcome] = &[
        Outcome::Ok,
        Outcome::UnknownIssuer,
        Outcome::NameMismatch,
        Outcome::Expired,
        Outcome::NotYetValid,
        Outcome::BadCertificate,
        Outcome::PlaintextOnly,
        Outcome::TlsVersionMismatch,
        Outcome::ClientCertificateRejected,
        Outcome::HandshakeFailed,
        Outcome::Unreachable,
        Outcome::Timeout,
        Outcome::PolicyInvalid,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UnknownIssuer => "unknown_issuer",
            Outcome::NameMismatch => "name_mismatch",
            Outcome::Expired => "expired",
            Outcome::NotYetValid => "not_yet_valid",
            Outcome::BadCertificate => "bad_certificate",
            Outcome::PlaintextOnly => "plaintext_only",
            Outcome::TlsVersionMismatch => "tls_version_mismatch",
            Outcome::ClientCertificateRejected => "client_certificate_rejected",
            Outcome::HandshakeFailed => "handshake_failed",
            Outcome::Unreachable => "unreachable",
            Outcome::Timeout => "timeout",
            Outcome::PolicyInvalid => "policy_invalid",
        }
    }

    fn of_rejection(reason: FailureReason) -> Outcome {
        match reason {
            FailureReason::UnknownIssuer => Outcome::UnknownIssuer,
            FailureReason::NameMismatch => Outcome::NameMismatch,
            FailureReason::Expired => Outcome::Expired,
            FailureReason::NotYetValid => Outcome::NotYetValid,
            FailureReason::BadKeyUsage
            | FailureReason::BadSignature
            | FailureReason::InvalidChain
            | FailureReason::Malformed
            | FailureReason::Internal => Outcome::BadCertificate,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One endpoint of one policy-governed Service port, and how to reach it as Envoy would.
#[derive(Clone)]
pub struct Target {
    pub policy: ObjectKey,
    pub cluster: String,
    /// `ip:port`, or `hostname:port` for an ExternalName Service.
    pub endpoint: String,
    pub sni: String,
    setup: Result<Arc<Setup>, SetupError>,
}

/// Why a policy cannot be probed at all (`PolicyInvalid`).
#[derive(Clone, Debug, thiserror::Error)]
enum SetupError {
    /// The policy's own reason ([`Trust::Unusable`]).
    #[error("{0}")]
    Unusable(String),
    #[error("the policy's CA bundle is missing")]
    NoBundle,
    #[error(transparent)]
    Identity(#[from] backendtls_contract::IdentityError),
    #[error(transparent)]
    Validator(#[from] backendtls_verify::ConfigError),
    #[error("the Gateway's client certificate is missing")]
    NoClientCertificate,
    #[error("client certificate: {0}")]
    ClientChain(String),
    #[error("client certificate: the private key does not parse")]
    ClientKey,
}

/// What a handshake needs, shared by the endpoints of one cluster.
struct Setup {
    validator: ValidatorConfig,
    min_version: TlsVersion,
    max_version: TlsVersion,
    alpn: Vec<Vec<u8>>,
    client_certificate: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl Target {
    /// What identifies the target's configuration: a probe plan with the same fingerprints needs
    /// no new run.
    pub fn fingerprint(&self) -> String {
        match &self.setup {
            Ok(setup) => {
                format!(
                    "{}|{}|{}|{}|{:x?}",
                    self.policy,
                    self.cluster,
                    self.endpoint,
                    self.sni,
                    setup.validator.digest()
                ) + &format!(
                    "|{:?}{:?}{:?}|{}",
                    setup.min_version,
                    setup.max_version,
                    setup.alpn,
                    setup.client_certificate.is_some()
                )
            }
            Err(reason) => format!("{}|{}|{}|{reason}", self.policy, self.cluster, self.endpoint),
        }
    }
}

/// The probe targets of `ir`: every endpoint of every cluster a policy governs, optionally only
/// those of `policy`. Clusters whose policy cannot be met get one target that reports
/// [`Outcome::PolicyInvalid`] without connecting.
pub fn targets(ir: &Ir, policy: Option<&ObjectKey>) -> Vec<Target> {
    let mut targets = Vec::new();
    for cluster in ir.clusters.values() {
        let Some(tls) = &cluster.tls else { continue };
        if policy.is_some_and(|p| p != &tls.policy) {
            continue;
        }
        let setup = setup(ir, tls).map(Arc::new);
        let target = |endpoint: String| Target {
            policy: tls.policy.clone(),
            cluster: cluster.name.clone(),
            endpoint,
            sni: tls.hostname.clone(),
            setup: setup.clone(),
        };
        for endpoint in endpoints(cluster) {
            targets.push(target(endpoint));
        }
        if setup.is_err() && endpoints(cluster).is_empty() {
            targets.push(target(String::new()));
        }
    }
    targets.sort_by(|a, b| {
        (&a.policy, &a.cluster, &a.endpoint).cmp(&(&b.policy, &b.cluster, &b.endpoint))
    });
    targets
}

fn endpoints(cluster: &Cluster) -> Vec<String> {
    match &cluster.endpoints {
        Endpoints::Static(addresses) => addresses.iter().map(ToString::to_string).collect(),
        Endpoints::Dns { hostname, port } => vec![format!("{hostname}:{port}")],
    }
}

fn setup(ir: &Ir, tls: &BackendTls) -> Result<Setup, SetupError> {
    let secret = match &tls.trust {
        Trust::Ca { secret } => secret,
        Trust::Unusable { reason } => return Err(SetupError::Unusable(reason.clone())),
    };
    let bundle = ir.ca_bundles.get(secret).ok_or(SetupError::NoBundle)?;
    let identities = tls
        .subject_alt_names
        .iter()
        .map(|san| match san {
            SubjectAltName::Hostname(name) => Identity::dns(name),
            SubjectAltName::Uri(uri) => Identity::uri(uri),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The configuration the loader hands the dynamic-module validator, through the same parser.
    let json = serde_json::to_vec(&ValidatorJson {
        policy: tls.policy.to_string(),
        hostname: tls.hostname.clone(),
        identities,
        trust_anchors_pem: bundle.pem.clone(),
    })
    .expect("the validator configuration serializes");
    let validator = ValidatorConfig::parse(&json)?;
    let client_certificate = match &tls.client_certificate {
        None => None,
        Some(name) => {
            let certificate =
                ir.client_certificates.get(name).ok_or(SetupError::NoClientCertificate)?;
            let chain = CertificateDer::pem_slice_iter(certificate.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SetupError::ClientChain(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(certificate.key_pem.as_bytes())
                .map_err(|_| SetupError::ClientKey)?;
            Some((chain, key))
        }
    };
    Ok(Setup {
        validator,
        min_version: tls.params.min_version,
        max_version: tls.params.max_version,
        alpn: tls.params.alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
        client_certificate,
    })
}

/// How probes run.
#[derive(Clone, Debug)]
pub struct Options {
    /// For the connection and the handshake together.
    pub timeout: Duration,
    /// Probes in flight at once.
    pub concurrency: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { timeout: Duration::from_secs(5), concurrency: 16 }
    }
}

/// The leaf certificate a backend presented.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Certificate {
    pub subject: String,
    pub issuer: String,
    /// Flat form: `dns:`, `uri:`, `ip:`.
    pub subject_alt_names: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub not_after_seconds: u64,
}

impl From<Summary> for Certificate {
    fn from(summary: Summary) -> Certificate {
        Certificate {
            subject: summary.subject,
            issuer: summary.issuer,
            subject_alt_names: summary.names.flat(),
            not_before: x509::format_rfc3339(summary.validity.not_before),
            not_after: x509::format_rfc3339(summary.validity.not_after),
            not_after_seconds: summary.validity.not_after,
        }
    }
}

/// One probe's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub namespace: String,
    pub policy: String,
    pub cluster: String,
    pub endpoint: String,
    pub sni: String,
    pub result: Outcome,
    /// Why, for anything but `ok`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The leaf the backend presented, when it presented one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Certificate>,
    /// The negotiated TLS version and ALPN protocol, after a successful handshake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpn: Option<String>,
    /// When the probe ran, RFC 3339.
    pub checked_at: String,
}

/// Probes every target, at most `options.concurrency` at once, in target order.
pub async fn run(targets: &[Target], options: &Options) -> Vec<Report> {
    let permits = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, target) in targets.iter().cloned().enumerate() {
        let permits = permits.clone();
        let timeout = options.timeout;
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("never closed");
            (index, probe(&target, timeout).await)
        });
    }
    let mut reports: Vec<Option<Report>> = vec![None; targets.len()];
    while let Some(done) = tasks.join_next().await {
        let (index, report) = done.expect("probe tasks do not panic");
        reports[index] = Some(report);
    }
    reports.into_iter().map(|r| r.expect("every probe reports")).collect()
}

/// Probes one target.
pub async fn probe(target: &Target, timeout: Duration) -> Report {
    let mut report = Report {
        namespace: target.policy.namespace.clone(),
        policy: target.policy.name.clone(),
        cluster: target.cluster.clone(),
        endpoint: target.endpoint.clone(),
        sni: target.sni.clone(),
        result: Outcome::Ok,
        detail: String::new(),
        certificate: None,
        tls_version: None,
        alpn: None,
        checked_at: x509::format_rfc3339(now_seconds()),
    };
    let setup = match &target.setup {
        Ok(setup) => setup.clone(),
        Err(reason) => {
            report.result = Outcome::PolicyInvalid;
            report.detail = reason.to_string();
            return report;
        }
    };
    let seen = Arc::new(Seen::default());
    let outcome = tokio::time::timeout(timeout, handshake(target, &setup, seen.clone())).await;
    report.certificate = seen.leaf.lock().unwrap().take();
    let (result, detail) = match outcome {
        Err(_) => (Outcome::Timeout, format!("no answer within {timeout:?}")),
        Ok(Err(failure)) => failure.classify(&seen),
        Ok(Ok(negotiated)) => {
            report.tls_version = Some(negotiated.version);
            report.alpn = negotiated.alpn;
            (Outcome::Ok, String::new())
        }
    };
    report.result = result;
    report.detail = detail;
    report
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What the verifier saw during one handshake.
#[derive(Default, Debug)]
struct Seen {
    leaf: Mutex<Option<Certificate>>,
    rejection: Mutex<Option<Rejection>>,
}

struct Negotiated {
    version: String,
    alpn: Option<String>,
}

enum Failure {
    Connect(std::io::Error),
    Handshake(std::io::Error),
    /// A TLS 1.3 server refuses a client certificate after the client's side of the handshake.
    AfterHandshake(std::io::Error),
    Config(ClientConfigError),
}

/// Why rustls refused the probe's client configuration.
#[derive(Debug, thiserror::Error)]
enum ClientConfigError {
    #[error("{0}")]
    Versions(rustls::Error),
    #[error("client certificate: {0}")]
    ClientCertificate(rustls::Error),
    /// The policy hostname, as SNI.
    #[error("{0}")]
    ServerName(rustls::pki_types::InvalidDnsNameError),
}

impl Failure {
    fn classify(self, seen: &Seen) -> (Outcome, String) {
        if let Some(rejection) = seen.rejection.lock().unwrap().take() {
            return (Outcome::of_rejection(rejection.reason), rejection.message);
        }
        match self {
            Failure::Config(e) => (Outcome::PolicyInvalid, e.to_string()),
            Failure::Connect(e) => (Outcome::Unreachable, e.to_string()),
            Failure::AfterHandshake(e) => match tls_error(&e) {
                Some(rustls::Error::AlertReceived(alert)) => (
                    Outcome::ClientCertificateRejected,
                    format!(
                        "the backend ended the connection with alert {alert:?} after the handshake"
                    ),
                ),
                _ => (Outcome::HandshakeFailed, e.to_string()),
            },
            Failure::Handshake(e) => match tls_error(&e) {
                Some(rustls::Error::InvalidMessage(_)) => {
                    (Outcome::PlaintextOnly, format!("the port does not speak TLS ({e})"))
                }
                Some(rustls::Error::AlertReceived(alert)) => {
                    classify_alert(*alert, seen.leaf.lock().unwrap().is_some())
                }
                Some(rustls::Error::PeerIncompatible(incompatible)) => (
                    Outcome::TlsVersionMismatch,
                    format!("the backend cannot meet the policy's TLS settings ({incompatible:?})"),
                ),
                _ if e.kind() == std::io::ErrorKind::UnexpectedEof => (
                    Outcome::HandshakeFailed,
                    "the backend closed the connection during the handshake".into(),
                ),
                _ => (Outcome::HandshakeFailed, e.to_string()),
            },
        }
    }
}

fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// A TLS alert from the backend during the handshake. `verified_server`: the backend's
/// certificate was already seen (and accepted), so a certificate alert is about ours.
fn classify_alert(alert: AlertDescription, verified_server: bool) -> (Outcome, String) {
    use AlertDescription as A;
    let detail = format!("the backend sent alert {alert:?}");
    match alert {
        A::ProtocolVersion => (Outcome::TlsVersionMismatch, detail),
        A::CertificateRequired => (Outcome::ClientCertificateRejected, detail),
        A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateExpired
        | A::CertificateUnknown
        | A::UnknownCA
        | A::AccessDenied
            if verified_server =>
        {
            (Outcome::ClientCertificateRejected, detail)
        }
        A::HandshakeFailure | A::InsufficientSecurity => {
            (Outcome::TlsVersionMismatch, format!("{detail} (no common version or cipher)"))
        }
        _ => (Outcome::HandshakeFailed, detail),
    }
}

async fn handshake(
    target: &Target,
    setup: &Arc<Setup>,
    seen: Arc<Seen>,
) -> Result<Negotiated, Failure> {
    let config = client_config(setup, seen).map_err(Failure::Config)?;
    let server_name = ServerName::try_from(target.sni.clone())
        .map_err(|e| Failure::Config(ClientConfigError::ServerName(e)))?;
    let tcp = TcpStream::connect(target.endpoint.as_str()).await.map_err(Failure::Connect)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector.connect(server_name, tcp).await.map_err(Failure::Handshake)?;
    let (_, connection) = tls.get_ref();
    let version = connection.protocol_version();
    let negotiated = Negotiated {
        version: match version {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
            other => format!("{other:?}"),
        },
        alpn: connection.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
    };
    // In TLS 1.3 the client's side of the handshake ends before the server has checked the
    // client certificate: a refusal comes as an alert right after. Wait briefly for one.
    if setup.client_certificate.is_some() && version == Some(rustls::ProtocolVersion::TLSv1_3) {
        let mut byte = [0u8; 1];
        // Data, a clean close or silence all mean the certificate was accepted.
        if let Ok(Err(e)) =
            tokio::time::timeout(CLIENT_CERTIFICATE_VERDICT, tls.read(&mut byte)).await
        {
            return Err(Failure::AfterHandshake(e));
        }
    }
    use tokio::io::AsyncWriteExt;
    let _ = tls.shutdown().await;
    Ok(negotiated)
}

/// How long a TLS 1.3 probe with a client certificate waits for the backend's verdict on it.
const CLIENT_CERTIFICATE_VERDICT: Duration = Duration::from_millis(300);

fn client_config(
    setup: &Arc<Setup>,
    seen: Arc<Seen>,
) -> Result<rustls::ClientConfig, ClientConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (setup.min_version..=setup.max_version).contains(v))
    .map(|(_, version)| version)
    .collect();
    let verifier =
        Arc::new(PolicyVerifier { setup: setup.clone(), provider: provider.clone(), seen });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(ClientConfigError::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &setup.client_certificate {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(ClientConfigError::ClientCertificate)?,
    };
    config.alpn_protocols = setup.alpn.clone();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Verifies the backend's chain with the validator's rules, remembering what it saw.
#[derive(Debug)]
struct PolicyVerifier {
    setup: Arc<Setup>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: Arc<Seen>,
}

impl fmt::Debug for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Setup").field("policy", &self.validator.policy()).finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PolicyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(summary) = x509::summary(end_entity.as_ref()) {
            *self.seen.leaf.lock().unwrap() = Some(summary.into());
        }
        let chain: Vec<&[u8]> = std::iter::once(end_entity.as_ref())
            .chain(intermediates.iter().map(|c| c.as_ref()))
            .collect();
        match self.setup.validator.verify(&chain, now) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(rejection) => {
                let error = rustls::Error::General(rejection.to_string());
                *self.seen.rejection.lock().unwrap() = Some(rejection);
                Err(error)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `probe`'s table: one line per endpoint.
pub fn table(reports: &[Report]) -> String {
    let rows: Vec<[String; 5]> = reports
        .iter()
        .map(|r| {
            [
                format!("{}/{}", r.namespace, r.policy),
                if r.endpoint.is_empty() { "-".into() } else { r.endpoint.clone() },
                r.result.label().to_string(),
                r.certificate.as_ref().map_or("-".into(), |c| c.not_after.clone()),
                r.detail.clone(),
            ]
        })
        .collect();
    let header = ["POLICY", "ENDPOINT", "RESULT", "NOT AFTER", "DETAIL"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> =
            row.iter().zip(widths).map(|(cell, width)| format!("{cell:width$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if reports.is_empty() {
        out.push_str("(no endpoint is governed by a BackendTLSPolicy)\n");
    }
    out
}

/// The latest probe run, for `/status`, `/metrics` and `/ui`.
#[derive(Debug, Default)]
pub struct Results {
    pub reports: Vec<Report>,
    /// Completed runs.
    pub runs: u64,
    pub last_run_seconds: f64,
}

/// `serve --probe-interval`: probes `plan` now, then every `interval`, and again as soon as a
/// rebuild changes what there is to probe (a CA fixed in place shows up without waiting).
pub async fn keep_probing(
    mut plan: tokio::sync::watch::Receiver<Arc<Vec<Target>>>,
    interval: Duration,
    options: Options,
    results: Arc<std::sync::RwLock<Results>>,
) {
    loop {
        let targets = plan.borrow_and_update().clone();
        let fingerprints: Vec<String> = targets.iter().map(Target::fingerprint).collect();
        let started = std::time::Instant::now();
        let reports = run(&targets, &options).await;
        {
            let mut results = results.write().unwrap();
            results.reports = reports;
            results.runs += 1;
            results.last_run_seconds = started.elapsed().as_secs_f64();
        }
        let next_run = tokio::time::sleep(interval);
        tokio::pin!(next_run);
        loop {
            tokio::select! {
                () = &mut next_run => break,
                changed = plan.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now: Vec<String> = plan.borrow().iter().map(Target::fingerprint).collect();
                    if now != fingerprints {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_snake_case_and_serialize_as_themselves() {
        let mut seen = std::collections::BTreeSet::new();
        for outcome in Outcome::ALL {
            let label = outcome.label();
            assert!(seen.insert(label), "{label} twice");
            assert!(label.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{label}");
            assert_eq!(serde_json::to_value(outcome).unwrap(), label);
        }
    }

    #[test]
    fn every_validator_refusal_has_a_class() {
        for reason in FailureReason::ALL {
            let outcome = Outcome::of_rejection(*reason);
            assert_ne!(outcome, Outcome::Ok, "{reason:?}");
        }
        assert_eq!(Outcome::of_rejection(FailureReason::UnknownIssuer), Outcome::UnknownIssuer);
        assert_eq!(Outcome::of_rejection(FailureReason::NameMismatch), Outcome::NameMismatch);
        assert_eq!(Outcome::of_rejection(FailureReason::Expired), Outcome::Expired);
        assert_eq!(Outcome::of_rejection(FailureReason::NotYetValid), Outcome::NotYetValid);
    }

    #[test]
    fn alerts_after_the_server_was_verified_are_about_our_certificate() {
        use AlertDescription as A;
        assert_eq!(classify_alert(A::BadCertificate, true).0, Outcome::ClientCertificateRejected);
        assert_eq!(classify_alert(A::BadCertificate, false).0, Outcome::HandshakeFailed);
        assert_eq!(
            classify_alert(A::CertificateRequired, false).0,
            Outcome::ClientCertificateRejected
        );
        assert_eq!(classify_alert(A::ProtocolVersion, false).0, Outcome::TlsVersionMismatch);
    }

    #[test]
    fn the_table_has_a_line_per_report() {
        let report = |policy: &str, result| Report {
            namespace: "ns".into(),
            policy: policy.into(),
            cluster: "c".into(),
            endpoint: "127.0.0.1:1".into(),
            sni: "a.example".into(),
            result,
            detail: String::new(),
            certificate: None,
            tls_version: None,
            alpn: None,
            checked_at: String::new(),
        };
        let table = table(&[report("a", Outcome::Ok), report("bb", Outcome::Timeout)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[1].starts_with("ns/a ") && lines[1].contains(" ok"), "{table}");
        assert!(lines[2].contains("timeout"), "{table}");
        assert!(super::table(&[]).contains("no endpoint"));
    }
}
