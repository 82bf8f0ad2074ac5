//! What the ADS server serves from one snapshot, shared by every stream.
//!
//! Each resource is held once, as an [`Entry`]: its name, its encoded bytes (shared with the
//! snapshot) and, for clusters and listeners, the SDS secrets it references (decoded once per
//! resource version). Streams keep pointers to the entries they sent, not copies.
//!
//! When a new snapshot is published, [`Served::build`] compares it with the previous one once,
//! for all streams, and records per type the names that were added, changed or removed
//! ([`Changes`]). A stream then looks only at those names (intersected with what it subscribed
//! to and holds) instead of scanning the snapshot, so the work per stream for a change is
//! proportional to the change, not to the number of resources.

use super::authz;
use super::shared_map::SharedMap;
use super::snapshot::{PackedResource, Resources, Snapshot};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::Name as _;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, OnceLock};

/// A resource name, shared by the snapshot and every stream that refers to it: one pointer
/// wide, since each stream keeps tens of thousands of them (its subscriptions, its secrets).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<Box<str>>);

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(name: &str) -> Self {
        Name(Arc::new(name.into()))
    }
}

impl From<String> for Name {
    fn from(name: String) -> Self {
        Name(Arc::new(name.into_boxed_str()))
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self.0, f)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One resource as streams hold and send it.
#[derive(Debug)]
pub struct Entry {
    pub name: Name,
    pub resource: Arc<PackedResource>,
    /// The SDS secrets it references (clusters and listeners; empty for other types), sorted.
    pub secrets: Arc<[Name]>,
}

impl Entry {
    pub fn version(&self) -> &str {
        &self.resource.version
    }
}

/// One type's resources by name; shares what did not change with the previous snapshot's table.
pub type Table = SharedMap<Name, Arc<Entry>>;

/// Per table (a type URL, or [`super::snapshot::VHDS_ROUTE_CONFIGURATIONS`]), the names whose
/// resource was added, changed (new version) or removed between two snapshots, sorted.
pub type Changes = BTreeMap<String, Vec<Name>>;

static EMPTY: LazyLock<Table> = LazyLock::new(Table::new);

/// A snapshot as the ADS server serves it.
#[derive(Debug)]
pub struct Served {
    /// Counts the snapshots the server has seen, from 0: consecutive, whatever the snapshots'
    /// own versions.
    pub seq: u64,
    pub snapshot: Arc<Snapshot>,
    tables: BTreeMap<String, Table>,
    /// The route configurations, when the snapshot has inline ones: made on first use (by a
    /// state-of-the-world stream), which encodes them.
    routes: OnceLock<Table>,
}

impl Served {
    /// The snapshot's version, as responses report it.
    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    /// The resources of `key` (a type URL, or the VHDS route configurations).
    pub fn table(&self, key: &str) -> &Table {
        if key == RouteConfiguration::type_url() && !self.snapshot.inline_routes.is_empty() {
            return self.routes.get_or_init(|| {
                let routes = self.snapshot.of_type(key).expect("made by Snapshot::new");
                build_table(routes, &EMPTY, &EMPTY, None).0
            });
        }
        self.tables.get(key).unwrap_or(&EMPTY)
    }

    /// `snapshot` as served, reusing the entries of `previous` whose resource did not change,
    /// and what changed from `previous` (everything, without one).
    pub fn build(
        seq: u64,
        snapshot: Arc<Snapshot>,
        previous: Option<&Served>,
    ) -> (Served, Changes) {
        let mut tables = BTreeMap::new();
        let mut changes = Changes::new();
        // Secrets first: clusters and listeners share their names.
        let sds = Secret::type_url();
        let rds = RouteConfiguration::type_url();
        let keys = snapshot
            .resources
            .keys()
            .filter(|k| **k == sds)
            .chain(snapshot.resources.keys().filter(|k| **k != sds));
        for key in keys {
            let referrer = if *key == Cluster::type_url() {
                Some(authz::Referrer::Cluster)
            } else if *key == Listener::type_url() {
                Some(authz::Referrer::Listener)
            } else {
                None
            };
            let secrets = tables.get(&sds).unwrap_or(&*EMPTY);
            let resources = &snapshot.resources[key];
            let lazy = |s: &Snapshot| !s.inline_routes.is_empty();
            if *key == rds && (lazy(&snapshot) || previous.is_some_and(|p| lazy(&p.snapshot))) {
                let touched = routes_touched(&snapshot, previous.map(|p| &*p.snapshot));
                if !touched.is_empty() {
                    changes.insert(key.clone(), touched);
                }
                if !lazy(&snapshot) {
                    tables.insert(key.clone(), build_table(resources, &EMPTY, &EMPTY, None).0);
                }
                continue;
            }
            let (table, touched) = match previous {
                Some(previous) => {
                    let before = previous.snapshot.resources.get(key);
                    let table = previous.table(key);
                    patch_table(resources, before, table, secrets, referrer)
                }
                None => build_table(resources, &EMPTY, secrets, referrer),
            };
            if !touched.is_empty() {
                changes.insert(key.clone(), touched);
            }
            tables.insert(key.clone(), table);
        }
        // Types that went away altogether (not in snapshots built by `Snapshot::new`).
        for (key, table) in previous.map(|p| &p.tables).into_iter().flatten() {
            if !snapshot.resources.contains_key(key) && !table.is_empty() {
                changes.insert(key.clone(), table.keys().cloned().collect());
            }
        }
        (Served { seq, snapshot, tables, routes: OnceLock::new() }, changes)
    }
}

/// The route configurations that differ between `previous` and `snapshot`, without encoding
/// the inline ones (whose hosts are compared instead).
fn routes_touched(snapshot: &Snapshot, previous: Option<&Snapshot>) -> Vec<Name> {
    let rds = RouteConfiguration::type_url();
    let empty = Resources::default();
    let inline_empty = BTreeMap::new();
    let (before, inline_before) = match previous {
        Some(p) => (p.resources.get(&rds).unwrap_or(&empty), &p.inline_routes),
        None => (&empty, &inline_empty),
    };
    let now = snapshot.resources.get(&rds).unwrap_or(&empty);
    let mut touched = std::collections::BTreeSet::new();
    before.diff(
        now,
        |a, b| Arc::ptr_eq(a, b) || a.version == b.version,
        |name, _, _| {
            touched.insert(name.as_str());
        },
    );
    let names = inline_before.keys().chain(snapshot.inline_routes.keys());
    for name in names {
        match (inline_before.get(name), snapshot.inline_routes.get(name)) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) || a.same_content(b) => {}
            _ => {
                touched.insert(name.as_str());
            }
        }
    }
    touched.into_iter().map(Name::from).collect()
}

