//! `backendtls-loader certs`: a local CA, the loader's xDS server certificate and one client
//! certificate per Envoy, so that ADS runs over mutual TLS without any other tool.
//!
//! Files in the output directory (see [`crate::xds::tls::file_names`]):
//!
//! | file | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | the CA; `ca.crt` is both the loader's client CA and Envoy's trusted CA |
//! | `server.crt`, `server.key` | the loader (`serve --xds-certs DIR`) |
//! | `envoy-<id>.crt`, `envoy-<id>.key` | the Envoy whose node id is `<id>` (`bootstrap --xds-certs DIR`) |
//!
//! Running it again keeps what exists (it is idempotent) and adds what is missing, e.g. a new
//! Envoy's certificate; `--renew` issues the leaf certificates again from the same CA (the
//! loader picks its new one up by itself). Keys are written with mode 0600, atomically.

use crate::xds::tls::file_names;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The server name Envoy expects by default (SNI and the SAN it verifies).
pub const DEFAULT_SERVER_NAME: &str = "backendtls-loader";
/// The node id of `backendtls-loader bootstrap` by default.
pub const DEFAULT_ENVOY_ID: &str = "backendtls-envoy";
/// The trust domain of the SPIFFE IDs given to Envoys: `spiffe://backendtls.local/envoy/<id>`.
pub const SPIFFE_TRUST_DOMAIN: &str = "backendtls.local";
const CA_DAYS: i64 = 3650;

#[derive(Clone, Debug)]
pub struct CertsOptions {
    pub out_dir: PathBuf,
    /// DNS names (or IP addresses) in the loader's certificate.
    pub server_names: Vec<String>,
    /// Node ids of the Envoys to issue client certificates for.
    pub envoy_ids: Vec<String>,
    /// Validity of the leaf certificates.
    pub days: u32,
    /// Issue the leaf certificates again even if they exist.
    pub renew: bool,
}

impl CertsOptions {
    /// The defaults: one server name, one Envoy, a year.
    pub fn new(out_dir: PathBuf) -> CertsOptions {
        CertsOptions {
            out_dir,
            server_names: vec![DEFAULT_SERVER_NAME.into(), "localhost".into()],
            envoy_ids: vec![DEFAULT_ENVOY_ID.into()],
            days: 365,
            renew: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{cert} exists without {key} (or the other way round): restore it, or remove both to make a new CA")]
    HalfCa { cert: PathBuf, key: PathBuf },
    #[error("the CA in {path} cannot be used: {source}")]
    BadCa { path: PathBuf, source: rcgen::Error },
    #[error("invalid Envoy node id {0:?}: use letters, digits, '.', '-' and '_' (at most 128)")]
    BadEnvoyId(String),
    #[error("invalid server name {name:?}: {source}")]
    BadServerName { name: String, source: rcgen::Error },
    #[error("cannot issue a certificate: {0}")]
    Issue(#[from] rcgen::Error),
}

/// What [`create`] did, file by file.
#[derive(Debug, Default)]
pub struct Report {
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

/// The SPIFFE ID in the client certificate of Envoy `node_id`.
pub fn envoy_spiffe_id(node_id: &str) -> String {
    format!("spiffe://{SPIFFE_TRUST_DOMAIN}/envoy/{node_id}")
}

pub fn validate_envoy_id(id: &str) -> Result<(), CertsError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(CertsError::BadEnvoyId(id.to_string()))
    }
}

pub fn create(options: &CertsOptions) -> Result<Report, CertsError> {
    for id in &options.envoy_ids {
        validate_envoy_id(id)?;
    }
    let dir = &options.out_dir;
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Io { path: dir.clone(), source })?;
    let mut report = Report::default();
    let (ca, ca_is_new) = ca(dir, &mut report)?;
    let now = OffsetDateTime::now_utc();
    let leaf_validity = |params: &mut CertificateParams| {
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(options.days.into());
    };

    // A new CA makes every existing leaf useless, so they are all issued again.
    let renew = options.renew || ca_is_new;
    let (cert, key) = (dir.join(file_names::SERVER_CERT), dir.join(file_names::SERVER_KEY));
    if renew || !(cert.exists() && key.exists()) {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, DEFAULT_SERVER_NAME);
        for name in &options.server_names {
            params.subject_alt_names.push(server_san(name)?);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_validity(&mut params);
        write_leaf(params, &ca, &cert, &key, &mut report)?;
    } else {
        report.kept.extend([cert, key]);
    }

    for id in &options.envoy_ids {
        let cert = dir.join(file_names::envoy_cert(id));
        let key = dir.join(file_names::envoy_key(id));
        if !renew && cert.exists() && key.exists() {
            report.kept.extend([cert, key]);
            continue;
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, id.as_str());
        // The loader matches the node id against these (README, "Secure xDS").
        if let Ok(name) = id.as_str().try_into() {
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        let uri = envoy_spiffe_id(id).try_into().expect("ASCII SPIFFE ID");
        params.subject_alt_names.push(SanType::URI(uri));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        leaf_validity(&mut params);
        write_leaf(params, &ca, &cert, &key, &mut report)?;
    }
    Ok(report)
}

fn server_san(name: &str) -> Result<SanType, CertsError> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = name
        .try_into()
        .map_err(|source| CertsError::BadServerName { name: name.into(), source })?;
    Ok(SanType::DnsName(dns))
}

/// Loads the CA from `dir`, or makes one. Returns it and whether it is new.
fn ca(dir: &Path, report: &mut Report) -> Result<(Issuer<'static, KeyPair>, bool), CertsError> {
    let (cert, key) = (dir.join(file_names::CA_CERT), dir.join(file_names::CA_KEY));
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let bad = |source| CertsError::BadCa { path: cert.clone(), source };
            let cert_pem = read(&cert)?;
            let key = KeyPair::from_pem(&read(&key)?).map_err(bad)?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(bad)?;
            report.kept.extend([cert, dir.join(file_names::CA_KEY)]);
            Ok((issuer, false))
        }
        (false, false) => {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, "backendtls xDS CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let now = OffsetDateTime::now_utc();
            params.not_before = now - Duration::minutes(5);
            params.not_after = now + Duration::days(CA_DAYS);
            let key_pair = KeyPair::generate()?;
            let certificate = params.self_signed(&key_pair)?;
            write_file(&key, &key_pair.serialize_pem(), 0o600)?;
            write_file(&cert, &certificate.pem(), 0o644)?;
            report.created.extend([cert, key]);
            Ok((Issuer::new(params, key_pair), true))
        }
        _ => Err(CertsError::HalfCa { cert, key }),
    }
}

