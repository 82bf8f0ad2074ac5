//! Mutual TLS for the ADS server: the loader's certificate and key, and the CA bundle that every
//! Envoy's client certificate must chain to, read from files and read again when they change.
//!
//! Each accepted connection takes the configuration current at that moment, so a rotation applies
//! to new connections while established ones (and their ADS streams) carry on with the session
//! they negotiated. A rotation that cannot be loaded (a half-written file, a key that does not
//! match its certificate) is logged and the previous configuration stays in use; the files are
//! tried again on their next change.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often the certificate files are checked for changes (by size, times and inode, so that
/// Kubernetes' symlink swaps of mounted Secrets count as changes too).
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Certificate and key files are small; anything larger is a mistake, not a certificate.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// File names inside an `--xds-certs` directory, as `backendtls-loader certs` writes them.
pub mod file_names {
    pub const CA_CERT: &str = "ca.crt";
    pub const CA_KEY: &str = "ca.key";
    pub const SERVER_CERT: &str = "server.crt";
    pub const SERVER_KEY: &str = "server.key";

    /// `envoy-<node id>.crt`: the client certificate of the Envoy with that node id.
    pub fn envoy_cert(node_id: &str) -> String {
        format!("envoy-{node_id}.crt")
    }

    pub fn envoy_key(node_id: &str) -> String {
        format!("envoy-{node_id}.key")
    }
}

/// Where the ADS server's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The loader's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM bundle) that Envoys' client certificates must chain to.
    pub client_ca: PathBuf,
}

impl TlsFiles {
    /// The files `backendtls-loader certs --out-dir DIR` writes for the loader.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join(file_names::SERVER_CERT),
            key: dir.join(file_names::SERVER_KEY),
            client_ca: dir.join(file_names::CA_CERT),
        }
    }

    fn paths(&self) -> [&Path; 3] {
        [&self.cert, &self.key, &self.client_ca]
    }
}

/// Why TLS material could not be used. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes, too large for a certificate or key")]
    TooLarge { path: PathBuf },
    #[error("{path}: not a PEM certificate bundle ({reason})")]
    BadCertificates { path: PathBuf, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("certificate {cert} with key {key}: {reason}")]
    KeyPair { cert: PathBuf, key: PathBuf, reason: String },
}

/// The ADS server's TLS configuration, reloaded from [`TlsFiles`] when they change.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// What the files looked like when they were last read, successfully or not.
    seen: Mutex<FileStamps>,
}

impl ServerTls {
    /// Reads the files; fails when they cannot make a working configuration.
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        let seen = FileStamps::of(&files);
        let config = build_config(&files)?;
        Ok(Arc::new(ServerTls { files, current: RwLock::new(config), seen: Mutex::new(seen) }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration for a connection accepted now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().expect("TLS config lock").clone()
    }

    /// Reads the files again if they changed since they were last read. `Ok(true)` when a new
    /// configuration is in use; on error the previous one stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = FileStamps::of(&self.files);
        {
            let mut seen = self.seen.lock().expect("TLS stamps lock");
            if *seen == now {
                return Ok(false);
            }
            // Taken before reading: a write racing with this read changes the stamps again and
            // is picked up on the next check.
            *seen = now;
        }
        let config = build_config(&self.files)?;
        *self.current.write().expect("TLS config lock") = config;
        Ok(true)
    }

    /// Checks the files every [`RELOAD_CHECK_INTERVAL`] for as long as the server runs. Reading
    /// happens on a blocking thread, never on the tasks that serve xDS.
    pub async fn watch(self: Arc<Self>) {
        let mut interval = tokio::time::interval(RELOAD_CHECK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let tls = self.clone();
            match tokio::task::spawn_blocking(move || tls.reload_if_changed()).await {
                Ok(Ok(true)) => tracing::info!(
                    cert = %self.files.cert.display(), client_ca = %self.files.client_ca.display(),
                    "xDS TLS certificates reloaded; new connections use them, established ones keep theirs"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(error)) => tracing::error!(
                    %error, "xDS TLS certificates changed but cannot be used; keeping the previous ones"
                ),
                Err(_) => return, // the runtime is shutting down
            }
        }
    }
}

/// What identifies one version of a file: size, modification and change times, inode and device.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
    inode: (u64, u64),
}

/// Each file's stamp (None when it cannot be read).
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamps(Vec<Option<FileStamp>>);

