//! Support for the certificate-validator tests (`tests/tests/validator.rs`): the certificate
//! matrix, one NGINX serving every case on its own port, and static Envoy configs that put
//! Envoy's default validator and the backendtls dynamic-module validator side by side.
//!
//! The module validator is loaded by name (Envoy 1.40 has no file path for it), so Envoy must
//! find `libbackendtls_filter.so` through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`; see
//! [`use_module_search_path`].

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};

use crate::certs::CertifiedKey;
use crate::envoy::config::{self, StaticBootstrap};
use crate::paths::workspace_root;

/// The environment variable Envoy searches for `lib<name>.so` when a module is named only.
pub const SEARCH_PATH_ENV: &str = "ENVOY_DYNAMIC_MODULES_SEARCH_PATH";
/// Overrides the dynamic module the tests use (as in `tests/tests/filter.rs`).
pub const FILTER_SO_ENV: &str = "BACKENDTLS_FILTER_SO";
/// The module's name: Envoy loads `lib<MODULE_NAME>.so`.
pub const MODULE_NAME: &str = "backendtls_filter";

/// `libbackendtls_filter.so`: `$BACKENDTLS_FILTER_SO`, or built once per test process with
/// `cargo build --release -p backendtls-filter`.
pub fn filter_so() -> PathBuf {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        if let Some(path) = std::env::var_os(FILTER_SO_ENV) {
            return PathBuf::from(path);
        }
        let root = workspace_root();
        let output = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "backendtls-filter"])
            .current_dir(&root)
            .output()
            .expect("run cargo build -p backendtls-filter");
        assert!(
            output.status.success(),
            "cargo build -p backendtls-filter failed (set {FILTER_SO_ENV} to use a prebuilt \
             one):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let path = target.join("release").join(format!("lib{MODULE_NAME}.so"));
        assert!(path.is_file(), "built the filter but {} is missing", path.display());
        path
    })
    .clone()
}

/// Points every Envoy this process starts at the directory of [`filter_so`] (Envoy inherits the
/// environment). Every caller sets the same value, once; call it before starting Envoy.
pub fn use_module_search_path() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let so = filter_so();
        assert_eq!(
            so.file_name().and_then(|n| n.to_str()),
            Some(format!("lib{MODULE_NAME}.so").as_str()),
            "Envoy loads the validator as lib{MODULE_NAME}.so from a directory"
        );
        let dir = so.parent().expect("the module has a directory").to_path_buf();
        std::env::set_var(SEARCH_PATH_ENV, &dir);
        dir
    })
    .clone()
}

// ---------------------------------------------------------------------------------------------
// The certificate matrix

/// What a validator must do with a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accept,
    /// Refuse the handshake; for the backendtls validator, with this `reason` label.
    Reject(&'static str),
}

/// One backend certificate situation.
pub struct Case {
    /// Also names the clusters (`default_<name>`, `module_<name>`) and the policy
    /// (`matrix/<name>`).
    pub name: &'static str,
    /// What is wrong (or right) with it, for the results table.
    pub about: &'static str,
    /// What NGINX serves: the leaf, then the intermediates it sends.
    pub server: CertifiedKey,
    /// The policy's hostname: the SNI, and the identity when `identities` is empty.
    pub hostname: &'static str,
    /// The policy's subjectAltNames in the flat `dns:`/`uri:` form.
    pub identities: Vec<String>,
    /// The policy's CA bundle.
    pub anchors_pem: String,
    /// What the backendtls validator must do.
    pub ours: Outcome,
}

impl Case {
    pub fn policy(&self) -> String {
        format!("matrix/{}", self.name)
    }

    /// The names the leaf must carry: the identities, or the hostname.
    pub fn expected_names(&self) -> Vec<String> {
        if self.identities.is_empty() {
            vec![format!("dns:{}", self.hostname)]
        } else {
            self.identities.clone()
        }
    }
}

type Issuer = CertifiedIssuer<'static, KeyPair>;

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn root(common_name: &str) -> Issuer {
    CertifiedIssuer::self_signed(ca_params(common_name), KeyPair::generate().expect("CA key"))
        .expect("self-sign CA")
}

fn sub_ca(parent: &Issuer, common_name: &str, edit: impl FnOnce(&mut CertificateParams)) -> Issuer {
    let mut params = ca_params(common_name);
    params.use_authority_key_identifier_extension = true;
    edit(&mut params);
    CertifiedIssuer::signed_by(params, KeyPair::generate().expect("intermediate key"), parent)
        .expect("sign intermediate")
}

