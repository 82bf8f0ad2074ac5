//! The loader's input: [`ConfigDir`] and the YAML builders, written atomically.

use std::fmt::Write as _;
use std::path::Path;

use tempfile::TempDir;

use super::*;
use crate::certs::CertifiedKey;

/// A temporary directory of manifests the loader reads and watches.
pub struct ConfigDir {
    dir: TempDir,
}

impl ConfigDir {
    pub fn new() -> ConfigDir {
        ConfigDir {
            dir: tempfile::Builder::new()
                .prefix("btls-policy-config-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `name` atomically: a hidden temporary file (the loader skips
    /// dotfiles) renamed into place, so the loader never reads half a file.
    pub fn write(&self, name: &str, contents: &str) {
        let temporary = self.dir.path().join(format!(".tmp-{name}"));
        std::fs::write(&temporary, contents)
            .unwrap_or_else(|e| panic!("write {}: {e}", temporary.display()));
        let path = self.dir.path().join(name);
        std::fs::rename(&temporary, &path).unwrap_or_else(|e| {
            panic!("rename {} to {}: {e}", temporary.display(), path.display())
        });
    }

    pub fn remove(&self, name: &str) {
        let path = self.dir.path().join(name);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("delete {}: {e}", path.display()));
    }
}

impl Default for ConfigDir {
    fn default() -> Self {
        ConfigDir::new()
    }
}

/// Joins YAML documents into one multi-document file.
pub fn documents<S: AsRef<str>>(documents: &[S]) -> String {
    documents
        .iter()
        .map(|document| document.as_ref().trim_end().to_string() + "\n")
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A Gateway in [`NS`] with one HTTP listener on `port` (routes from its own namespace).
pub fn gateway_yaml(name: &str, port: u16) -> String {
    gateway_yaml_with_client_certificate(name, port, None)
}

/// Like [`gateway_yaml`], with `spec.tls.backend.clientCertificateRef` naming Secret
/// `client_certificate_secret` when given.
pub fn gateway_yaml_with_client_certificate(
    name: &str,
    port: u16,
    client_certificate_secret: Option<&str>,
) -> String {
    let tls = match client_certificate_secret {
        Some(secret) => format!(
            "  tls:\n    backend:\n      clientCertificateRef:\n        kind: Secret\n        \
             name: {secret}\n"
        ),
        None => String::new(),
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  \
         namespace: {NS}\nspec:\n  gatewayClassName: backendtls\n{tls}  listeners:\n  \
         - name: http\n    protocol: HTTP\n    port: {port}\n    allowedRoutes:\n      \
         namespaces:\n        from: Same\n"
    )
}

/// An HTTPRoute in [`NS`] for host [`ROUTE_HOST`]: one `PathPrefix` rule per backend.
pub struct Route {
    name: String,
    parents: Vec<String>,
    rules: Vec<(String, String, u16)>,
}

impl Route {
    /// A route attached to Gateway [`GATEWAY`].
    pub fn new(name: &str) -> Route {
        Route { name: name.to_string(), parents: vec![GATEWAY.to_string()], rules: Vec::new() }
    }

    /// Attaches to Gateway `gateway` instead of (or, called again, besides) the default.
    pub fn parents(mut self, gateways: &[&str]) -> Route {
        self.parents = gateways.iter().map(|gateway| gateway.to_string()).collect();
        self
    }

    /// `PathPrefix path` -> Service `service` port `port`.
    pub fn rule(mut self, path: &str, service: &str, port: u16) -> Route {
        self.rules.push((path.to_string(), service.to_string(), port));
        self
    }

    pub fn yaml(&self) -> String {
        let mut yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {}\n  \
             namespace: {NS}\nspec:\n  parentRefs:\n",
            self.name
        );
        for parent in &self.parents {
            let _ = writeln!(yaml, "  - name: {parent}");
        }
        let _ = write!(yaml, "  hostnames:\n  - {ROUTE_HOST}\n  rules:\n");
        for (path, service, port) in &self.rules {
            let _ = write!(
                yaml,
                "  - matches:\n    - path:\n        type: PathPrefix\n        value: {path}\n    \
                 backendRefs:\n    - name: {service}\n      port: {port}\n"
            );
        }
        yaml
    }
}

/// A Service in [`NS`] with the named `ports` (name, Service port) and, unless `backend_port` is
/// `None`, an EndpointSlice sending every one of those port names to 127.0.0.1:`backend_port`.
pub fn service_yaml(name: &str, ports: &[(&str, u16)], backend_port: Option<u16>) -> String {
    let mut service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  \
         selector:\n    app: tls-backend\n  ports:\n"
    );
    for (port_name, port) in ports {
        let _ = write!(
            service,
            "  - name: {port_name}\n    port: {port}\n    targetPort: 8443\n    protocol: TCP\n"
        );
    }
    let Some(backend_port) = backend_port else {
        return service;
    };
    let mut slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-local\n  \
         namespace: {NS}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\n\
         endpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions:\n    ready: true\nports:\n"
    );
    for (port_name, _) in ports {
        let _ = write!(slice, "- name: {port_name}\n  port: {backend_port}\n  protocol: TCP\n");
    }
    documents(&[service, slice])
}

