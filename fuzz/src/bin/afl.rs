//! The AFL++ driver: `backendtls-fuzz-afl <target>` runs one target in AFL's persistent mode.
//! Built by `make fuzz` with `cargo afl build --features afl` (see fuzz/run.sh).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = backendtls_fuzz::target(&name) else {
        let names: Vec<&str> = backendtls_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!("usage: backendtls-fuzz-afl <target>; targets: {}", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| (target.run)(data));
}
