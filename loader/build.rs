//! Makes envoy-types' protobuf descriptor set available to the loader, so that Envoy resources
//! built with prost can be printed as Envoy's YAML/JSON (`render`, golden files).
//!
//! envoy-types ships `src/generated/types.bin` (a FileDescriptorSet) but does not export it.
//! Cargo tells a build script nothing about other packages' sources, so ask `cargo metadata`
//! where envoy-types lives.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("envoy_descriptors.bin");
    let source = envoy_types_dir().join("src/generated/types.bin");
    std::fs::copy(&source, &out)
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", source.display()));
}

fn envoy_types_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    // Only this platform's packages: the others may not have been downloaded.
    let platform = std::env::var("HOST").unwrap();
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", &platform])
        .current_dir(&manifest_dir)
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let package = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types is a dependency");
    PathBuf::from(package["manifest_path"].as_str().unwrap()).parent().unwrap().to_path_buf()
}