/// The usual single-port test Service: port [`BTLS_PORT`] named [`BTLS_PORT_NAME`].
pub fn btls_service_yaml(name: &str, backend_port: u16) -> String {
    service_yaml(name, &[(BTLS_PORT_NAME, BTLS_PORT)], Some(backend_port))
}

/// A ConfigMap in [`NS`] with the given `data` entries (values written as YAML block or quoted
/// scalars as needed); no entries gives `data: {}`.
pub fn config_map_yaml(name: &str, data: &[(&str, &str)]) -> String {
    let mut yaml =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {NS}\n");
    if data.is_empty() {
        yaml.push_str("data: {}\n");
        return yaml;
    }
    yaml.push_str("data:\n");
    for (key, value) in data {
        yaml.push_str(&yaml_entry(key, value, 2));
    }
    yaml
}

/// ConfigMap `name` with the PEM bundle `ca_pem` under `ca.crt`.
pub fn ca_config_map_yaml(name: &str, ca_pem: &str) -> String {
    config_map_yaml(name, &[("ca.crt", ca_pem)])
}

/// A Secret in [`NS`] with `ca_pem` under `ca.crt` (base64 in `data`, as the API stores it).
pub fn ca_secret_yaml(name: &str, ca_pem: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         type: Opaque\ndata:\n  ca.crt: {}\n",
        base64(ca_pem.as_bytes())
    )
}

/// A `kubernetes.io/tls` Secret in [`NS`] with `tls.crt` and `tls.key` (base64 in `data`).
pub fn tls_secret_yaml(name: &str, cert: &CertifiedKey) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        base64(cert.cert_pem.as_bytes()),
        base64(cert.key_pem.as_bytes())
    )
}

/// `key: value` at `indent`, as a literal block for multi-line values and a quoted scalar else.
fn yaml_entry(key: &str, value: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    if value.contains('\n') {
        let body: String = value.lines().map(|line| format!("{pad}  {line}\n")).collect();
        format!("{pad}{key}: |\n{body}")
    } else {
        format!("{pad}{key}: {}\n", serde_json::to_string(value).expect("JSON string"))
    }
}

