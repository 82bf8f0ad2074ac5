//! Manifest targets: one file through `source::parse_file`, and a small directory through
//! resolve and translate with the fail-closed property checked on the result.

use crate::fail_closed::{self, PolicyTarget};
use backendtls_loader::objects::Object;
use backendtls_loader::resolve;
use backendtls_loader::source::{parse_file, ParsedFile};
use backendtls_loader::store::Store;
use backendtls_loader::xds::translate::{translate, Delivery, TranslateOptions, Validator};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `parse_file` on a `.yaml` file.
pub fn manifest_yaml(data: &[u8]) {
    parse_one(Path::new("fuzz.yaml"), &String::from_utf8_lossy(data));
}

/// `parse_file` on a `.json` file.
pub fn manifest_json(data: &[u8]) {
    parse_one(Path::new("fuzz.json"), &String::from_utf8_lossy(data));
}

fn parse_one(path: &Path, text: &str) -> ParsedFile {
    let parsed = parse_file(path, text);
    check_parsed(path, text, &parsed);
    parsed
}

/// What must hold of any parse: an unusable file says why, every error names the file, and a
/// usable file governs every Service its BackendTLSPolicy documents target (read leniently,
/// without the loader's rules).
fn check_parsed(path: &Path, text: &str, parsed: &ParsedFile) {
    assert!(parsed.usable || !parsed.errors.is_empty(), "an unusable file must say why");
    for error in &parsed.errors {
        assert_eq!(error.file, path);
        let _ = error.to_string();
    }
    if !parsed.usable {
        return;
    }
    let governed: BTreeSet<PolicyTarget> = policy_targets_of(&parsed.objects).into_iter().collect();
    for target in lenient_policy_targets(path, text) {
        assert!(
            governed.contains(&target)
                || (target.section.is_some()
                    && governed.contains(&PolicyTarget { section: None, ..target.clone() })),
            "usable file, but the policy target {target:?} is not kept (kept: {governed:?})"
        );
    }
}

/// The targets of the BackendTLSPolicy objects the loader kept (valid or stand-ins).
pub fn policy_targets_of(objects: &[Object]) -> Vec<PolicyTarget> {
    let mut out = Vec::new();
    for object in objects {
        let Object::BackendTlsPolicy(policy) = object else { continue };
        for r in &policy.spec.target_refs {
            if r.group.is_empty() && r.kind == "Service" {
                out.push(PolicyTarget {
                    namespace: policy.metadata.namespace().to_string(),
                    service: r.name.clone(),
                    section: r.section_name.clone(),
                });
            }
        }
    }
    out
}

/// Every core-Service target of every document whose `kind` is BackendTLSPolicy (also inside a
/// `v1` `List`), read leniently: any apiVersion, unknown fields, repeated keys (last wins), and
/// v1alpha2's single `targetRef`. Documents that cannot be read even so are left out (the loader
/// must then refuse the file).
pub fn lenient_policy_targets(path: &Path, text: &str) -> Vec<PolicyTarget> {
    let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let mut documents = Vec::new();
    if is_json {
        documents.extend(serde_json::from_str::<serde_json::Value>(text).ok());
    } else {
        for piece in serde_norway::Deserializer::from_str(text) {
            match <serde_json::Value as serde::Deserialize>::deserialize(piece) {
                Ok(value) => documents.push(value),
                Err(_) => break,
            }
        }
    }
    let mut out = Vec::new();
    for document in &documents {
        collect_targets(document, &mut out);
    }
    out
}

fn collect_targets(document: &serde_json::Value, out: &mut Vec<PolicyTarget>) {
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    let kind = text(document.get("kind"));
    if kind.as_deref() == Some("List") && text(document.get("apiVersion")).as_deref() == Some("v1")
    {
        if let Some(serde_json::Value::Array(items)) = document.get("items") {
            items.iter().for_each(|item| collect_targets(item, out));
        }
        return;
    }
    if kind.as_deref() != Some("BackendTLSPolicy") {
        return;
    }
    let namespace = text(document.get("metadata").and_then(|m| m.get("namespace")))
        .unwrap_or_else(|| "default".into());
    let spec = document.get("spec");
    let refs: Vec<&serde_json::Value> =
        match (spec.and_then(|s| s.get("targetRefs")), spec.and_then(|s| s.get("targetRef"))) {
            (Some(serde_json::Value::Array(refs)), _) => refs.iter().collect(),
            (_, Some(single @ serde_json::Value::Object(_))) => vec![single],
            _ => Vec::new(),
        };
    for r in refs {
        let group = text(r.get("group")).unwrap_or_default();
        let kind = text(r.get("kind")).unwrap_or_else(|| "Service".into());
        let Some(service) = text(r.get("name")).filter(|n| !n.is_empty()) else { continue };
        if group.is_empty() && kind == "Service" {
            let section = text(r.get("sectionName"));
            out.push(PolicyTarget { namespace: namespace.clone(), service, section });
        }
    }
}

/// Splits fuzz input into files: a line `#== NAME` starts a new file called NAME (a YAML
/// comment, so a seed without such lines is one ordinary file `f0.yaml`).
pub fn split_files(text: &str) -> Vec<(PathBuf, String)> {
    let mut files: Vec<(PathBuf, String)> = vec![(PathBuf::from("f0.yaml"), String::new())];
    for line in text.split_inclusive('\n') {
        if let Some(name) = line.strip_prefix("#== ") {
            let name = name.trim();
            let name =
                if name.is_empty() { format!("f{}.yaml", files.len()) } else { name.to_string() };
            files.push((PathBuf::from(format!("{:03}-{name}", files.len())), String::new()));
        } else {
            files.last_mut().expect("one file at least").1.push_str(line);
        }
    }
    files
}

/// A small directory (see [`split_files`]) through parse, store, resolve and translate (over
/// ADS with Envoy's validator, and inline with the dynamic-module validator), then the
/// fail-closed property over the files that are usable (with an unusable file `serve` would not
/// publish a first configuration; the property holds for what the usable files say).
pub fn pipeline(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut store = Store::default();
    let mut seen = BTreeSet::new();
    let mut targets = Vec::new();
    for (path, text) in split_files(&text) {
        let parsed = parse_one(&path, &text);
        if !parsed.usable {
            continue;
        }
        targets.extend(lenient_policy_targets(&path, &text));
        // As ConfigDir: an object defined in several files comes from the first.
        for object in parsed.objects {
            if seen.insert((object.kind(), object.key())) {
                store.put(object);
            }
        }
    }
    let resolution = resolve::resolve(&store, &resolve::Options::default());
    let _ = serde_json::to_string(&resolution.ir).expect("the IR serializes");
    for (delivery, validator) in
        [(Delivery::Ads, Validator::Envoy), (Delivery::Inline, Validator::DynamicModule)]
    {
        let options = TranslateOptions { delivery, validator, ..Default::default() };
        let resources = translate(&resolution.ir, &options);
        let found = fail_closed::violations(&store, &targets, &resolution.ir, &resources);
        assert!(found.is_empty(), "fail-open ({delivery:?}, {validator:?}): {found:#?}");
    }
}
