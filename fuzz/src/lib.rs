//! Fuzz targets for backendtls, runnable on the stable toolchain.
//!
//! Each target is a plain `fn(&[u8])` that panics when it finds a bug (a crash in the code under
//! test or a broken invariant). `make fuzz` runs them under AFL++ through the `afl` binary
//! (`src/bin/afl.rs`, built with `cargo afl`); `cargo test -p backendtls-fuzz` (part of
//! `make unit`) replays the saved corpus (`fuzz/corpus/<target>/`) through the same functions,
//! so no fuzzer is needed to keep old findings fixed.
//!
//! Targets are thin wrappers around the public functions of the loader and the filter, so that
//! they are easy to re-point when those move.
#![forbid(unsafe_code)]

pub mod fail_closed;
pub mod filter;
pub mod manifest;
pub mod trust;

use std::path::{Path, PathBuf};

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub about: &'static str,
}

/// Every target, in the order `make fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "manifest_yaml",
        run: manifest::manifest_yaml,
        about: "loader source::parse_file on a .yaml file; a usable file keeps every policy target",
    },
    Target {
        name: "manifest_json",
        run: manifest::manifest_json,
        about: "loader source::parse_file on a .json file",
    },
    Target {
        name: "pipeline",
        run: manifest::pipeline,
        about: "files -> store -> resolve -> translate, then the fail-closed property",
    },
    Target {
        name: "ca_bundle",
        run: trust::ca_bundle,
        about: "loader resolve::trust::ca_bundle on PEM text",
    },
    Target {
        name: "ca_bundle_der",
        run: trust::ca_bundle_der,
        about: "loader resolve::trust::ca_bundle on arbitrary DER in PEM blocks",
    },
    Target {
        name: "tls_key_pair",
        run: trust::tls_key_pair,
        about: "loader resolve::trust::tls_key_pair (stringData and data)",
    },
    Target {
        name: "cluster_metadata",
        run: filter::cluster_metadata,
        about: "filter pb decoder and Policy::from_metadata_proto",
    },
    Target {
        name: "x509_differential",
        run: filter::x509_differential,
        about: "filter x509 SANs and validity against x509-parser",
    },
    Target {
        name: "peer_certificate",
        run: filter::peer_certificate,
        about: "filter x509::pem_to_der (URL-encoded or not) then SANs",
    },
    Target {
        name: "filter_config",
        run: filter::filter_config,
        about: "filter FilterConfig::parse",
    },
    Target {
        name: "validator_config",
        run: filter::validator_config,
        about: "validator ValidatorConfig::parse",
    },
    Target {
        name: "validator_verify",
        run: filter::validator_verify,
        about: "validator ValidatorConfig::verify on arbitrary chains",
    },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// `fuzz/corpus/<target>`: the saved (minimized) corpus, crashes found and fixed included.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

/// PEM armour around `der`, as the loader and Envoy read it.
pub fn pem(label: &str, der: &[u8]) -> String {
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in base64(der).as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
