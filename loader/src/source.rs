//! File mode: every YAML document under a directory tree, parsed into a [`Store`].
//!
//! A file that fails to read or parse is reported with its path, the document and the object, and
//! the loader keeps that file's last good content: a typo while editing never withdraws config that
//! is already serving.

use crate::objects::*;
use crate::store::{ObjectKey, Store};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// One problem with the input, located as precisely as the loader can.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceError {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file, when the problem is in one document.
    pub document: Option<usize>,
    /// `Kind namespace/name` when the object could be identified.
    pub object: Option<String>,
    pub reason: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// An object read from a file, tagged with its kind.
#[derive(Clone, Debug, PartialEq)]
/// Objects are shared (`Arc`) between the per-file cache and every [`Store`] built from it, so a
/// rebuild does not copy them.
pub enum Object {
    Gateway(Arc<Gateway>),
    HttpRoute(Arc<HttpRoute>),
    BackendTlsPolicy(Arc<BackendTlsPolicy>),
    ReferenceGrant(Arc<ReferenceGrant>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    ConfigMap(Arc<ConfigMap>),
    Secret(Arc<Secret>),
    Namespace(Arc<Namespace>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Gateway(_) => "Gateway",
            Object::HttpRoute(_) => "HTTPRoute",
            Object::BackendTlsPolicy(_) => "BackendTLSPolicy",
            Object::ReferenceGrant(_) => "ReferenceGrant",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Namespace(_) => "Namespace",
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::BackendTlsPolicy(o) => &o.metadata,
            Object::ReferenceGrant(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
        }
    }

    /// Namespaces are cluster-scoped: their key has an empty namespace.
    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        match self {
            Object::Namespace(_) => ObjectKey::new("", &meta.name),
            _ => ObjectKey::new(meta.namespace(), &meta.name),
        }
    }
}

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Parses one file's text into objects. Kinds the loader does not use (Deployments, GatewayClasses,
/// ...) are skipped; known kinds at an unsupported version are errors, since silently ignoring
/// a policy would be worse than refusing it.
pub fn parse_documents(file: &Path, text: &str) -> Result<Vec<Object>, SourceError> {
    let error = |document: Option<usize>, object: Option<String>, reason: String| SourceError {
        file: file.to_path_buf(),
        document,
        object,
        reason,
    };
    let mut objects = Vec::new();
    for (index, (first_line, document)) in split_documents(text).into_iter().enumerate() {
        let number = index + 1;
        let invalid = |e: serde_norway::Error| {
            let at = if first_line > 1 {
                format!(" (the document starts at line {first_line})")
            } else {
                String::new()
            };
            error(Some(number), None, format!("invalid YAML{at}: {e}"))
        };
        // A piece is one document, or none when it holds only comments.
        for piece in serde_norway::Deserializer::from_str(document) {
            let value = serde::Deserialize::deserialize(piece).map_err(invalid)?;
            parse_document(value, &mut objects)
                .map_err(|(object, reason)| error(Some(number), object, reason))?;
        }
    }
    Ok(objects)
}

/// Splits a multi-document YAML text at `---` lines, so that an error names its document. A
/// document marker always starts at column 0 (block scalars are indented), so this is exact for
/// the files the loader reads. Returns each document with its first line number (1-based).
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let (mut start, mut start_line) = (0, 1);
    let mut offset = 0;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let is_marker = line.starts_with("---")
            && line[3..].chars().next().is_none_or(|c| c.is_whitespace() || c == '#');
        if is_marker && offset > 0 {
            documents.push((start_line, &text[start..offset]));
            (start, start_line) = (offset, number + 1);
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    documents
}

type DocumentError = (Option<String>, String);