fn write_leaf(
    mut params: CertificateParams,
    ca: &Issuer<'static, KeyPair>,
    cert: &Path,
    key: &Path,
    report: &mut Report,
) -> Result<(), CertsError> {
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key_pair = KeyPair::generate()?;
    let certificate = params.signed_by(&key_pair, ca)?;
    // Key first: a reader that sees the new certificate finds its key already in place.
    write_file(key, &key_pair.serialize_pem(), 0o600)?;
    write_file(cert, &certificate.pem(), 0o644)?;
    report.created.extend([cert.to_path_buf(), key.to_path_buf()]);
    Ok(())
}

fn read(path: &Path) -> Result<String, CertsError> {
    std::fs::read_to_string(path).map_err(|source| CertsError::Io { path: path.into(), source })
}

/// Writes through a temporary file created with `mode`, then renames it into place.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io_error = |source| CertsError::Io { path: path.to_path_buf(), source };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_error)?;
    file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).map_err(io_error)?;
    std::fs::rename(&tmp, path).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::tls::tests::TempDir;

    fn sans(path: &Path) -> Vec<String> {
        let pem = std::fs::read(path).unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(&pem)
            .map(|c: rustls::pki_types::CertificateDer| c.to_vec())
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value.general_names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn creates_once_then_keeps_and_adds_envoys() {
        let dir = TempDir::new();
        let first = create(&CertsOptions::new(dir.path().to_path_buf())).unwrap();
        assert_eq!(first.created.len(), 6, "{first:?}");
        assert_eq!(
            sans(&dir.path().join("envoy-backendtls-envoy.crt")),
            ["DNSName(backendtls-envoy)", "URI(spiffe://backendtls.local/envoy/backendtls-envoy)"]
        );
        assert_eq!(
            sans(&dir.path().join("server.crt")),
            ["DNSName(backendtls-loader)", "DNSName(localhost)"]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("server.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let ca_before = std::fs::read(dir.path().join("ca.crt")).unwrap();
        let mut again = CertsOptions::new(dir.path().to_path_buf());
        again.envoy_ids.push("edge-2".into());
        let second = create(&again).unwrap();
        assert_eq!(second.created.len(), 2, "only the new Envoy's files: {second:?}");
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), ca_before);
    }

    #[test]
    fn refuses_bad_ids_and_half_a_ca() {
        let dir = TempDir::new();
        let mut options = CertsOptions::new(dir.path().to_path_buf());
        options.envoy_ids = vec!["a/b".into()];
        assert!(matches!(create(&options), Err(CertsError::BadEnvoyId(_))));
        std::fs::write(dir.path().join("ca.crt"), "x").unwrap();
        let error = create(&CertsOptions::new(dir.path().to_path_buf())).unwrap_err();
        assert!(matches!(error, CertsError::HalfCa { .. }), "{error}");
    }
}
