//! `serve --source kubernetes` against the in-process API server stand-in (src/kube_api/): no
//! real API server can run on these machines. The real loader binary watches the stand-in, a
//! real Envoy 1.40 gets its configuration over ADS, NGINX is the TLS backend of the guide.

use backendtls_e2e::guide::{wait_for_gateway_status, HOSTNAME};
use backendtls_e2e::kube_api::{KubeApi, ObjectId};
use backendtls_e2e::manifests::{ca_config_map, Manifests};
use backendtls_e2e::{ads_bootstrap, free_port, wait_until, Ads, Envoy, Loader, Nginx, TestCa};
use backendtls_loader::kube::api;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
const CONTROLLER: &str = "backendtls.dev/loader";
const TIMEOUT: Duration = Duration::from_secs(30);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every document of every manifest in deploy/kubernetes.
fn deploy_documents() -> Vec<(String, Value)> {
    let mut documents = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(deploy_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read manifest");
        for document in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if !value.is_null() {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                documents.push((name, value));
            }
        }
    }
    documents
}

fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> T {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{} does not parse as its type: {e}", value["kind"]))
}

/// Every manifest parses into its typed object, kustomization.yaml lists every file, and the
/// RBAC rules grant every API call the code makes (loader/src/kube/api.rs) and nothing more.
#[test]
fn manifests_parse_and_rbac_covers_every_api_call() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{
        ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding,
    };
    let documents = deploy_documents();
    let mut cluster_rules: Vec<PolicyRule> = Vec::new();
    let mut namespace_rules: Vec<PolicyRule> = Vec::new();
    let mut bound = Vec::new();
    let mut deployments = Vec::new();
    let mut listed = Vec::new();
    for (file, document) in &documents {
        match document["kind"].as_str().unwrap_or_default() {
            "Kustomization" => {
                listed = document["resources"]
                    .as_array()
                    .expect("resources")
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect();
            }
            "Namespace" => drop(typed::<Namespace>(document)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(document)),
            "Service" => drop(typed::<Service>(document)),
            "ClusterRole" => cluster_rules.extend(typed::<ClusterRole>(document).rules.unwrap()),
            "Role" => {
                let role: Role = typed(document);
                assert_eq!(role.metadata.namespace.as_deref(), Some("backendtls-system"));
                namespace_rules.extend(role.rules.unwrap());
            }
            "ClusterRoleBinding" => {
                let binding: ClusterRoleBinding = typed(document);
                bound.push(("ClusterRole", binding.role_ref.name, binding.subjects.unwrap()));
            }
            "RoleBinding" => {
                let binding: RoleBinding = typed(document);
                bound.push(("Role", binding.role_ref.name, binding.subjects.unwrap()));
            }
            "Deployment" => deployments.push(typed::<Deployment>(document)),
            "GatewayClass" => {
                assert_eq!(document["spec"]["controllerName"], CONTROLLER, "{file}");
            }
            other => panic!("{file}: unexpected kind {other}"),
        }
    }
    let mut files: Vec<String> =
        documents.iter().map(|(f, _)| f.clone()).filter(|f| f != "kustomization.yaml").collect();
    files.dedup();
    listed.sort();
    files.sort();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");
    for (kind, _, subjects) in &bound {
        assert!(
            subjects.iter().all(|s| s.kind == "ServiceAccount" && s.name == "backendtls-loader"),
            "{kind} bound to the loader's ServiceAccount only"
        );
    }
    let grants = |rules: &[PolicyRule], group: &str, resource: &str, verb: &str| {
        rules.iter().any(|rule| {
            rule.api_groups.as_deref().unwrap_or_default().iter().any(|g| g == group)
                && rule.resources.as_deref().unwrap_or_default().iter().any(|r| r == resource)
                && rule.verbs.iter().any(|v| v == verb)
        })
    };
    let calls = api::calls();
    for call in &calls {
        for verb in call.verbs {
            let ok = grants(&cluster_rules, call.group, call.resource, verb)
                || (call.own_namespace
                    && grants(&namespace_rules, call.group, call.resource, verb));
            assert!(ok, "no rule grants {verb} on {}/{}", call.group, call.resource);
        }
    }
    // Least privilege: every granted verb is a call the code makes.
    for (rules, own) in [(&cluster_rules, false), (&namespace_rules, true)] {
        for rule in rules.iter() {
            assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
            for group in rule.api_groups.as_deref().unwrap_or_default() {
                for resource in rule.resources.as_deref().unwrap_or_default() {
                    for verb in &rule.verbs {
                        assert!(
                            calls.iter().any(|c| c.group == group
                                && c.resource == resource
                                && c.verbs.contains(&verb.as_str())
                                && (c.own_namespace == own)),
                            "{verb} on {group}/{resource} is granted but never used"
                        );
                    }
                }
            }
        }
    }
    // Status is written only through subresources.
    for rule in &cluster_rules {
        if rule.verbs.iter().any(|v| v == "patch") {
            assert!(rule.resources.as_ref().unwrap().iter().all(|r| r.ends_with("/status")));
        }
    }
    let loader = deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("backendtls-loader"))
        .expect("loader Deployment");
    let spec = loader.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("backendtls-loader"));
    let container = &pod.containers[0];
    let args = container.args.as_ref().unwrap();
    assert!(args.iter().any(|a| a == "--source=kubernetes"), "{args:?}");
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&container.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&container.readiness_probe).as_deref(), Some("/readyz"));
    assert!(
        deployments.iter().any(|d| d.metadata.name.as_deref() == Some("backendtls-envoy")),
        "an Envoy Deployment"
    );
}

