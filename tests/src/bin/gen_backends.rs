//! `backendtls-gen-backends DIR N [CA_PEM_FILE]`: writes the scale benchmark's manifests (see
//! `backendtls_e2e::scale`) so that `check`, `render` and `serve` can be timed by hand.

use backendtls_e2e::scale::{write, ScaleSpec};
use backendtls_e2e::TestCa;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(count)) = (args.get(1), args.get(2).and_then(|n| n.parse().ok())) else {
        eprintln!("usage: backendtls-gen-backends DIR N [CA_PEM_FILE]");
        std::process::exit(2);
    };
    let ca_pem = match args.get(3) {
        Some(path) => std::fs::read_to_string(path).expect("read CA PEM"),
        None => TestCa::new("backendtls bench CA").cert_pem().to_string(),
    };
    let spec = ScaleSpec {
        backends: count,
        gateway_port: 8080,
        backend_port: 8443,
        ca_pem: &ca_pem,
        hostname: "example.com",
    };
    write(std::path::Path::new(dir), &spec).expect("write manifests");
}
