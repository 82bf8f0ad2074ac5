//! Every Kubernetes API call the provider makes, in one place: the watched kinds, the status
//! subresources it patches and the Lease it holds. `deploy/kubernetes/` grants exactly these, and
//! a test (tests/tests/kubernetes.rs) checks the ClusterRole and Role cover every entry.

/// A kind the provider watches: list and watch, at the first version the API server serves.
#[derive(Clone, Copy, Debug)]
pub struct WatchedKind {
    /// The kind as [`crate::objects::Object::kind`] names it.
    pub kind: &'static str,
    pub group: &'static str,
    /// Tried in order; the first one the API server serves is watched.
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub namespaced: bool,
}

const GATEWAY: &str = "gateway.networking.k8s.io";

/// Every kind the loader reads, watched cluster-wide or in each of `--namespaces`.
pub const WATCHED: &[WatchedKind] = &[
    WatchedKind {
        kind: "GatewayClass",
        group: GATEWAY,
        versions: &["v1", "v1beta1"],
        plural: "gatewayclasses",
        namespaced: false,
    },
    WatchedKind {
        kind: "Gateway",
        group: GATEWAY,
        versions: &["v1", "v1beta1"],
        plural: "gateways",
        namespaced: true,
    },
    WatchedKind {
        kind: "HTTPRoute",
        group: GATEWAY,
        versions: &["v1", "v1beta1"],
        plural: "httproutes",
        namespaced: true,
    },
    WatchedKind {
        kind: "GRPCRoute",
        group: GATEWAY,
        versions: &["v1"],
        plural: "grpcroutes",
        namespaced: true,
    },
    WatchedKind {
        kind: "TLSRoute",
        group: GATEWAY,
        versions: &["v1", "v1alpha3", "v1alpha2"],
        plural: "tlsroutes",
        namespaced: true,
    },
    WatchedKind {
        kind: "ReferenceGrant",
        group: GATEWAY,
        versions: &["v1", "v1beta1", "v1alpha2"],
        plural: "referencegrants",
        namespaced: true,
    },
    WatchedKind {
        kind: "BackendTLSPolicy",
        group: GATEWAY,
        versions: &["v1", "v1alpha3"],
        plural: "backendtlspolicies",
        namespaced: true,
    },
    WatchedKind {
        kind: "Service",
        group: "",
        versions: &["v1"],
        plural: "services",
        namespaced: true,
    },
    WatchedKind {
        kind: "EndpointSlice",
        group: "discovery.k8s.io",
        versions: &["v1"],
        plural: "endpointslices",
        namespaced: true,
    },
    WatchedKind {
        kind: "ConfigMap",
        group: "",
        versions: &["v1"],
        plural: "configmaps",
        namespaced: true,
    },
    WatchedKind {
        kind: "Secret",
        group: "",
        versions: &["v1"],
        plural: "secrets",
        namespaced: true,
    },
    WatchedKind {
        kind: "Namespace",
        group: "",
        versions: &["v1"],
        plural: "namespaces",
        namespaced: false,
    },
];

/// One API call: verbs on a resource (or its subresource).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiCall {
    pub group: &'static str,
    /// `plural` or `plural/subresource`.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// True for calls made only in the loader's own namespace (a Role there suffices).
    pub own_namespace: bool,
}

/// Status subresources the provider patches (server-side apply), and reads before patching.
pub const STATUS_WRITES: &[(&str, &str)] = &[
    (GATEWAY, "backendtlspolicies/status"),
    (GATEWAY, "gateways/status"),
    (GATEWAY, "httproutes/status"),
    (GATEWAY, "grpcroutes/status"),
    (GATEWAY, "tlsroutes/status"),
];

/// Every call the code makes. The watchers' (`list`, `watch`; `get` for discovery of the served
/// version), the status writer's, and leader election's.
pub fn calls() -> Vec<ApiCall> {
    let mut calls: Vec<ApiCall> = WATCHED
        .iter()
        .map(|k| ApiCall {
            group: k.group,
            resource: k.plural,
            verbs: &["list", "watch"],
            own_namespace: false,
        })
        .collect();
    // The status writer reads the live object first (others' entries, resourceVersion).
    for (group, resource) in STATUS_WRITES {
        calls.push(ApiCall { group, resource, verbs: &["get", "patch"], own_namespace: false });
    }
    calls.push(ApiCall {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        own_namespace: true,
    });
    calls
}