fn parse_document(document: serde_json::Value, out: &mut Vec<Object>) -> Result<(), DocumentError> {
    if document.is_null() {
        return Ok(());
    }
    let text = |field: &str| document.get(field).and_then(|v| v.as_str()).unwrap_or("");
    let api_version = text("apiVersion").to_string();
    let kind = text("kind").to_string();
    let metadata = document.get("metadata");
    let name = metadata.and_then(|m| m.get("name")).and_then(|v| v.as_str());
    let namespace =
        metadata.and_then(|m| m.get("namespace")).and_then(|v| v.as_str()).unwrap_or("default");
    let object = name.map(|n| format!("{kind} {namespace}/{n}"));
    if kind.is_empty() || api_version.is_empty() {
        return Err((object, "missing apiVersion or kind".into()));
    }
    if kind == "List" && api_version == "v1" {
        let items = document.get("items").and_then(|v| v.as_array()).cloned();
        for item in items.unwrap_or_default() {
            parse_document(item, out)?;
        }
        return Ok(());
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let supported: &[&str] = match (group, kind.as_str()) {
        (GATEWAY_GROUP, "Gateway" | "HTTPRoute") => &["v1", "v1beta1"],
        (GATEWAY_GROUP, "ReferenceGrant") => &["v1beta1", "v1alpha2"],
        (GATEWAY_GROUP, "BackendTLSPolicy") => &["v1", "v1alpha3"],
        ("", "Service" | "ConfigMap" | "Secret" | "Namespace") => &["v1"],
        ("discovery.k8s.io", "EndpointSlice") => &["v1"],
        _ => {
            tracing::debug!(%api_version, %kind, "skipping a kind the loader does not use");
            return Ok(());
        }
    };
    if !supported.contains(&version) {
        return Err((
            object,
            format!(
                "{kind} at apiVersion {api_version} is not supported (supported: {})",
                supported
                    .iter()
                    .map(|v| if group.is_empty() { v.to_string() } else { format!("{group}/{v}") })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if name.is_none_or(str::is_empty) {
        return Err((object, format!("{kind} has no metadata.name")));
    }
    fn typed<T: serde::de::DeserializeOwned>(
        document: serde_json::Value,
        object: &Option<String>,
    ) -> Result<Arc<T>, DocumentError> {
        serde_json::from_value(document).map(Arc::new).map_err(|e| (object.clone(), e.to_string()))
    }
    let parsed = match kind.as_str() {
        "Gateway" => Object::Gateway(typed(document, &object)?),
        "HTTPRoute" => Object::HttpRoute(typed(document, &object)?),
        "ReferenceGrant" => Object::ReferenceGrant(typed(document, &object)?),
        "BackendTLSPolicy" => Object::BackendTlsPolicy(typed(document, &object)?),
        "Service" => Object::Service(typed(document, &object)?),
        "ConfigMap" => Object::ConfigMap(typed(document, &object)?),
        "Secret" => Object::Secret(typed(document, &object)?),
        "Namespace" => Object::Namespace(typed(document, &object)?),
        "EndpointSlice" => Object::EndpointSlice(typed(document, &object)?),
        _ => unreachable!("every supported kind is listed above"),
    };
    out.push(parsed);
    Ok(())
}

/// How long before the previous scan a file's modification time must be for its stamp to be
/// trusted.
const RACY_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// The directory tree, file by file, with the last good parse of each file.
#[derive(Default)]
pub struct ConfigDir {
    root: PathBuf,
    /// Hashed, not ordered: at ten thousand files, comparing paths component by component to
    /// keep them sorted cost more than hashing them.
    files: HashMap<PathBuf, FileState>,
    /// When the previous reload started.
    last_scan: Option<SystemTime>,
    /// The objects of `files`, kept up to date file by file: at ten thousand backends, building
    /// it anew for every change costs more than the change.
    store: Store,
    /// Which files define each object, in path order; the first one's definition is in `store`.
    /// Keyed by [`owner_key`] rather than kind and name: at ten thousand backends the copies of
    /// fifty thousand names cost more memory than anything else the source keeps.
    owners: HashMap<u128, Vec<Arc<Path>>>,
    /// Objects defined in more than one file.
    duplicated: BTreeSet<(&'static str, ObjectKey)>,
}

/// What identifies a file's version without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

struct FileState {
    stamp: FileStamp,
    /// Digest of the content, to skip parsing a rewrite that changed nothing.
    digest: u64,
    /// The last content that parsed, kept while the file is broken.
    good: Vec<Object>,
    error: Option<SourceError>,
}

impl ConfigDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ConfigDir { root: root.into(), ..Default::default() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Re-reads the tree: files whose size, inode and modification time are unchanged are not
    /// read again, and changed ones are parsed on all cores. Returns an error only when the
    /// directory itself cannot be read.
    pub fn reload(&mut self) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let scan_time = SystemTime::now();
        // Modification times are coarse (milliseconds on many filesystems): a file rewritten in
        // place with the same size during the previous scan can keep its stamp. Files modified
        // near or after the previous scan are therefore always read ("racy git" problem).
        let settled_before = self.last_scan.and_then(|t| t.checked_sub(RACY_WINDOW));
        self.last_scan = Some(scan_time);
        let mut listed = Vec::new();
        collect_yaml_files(&self.root, &mut listed)?;
        let mut next = HashMap::with_capacity(self.files.len());
        let mut to_read = Vec::new();
        for (path, stamp) in listed {
            let previous = self.files.remove(&path);
            let settled = matches!((stamp.modified, settled_before), (Some(m), Some(s)) if m < s);
            if settled && previous.as_ref().is_some_and(|state| state.stamp == stamp) {
                next.insert(path, previous.expect("checked above"));
                continue;
            }
            to_read.push(ReadJob { path, stamp, previous });
        }
        let read_files = to_read.len();
        // Files whose objects may change, with the objects they had.
        let mut touched: Vec<(PathBuf, Vec<Object>)> = Vec::new();
        for (path, state, replaced) in read_all(to_read) {
            if let Some(old) = replaced {
                touched.push((path.clone(), old));
            }
            next.insert(path, state);
        }
        for (path, removed) in std::mem::take(&mut self.files) {
            touched.push((path, removed.good));
        }
        self.files = next;
        for (path, old) in touched {
            self.update_store(&path, &old);
        }
        crate::objects::release_unused_values();
        tracing::debug!(elapsed = ?started.elapsed(), files = self.files.len(), read_files, "reload");
        Ok(())
    }

    /// Problems in the current files (each file's last good content is still in the store).
    pub fn errors(&self) -> Vec<SourceError> {
        let mut errors: Vec<SourceError> =
            self.files.values().filter_map(|f| f.error.clone()).collect();
        errors.sort_by(|a, b| a.file.cmp(&b.file));
        errors
    }

    /// Brings `store` up to date for one file whose objects were `old`.
    fn update_store(&mut self, path: &Path, old: &[Object]) {
        let new = self.files.get(path).map(|f| f.good.as_slice()).unwrap_or_default();
        // One allocation for the path, shared by its objects' entries.
        let shared_path: Arc<Path> = path.into();
        let mut affected = BTreeSet::new();
        for object in old {
            let id = (object.kind(), object.key());
            if let Some(paths) = self.owners.get_mut(&owner_key(&id)) {
                paths.retain(|p| **p != *path);
            }
            affected.insert(id);
        }
        for object in new {
            let id = (object.kind(), object.key());
            let paths = self.owners.entry(owner_key(&id)).or_default();
            if let Err(at) = paths.binary_search_by(|p| (**p).cmp(path)) {
                paths.insert(at, shared_path.clone());
            }
            affected.insert(id);
        }
        for id in affected {
            let owner = owner_key(&id);
            let first = self.owners.get(&owner).and_then(|paths| paths.first()).cloned();
            match first {
                None => {
                    self.owners.remove(&owner);
                    self.store.remove(id.0, &id.1);
                }
                Some(first) => {
                    let object = self.files[&*first]
                        .good
                        .iter()
                        .find(|o| o.kind() == id.0 && o.key() == id.1)
                        .expect("an owner defines the object")
                        .clone();
                    self.store.put(object);
                }
            }
            if self.owners.get(&owner).is_some_and(|paths| paths.len() > 1) {
                self.duplicated.insert(id);
            } else {
                self.duplicated.remove(&id);
            }
        }
    }

    /// All objects. An object defined in several files is reported and the definition in the
    /// first file (by path) is used.
    pub fn store(&self) -> (&Store, Vec<SourceError>) {
        let errors = self
            .duplicated
            .iter()
            .flat_map(|(kind, key)| {
                self.owners[&owner_key(&(*kind, key.clone()))][1..].iter().map(move |path| {
                    SourceError {
                        file: path.to_path_buf(),
                        document: None,
                        object: Some(format!("{kind} {key}")),
                        reason: "defined more than once; the first definition is used".into(),
                    }
                })
            })
            .collect();
        (&self.store, errors)
    }
}

/// A 128-bit digest of an object's kind and key, standing for them in [`ConfigDir`]'s owners.
fn owner_key((kind, key): &(&'static str, ObjectKey)) -> u128 {
    u128::from_be_bytes(crate::ir::digest(&(kind, &key.namespace, &key.name)))
}

/// A file that is new or may have changed since the previous reload.
struct ReadJob {
    path: PathBuf,
    stamp: FileStamp,
    previous: Option<FileState>,
}

/// Reads and parses files on every core, each worker holding one file's text at a time (at ten
/// thousand files, holding every text at once would double the loader's peak memory). Returns
/// each file's new state and, when its objects were replaced, the objects it had before.
fn read_all(jobs: Vec<ReadJob>) -> Vec<(PathBuf, FileState, Option<Vec<Object>>)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
    if threads <= 1 {
        return jobs.into_iter().map(read_one).collect();
    }
    let chunk = jobs.len().div_ceil(threads);
    let mut jobs = jobs;
    let mut chunks = Vec::new();
    while !jobs.is_empty() {
        let rest = jobs.split_off(jobs.len().saturating_sub(chunk));
        chunks.push(rest);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || chunk.into_iter().map(read_one).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("parsing does not panic")).collect()
    })
}

fn read_one(job: ReadJob) -> (PathBuf, FileState, Option<Vec<Object>>) {
    let ReadJob { path, stamp, previous } = job;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            // Vanished between listing and reading, or unreadable: keep what we had.
            let mut state =
                previous.unwrap_or(FileState { stamp, digest: 0, good: Vec::new(), error: None });
            state.error = Some(SourceError {
                file: path.clone(),
                document: None,
                object: None,
                reason: format!("cannot read: {e}"),
            });
            // No trusted stamp: the next reload reads it again (a permission fix does not
            // change the modification time).
            state.stamp.modified = None;
            return (path, state, None);
        }
    };
    let digest = content_digest(&text);
    match previous {
        Some(mut state) if state.digest == digest => {
            // Rewritten with the same content (or only touched): nothing to parse.
            state.stamp = stamp;
            (path, state, None)
        }
        previous => match parse_documents(&path, &text) {
            Ok(good) => {
                let old = previous.map(|p| p.good).unwrap_or_default();
                (path, FileState { stamp, digest, good, error: None }, Some(old))
            }
            Err(error) => {
                // Broken: the last good content stays in use, so the store does not change.
                let good = previous.map(|p| p.good).unwrap_or_default();
                (path, FileState { stamp, digest, good, error: Some(error) }, None)
            }
        },
    }
}

fn content_digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

fn collect_yaml_files(dir: &Path, out: &mut Vec<(PathBuf, FileStamp)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Editors' swap and backup files, and hidden files (e.g. Kubernetes ConfigMap mounts'
        // ..data symlinks), are not input.
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        let metadata = std::fs::metadata(&path)?;
        if metadata.is_dir() {
            collect_yaml_files(&path, out)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            use std::os::unix::fs::MetadataExt;
            let stamp = FileStamp {
                modified: metadata.modified().ok(),
                len: metadata.len(),
                inode: metadata.ino(),
            };
            out.push((path, stamp));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_files_and_lists_parse() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: { name: nginx, namespace: default }
spec: { ports: [{ name: https, port: 8443 }] }
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: { name: ca }
  data: { ca.crt: "x" }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: ignored }
"#;
        let objects = parse_documents(Path::new("a.yaml"), text).unwrap();
        let kinds: Vec<_> = objects.iter().map(|o| format!("{} {}", o.kind(), o.key())).collect();
        assert_eq!(kinds, ["Service default/nginx", "ConfigMap default/ca"]);
    }

    #[test]
    fn errors_name_file_document_and_object() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendTLSPolicy\nmetadata: {name: old, namespace: apps}\nspec: {}\n";
        let err = parse_documents(Path::new("dir/p.yaml"), text).unwrap_err();
        assert_eq!(err.document, Some(2));
        assert_eq!(err.object.as_deref(), Some("BackendTLSPolicy apps/old"));
        assert!(err
            .to_string()
            .starts_with("dir/p.yaml: document 2 (BackendTLSPolicy apps/old): "));
        assert!(err.reason.contains("not supported"), "{}", err.reason);

        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: notanumber}]}\n";
        let err = parse_documents(Path::new("s.yaml"), text).unwrap_err();
        assert_eq!(err.object.as_deref(), Some("Service default/s"));
    }

    #[test]
    fn yaml_syntax_errors_name_their_document() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n";
        let err = parse_documents(Path::new("s.yaml"), text).unwrap_err();
        assert_eq!(err.document, Some(2), "{err}");
        assert!(err.reason.contains("starts at line 4"), "{err}");
        assert_eq!(split_documents("---\na: 1\n---\nb: 2\n").len(), 2);
        assert_eq!(split_documents("a: |\n  ---\n  x\n").len(), 1);
    }

    #[test]
    fn an_object_defined_twice_comes_from_the_first_file_until_it_goes() {
        let dir = std::env::temp_dir().join(format!("btls-dup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cm = |value: &str| {
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca}}\ndata: {{ca.crt: {value}}}\n")
        };
        std::fs::write(dir.join("a.yaml"), cm("from-a")).unwrap();
        std::fs::write(dir.join("b.yaml"), cm("from-b")).unwrap();
        let mut config = ConfigDir::new(&dir);
        config.reload().unwrap();
        let key = ObjectKey::new("default", "ca");
        let (store, errors) = config.store();
        assert_eq!(&store.config_map(&key).unwrap().data["ca.crt"], "from-a");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].file.ends_with("b.yaml"), "{errors:?}");
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        config.reload().unwrap();
        let (store, errors) = config.store();
        assert_eq!(&store.config_map(&key).unwrap().data["ca.crt"], "from-b");
        assert!(errors.is_empty());
        std::fs::remove_file(dir.join("b.yaml")).unwrap();
        config.reload().unwrap();
        assert!(config.store().0.config_map(&key).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_content() {
        let dir = std::env::temp_dir().join(format!("btls-source-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let file = dir.join("sub/cm.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca}\ndata: {ca.crt: one}\n",
        )
        .unwrap();
        let mut config = ConfigDir::new(&dir);
        config.reload().unwrap();
        assert!(config.errors().is_empty());
        std::fs::write(&file, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca\n").unwrap();
        config.reload().unwrap();
        assert_eq!(config.errors().len(), 1);
        let (store, _) = config.store();
        let ca = store.config_map(&ObjectKey::new("default", "ca")).unwrap();
        assert_eq!(&ca.data["ca.crt"], "one");
        std::fs::remove_file(&file).unwrap();
        config.reload().unwrap();
        assert!(config.store().0.config_map(&ObjectKey::new("default", "ca")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