/// The guide's objects in the stand-in (the Manifests helper writes them with this test's
/// ports); returns the directory they were written to.
fn create_guide_objects(api: &KubeApi, manifests: &Manifests) {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(manifests.dir()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files {
        api.apply_yaml(&std::fs::read_to_string(file).unwrap());
    }
}

fn start_kube_loader(api: &KubeApi, extra: &[&str]) -> Loader {
    let empty = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig().to_str().unwrap().to_string();
    let mut args = vec!["--source", "kubernetes", "--kubeconfig", &kubeconfig];
    args.extend_from_slice(extra);
    let loader = Loader::start_with_args(empty.path(), free_port(), free_port(), &args);
    // The directory is not read in this mode.
    drop(empty);
    loader
}

fn policy_id() -> ObjectId {
    ObjectId {
        group: GATEWAY_GROUP.into(),
        plural: "backendtlspolicies".into(),
        namespace: "default".into(),
        name: "nginx-tls-policy".into(),
    }
}

fn policy(api: &KubeApi) -> Value {
    api.get(GATEWAY_GROUP, "backendtlspolicies", "default", "nginx-tls-policy").expect("policy")
}

/// Our `status.ancestors` entries on the live policy.
fn our_ancestors(api: &KubeApi) -> Vec<Value> {
    policy(api)["status"]["ancestors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["controllerName"] == CONTROLLER)
        .cloned()
        .collect()
}

fn condition(ancestor: &Value, kind: &str) -> Option<String> {
    ancestor["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| c["status"].as_str().unwrap_or_default().to_string())
}

fn wait_for_resolved_refs(api: &KubeApi, status: &str) -> Value {
    wait_until(&format!("the policy's status to say ResolvedRefs={status}"), TIMEOUT, || {
        let ours = our_ancestors(api);
        match ours.first() {
            Some(a) if condition(a, "ResolvedRefs").as_deref() == Some(status) => Ok(a.clone()),
            _ => Err(policy(api)["status"].clone()),
        }
    })
}

/// The guide end to end through the API: 200 through Envoy with SNI example.com; the policy's
/// status written next to another controller's entry, which stays untouched; a CA update flips
/// traffic to 5xx and back; a watch dropped mid-stream and a 410 Gone both recover with nothing
/// stale; with the API server gone, the last configuration keeps serving.
#[test]
fn guide_through_the_api() {
    let api = KubeApi::start();
    let ca = TestCa::new("backendtls kube e2e CA");
    let other_ca = TestCa::new("backendtls kube e2e other CA");
    let nginx = Nginx::start(&ca.issue(&[HOSTNAME]));
    let gateway_port = free_port();
    let manifests = Manifests::write(gateway_port, nginx.https_port(), ca.cert_pem());
    create_guide_objects(&api, &manifests);
    // Another controller's entry, written before ours.
    let theirs = json!({
        "ancestorRef": { "group": GATEWAY_GROUP, "kind": "Gateway", "namespace": "default", "name": "elsewhere" },
        "controllerName": "example.com/other-controller",
        "conditions": [{ "type": "Accepted", "status": "True", "reason": "Accepted", "message": "theirs", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1 }],
    });
    api.apply_status_as("other-controller", &policy_id(), json!({ "ancestors": [theirs.clone()] }));

    // The guide's Gateway is of class kgateway: here, that is us.
    let loader = start_kube_loader(&api, &["--gateway-class", "kgateway"]);
    let envoy_admin = free_port();
    let node = "kube-guide";
    let envoy =
        Envoy::start(&ads_bootstrap(loader.xds_port(), envoy_admin, node, Ads::Delta), envoy_admin);
    wait_for_gateway_status(gateway_port, 200);
    assert!(nginx.plaintext_requests().is_empty(), "NGINX was reached over TLS only");

    // Status: ours beside theirs, theirs exactly as written.
    let ours = wait_for_resolved_refs(&api, "True");
    assert_eq!(condition(&ours, "Accepted").as_deref(), Some("True"));
    let live = policy(&api);
    let ancestors = live["status"]["ancestors"].as_array().unwrap();
    assert_eq!(ancestors[0], theirs, "the other controller's entry is untouched: {live}");
    assert_eq!(ancestors.len(), 2, "{live}");
    assert_eq!(
        ours["conditions"][0]["observedGeneration"], live["metadata"]["generation"],
        "observedGeneration is the live object's"
    );
    // Gateway and HTTPRoute status, ours too.
    let gateway = wait_until("the Gateway's status", TIMEOUT, || {
        let gateway =
            api.get(GATEWAY_GROUP, "gateways", "kgateway-system", "http").expect("gateway");
        match gateway["status"]["conditions"].as_array() {
            Some(c) if c.iter().any(|c| c["type"] == "Programmed" && c["status"] == "True") => {
                Ok(gateway)
            }
            _ => Err(gateway["status"].clone()),
        }
    });
    assert_eq!(gateway["status"]["listeners"][0]["name"], "http", "{gateway}");
    let route = wait_until("the HTTPRoute's status", TIMEOUT, || {
        let route = api.get(GATEWAY_GROUP, "httproutes", "default", "nginx-route").expect("route");
        match route["status"]["parents"].as_array() {
            Some(p) if p.iter().any(|p| p["controllerName"] == CONTROLLER) => Ok(route),
            _ => Err(route["status"].clone()),
        }
    });
    let parent = &route["status"]["parents"][0];
    assert_eq!(condition(parent, "Accepted").as_deref(), Some("True"), "{route}");
    assert!(parent["conditions"][0]["lastTransitionTime"].is_string(), "{route}");
    let applies = |api: &KubeApi| {
        api.writes()
            .iter()
            .filter(|w| w.verb == "apply" && w.id == policy_id())
            .filter(|w| w.field_manager.as_deref() == Some("backendtls-loader"))
            .count()
    };
    let written = applies(&api);
    assert!(written >= 1);

    // A CA that did not sign NGINX's certificate: 5xx, and the status says so; then back.
    api.apply_yaml(&ca_config_map(other_ca.cert_pem()));
    let body = wait_until("a 5xx through the gateway", TIMEOUT, || {
        match backendtls_e2e::try_http_get(gateway_port, backendtls_e2e::guide::GUIDE_HOST, "/") {
            Ok((status, body)) if status >= 500 => Ok(body),
            other => Err(other),
        }
    });
    drop(body);
    api.apply_yaml(&ca_config_map(ca.cert_pem()));
    wait_for_gateway_status(gateway_port, 200);
    wait_for_resolved_refs(&api, "True");
    assert_eq!(policy(&api)["status"]["ancestors"][0], theirs);

    // Nothing changes: nothing is written again.
    let before = applies(&api);
    std::thread::sleep(Duration::from_secs(1));
    loader.admin_json("/status");
    assert_eq!(applies(&api), before, "an unchanged status is not written again");

    // A watch dropped mid-stream, with a change made while it was down: it resumes from its
    // resourceVersion and sees the change.
    api.disconnect_watches(|api| api.apply_yaml(&ca_config_map(other_ca.cert_pem())));
    wait_until("a 5xx after the watch resumed", TIMEOUT, || {
        match backendtls_e2e::try_http_get(gateway_port, backendtls_e2e::guide::GUIDE_HOST, "/") {
            Ok((status, _)) if status >= 500 => Ok(()),
            other => Err(other),
        }
    });

    // History compacted while the watches are down, the policy deleted and the CA fixed: the
    // resumed watches get 410 Gone, list again, and nothing stale survives (the deleted policy is
    // gone from /status, the CA is the new one).
    api.disconnect_watches(|api| {
        api.apply_yaml(&ca_config_map(ca.cert_pem()));
        api.delete(GATEWAY_GROUP, "backendtlspolicies", "default", "nginx-tls-policy");
        api.compact();
    });
    wait_until("the relist to drop the deleted policy", TIMEOUT, || {
        let status = loader.status();
        match status["policies"].as_array() {
            Some(p) if p.is_empty() => Ok(()),
            _ => Err(status["policies"].clone()),
        }
    });
    assert!(
        loader.log().contains("410") || loader.log().contains("too old"),
        "the watch saw 410 Gone"
    );
    // Without the policy the backend is not reached over TLS: not a 200.
    wait_until("no 200 without the policy", TIMEOUT, || {
        match backendtls_e2e::try_http_get(gateway_port, backendtls_e2e::guide::GUIDE_HOST, "/") {
            Ok((200, body)) => Err(body),
            _ => Ok(()),
        }
    });
    let policy_yaml =
        std::fs::read_to_string(manifests.dir().join("policy.yaml")).expect("policy.yaml");
    api.apply_yaml(&policy_yaml);
    wait_for_gateway_status(gateway_port, 200);
    wait_for_resolved_refs(&api, "True");

    // The API server goes away: the last configuration keeps being served, /readyz stays 200.
    drop(api);
    std::thread::sleep(Duration::from_millis(500));
    wait_for_gateway_status(gateway_port, 200);
    assert_eq!(loader.readyz(), Some(200));
    drop(envoy);
}

/// Two replicas: both serve xDS, only the Lease holder writes status; killing it hands over
/// within the lease duration, and the new leader writes the next change.
#[test]
fn two_replicas_only_the_leader_writes_status() {
    let api = KubeApi::start();
    let ca = TestCa::new("backendtls kube leader CA");
    let nginx = Nginx::start(&ca.issue(&[HOSTNAME]));
    let manifests = Manifests::write(free_port(), nginx.https_port(), ca.cert_pem());
    create_guide_objects(&api, &manifests);
    let args = |id: &'static str| {
        [
            "--gateway-class",
            "kgateway",
            "--lease-duration-seconds",
            "2",
            "--lease-namespace",
            "default",
            "--identity",
            id,
        ]
    };
    let mut a = start_kube_loader(&api, &args("replica-a"));
    let mut b = start_kube_loader(&api, &args("replica-b"));
    let holder = |api: &KubeApi| {
        api.get("coordination.k8s.io", "leases", "default", "backendtls-loader")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    wait_for_resolved_refs(&api, "True");
    let leader = holder(&api).expect("a Lease holder");
    let wrote = |loader: &Loader| loader.log().matches("status written").count();
    let (leading, following) =
        if leader == "replica-a" { (&mut a, &mut b) } else { (&mut b, &mut a) };
    wait_until("the leader to log its status writes", TIMEOUT, || {
        if wrote(leading) >= 1 {
            Ok(())
        } else {
            Err(leading.log())
        }
    });
    assert_eq!(wrote(following), 0, "the follower never writes:\n{}", following.log());
    // Both serve xDS.
    for loader in [&*leading, &*following] {
        assert!(loader.status()["snapshot_version"].as_u64().unwrap_or(0) >= 1);
    }

    leading.stop();
    let killed = std::time::Instant::now();
    // A change whose status the new leader must write: the CA ConfigMap goes away.
    api.delete("", "configmaps", "default", "ca");
    wait_for_resolved_refs(&api, "False");
    let other = if leader == "replica-a" { "replica-b" } else { "replica-a" };
    assert_eq!(holder(&api).as_deref(), Some(other));
    // The round's summary is logged after its last write.
    wait_until("the new leader to log its status writes", TIMEOUT, || {
        if wrote(following) >= 1 {
            Ok(())
        } else {
            Err(following.log())
        }
    });
    assert!(
        killed.elapsed() < Duration::from_secs(2 + 10),
        "handed over within the lease duration (plus a renewal period and the write)"
    );
}

/// One HTTP/1.1 request to the stand-in on a new connection; the status and the body's text.
fn raw(api: &KubeApi, method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(api.address()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: standin\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response[9..12].parse().expect("status code");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The stand-in itself follows the API semantics the provider relies on.
#[test]
fn stand_in_follows_the_api_semantics() {
    let api = KubeApi::start();
    let ca = TestCa::new("stand-in CA");
    api.apply_yaml(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/backend-tls/policy.yaml"),
        )
        .unwrap(),
    );
    api.apply_yaml(&ca_config_map(ca.cert_pem()));
    let path =
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/backendtlspolicies/nginx-tls-policy";
    // Served at every version of the CRD, not at others.
    assert_eq!(raw(&api, "GET", path, "application/json", "").0, 200);
    let v1beta1 = path.replace("/v1/", "/v1beta1/");
    assert_eq!(raw(&api, "GET", &v1beta1, "application/json", "").0, 404);

    // Server-side apply on status: another manager's field conflicts unless forced; a stale
    // resourceVersion is a conflict even when forced.
    api.apply_status_as("other", &policy_id(), json!({ "ancestors": [] }));
    let apply = |query: &str, patch: &Value| {
        raw(
            &api,
            "PATCH",
            &format!("{path}/status?{query}"),
            "application/apply-patch+yaml",
            &patch.to_string(),
        )
    };
    let patch = json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
        "metadata": { "name": "nginx-tls-policy", "namespace": "default" }, "status": { "ancestors": [] } });
    let (code, body) = apply("fieldManager=me", &patch);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("conflict with \\\"other\\\""), "{body}");
    assert_eq!(apply("fieldManager=me&force=true", &patch).0, 200);
    let mut stale = patch.clone();
    stale["metadata"]["resourceVersion"] = "1".into();
    assert_eq!(apply("fieldManager=me&force=true", &stale).0, 409);
    assert_eq!(apply("force=true", &patch).0, 422, "fieldManager is required");
    let live = policy(&api);
    assert_eq!(live["metadata"]["managedFields"][0]["manager"], "me", "{live}");
    assert_eq!(live["metadata"]["generation"], 1, "status writes leave generation alone");

    // Leases: create once, update with the resourceVersion read.
    let leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    let lease = json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "l" }, "spec": { "holderIdentity": "a" } });
    let (code, created) = raw(&api, "POST", leases, "application/json", &lease.to_string());
    assert_eq!(code, 201, "{created}");
    assert_eq!(raw(&api, "POST", leases, "application/json", &lease.to_string()).0, 409);
    let created: Value = serde_json::from_str(&created).unwrap();
    let mut update = created.clone();
    update["spec"]["holderIdentity"] = "b".into();
    let (code, _) =
        raw(&api, "PUT", &format!("{leases}/l"), "application/json", &update.to_string());
    assert_eq!(code, 200);
    update["spec"]["holderIdentity"] = "c".into();
    let (code, body) =
        raw(&api, "PUT", &format!("{leases}/l"), "application/json", &update.to_string());
    assert_eq!(code, 409, "a stale resourceVersion: {body}");

    // A watch from a compacted resourceVersion: an ERROR event with 410 Gone.
    api.compact();
    let (code, body) = raw(
        &api,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1",
        "application/json",
        "",
    );
    assert_eq!(code, 200);
    assert!(
        body.contains("\"ERROR\"") && body.contains("410") && body.contains("Expired"),
        "{body}"
    );
    // A list gives the current resourceVersion, from which a watch is fine.
    let (code, body) =
        raw(&api, "GET", "/api/v1/namespaces/default/configmaps", "application/json", "");
    assert_eq!(code, 200);
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

