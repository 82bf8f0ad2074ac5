//! From a config directory to policy status (`check`) and on to Envoy resources (`serve`,
//! `render`): the same steps for every command.

use crate::quarantine::RejectionReport;
use crate::resolve::{self, Problem, Resolution};
use crate::source::{ConfigDir, FileEvents, SourceError};
use crate::status::{GatewayClassReport, GatewayReport, PolicyReport, RouteReport};
use crate::store::Store;
use crate::xds::translate::{translate, Resources, TranslateOptions};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Everything the loader concluded from the input, before any Envoy type.
pub struct Resolved {
    pub resolution: Resolution,
    pub errors: Vec<SourceError>,
}

impl Resolved {
    pub fn problems(&self) -> &[Problem] {
        &self.resolution.problems
    }

    /// `{"policies", "gateways", "routes", "errors", "problems"}`: what `check` prints and
    /// `/status` shows.
    pub fn status_json(&self) -> serde_json::Value {
        let r = &self.resolution;
        status_json(
            &r.policies,
            &r.gateway_classes,
            &r.gateways,
            &r.routes,
            &self.errors,
            &r.problems,
        )
    }

    /// What status reports need, borrowed.
    pub fn status(&self) -> StatusReport<'_> {
        StatusReport::of(&self.resolution, self.errors.clone())
    }

    /// True when everything parsed, every policy is Accepted and ResolvedRefs, and every route
    /// is Accepted and ResolvedRefs by every parent.
    pub fn is_healthy(&self) -> bool {
        let r = &self.resolution;
        self.errors.is_empty()
            && r.policies.iter().all(|p| p.is_healthy())
            && r.routes.iter().all(|p| p.is_healthy())
    }
}

/// The reports of one build, as `/status` and the Kubernetes status writer see them.
#[derive(Default)]
pub struct StatusReport<'a> {
    pub policies: &'a [PolicyReport],
    pub gateway_classes: &'a [GatewayClassReport],
    pub gateways: &'a [GatewayReport],
    pub routes: &'a [RouteReport],
    pub errors: Vec<SourceError>,
    pub problems: &'a [Problem],
    /// Resources Envoy refused (`serve` only).
    pub rejected: Vec<RejectionReport>,
}

