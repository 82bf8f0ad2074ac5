//! Where the binaries and example files live, and identifiers that must be unique per process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Environment variable naming the Envoy binary; default `<workspace>/.venv/bin/envoy`.
pub const ENVOY_BIN_ENV: &str = "ENVOY_BIN";
/// Environment variable naming the loader binary; default `<target dir>/backendtls-loader`.
pub const LOADER_BIN_ENV: &str = "BACKENDTLS_LOADER_BIN";
/// Environment variable that points the harness at another copy of `examples/backend-tls`.
pub const EXAMPLES_DIR_ENV: &str = "BACKENDTLS_EXAMPLES_DIR";

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives inside the workspace")
        .to_path_buf()
}

pub fn envoy_bin() -> PathBuf {
    match std::env::var_os(ENVOY_BIN_ENV) {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join(".venv/bin/envoy"),
    }
}

/// The loader binary: `$BACKENDTLS_LOADER_BIN` as given, or else the one in this build's target
/// directory, which is first brought up to date with `cargo build -p backendtls-loader` (once per
/// process). Cargo does not build another package's binaries for this crate's tests, and a stale
/// loader would make the tests report on old code.
pub fn loader_bin() -> PathBuf {
    if let Some(path) = std::env::var_os(LOADER_BIN_ENV) {
        return PathBuf::from(path);
    }
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_loader).clone()
}

fn build_loader() -> PathBuf {
    let profile_dir = cargo_profile_dir();
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(name) => name.to_string(),
    };
    // `--target-dir` keeps the binary beside this executable even under a custom target dir.
    let target_dir = profile_dir.parent().expect("profile dir has a parent");
    let output = Command::new(env!("CARGO"))
        .args(["build", "-p", "backendtls-loader", "--bin", "backendtls-loader"])
        .args(["--profile", &profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace_root())
        .output()
        .expect("run cargo build -p backendtls-loader");
    assert!(
        output.status.success(),
        "cargo build -p backendtls-loader failed (set {LOADER_BIN_ENV} to use a prebuilt loader):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = profile_dir.join("backendtls-loader");
    assert!(path.is_file(), "cargo built the loader but {} is missing", path.display());
    path
}

/// The directory holding this profile's binaries (`target/debug` or `target/release`), derived from
/// the running executable: tests run from `target/<profile>/deps/`, binaries from `target/<profile>/`.
fn cargo_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable path");
    let dir = exe.parent().expect("executable has a parent directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The committed kgateway "Backend TLS" guide objects.
pub fn examples_dir() -> PathBuf {
    match std::env::var_os(EXAMPLES_DIR_ENV) {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join("examples/backend-tls"),
    }
}

/// A `--base-id` no other Envoy started by this machine's concurrent test processes uses: the pid
/// keeps processes apart, the counter keeps instances of one process apart.
pub fn unique_envoy_base_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let instance = NEXT.fetch_add(1, Ordering::Relaxed) % 100;
    (std::process::id() % 1_000_000) * 100 + instance
}
