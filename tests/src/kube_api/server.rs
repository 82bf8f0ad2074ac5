//! The stand-in's HTTP side: routing, query parameters, watch streams.

use super::{id_of, served, ApiError, ObjectId, State, Watch, Write};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, Infallible>;

pub struct ServerThread {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    pub fn start(state: Arc<Mutex<State>>) -> ServerThread {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the stand-in");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kube-api".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let ticker_state = state.clone();
                    // Bookmarks now and then, as the API server sends them (about once a minute).
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            ticker_state.lock().unwrap().bookmark();
                        }
                    });
                    loop {
                        let (stream, _) = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok(accepted) => accepted,
                                Err(_) => continue,
                            },
                            _ = &mut stop_rx => return,
                        };
                        let state = state.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |request| {
                                let state = state.clone();
                                async move { Ok::<_, Infallible>(handle(state, request).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
                runtime.shutdown_background();
            })
            .expect("stand-in thread");
        ServerThread { address, stop: Some(stop_tx), thread: Some(thread) }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("response")
}

fn error(e: ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

/// A parsed request path.
struct Target {
    group: String,
    version: String,
    plural: String,
    /// Namespace from the path (None: all namespaces, or a cluster-scoped resource).
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        // `namespaces/NAME` is the Namespace object itself; `namespaces/NS/plural...` is in it.
        ["namespaces", ns, plural, more @ ..] => {
            (Some(ns.to_string()), std::iter::once(*plural).chain(more.iter().copied()).collect())
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return None,
    };
    Some(Target {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        namespace,
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
    })
}

fn query(request: &Request<Incoming>) -> Vec<(String, String)> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(state: Arc<Mutex<State>>, request: Request<Incoming>) -> Response<Body> {
    let Some(target) = parse_path(request.uri().path()) else {
        return error(ApiError::new(404, "NotFound", format!("no route {}", request.uri().path())));
    };
    let Some(&(_, versions, _, kind, namespaced)) = served(&target.group, &target.plural) else {
        return error(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    if !versions.contains(&target.version.as_str()) {
        return error(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let api_version = if target.group.is_empty() {
        target.version.clone()
    } else {
        format!("{}/{}", target.group, target.version)
    };
    let params = query(&request);
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let id = |name: &str| ObjectId {
        group: target.group.clone(),
        plural: target.plural.clone(),
        namespace: if namespaced {
            target.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        },
        name: name.to_string(),
    };
    let at_version = |mut object: Value| {
        object["apiVersion"] = api_version.clone().into();
        object
    };
    let method = request.method().clone();
    match (&method, &target.name) {
        (&Method::GET, None) => {
            let selector: Vec<(String, String)> = param("labelSelector")
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.split_once('='))
                .map(|(k, v)| (k.trim_end_matches('=').to_string(), v.to_string()))
                .collect();
            let namespace = if namespaced { target.namespace.clone() } else { None };
            let watch = Watch {
                group: target.group.clone(),
                plural: target.plural.clone(),
                namespace,
                selector,
                api_version: api_version.clone(),
                kind: kind.to_string(),
                bookmarks: param("allowWatchBookmarks") == Some("true"),
                tx: mpsc::unbounded_channel().0,
            };
            if matches!(param("watch"), Some("true" | "1")) {
                let timeout = param("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800);
                return start_watch(state, watch, param("resourceVersion"), timeout).await;
            }
            let state = state.lock().unwrap();
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|(id, object)| watch.matches(id, object))
                .map(|(_, object)| at_version(object.clone()))
                .collect();
            json_response(
                200,
                &json!({
                    "apiVersion": api_version, "kind": format!("{kind}List"),
                    "metadata": { "resourceVersion": state.revision.to_string() },
                    "items": items,
                }),
            )
        }
        (&Method::GET, Some(name)) => {
            let state = state.lock().unwrap();
            match state.objects.get(&id(name)) {
                Some(object) => json_response(200, &at_version(object.clone())),
                None => error(ApiError::new(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", target.plural),
                )),
            }
        }
        (&Method::POST, None) => {
            let body = match read_json(request).await {
                Ok(body) => body,
                Err(e) => return error(e),
            };
            let Some(object_id) = id_of(&with_namespace(body.clone(), &target.namespace)) else {
                return error(ApiError::new(
                    422,
                    "Invalid",
                    "apiVersion, kind and metadata.name are required",
                ));
            };
            let mut state = state.lock().unwrap();
            state.log("create", &object_id, None, None);
            match state.create(&object_id, body) {
                Ok(created) => json_response(201, &at_version(created)),
                Err(e) => error(e),
            }
        }
        (&Method::PUT, Some(name)) => {
            let sub = target.subresource.clone();
            let body = match read_json(request).await {
                Ok(body) => body,
                Err(e) => return error(e),
            };
            let mut state = state.lock().unwrap();
            state.log("update", &id(name), sub.clone(), None);
            match state.update(&id(name), body, sub.as_deref()) {
                Ok(updated) => json_response(200, &at_version(updated)),
                Err(e) => error(e),
            }
        }
        (&Method::PATCH, Some(name)) if target.subresource.as_deref() == Some("status") => {
            let content_type = request
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if content_type != "application/apply-patch+yaml" {
                return error(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the stand-in supports only server-side apply, not {content_type}"),
                ));
            }
            let Some(manager) = param("fieldManager").map(str::to_string) else {
                return error(ApiError::new(
                    422,
                    "Invalid",
                    "fieldManager is required for apply requests",
                ));
            };
            let force = param("force") == Some("true");
            let bytes = match request.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => return error(ApiError::new(400, "BadRequest", e.to_string())),
            };
            let patch: Value = match serde_norway::from_slice(&bytes) {
                Ok(patch) => patch,
                Err(e) => return error(ApiError::new(400, "BadRequest", e.to_string())),
            };
            let mut state = state.lock().unwrap();
            state.log("apply", &id(name), Some("status".into()), Some(manager.clone()));
            match state.apply_status(&id(name), patch, &manager, force) {
                Ok(applied) => json_response(200, &at_version(applied)),
                Err(e) => error(e),
            }
        }
        (&Method::DELETE, Some(name)) => {
            let mut state = state.lock().unwrap();
            state.log("delete", &id(name), None, None);
            match state.delete(&id(name)) {
                Ok(deleted) => json_response(200, &at_version(deleted)),
                Err(e) => error(e),
            }
        }
        _ => {
            error(ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported here")))
        }
    }
}

fn with_namespace(mut object: Value, namespace: &Option<String>) -> Value {
    if let Some(ns) = namespace {
        object["metadata"]["namespace"] = ns.clone().into();
    }
    object
}

async fn read_json(request: Request<Incoming>) -> Result<Value, ApiError> {
    let bytes = request
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::new(400, "BadRequest", e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| ApiError::new(400, "BadRequest", e.to_string()))
}

impl State {
    fn log(&mut self, verb: &str, id: &ObjectId, sub: Option<String>, manager: Option<String>) {
        self.writes.push(Write {
            verb: verb.into(),
            id: id.clone(),
            subresource: sub,
            field_manager: manager,
        });
    }
}

async fn start_watch(
    state: Arc<Mutex<State>>,
    mut watch: Watch,
    resource_version: Option<&str>,
    timeout_seconds: u64,
) -> Response<Body> {
    // Held while a test makes changes the watchers must miss.
    while state.lock().unwrap().refuse_watches {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    {
        let mut state = state.lock().unwrap();
        let from: Option<u64> = match resource_version {
            None | Some("") | Some("0") => None,
            Some(rv) => rv.parse().ok(),
        };
        match from {
            // "Start at any": the current objects as ADDED first.
            None => {
                for (id, object) in &state.objects {
                    if watch.matches(id, object) {
                        let _ = tx.send(watch.event("ADDED", object));
                    }
                }
            }
            Some(from) if from + 1 < state.compacted => {
                let gone = ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {from} ({})", state.compacted),
                );
                let _ = tx.send(json!({ "type": "ERROR", "object": gone.status() }));
                drop(tx);
                return stream_response(rx, timeout_seconds);
            }
            Some(from) => {
                for (revision, event, id, object) in &state.history {
                    if *revision > from && watch.matches(id, object) {
                        let _ = tx.send(watch.event(event, object));
                    }
                }
            }
        }
        watch.tx = tx;
        state.watches.push(watch);
    }
    stream_response(rx, timeout_seconds)
}

fn stream_response(rx: mpsc::UnboundedReceiver<Value>, timeout_seconds: u64) -> Response<Body> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_seconds);
    let stream = futures_util::stream::unfold(rx, move |mut rx| async move {
        let event = tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten()?;
        let mut line = event.to_string();
        line.push('\n');
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line))), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response")
}
