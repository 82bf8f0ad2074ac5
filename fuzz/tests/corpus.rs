//! Replays the saved corpus of every fuzz target (`fuzz/corpus/<target>/*`: seeds, inputs AFL++
//! found new coverage with, and every crash found and fixed) through the same functions AFL++
//! runs. Part of `make unit`; needs no fuzzer.

use backendtls_fuzz::{corpus_dir, TARGETS};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The seed generator (`write_seeds`, ignored: run by hand).
#[path = "support/seeds.rs"]
mod seeds;

#[test]
fn every_target_has_a_corpus_and_survives_it() {
    let mut failures = Vec::new();
    let mut total = 0;
    for target in TARGETS {
        let dir = corpus_dir(target.name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} has no corpus", target.name);
        for file in files {
            let input = std::fs::read(&file).unwrap();
            total += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (target.run)(&input))) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{} {}: {message}", target.name, file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The split and framing helpers the targets use, so a corpus file means what its name says.
#[test]
fn input_framing() {
    use backendtls_fuzz::{filter::length_prefixed, manifest::split_files, trust::split_bytes};
    let files = split_files("a: 1\n#== b.json\n{}\n#== \nc: 2\n");
    let names: Vec<_> = files.iter().map(|(p, _)| p.to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["f0.yaml", "001-b.json", "002-f2.yaml"]);
    assert_eq!(files[1].1, "{}\n");
    assert_eq!(length_prefixed(&[0, 2, 7, 8, 0, 9, 1]), [&[7u8, 8][..], &[1]]);
    assert_eq!(split_bytes(b"a\xff\x00b", b"\xff\x00"), [&b"a"[..], b"b"]);
    assert_eq!(backendtls_fuzz::base64(b"hello!?"), "aGVsbG8hPw==");
}

/// The validator target's trust anchors are the ones that signed its seed chains, so the fuzzer
/// starts from chains that verify (and reaches the identity checks).
#[test]
fn validator_seeds_reach_every_verdict() {
    use backendtls_filter::validator::FailureReason;
    let seed = |name: &str| std::fs::read(corpus_dir("validator_verify").join(name)).unwrap();
    let verdict = |name: &str| backendtls_fuzz::filter::verdict(&seed(name)).unwrap();
    verdict("seed-hostname").unwrap();
    verdict("seed-sans").unwrap();
    verdict("seed-intermediate").unwrap();
    assert_eq!(verdict("seed-two-anchors").unwrap_err().reason, FailureReason::NameMismatch);
    assert_eq!(verdict("seed-expired").unwrap_err().reason, FailureReason::Expired);
}

/// The fail-closed checker finds a fail-open: the guide with its policy dropped by the loader
/// (as a loader that ignored a misspelt policy would) serves the targeted port in plaintext.
#[test]
fn the_fail_closed_checker_catches_a_dropped_policy() {
    use backendtls_fuzz::fail_closed::violations;
    use backendtls_fuzz::manifest::{lenient_policy_targets, split_files};
    use backendtls_loader::objects::Object;
    use backendtls_loader::resolve;
    use backendtls_loader::source::parse_file;
    use backendtls_loader::store::Store;
    use backendtls_loader::xds::translate::translate;

    let input = std::fs::read_to_string(
        corpus_dir("pipeline").join("seed-loader_tests_golden_guide_input"),
    )
    .unwrap();
    let (mut store, mut targets) = (Store::default(), Vec::new());
    for (path, text) in split_files(&input) {
        targets.extend(lenient_policy_targets(&path, &text));
        for object in parse_file(&path, &text).objects {
            if !matches!(object, Object::BackendTlsPolicy(_)) {
                store.put(object);
            }
        }
    }
    assert_eq!(targets.len(), 1, "{targets:?}");
    let resolution = resolve::resolve(&store, &Default::default());
    let resources = translate(&resolution.ir, &Default::default());
    let found = violations(&store, &targets, &resolution.ir, &resources);
    assert!(
        found.iter().any(|v| v.contains("kube_default_nginx_8443") && v.contains("plaintext")),
        "{found:?}"
    );
}
