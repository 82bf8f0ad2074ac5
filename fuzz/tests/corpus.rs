//! Replays the saved corpus of every fuzz target (`fuzz/corpus/<target>/*`: seeds, inputs AFL++
//! found new coverage with, and every crash found and fixed) through the same functions AFL++
//! runs. Part of `make unit`; needs no fuzzer.

use backendtls_fuzz::{corpus_dir, TARGETS};
use std::panic::{catch_unwind, AssertUnwindSafe};

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
    assert!(failures.is_empty(), "{} of {total} inputs fail:\n{}", failures.len(), failures.join("\n"));
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