/// VmHWM (peak resident set) of a running process, in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    backendtls_e2e::xds_client::memory_mb(pid).1
}

/// Cache sync and first snapshot at 10,000 backends (the scale generator's objects), through the
/// stand-in and from files, side by side in one run (BENCHMARKS.md, "Kubernetes source"):
/// `cargo test -p backendtls-e2e --test kubernetes scale -- --ignored --nocapture`
/// (`BACKENDTLS_SCALE_BACKENDS` sets N).
#[test]
#[ignore = "a benchmark: minutes at 10,000 backends"]
fn scale_kubernetes_vs_files() {
    use backendtls_e2e::scale::{self, ScaleSpec};
    let backends = std::env::var("BACKENDTLS_SCALE_BACKENDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let ca = TestCa::new("scale CA");
    let dir = tempfile::tempdir().unwrap();
    let spec = ScaleSpec {
        backends,
        layout: scale::Layout::default(),
        file_per_namespace: false,
        gateway_port: free_port(),
        backend_port: 8443,
        ca_pem: ca.cert_pem(),
        hostname: HOSTNAME,
    };
    scale::write(dir.path(), &spec).expect("write the scale objects");

    let started = std::time::Instant::now();
    let files = Loader::start(dir.path());
    let files_s = started.elapsed().as_secs_f64();
    let files_rss = peak_rss_mb(files.pid().unwrap());
    drop(files);

    let api = KubeApi::start();
    let mut paths = vec![dir.path().join("gateway.yaml")];
    for entry in walk(dir.path()) {
        if entry.file_name().is_some_and(|n| n != "gateway.yaml") {
            paths.push(entry);
        }
    }
    for path in &paths {
        api.apply_yaml(&std::fs::read_to_string(path).unwrap());
    }
    let started = std::time::Instant::now();
    let kube = start_kube_loader(&api, &["--no-status"]);
    let kube_s = started.elapsed().as_secs_f64();
    let kube_rss = peak_rss_mb(kube.pid().unwrap());
    let policies = kube.status()["policies"].as_array().map_or(0, Vec::len);
    assert_eq!(policies, backends, "every policy came through the API");
    println!("| backends | source | start to first snapshot (s) | loader peak RSS (MB) |");
    println!("| --- | --- | --- | --- |");
    println!("| {backends} | files | {files_s:.2} | {files_rss:.0} |");
    println!("| {backends} | kubernetes (stand-in) | {kube_s:.2} | {kube_rss:.0} |");
    println!("ratio: time {:.2}x, memory {:.2}x", kube_s / files_s, kube_rss / files_rss);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `--namespaces` limits the watch: a policy in another namespace is never seen.
#[test]
fn namespaces_limit_the_watch() {
    let api = KubeApi::start();
    let ca = TestCa::new("backendtls kube namespaces CA");
    let manifests = Manifests::write(free_port(), free_port(), ca.cert_pem());
    create_guide_objects(&api, &manifests);
    let policy_yaml = std::fs::read_to_string(manifests.dir().join("policy.yaml")).unwrap();
    api.apply_yaml(&policy_yaml.replace("namespace: default", "namespace: elsewhere"));
    let loader =
        start_kube_loader(&api, &["--namespaces", "default,kgateway-system", "--no-status"]);
    let namespaces = |loader: &Loader| -> Vec<String> {
        let status = loader.status();
        let mut namespaces: Vec<String> = status["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["namespace"].as_str().unwrap_or_default().to_string())
            .collect();
        namespaces.sort();
        namespaces
    };
    assert_eq!(namespaces(&loader), ["default"]);
    // Changes in an unwatched namespace are not seen either; in a watched one they are.
    api.apply_yaml(
        &policy_yaml
            .replace("namespace: default", "namespace: elsewhere")
            .replace("nginx-tls-policy", "second"),
    );
    api.apply_yaml(&policy_yaml.replace("nginx-tls-policy", "third"));
    wait_until("the watched namespace's new policy", TIMEOUT, || {
        match namespaces(&loader).as_slice() {
            [a, b] if a == "default" && b == "default" => Ok(()),
            other => Err(other.to_vec()),
        }
    });
    assert!(api.writes().is_empty(), "--no-status: the loader writes nothing, not even a Lease");
}

/// A TLSRoute through the API: watched (at the first version served), resolved, and its
/// `status.parents` entry written like an HTTPRoute's (Accepted, ResolvedRefs, the listener's
/// attachedRoutes); a BackendTLSPolicy on its backend names the Gateway as ancestor.
#[test]
fn tlsroute_status_through_the_api() {
    use base64::Engine as _;
    let api = KubeApi::start();
    let ca = TestCa::new("backendtls kube tlsroute CA");
    let cert = ca.issue(&["tls.example.com"]);
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    api.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: cert, namespace: infra}}\n\
         type: kubernetes.io/tls\ndata: {{tls.crt: {}, tls.key: {}}}\n",
        b64(&cert.cert_pem),
        b64(&cert.key_pem)
    ));
    api.apply_yaml(&format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: tls, namespace: infra}}\nspec:\n  gatewayClassName: backendtls\n  \
         listeners:\n  - {{name: tls-terminate, protocol: TLS, port: {}, hostname: tls.example.com, \
         tls: {{mode: Terminate, certificateRefs: [{{name: cert}}]}}}}\n",
        free_port()
    ));
    api.apply_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: backend, namespace: infra}\n\
         spec: {ports: [{name: btls, port: 8443}]}\n",
    );
    api.apply_yaml(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca, namespace: infra}}\n\
         data: {{ca.crt: {}}}\n",
        serde_json::to_string(ca.cert_pem()).unwrap()
    ));
    api.apply_yaml(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\n\
         metadata: {name: p, namespace: infra}\nspec:\n  \
         targetRefs: [{group: \"\", kind: Service, name: backend}]\n  \
         validation: {caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}], hostname: abc.example.com}\n",
    );
    api.apply_yaml(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\n\
         metadata: {name: r, namespace: infra}\nspec:\n  parentRefs: [{name: tls}]\n  \
         hostnames: [tls.example.com]\n  rules: [{backendRefs: [{name: backend, port: 8443}]}]\n",
    );
    let _loader = start_kube_loader(&api, &["--gateway-class", "backendtls"]);
    let route = wait_until("the TLSRoute's status", TIMEOUT, || {
        let route = api.get(GATEWAY_GROUP, "tlsroutes", "infra", "r").expect("route");
        match route["status"]["parents"].as_array() {
            Some(p) if p.iter().any(|p| p["controllerName"] == CONTROLLER) => Ok(route),
            _ => Err(route["status"].clone()),
        }
    });
    let parent = &route["status"]["parents"][0];
    assert_eq!(parent["parentRef"]["name"], "tls", "{route}");
    assert_eq!(condition(parent, "Accepted").as_deref(), Some("True"), "{route}");
    assert_eq!(condition(parent, "ResolvedRefs").as_deref(), Some("True"), "{route}");
    let gateway = wait_until("the Gateway's status", TIMEOUT, || {
        let gateway = api.get(GATEWAY_GROUP, "gateways", "infra", "tls").expect("gateway");
        match gateway["status"]["listeners"][0]["attachedRoutes"].as_i64() {
            Some(1) => Ok(gateway),
            _ => Err(gateway["status"].clone()),
        }
    });
    assert_eq!(gateway["status"]["listeners"][0]["supportedKinds"][0]["kind"], "TLSRoute");
    wait_until("the policy's ancestor", TIMEOUT, || {
        let policy = api.get(GATEWAY_GROUP, "backendtlspolicies", "infra", "p").expect("policy");
        match policy["status"]["ancestors"].as_array() {
            Some(a) if a.iter().any(|a| a["ancestorRef"]["name"] == "tls") => Ok(()),
            _ => Err(policy["status"].clone()),
        }
    });
}