/// A serverAuth leaf with subject `CN=backend` and `sans`, signed by `issuer` after `edit`; the
/// PEM chain is the leaf followed by `send`.
fn leaf(
    issuer: &Issuer,
    sans: &[SanType],
    send: &[&Issuer],
    edit: impl FnOnce(&mut CertificateParams),
) -> CertifiedKey {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "backend");
    params.subject_alt_names = sans.to_vec();
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    edit(&mut params);
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    let mut cert_pem = cert.pem();
    for intermediate in send {
        cert_pem.push_str(&intermediate.pem());
    }
    CertifiedKey { cert_pem, key_pem: key.serialize_pem() }
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().expect("IA5 DNS name"))
}

fn uri(value: &str) -> SanType {
    SanType::URI(value.try_into().expect("IA5 URI"))
}

pub const SPIFFE_NGINX: &str = "spiffe://cluster.local/ns/default/sa/nginx";

/// Every case of the acceptance matrix, freshly generated. The policy CA is the same for all
/// but `wrong_ca`'s leaf; validity windows in the past or future are years away from now.
pub fn matrix() -> Vec<Case> {
    let ca = root("backendtls matrix CA");
    let stranger = root("a CA no policy trusts");
    let intermediate = sub_ca(&ca, "matrix intermediate", |_| {});
    let expired_intermediate = sub_ca(&ca, "expired intermediate", |p| {
        p.not_before = date_time_ymd(2019, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    let not_a_ca = sub_ca(&ca, "not a CA", |p| {
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    });
    let anchors = ca.pem();
    let example = [dns("example.com")];
    let case = |name, about, server, hostname, identities: &[&str], ours| Case {
        name,
        about,
        server,
        hostname,
        identities: identities.iter().map(|s| s.to_string()).collect(),
        anchors_pem: anchors.clone(),
        ours,
    };
    let self_signed = {
        let mut params = CertificateParams::new(vec!["example.com".to_string()]).expect("SAN");
        params.distinguished_name.push(DnType::CommonName, "example.com");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-sign");
        CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    };
    use Outcome::{Accept, Reject};
    vec![
        case(
            "valid_leaf",
            "leaf for example.com from the policy CA",
            leaf(&ca, &example, &[], |_| {}),
            "example.com",
            &[],
            Accept,
        ),
        case(
            "valid_chain",
            "leaf from an intermediate the backend sends",
            leaf(&intermediate, &example, &[&intermediate], |_| {}),
            "example.com",
            &[],
            Accept,
        ),
        case(
            "wrong_ca",
            "leaf from a CA the policy does not trust",
            leaf(&stranger, &example, &[], |_| {}),
            "example.com",
            &[],
            Reject("unknown_issuer"),
        ),
        case(
            "expired_leaf",
            "leaf notAfter 2020-01-01",
            leaf(&ca, &example, &[], |p| {
                p.not_before = date_time_ymd(2019, 1, 1);
                p.not_after = date_time_ymd(2020, 1, 1);
            }),
            "example.com",
            &[],
            Reject("expired"),
        ),
        case(
            "not_yet_valid_leaf",
            "leaf notBefore 2090-01-01",
            leaf(&ca, &example, &[], |p| p.not_before = date_time_ymd(2090, 1, 1)),
            "example.com",
            &[],
            Reject("not_yet_valid"),
        ),
        case(
            "expired_intermediate",
            "valid leaf from an intermediate that expired 2021-01-01",
            leaf(&expired_intermediate, &example, &[&expired_intermediate], |_| {}),
            "example.com",
            &[],
            Reject("expired"),
        ),
        case(
            "dns_san_mismatch",
            "leaf for other.example, policy hostname example.com",
            leaf(&ca, &[dns("other.example")], &[], |_| {}),
            "example.com",
            &[],
            Reject("name_mismatch"),
        ),
        case(
            "cn_only",
            "CN=example.com, no subjectAltName",
            leaf(&ca, &[], &[], |p| {
                p.distinguished_name = rcgen::DistinguishedName::new();
                p.distinguished_name.push(DnType::CommonName, "example.com");
            }),
            "example.com",
            &[],
            Reject("name_mismatch"),
        ),
        case(
            "leaf_wildcard_match",
            "leaf *.example.com, policy hostname a.example.com",
            leaf(&ca, &[dns("*.example.com")], &[], |_| {}),
            "a.example.com",
            &[],
            Accept,
        ),
        case(
            "leaf_wildcard_non_match",
            "leaf *.example.com, policy hostname a.b.example.com",
            leaf(&ca, &[dns("*.example.com")], &[], |_| {}),
            "a.b.example.com",
            &[],
            Reject("name_mismatch"),
        ),
        case(
            "policy_wildcard_match",
            "leaf a.example.com, policy SAN *.example.com",
            leaf(&ca, &[dns("a.example.com")], &[], |_| {}),
            "a.example.com",
            &["dns:*.example.com"],
            Accept,
        ),
        case(
            "policy_wildcard_non_match",
            "leaf a.b.example.com, policy SAN *.example.com",
            leaf(&ca, &[dns("a.b.example.com")], &[], |_| {}),
            "a.b.example.com",
            &["dns:*.example.com"],
            Reject("name_mismatch"),
        ),
        case(
            "uri_san_match",
            "leaf URI SAN = the policy's URI SAN",
            leaf(&ca, &[dns("nginx.internal"), uri(SPIFFE_NGINX)], &[], |_| {}),
            "nginx.internal",
            &[&format!("uri:{SPIFFE_NGINX}")],
            Accept,
        ),
        case(
            "uri_san_mismatch",
            "leaf URI SAN .../sa/other, policy URI SAN .../sa/nginx",
            leaf(
                &ca,
                &[dns("nginx.internal"), uri("spiffe://cluster.local/ns/default/sa/other")],
                &[],
                |_| {},
            ),
            "nginx.internal",
            &[&format!("uri:{SPIFFE_NGINX}")],
            Reject("name_mismatch"),
        ),
        case(
            "client_auth_only",
            "leaf whose extended key usage is clientAuth only",
            leaf(&ca, &example, &[], |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }),
            "example.com",
            &[],
            Reject("bad_key_usage"),
        ),
        case(
            "issuer_not_ca",
            "leaf issued by a certificate with cA=false (sent as intermediate)",
            leaf(&not_a_ca, &example, &[&not_a_ca], |_| {}),
            "example.com",
            &[],
            Reject("invalid_chain"),
        ),
        Case {
            anchors_pem: intermediate.pem(),
            ..case(
                "intermediate_as_anchor",
                "policy CA bundle holds only the intermediate; the backend sends the leaf alone",
                leaf(&intermediate, &example, &[], |_| {}),
                "example.com",
                &[],
                Accept,
            )
        },
        case(
            "policy_wildcard_upper_case",
            "leaf a.EXAMPLE.com, policy SAN *.example.com",
            leaf(&ca, &[dns("a.EXAMPLE.com")], &[], |_| {}),
            "a.example.com",
            &["dns:*.example.com"],
            Accept,
        ),
        case(
            "self_signed_leaf",
            "self-signed leaf for example.com, not among the anchors",
            self_signed,
            "example.com",
            &[],
            Reject("unknown_issuer"),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Static Envoy configs

/// Who verifies a cluster's backend certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validator {
    /// Envoy's default: `trusted_ca` + `match_typed_subject_alt_names`, as the loader writes them.
    Default,
    /// The backendtls dynamic module (`custom_validator_config`).
    Module,
}

/// One upstream cluster of a static config.
pub struct ClusterSpec {
    /// The cluster's name; its route is the path prefix `/<name>/`.
    pub name: String,
    pub port: u16,
    pub validator: Validator,
    /// The policy (`ns/name`), its hostname (SNI), identities and CA bundle.
    pub policy: String,
    pub hostname: String,
    pub identities: Vec<String>,
    pub anchors_pem: String,
    /// `Some(1)`: every request a new upstream connection (a new handshake).
    pub max_requests_per_connection: Option<u32>,
    /// `Some(0)`: no TLS session resumption, every handshake a full one.
    pub max_session_keys: Option<u32>,
}

impl ClusterSpec {
    pub fn for_case(case: &Case, validator: Validator, port: u16) -> ClusterSpec {
        let prefix = match validator {
            Validator::Default => "default",
            Validator::Module => "module",
        };
        ClusterSpec {
            name: format!("{prefix}_{}", case.name),
            port,
            validator,
            policy: case.policy(),
            hostname: case.hostname.to_string(),
            identities: case.identities.clone(),
            anchors_pem: case.anchors_pem.clone(),
            max_requests_per_connection: None,
            max_session_keys: None,
        }
    }

    /// The policy's identities by the contract's rules (the hostname when there are none).
    fn identities(&self) -> Vec<backendtls_contract::Identity> {
        let sans = self.identities.iter().map(|flat| match flat.split_once(':') {
            Some(("dns", name)) => (backendtls_contract::san_types::HOSTNAME, name),
            Some(("uri", uri)) => (backendtls_contract::san_types::URI, uri),
            _ => panic!("identity {flat:?}"),
        });
        backendtls_contract::Identity::of_policy(&self.hostname, sans)
            .unwrap_or_else(|e| panic!("cluster {}: {e}", self.name))
    }

    /// The backendtls validator's JSON configuration: the contract type, as the loader writes it.
    pub fn module_config_json(&self) -> String {
        let config = backendtls_contract::validator::Config {
            policy: self.policy.clone(),
            hostname: self.hostname.clone(),
            identities: if self.identities.is_empty() { Vec::new() } else { self.identities() },
            trust_anchors_pem: self.anchors_pem.clone(),
        };
        serde_json::to_string(&config).expect("the validator config serializes")
    }

    fn validation_context(&self) -> Value {
        match self.validator {
            // The SAN matchers the loader generates for these identities.
            Validator::Default => json!({
                "trusted_ca": { "inline_string": self.anchors_pem },
                "match_typed_subject_alt_names": backendtls_loader::xds::identity::san_matchers(
                    &self.identities()
                )
                .iter()
                .map(backendtls_loader::xds::json::to_json)
                .collect::<Vec<_>>(),
            }),
            Validator::Module => json!({ "custom_validator_config": {
                "name": "envoy.tls.cert_validator.dynamic_modules",
                "typed_config": config::typed(
                    "envoy.extensions.transport_sockets.tls.cert_validator.dynamic_modules.v3.\
                     DynamicModuleCertValidatorConfig",
                    json!({
                        "dynamic_module_config": { "name": MODULE_NAME },
                        "validator_name": "backendtls",
                        "validator_config": config::string_value(&self.module_config_json()),
                    }),
                ),
            }}),
        }
    }

    fn cluster(&self) -> Value {
        let mut cluster = config::static_cluster(&self.name, self.port);
        if let Some(n) = self.max_requests_per_connection {
            cluster["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": config::typed(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    json!({
                        "common_http_protocol_options": { "max_requests_per_connection": n },
                        "explicit_http_config": { "http_protocol_options": {} },
                    }),
                ),
            });
        }
        let extra = match self.max_session_keys {
            None => json!({}),
            Some(n) => json!({ "max_session_keys": n }),
        };
        cluster["transport_socket"] =
            config::upstream_tls(&self.hostname, "TLSv1_3", self.validation_context(), extra);
        cluster
    }
}

/// A static Envoy config: one HTTP listener routing `/<cluster>/...` to each cluster, an access
/// log line per request (`ACCESS <cluster> <code> <transport failure reason>`), and, when
/// `http_filter` is set, the backendtls HTTP filter (dynamic module), which hosts the validator's
/// counters.
pub fn static_config(
    listener: u16,
    admin: u16,
    http_filter: bool,
    clusters: &[ClusterSpec],
) -> String {
    let mut bootstrap = StaticBootstrap::new(
        admin,
        listener,
        "ACCESS %UPSTREAM_CLUSTER% %RESPONSE_CODE% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n",
    );
    if http_filter {
        bootstrap =
            bootstrap.http_filter(config::dynamic_module_filter(MODULE_NAME, &filter_so(), "{}"));
    }
    for cluster in clusters {
        bootstrap = bootstrap
            .route(&format!("/{}/", cluster.name), &cluster.name)
            .cluster(cluster.cluster());
    }
    bootstrap.yaml()
}

/// The `ACCESS` lines of an Envoy log from [`static_config`]: (cluster, status, failure reason).
pub fn access_lines(envoy_log: &str) -> Vec<(String, u16, String)> {
    envoy_log
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("ACCESS ")?;
            let mut parts = rest.splitn(3, ' ');
            Some((
                parts.next()?.to_string(),
                parts.next()?.parse().ok()?,
                parts.next().unwrap_or("").to_string(),
            ))
        })
        .collect()
}