/// Standard base64 with padding (Secret `data` values).
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A BackendTLSPolicy (`gateway.networking.k8s.io/v1`) in [`NS`], built field by field.
#[derive(Clone, Debug)]
pub struct Policy {
    name: String,
    generation: Option<i64>,
    creation_timestamp: Option<String>,
    targets: Vec<(String, Option<String>)>,
    ca_refs: Vec<(String, String, String)>,
    well_known_ca_certificates: Option<String>,
    hostname: String,
    subject_alt_names: Vec<(&'static str, String)>,
    options: Vec<(String, String)>,
}

impl Policy {
    /// A policy for the whole Service `service`, hostname [`ROUTE_HOST`], CA [`CA_CONFIG_MAP`].
    pub fn new(name: &str, service: &str) -> Policy {
        Policy {
            name: name.to_string(),
            generation: None,
            creation_timestamp: None,
            targets: vec![(service.to_string(), None)],
            ca_refs: vec![(String::new(), "ConfigMap".to_string(), CA_CONFIG_MAP.to_string())],
            well_known_ca_certificates: None,
            hostname: ROUTE_HOST.to_string(),
            subject_alt_names: Vec::new(),
            options: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Targets only port `section_name` of the (first) Service.
    pub fn section(mut self, section_name: &str) -> Policy {
        self.targets[0].1 = Some(section_name.to_string());
        self
    }

    pub fn hostname(mut self, hostname: &str) -> Policy {
        self.hostname = hostname.to_string();
        self
    }

    /// Replaces the CA refs with one ConfigMap ref.
    pub fn ca_config_map(self, name: &str) -> Policy {
        self.ca_ref("", "ConfigMap", name)
    }

    /// Replaces the CA refs with one ref of any group and kind.
    pub fn ca_ref(mut self, group: &str, kind: &str, name: &str) -> Policy {
        self.ca_refs = vec![(group.to_string(), kind.to_string(), name.to_string())];
        self
    }

    /// Adds a CA ref after the ones already there.
    pub fn also_ca_ref(mut self, group: &str, kind: &str, name: &str) -> Policy {
        self.ca_refs.push((group.to_string(), kind.to_string(), name.to_string()));
        self
    }

    /// Replaces the CA refs with `wellKnownCACertificates: <value>`.
    pub fn well_known_ca_certificates(mut self, value: &str) -> Policy {
        self.ca_refs.clear();
        self.well_known_ca_certificates = Some(value.to_string());
        self
    }

    pub fn generation(mut self, generation: i64) -> Policy {
        self.generation = Some(generation);
        self
    }

    pub fn created(mut self, timestamp: &str) -> Policy {
        self.creation_timestamp = Some(timestamp.to_string());
        self
    }

    pub fn san_hostname(mut self, hostname: &str) -> Policy {
        self.subject_alt_names.push(("Hostname", hostname.to_string()));
        self
    }

    pub fn san_uri(mut self, uri: &str) -> Policy {
        self.subject_alt_names.push(("URI", uri.to_string()));
        self
    }

    pub fn option(mut self, key: &str, value: &str) -> Policy {
        self.options.push((key.to_string(), value.to_string()));
        self
    }

    pub fn yaml(&self) -> String {
        let mut yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata:\n  \
             name: {}\n  namespace: {NS}\n",
            self.name
        );
        if let Some(generation) = self.generation {
            let _ = writeln!(yaml, "  generation: {generation}");
        }
        if let Some(timestamp) = &self.creation_timestamp {
            let _ = writeln!(yaml, "  creationTimestamp: \"{timestamp}\"");
        }
        yaml.push_str("spec:\n  targetRefs:\n");
        for (service, section) in &self.targets {
            let _ = write!(yaml, "  - group: \"\"\n    kind: Service\n    name: {service}\n");
            if let Some(section) = section {
                let _ = writeln!(yaml, "    sectionName: {section}");
            }
        }
        yaml.push_str("  validation:\n");
        if let Some(value) = &self.well_known_ca_certificates {
            let _ = writeln!(yaml, "    wellKnownCACertificates: \"{value}\"");
        }
        if !self.ca_refs.is_empty() {
            yaml.push_str("    caCertificateRefs:\n");
        }
        for (group, kind, name) in &self.ca_refs {
            let _ =
                write!(yaml, "    - group: \"{group}\"\n      kind: {kind}\n      name: {name}\n");
        }
        let _ = writeln!(yaml, "    hostname: {}", self.hostname);
        if !self.subject_alt_names.is_empty() {
            yaml.push_str("    subjectAltNames:\n");
            for (kind, value) in &self.subject_alt_names {
                let field = if *kind == "URI" { "uri" } else { "hostname" };
                let _ = write!(yaml, "    - type: {kind}\n      {field}: \"{value}\"\n");
            }
        }
        if !self.options.is_empty() {
            yaml.push_str("  options:\n");
            for (key, value) in &self.options {
                let _ = writeln!(yaml, "    {key}: \"{value}\"");
            }
        }
        yaml
    }
}

/// The objects most tests start from: Gateway [`GATEWAY`] on `gateway_port` and the two CA
/// ConfigMaps, written to `gateway.yaml` and `cas.yaml`.
pub fn write_base(config: &ConfigDir, pki: &Pki, gateway_port: u16) {
    config.write("gateway.yaml", &gateway_yaml(GATEWAY, gateway_port));
    config.write(
        "cas.yaml",
        &documents(&[
            ca_config_map_yaml(CA_CONFIG_MAP, pki.ca.cert_pem()),
            ca_config_map_yaml(MISMATCH_CA_CONFIG_MAP, pki.mismatch_ca.cert_pem()),
        ]),
    );
}

/// The cluster the loader makes for Service `service` port `port` in [`NS`].
pub fn cluster(service: &str, port: u16) -> String {
    format!("kube_{NS}_{service}_{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_yaml_has_every_field() {
        let yaml = Policy::new("p", "svc")
            .section("btls")
            .generation(2)
            .created("2024-01-01T00:00:00Z")
            .san_uri("spiffe://x/y")
            .option("backendtls.dev/min-tls-version", "1.3")
            .yaml();
        for needle in [
            "  generation: 2\n",
            "  creationTimestamp: \"2024-01-01T00:00:00Z\"\n",
            "    sectionName: btls\n",
            "    - type: URI\n      uri: \"spiffe://x/y\"\n",
            "    backendtls.dev/min-tls-version: \"1.3\"\n",
            "    hostname: abc.example.com\n",
        ] {
            assert!(yaml.contains(needle), "{needle:?} missing from:\n{yaml}");
        }
    }
}