/// One type's table, from the previous one (`previous`, built from `before`, the previous
/// snapshot's resources of this type): only the names whose resource differs between `before`
/// and `resources` are looked at, which for a snapshot translated from the previous one
/// ([`SharedMap::diff`]) costs the change, not the number of resources. Also returns the names
/// that changed (added, removed, or of a new version), in order.
fn patch_table(
    resources: &Resources,
    before: Option<&Resources>,
    previous: &Table,
    secrets: &Table,
    referrer: Option<authz::Referrer>,
) -> (Table, Vec<Name>) {
    let Some(before) = before else {
        return build_table(resources, previous, secrets, referrer);
    };
    let mut table = previous.clone();
    let mut touched = Vec::new();
    before.diff(resources, Arc::ptr_eq, |name, _, now| {
        let old = table.get(name.as_str());
        match (old, now) {
            (None, None) => {}
            (Some(e), None) => {
                touched.push(e.name.clone());
                table.remove(name.as_str());
            }
            // Rebuilt, same content: not a change.
            (Some(e), Some(resource)) if e.resource.version == resource.version => {
                let entry = Entry {
                    name: e.name.clone(),
                    resource: resource.clone(),
                    secrets: e.secrets.clone(),
                };
                table.insert(e.name.clone(), Arc::new(entry));
            }
            (old, Some(resource)) => {
                let name: Name = old.map_or_else(|| name.as_str().into(), |e| e.name.clone());
                touched.push(name.clone());
                let entry = Entry {
                    secrets: referenced_secrets(referrer, resource, secrets),
                    name: name.clone(),
                    resource: resource.clone(),
                };
                table.insert(name, Arc::new(entry));
            }
        }
    });
    (table, touched)
}

/// One type's table, merged with the previous one in name order, and the names that changed.
fn build_table(
    resources: &Resources,
    previous: &Table,
    secrets: &Table,
    referrer: Option<authz::Referrer>,
) -> (Table, Vec<Name>) {
    let mut touched = Vec::new();
    let mut entries = Vec::with_capacity(resources.len());
    let mut old = previous.iter().peekable();
    for (name, resource) in resources {
        while let Some((gone, _)) = old.next_if(|(n, _)| n.as_ref() < name.as_str()) {
            touched.push(gone.clone());
        }
        let before = old.next_if(|(n, _)| n.as_ref() == name.as_str()).map(|(_, e)| e);
        let entry = match before {
            Some(e) if Arc::ptr_eq(&e.resource, resource) => e.clone(),
            // Rebuilt, same content: not a change.
            Some(e) if e.resource.version == resource.version => Arc::new(Entry {
                name: e.name.clone(),
                resource: resource.clone(),
                secrets: e.secrets.clone(),
            }),
            _ => {
                let name: Name = before.map_or_else(|| name.as_str().into(), |e| e.name.clone());
                touched.push(name.clone());
                Arc::new(Entry {
                    secrets: referenced_secrets(referrer, resource, secrets),
                    name,
                    resource: resource.clone(),
                })
            }
        };
        entries.push((entry.name.clone(), entry));
    }
    touched.extend(old.map(|(gone, _)| gone.clone()));
    (entries.into_iter().collect(), touched)
}

