//! `backendtls-loader check` and other one-shot loader runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::paths::loader_bin;

/// What one `backendtls-loader` run printed and how it exited.
#[derive(Debug)]
pub struct CheckRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CheckRun {
    /// stdout parsed as JSON; panics with both streams when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "check did not print JSON ({e}):\nstdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `backendtls-loader <args>` and captures its exit code and output.
pub fn run_loader_command(args: &[&str]) -> CheckRun {
    let output = Command::new(loader_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("run backendtls-loader {args:?}: {e}"));
    CheckRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `backendtls-loader check --config-dir <dir> -o <format>`.
pub fn run_check(dir: &Path, format: &str) -> CheckRun {
    let dir = dir.to_str().expect("UTF-8 path");
    run_loader_command(&["check", "--config-dir", dir, "-o", format])
}

/// Parses YAML (the `check -o yaml` output) into JSON values.
pub fn yaml_to_json(yaml: &str) -> Value {
    serde_norway::from_str(yaml)
        .unwrap_or_else(|e| panic!("the output is not YAML: {e}\n--- input ---\n{yaml}"))
}

/// A path that certainly does not exist.
pub fn missing_dir() -> PathBuf {
    std::env::temp_dir().join(format!("btls-no-such-dir-{}", std::process::id()))
}
