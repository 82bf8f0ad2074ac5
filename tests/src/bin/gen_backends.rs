//! `backendtls-gen-backends [--layout LAYOUT] [--file-per-namespace] DIR N [CA_PEM_FILE]`: writes the scale benchmark's
//! manifests (see `backendtls_e2e::scale`) so that `check`, `render` and `serve` can be timed by
//! hand. LAYOUT is `per<N>` (N backends per namespace; default `per100`) or `ns<N>` (backend i in
//! namespace i mod N: `ns1` puts everything in one namespace). `--file-per-namespace` writes each
//! namespace's backends into one multi-document file `DIR/<namespace>.yaml`.
#![forbid(unsafe_code)]

use backendtls_e2e::scale::{write, Layout, ScaleSpec};
use backendtls_e2e::TestCa;

fn main() {
    let usage = || -> ! {
        eprintln!("usage: backendtls-gen-backends [--layout per<N>|ns<N>] [--file-per-namespace] DIR N [CA_PEM_FILE]");
        std::process::exit(2);
    };
    let mut layout = Layout::default();
    let mut file_per_namespace = false;
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--layout" {
            let value = args.next().unwrap_or_else(|| usage());
            layout = value.parse().unwrap_or_else(|e: String| {
                eprintln!("{e}");
                usage()
            });
        } else if arg == "--file-per-namespace" {
            file_per_namespace = true;
        } else {
            positional.push(arg);
        }
    }
    let (Some(dir), Some(count)) =
        (positional.first(), positional.get(1).and_then(|n| n.parse().ok()))
    else {
        usage()
    };
    let ca_pem = match positional.get(2) {
        Some(path) => std::fs::read_to_string(path).expect("read CA PEM"),
        None => TestCa::new("backendtls bench CA").cert_pem().to_string(),
    };
    let spec = ScaleSpec {
        backends: count,
        layout,
        file_per_namespace,
        gateway_port: 8080,
        backend_port: 8443,
        ca_pem: &ca_pem,
        hostname: "example.com",
    };
    write(std::path::Path::new(dir), &spec).expect("write manifests");
}