/// The secrets a cluster or listener references, sharing the names of the secrets table.
fn referenced_secrets(
    referrer: Option<authz::Referrer>,
    resource: &PackedResource,
    secrets: &Table,
) -> Arc<[Name]> {
    // Most resources reference none: they share one empty list rather than allocate 300,000.
    static NONE: LazyLock<Arc<[Name]>> = LazyLock::new(|| Arc::new([]));
    let names = match referrer {
        None => return NONE.clone(),
        Some(authz::Referrer::Cluster) => authz::secrets_of_encoded(&resource.resource.value),
        Some(authz::Referrer::Listener) => {
            authz::secrets_of_encoded_listener(&resource.resource.value)
        }
    };
    names
        .into_iter()
        .map(|name| match secrets.get_key_value(name.as_str()) {
            Some((shared, _)) => shared.clone(),
            None => name.into(),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::xds::snapshot::{type_urls, EncodedAny};
    use std::collections::BTreeSet;

    fn snapshot(version: u64, resources: &[(&str, &str, &str)]) -> Arc<Snapshot> {
        let mut packed = crate::xds::snapshot::Packed::new();
        for (type_url, name, v) in resources {
            packed.entry(type_url.to_string()).or_default().insert(
                name.to_string(),
                Arc::new(PackedResource {
                    version: v.to_string(),
                    resource: EncodedAny {
                        type_url: type_url.to_string(),
                        value: v.as_bytes().to_vec().into(),
                    },
                }),
            );
        }
        Arc::new(Snapshot::new(version, packed))
    }

    /// A tiny deterministic generator (xorshift), for random snapshots.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn resource(type_url: &str, v: &str) -> Arc<PackedResource> {
        Arc::new(PackedResource {
            version: v.to_string(),
            resource: EncodedAny {
                type_url: type_url.to_string(),
                value: v.as_bytes().to_vec().into(),
            },
        })
    }

    /// Whether the snapshots are made afresh each time, or from the previous one (sharing what
    /// did not change, as the translator makes them), the changes are exactly the names whose
    /// presence or version differ, and the tables are what a build from nothing gives.
    #[test]
    fn changes_are_exactly_the_names_whose_presence_or_version_differs() {
        for derived in [false, true] {
            changes_are_exact(derived);
        }
    }

    fn changes_are_exact(derived: bool) {
        let types = type_urls();
        let mut rng = Rng(0x5eed);
        let mut current: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut served: Option<Served> = None;
        for seq in 0..200 {
            let mut packed = served
                .as_ref()
                .filter(|_| derived)
                .map(|s| s.snapshot.resources.clone())
                .unwrap_or_default();
            // Add, change or remove a few resources (many, now and then).
            let edits = if seq % 40 == 0 { 300 } else { rng.below(6) };
            for _ in 0..edits {
                let type_url = &types[rng.below(types.len() as u64) as usize];
                let key = (
                    type_url.clone(),
                    format!("r{:03}", rng.below(if seq < 100 { 12 } else { 400 })),
                );
                let map = packed.entry(type_url.clone()).or_default();
                match rng.below(4) {
                    0 => {
                        current.remove(&key);
                        map.remove(key.1.as_str());
                    }
                    // The same content, rebuilt.
                    1 => {
                        if let Some(v) = current.get(&key) {
                            map.insert(key.1.clone(), resource(type_url, v));
                        }
                    }
                    _ => {
                        let v = rng.below(3).to_string();
                        map.insert(key.1.clone(), resource(type_url, &v));
                        current.insert(key, v);
                    }
                }
            }
            let next = if derived {
                Arc::new(Snapshot::new(seq + 1, packed))
            } else {
                let listed: Vec<(&str, &str, &str)> = current
                    .iter()
                    .map(|((t, n), v)| (t.as_str(), n.as_str(), v.as_str()))
                    .collect();
                snapshot(seq + 1, &listed)
            };
            let (built, changes) = Served::build(seq, next.clone(), served.as_ref());
            let (fresh, _) = Served::build(seq, next.clone(), None);
            // The truth: compare the two snapshots name by name.
            let before = served.as_ref().map(|s| s.snapshot.clone()).unwrap_or_default();
            for key in next.resources.keys() {
                let old = before.of_type(key).cloned().unwrap_or_default();
                let new = &next.resources[key];
                let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
                let expected: Vec<&str> = names
                    .into_iter()
                    .filter(|n| old.get(*n).map(|r| &r.version) != new.get(*n).map(|r| &r.version))
                    .map(|n| n.as_str())
                    .collect();
                let got: Vec<&str> =
                    changes.get(key).into_iter().flatten().map(|n| n.as_ref()).collect();
                assert_eq!(got, expected, "snapshot {seq}, {key}");
                let table: Vec<(&str, &str)> =
                    built.table(key).iter().map(|(n, e)| (n.as_ref(), e.version())).collect();
                let snap: Vec<(&str, &str)> =
                    new.iter().map(|(n, r)| (n.as_str(), r.version.as_str())).collect();
                assert_eq!(table, snap);
                let fresh: Vec<(&str, &str)> =
                    fresh.table(key).iter().map(|(n, e)| (n.as_ref(), e.version())).collect();
                assert_eq!(table, fresh);
            }
            served = Some(built);
        }
    }
}