impl<'a> StatusReport<'a> {
    pub fn of(resolution: &'a Resolution, errors: Vec<SourceError>) -> Self {
        StatusReport {
            policies: &resolution.policies,
            gateway_classes: &resolution.gateway_classes,
            gateways: &resolution.gateways,
            routes: &resolution.routes,
            errors,
            problems: &resolution.problems,
            rejected: Vec::new(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        status_json(
            self.policies,
            self.gateway_classes,
            self.gateways,
            self.routes,
            &self.errors,
            self.problems,
        )
    }

    /// What `/status` serves: [`Self::to_json`] with the snapshot version, as compact JSON text
    /// (pipe it through `jq` to read). `serve` keeps it compressed between rebuilds
    /// ([`crate::admin::status_text`]), not the reports, which are several times its size.
    pub fn render(&self, snapshot_version: u64) -> String {
        let mut text = Vec::new();
        self.write_to(snapshot_version, &mut text).expect("writing to memory does not fail");
        String::from_utf8(text).expect("JSON is UTF-8")
    }

    /// [`Self::render`]'s text, written to `out` as it is serialized.
    pub fn write_to(
        &self,
        snapshot_version: u64,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        #[derive(serde::Serialize)]
        struct Document<'a> {
            policies: &'a [PolicyReport],
            #[serde(rename = "gatewayClasses")]
            gateway_classes: &'a [GatewayClassReport],
            gateways: &'a [GatewayReport],
            routes: &'a [RouteReport],
            errors: &'a [SourceError],
            problems: &'a [Problem],
            rejected: &'a [RejectionReport],
            snapshot_version: u64,
        }
        let document = Document {
            policies: self.policies,
            gateway_classes: self.gateway_classes,
            gateways: self.gateways,
            routes: self.routes,
            errors: &self.errors,
            problems: self.problems,
            rejected: &self.rejected,
            snapshot_version,
        };
        serde_json::to_writer(&mut *out, &document)?;
        out.write_all(b"\n")
    }
}

fn status_json(
    policies: &[PolicyReport],
    gateway_classes: &[GatewayClassReport],
    gateways: &[GatewayReport],
    routes: &[RouteReport],
    errors: &[SourceError],
    problems: &[Problem],
) -> serde_json::Value {
    serde_json::json!({
        "policies": policies.iter().map(|p| p.to_json()).collect::<Vec<_>>(),
        "gatewayClasses": gateway_classes,
        "gateways": gateways,
        "routes": routes,
        "errors": errors,
        "problems": problems,
    })
}

pub fn resolve(config: &ConfigDir, options: &resolve::Options) -> Resolved {
    let started = std::time::Instant::now();
    let (store, mut errors) = config.store();
    errors.extend(config.errors());
    let stored = started.elapsed();
    let resolution = resolve::resolve(store, options);
    tracing::debug!(?stored, total = ?started.elapsed(), "resolve");
    Resolved { resolution, errors }
}

pub struct Build {
    pub resolved: Resolved,
    pub resources: Resources,
}

/// Resolves and translates into structs (`render`, golden files). `serve` translates through a
/// [`crate::xds::translate::Translator`] instead, which keeps work between builds.
pub fn build(
    config: &ConfigDir,
    resolve_options: &resolve::Options,
    translate_options: &TranslateOptions,
) -> Build {
    let resolved = resolve(config, resolve_options);
    let resources = translate(&resolved.resolution.ir, translate_options);
    Build { resolved, resources }
}

/// A JSON document written piece by piece: arrays whose items are made only as they are written,
/// so that `check` and `render` never hold the whole output (at 100,000 backends, the
/// `serde_json::Value` of a bootstrap took 5 GB). Written through `serde`, it gives exactly the
/// output of the equivalent `serde_json::Value`: object members in key order, as `Value` keeps
/// them.
pub enum Streamed<'a> {
    Value(serde_json::Value),
    Object(BTreeMap<String, Streamed<'a>>),
    List(Vec<Streamed<'a>>),
    /// `len` items, made by the iterator when the array is written (once).
    Array {
        len: usize,
        items: RefCell<Option<Items<'a>>>,
    },
}

type Items<'a> = Box<dyn Iterator<Item = Streamed<'a>> + 'a>;

impl<'a> Streamed<'a> {
    /// Objects become [`Streamed::Object`] and arrays [`Streamed::List`] at every depth, so that
    /// arrays can be put in them.
    pub fn from_value(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::Object(members) => Streamed::Object(
                members.into_iter().map(|(k, v)| (k, Streamed::from_value(v))).collect(),
            ),
            serde_json::Value::Array(items) => {
                Streamed::List(items.into_iter().map(Streamed::from_value).collect())
            }
            other => Streamed::Value(other),
        }
    }

    pub fn array<T: 'a>(items: &'a [T], item: impl Fn(&'a T) -> serde_json::Value + 'a) -> Self {
        Streamed::items(items.len(), items.iter().map(move |i| Streamed::Value(item(i))))
    }

    /// An array of `len` items made by `items` as it is written.
    pub fn items(len: usize, items: impl Iterator<Item = Streamed<'a>> + 'a) -> Self {
        Streamed::Array { len, items: RefCell::new(Some(Box::new(items))) }
    }

    /// Calls `f` on the members of every object, at every depth (not inside arrays not yet made).
    fn each_object(&mut self, f: &mut impl FnMut(&mut BTreeMap<String, Streamed<'a>>)) {
        match self {
            Streamed::Object(members) => {
                f(members);
                members.values_mut().for_each(|v| v.each_object(f));
            }
            Streamed::List(items) => items.iter_mut().for_each(|v| v.each_object(f)),
            Streamed::Value(_) | Streamed::Array { .. } => {}
        }
    }

    /// Sets the member at `path` (every object on the way must exist).
    fn set(&mut self, path: &[&str], value: Streamed<'a>) {
        let Streamed::Object(members) = self else { panic!("{path:?}: not an object") };
        match path {
            [last] => drop(members.insert(last.to_string(), value)),
            [first, rest @ ..] => members.get_mut(*first).expect("path exists").set(rest, value),
            [] => unreachable!("a path names a member"),
        }
    }

    /// Pretty JSON, as `{:#}` of the `Value` writes it, and a newline.
    pub fn write_json(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        out.write_all(b"\n")
    }

    /// YAML, as [`crate::xds::json::to_yaml`] writes the `Value`.
    pub fn write_yaml(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        serde_norway::to_writer(&mut *out, self).map_err(std::io::Error::other)
    }
}

impl serde::Serialize for Streamed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap, SerializeSeq};
        match self {
            Streamed::Value(value) => value.serialize(s),
            Streamed::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (key, value) in members {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
            Streamed::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Streamed::Array { len, items } => {
                let items =
                    items.borrow_mut().take().ok_or_else(|| S::Error::custom("written twice"))?;
                let mut seq = s.serialize_seq(Some(*len))?;
                for item in items {
                    seq.serialize_element(&item)?;
                }
                seq.end()
            }
        }
    }
}

