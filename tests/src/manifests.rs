//! The kgateway "Backend TLS" guide's objects in a config directory the loader watches, with the
//! test's ports substituted in, plus the CA ConfigMap and edits the tests make.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::paths::examples_dir;

/// The guide's files, copied from the committed examples (never `ca.yaml`, which the demo writes).
pub const GUIDE_FILES: [&str; 4] = ["gateway.yaml", "nginx.yaml", "policy.yaml", "route.yaml"];
/// The CA ConfigMap file this helper writes.
pub const CA_FILE: &str = "ca.yaml";
pub const POLICY_FILE: &str = "policy.yaml";

/// The Gateway listener port line in the committed `gateway.yaml`.
const GATEWAY_PORT_LINE: &str = "    port: 8080\n";
/// The EndpointSlice's HTTPS port in the committed `nginx.yaml` (the Service has the same lines,
/// so only the EndpointSlice document is edited).
const ENDPOINT_HTTPS_PORT: &str = "- name: https\n  port: 8443\n";

/// A temporary config directory holding the guide's manifests.
pub struct Manifests {
    dir: TempDir,
    /// `policy.yaml` as first written, for re-creating it after a delete.
    policy_yaml: String,
}

impl Manifests {
    /// Writes the guide's objects with the Gateway listening on `gateway_port`, the nginx endpoint on
    /// 127.0.0.1:`nginx_https_port`, and ConfigMap `default/ca` holding `ca_pem`.
    pub fn write(gateway_port: u16, nginx_https_port: u16, ca_pem: &str) -> Manifests {
        let dir = tempfile::Builder::new()
            .prefix("btls-manifests-")
            .tempdir()
            .expect("manifests temp dir");
        let read = |name: &str| {
            let path = examples_dir().join(name);
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read example {}: {e}", path.display()))
        };
        let gateway = with_gateway_port(&read("gateway.yaml"), gateway_port);
        let nginx = with_endpoint_https_port(&read("nginx.yaml"), nginx_https_port);
        let manifests = Manifests { dir, policy_yaml: read(POLICY_FILE) };
        manifests.write_file("gateway.yaml", &gateway);
        manifests.write_file("nginx.yaml", &nginx);
        manifests.write_file(POLICY_FILE, &manifests.policy_yaml);
        manifests.write_file("route.yaml", &read("route.yaml"));
        manifests.set_ca(ca_pem);
        manifests
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the PEM bundle in ConfigMap `default/ca`.
    pub fn set_ca(&self, ca_pem: &str) {
        self.write_file(CA_FILE, &ca_config_map(ca_pem));
    }

    pub fn delete_policy(&self) {
        let path = self.path(POLICY_FILE);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("delete {}: {e}", path.display()));
    }

    /// Writes `policy.yaml` back as it was first written.
    pub fn recreate_policy(&self) {
        self.write_file(POLICY_FILE, &self.policy_yaml);
    }

    /// Writes `contents` to `name` atomically: a hidden temporary file (the loader skips dotfiles)
    /// renamed into place, so the loader never reads half a file.
    pub fn write_file(&self, name: &str, contents: &str) {
        let temporary = self.path(&format!(".tmp-{name}"));
        std::fs::write(&temporary, contents)
            .unwrap_or_else(|e| panic!("write {}: {e}", temporary.display()));
        std::fs::rename(&temporary, self.path(name))
            .unwrap_or_else(|e| panic!("rename {} into place: {e}", temporary.display()));
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// ConfigMap `default/ca` with key `ca.crt`, the shape the guide's policy refers to.
pub fn ca_config_map(ca_pem: &str) -> String {
    let indented: String = ca_pem.lines().map(|line| format!("    {line}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ca\n  namespace: default\ndata:\n  ca.crt: |\n{indented}"
    )
}

/// `gateway.yaml` with its one listener port changed; panics if the example no longer has it.
fn with_gateway_port(gateway_yaml: &str, port: u16) -> String {
    replace_exactly_once(
        gateway_yaml,
        GATEWAY_PORT_LINE,
        &format!("    port: {port}\n"),
        "gateway.yaml",
    )
}

/// `nginx.yaml` with the EndpointSlice's `https` port changed; the Service document is untouched.
fn with_endpoint_https_port(nginx_yaml: &str, port: u16) -> String {
    let documents: Vec<String> = nginx_yaml
        .split("\n---\n")
        .map(|document| {
            if document.contains("kind: EndpointSlice") {
                replace_exactly_once(
                    document,
                    ENDPOINT_HTTPS_PORT,
                    &format!("- name: https\n  port: {port}\n"),
                    "nginx.yaml (EndpointSlice)",
                )
            } else {
                document.to_string()
            }
        })
        .collect();
    assert!(
        documents.iter().any(|document| document.contains("kind: EndpointSlice")),
        "examples/backend-tls/nginx.yaml has no EndpointSlice document; the e2e tests need one"
    );
    documents.join("\n---\n")
}

fn replace_exactly_once(text: &str, from: &str, to: &str, file: &str) -> String {
    let count = text.matches(from).count();
    assert_eq!(
        count, 1,
        "expected exactly one {from:?} in examples/backend-tls/{file}, found {count}; \
         the examples changed, so update tests/src/manifests.rs"
    );
    text.replacen(from, to, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_endpoint_slice_port_changes() {
        let nginx = "kind: Service\nports:\n- name: https\n  port: 8443\n  targetPort: 443\n\
                     ---\nkind: EndpointSlice\nports:\n- name: https\n  port: 8443\n  protocol: TCP\n";
        let edited = with_endpoint_https_port(nginx, 40443);
        assert_eq!(
            edited,
            "kind: Service\nports:\n- name: https\n  port: 8443\n  targetPort: 443\n\
             ---\nkind: EndpointSlice\nports:\n- name: https\n  port: 40443\n  protocol: TCP\n"
        );
    }

    #[test]
    fn ca_config_map_indents_the_pem() {
        let yaml = ca_config_map("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert!(yaml.ends_with(
            "  ca.crt: |\n    -----BEGIN CERTIFICATE-----\n    AAAA\n    -----END CERTIFICATE-----\n"
        ));
    }
}