impl FileStamps {
    fn of(files: &TlsFiles) -> FileStamps {
        let stamp = |path: &&Path| {
            std::fs::metadata(path).ok().map(|m| FileStamp {
                size: m.size(),
                modified: (m.mtime(), m.mtime_nsec()),
                changed: (m.ctime(), m.ctime_nsec()),
                inode: (m.ino(), m.dev()),
            })
        };
        FileStamps(files.paths().iter().map(stamp).collect())
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read_error = |source| TlsError::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(TlsError::TooLarge { path: path.to_path_buf() });
    }
    Ok(bytes)
}

/// Every certificate in a PEM file; other sections (keys, parameters) are skipped.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_bounded(path)?;
    let certificates =
        CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| {
            TlsError::BadCertificates { path: path.to_path_buf(), reason: pem_reason(&e) }
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certificates)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_bounded(path)?;
    // Whatever went wrong, the message names the file only: key material never reaches a log.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::NoKey { path: path.to_path_buf() })
}

/// A PEM error's kind, without the offending line (which could be part of a key).
fn pem_reason(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { .. } => "a section has no END line".into(),
        Error::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        Error::Base64Decode(_) => "invalid base64".into(),
        Error::NoItemsFound => "no PEM sections".into(),
        Error::SectionTooLarge => "a section is too large".into(),
        _ => "unreadable PEM".into(),
    }
}

fn build_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certificates(&files.cert)?;
    let key = read_key(&files.key)?;
    let client_cas = read_certificates(&files.client_ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let mut roots = RootCertStore::empty();
    for ca in client_cas {
        roots.add(ca).map_err(|e| TlsError::ClientCa {
            path: files.client_ca.clone(),
            reason: format!("not usable as a trust anchor: {e}"),
        })?;
    }
    // Client certificates are required: a connection without one fails its handshake.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::ClientCa { path: files.client_ca.clone(), reason: e.to_string() })?;
    let key_pair_error = |reason: String| TlsError::KeyPair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| key_pair_error(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| key_pair_error(e.to_string()))?;
    // gRPC is HTTP/2; a client that offers ALPN must offer h2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::certs::{self, CertsOptions};

    fn issue(dir: &Path) {
        certs::create(&CertsOptions::new(dir.to_path_buf())).expect("certs");
    }

    #[test]
    fn loads_what_certs_writes_and_reloads_only_on_change() {
        let dir = tempdir();
        issue(dir.path());
        let tls = ServerTls::load(TlsFiles::in_dir(dir.path())).expect("load");
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed");
        let before = tls.config();

        let renew = CertsOptions { renew: true, ..CertsOptions::new(dir.path().to_path_buf()) };
        certs::create(&renew).unwrap();
        assert!(tls.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&before, &tls.config()));
    }

    #[test]
    fn a_mismatched_key_keeps_the_previous_config_and_names_no_key_bytes() {
        let dir = tempdir();
        issue(dir.path());
        let tls = ServerTls::load(TlsFiles::in_dir(dir.path())).expect("load");
        let before = tls.config();
        // The CA's key is a valid key, but not the server certificate's.
        let ca_key = std::fs::read_to_string(dir.path().join(file_names::CA_KEY)).unwrap();
        std::fs::write(dir.path().join(file_names::SERVER_KEY), &ca_key).unwrap();
        let error = tls.reload_if_changed().unwrap_err();
        assert!(matches!(error, TlsError::KeyPair { .. }), "{error}");
        assert!(Arc::ptr_eq(&before, &tls.config()), "the old configuration stays");
        let body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!error.to_string().contains(&body[..20]));

        std::fs::write(
            dir.path().join(file_names::SERVER_KEY),
            "-----BEGIN PRIVATE KEY-----\nAAAA",
        )
        .unwrap();
        assert!(matches!(tls.reload_if_changed().unwrap_err(), TlsError::NoKey { .. }));
    }

    #[test]
    fn missing_and_oversized_files_are_named() {
        let dir = tempdir();
        let files = TlsFiles::in_dir(dir.path());
        let Err(error) = ServerTls::load(files.clone()) else { panic!("loaded nothing") };
        assert!(error.to_string().contains("server.crt"), "{error}");
        issue(dir.path());
        std::fs::write(&files.client_ca, vec![b'a'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        let Err(error) = ServerTls::load(files) else { panic!("loaded an oversized CA") };
        assert!(matches!(error, TlsError::TooLarge { .. }), "{error}");
    }

    fn tempdir() -> TempDir {
        TempDir::new()
    }

    /// A temporary directory removed on drop (the loader has no tempfile dependency).
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "btls-tls-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