impl Resolved {
    /// [`Self::status_json`], made item by item as it is written.
    pub fn status_document(&self) -> Streamed<'_> {
        let r = &self.resolution;
        let members: [(&str, Streamed<'_>); 6] = [
            ("policies", Streamed::array(&r.policies, |p| p.to_json())),
            ("gatewayClasses", Streamed::array(&r.gateway_classes, to_value)),
            ("gateways", Streamed::array(&r.gateways, to_value)),
            ("routes", Streamed::array(&r.routes, to_value)),
            ("errors", Streamed::array(&self.errors, to_value)),
            ("problems", Streamed::array(&r.problems, to_value)),
        ];
        Streamed::Object(members.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
}

fn to_value(item: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(item).expect("reports serialize")
}

/// What `render` prints: [`crate::xds::bootstrap::static_bootstrap`] as JSON, each listener and
/// cluster made only as it is written.
pub fn bootstrap_document(
    resources: &Resources,
    admin_address: std::net::SocketAddr,
) -> Streamed<'_> {
    use crate::xds::json::to_json;
    let frame = crate::xds::bootstrap::static_bootstrap(&Resources::default(), admin_address);
    let mut document = Streamed::from_value(to_json(&frame));
    // proto3 JSON leaves empty repeated fields out.
    if !resources.listeners.is_empty() {
        let listeners = Streamed::array(&resources.listeners, |l| to_json(&l.resource));
        document.set(&["static_resources", "listeners"], listeners);
    }
    if !resources.clusters.is_empty() {
        let clusters = Streamed::array(&resources.clusters, |c| to_json(&c.resource));
        document.set(&["static_resources", "clusters"], clusters);
    }
    document
}

/// What `render` prints, translated as it is written: [`bootstrap_document`] of
/// [`translate`]`(ir, options)` (with [`crate::xds::translate::Delivery::Inline`]), byte for byte,
/// but each cluster and each listener is translated only when the output reaches it, and a
/// listener's route configuration one virtual host at a time. At 100,000 backends one listener
/// holds 100,000 virtual hosts: its structs, encoding and JSON tree took more memory than the
/// whole resolution.
pub fn render_document<'a>(
    ir: &'a crate::ir::Ir,
    options: &'a TranslateOptions,
    admin_address: std::net::SocketAddr,
) -> Streamed<'a> {
    use crate::xds::json::to_json;
    use crate::xds::translate::inline;
    let frame = crate::xds::bootstrap::static_bootstrap(&Resources::default(), admin_address);
    let mut document = Streamed::from_value(to_json(&frame));
    // proto3 JSON leaves empty repeated fields out.
    if !ir.listeners.is_empty() {
        let listeners = ir.listeners.iter().map(move |l| {
            let mut listener =
                Streamed::from_value(to_json(&inline::listener_without_hosts(l, ir, options)));
            if !l.virtual_hosts.is_empty() {
                // Every HTTP connection manager's route configuration (one per filter chain).
                listener.each_object(&mut |members| {
                    let manager = matches!(
                        members.get("@type"),
                        Some(Streamed::Value(serde_json::Value::String(t))) if t == HCM_TYPE_URL
                    );
                    if let Some(Streamed::Object(routes)) =
                        members.get_mut("route_config").filter(|_| manager)
                    {
                        let hosts = l
                            .virtual_hosts
                            .iter()
                            .map(|vh| Streamed::Value(to_json(&inline::virtual_host(vh))));
                        let hosts = Streamed::items(l.virtual_hosts.len(), hosts);
                        routes.insert("virtual_hosts".to_string(), hosts);
                    }
                });
            }
            listener
        });
        let listeners = Streamed::items(ir.listeners.len(), listeners);
        document.set(&["static_resources", "listeners"], listeners);
    }
    if !ir.clusters.is_empty() {
        let clusters = ir
            .clusters
            .values()
            .map(move |c| Streamed::Value(to_json(&inline::cluster(c, ir, options))));
        let clusters = Streamed::items(ir.clusters.len(), clusters);
        document.set(&["static_resources", "clusters"], clusters);
    }
    document
}

const HCM_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Where `serve` reads objects from: the config directory (file mode) or the Kubernetes API
/// (`--source kubernetes`). The rebuild thread calls it; everything after it is shared.
pub trait Input: Send {
    /// Brings the objects up to date. An error keeps the current configuration.
    fn reload(&mut self) -> Result<(), ReloadError>;
    /// False until the objects are complete (the API caches synced): nothing is built before.
    fn ready(&self) -> bool {
        true
    }
    fn resolve(&self, options: &resolve::Options) -> Resolved;
    /// The objects, to resolve in place (`serve` resolves incrementally: [`resolve::Incremental`]
    /// takes the changes the store recorded), and the input's errors.
    fn objects(&mut self) -> (&mut Store, Vec<SourceError>);
    /// Inputs that cannot be used and have never been: no first configuration is published.
    fn unusable(&self) -> Vec<String>;
    /// Each build's status report, after the snapshot was published.
    fn built(&mut self, _report: &StatusReport<'_>) {}
    /// What a watcher saw change since the last reload (file mode), for the next reload.
    fn files_changed(&mut self, _events: FileEvents) {}
}

/// The config directory could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read config directory {}: {error}", dir.display())]
pub struct ReloadError {
    pub dir: std::path::PathBuf,
    pub error: std::io::Error,
}

impl Input for ConfigDir {
    fn reload(&mut self) -> Result<(), ReloadError> {
        ConfigDir::reload_pending(self)
            .map_err(|error| ReloadError { dir: self.root().to_path_buf(), error })
    }
    fn files_changed(&mut self, events: FileEvents) {
        self.add_events(events);
    }
    fn resolve(&self, options: &resolve::Options) -> Resolved {
        resolve(self, options)
    }
    fn objects(&mut self) -> (&mut Store, Vec<SourceError>) {
        ConfigDir::objects(self)
    }
    fn unusable(&self) -> Vec<String> {
        ConfigDir::unusable(self).iter().map(|p| p.display().to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::translate::{Delivery, Filter, FilterBuild, PrivateKeys, Validator};

    /// JSON and YAML (a document is written once: made twice).
    fn written<'a>(document: impl Fn() -> Streamed<'a>) -> (Vec<u8>, Vec<u8>) {
        let (mut json, mut yaml) = (Vec::new(), Vec::new());
        document().write_json(&mut json).unwrap();
        document().write_yaml(&mut yaml).unwrap();
        (json, yaml)
    }

    /// `render` translates as it writes: the same bytes as translating everything first, on every
    /// golden input and the example, under every option that changes the output.
    #[test]
    fn render_document_writes_what_the_whole_translation_does() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("tests/golden"))
            .unwrap()
            .map(|e| e.unwrap().path().join("input"))
            .filter(|p| p.is_dir())
            .collect();
        dirs.push(root.join("../examples/backend-tls"));
        dirs.sort();
        assert!(dirs.len() >= 9, "{dirs:?}");
        let option_sets = [
            TranslateOptions::default(),
            TranslateOptions {
                listener_address: "0.0.0.0".into(),
                validator: Validator::DynamicModule,
                filter: Filter {
                    build: FilterBuild::DynamicModule { path: None },
                    request_header: Some("x-policy".into()),
                },
                private_keys: PrivateKeys::Inline,
                ..Default::default()
            },
            TranslateOptions {
                filter: Filter {
                    build: FilterBuild::Wasm { path: "/filter.wasm".into() },
                    request_header: None,
                },
                private_keys: PrivateKeys::Files { dir: "/keys".into() },
                ..Default::default()
            },
        ];
        let admin = "127.0.0.1:19000".parse().unwrap();
        let mut hosts = 0;
        for dir in &dirs {
            let mut config = ConfigDir::new(dir);
            config.reload().unwrap();
            for class in [None, Some("backendtls".to_string())] {
                let resolve_options =
                    resolve::Options { gateway_class: class, ..Default::default() };
                let resolved = resolve(&config, &resolve_options);
                let ir = &resolved.resolution.ir;
                hosts += ir.listeners.iter().map(|l| l.virtual_hosts.len()).sum::<usize>();
                for options in &option_sets {
                    let options =
                        TranslateOptions { delivery: Delivery::Inline, ..options.clone() };
                    let resources = translate(ir, &options);
                    let whole = written(|| bootstrap_document(&resources, admin));
                    let streamed = written(|| render_document(ir, &options, admin));
                    assert!(whole == streamed, "{}: {options:?}", dir.display());
                }
            }
        }
        assert!(hosts > 10, "the inputs have virtual hosts to stream");
    }

    /// `serve` keeps `/status` compressed: what it sends is exactly the render.
    #[test]
    fn status_kept_compressed_is_the_render() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        for name in ["guide", "policies", "routes"] {
            let mut config = ConfigDir::new(root.join(name).join("input"));
            config.reload().unwrap();
            let resolution = resolve(&config, &resolve::Options::default());
            let report = resolution.status();
            let kept = crate::admin::status_text::StatusText::compress(|w| report.write_to(7, w));
            let rendered = report.render(7);
            assert!(rendered.len() > 1000, "{name}: a real document");
            assert_eq!(kept.len(), rendered.len(), "{name}");
            assert_eq!(kept.text(), rendered, "{name}");
        }
    }
}
