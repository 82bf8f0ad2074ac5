//! Expected answers and how they are compared, as the upstream harness's `ExpectedResponse`,
//! `CompareRoundTrip`, `WaitForConsistentResponse` and `WaitForConsistentFailureResponse` do
//! (rules in /work/wt/notes/conformance/http-core.md §3.2):
//!
//! - [`expect_eventually`]: the answer must match **3 times in a row** within **30 s**; a miss (or
//!   a transport error) resets the streak and waits 100 ms (upstream main; v1.6.1 waited 1 s).
//! - [`expect_failure`]: **5** non-200 HTTP answers in a row (v1.6.1's count; main asks 3) within
//!   30 s; a 200 fails at once; 408, 504 and transport errors reset the streak.
//! - For a 200 or 204 the echo's report is compared: path (raw, with query) and method always,
//!   Host when the expectation has one, the **namespace always**, each expected header (name in any
//!   case, the backend's values joined with `,`), absent headers, the pod-name prefix, SNI and
//!   client certificate when asked. For a 3xx with an expected redirect, `Location` is compared.
//!   Anything else: only the status.

use std::time::{Duration, Instant};

use super::client::{send, Gateway, Request, Response};
use crate::echo::tls::certificates;

/// The namespace expected by default: where the upstream suite's backends live.
pub const INFRA_NS: &str = "gateway-conformance-infra";

/// What the backend must have seen (upstream `ExpectedRequest`). When a test gives none, the
/// sent request is the expectation: its host, path, method and every header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendRequest {
    /// Default GET.
    pub method: Option<String>,
    /// Compared only when set.
    pub host: Option<String>,
    /// Compared always; default the sent path.
    pub path: Option<String>,
    pub headers: Vec<(String, String)>,
    pub absent_headers: Vec<String>,
}

impl BackendRequest {
    /// The backend must see `path`; host not compared, method GET.
    pub fn path(path: &str) -> BackendRequest {
        BackendRequest { path: Some(path.into()), ..Default::default() }
    }

    pub fn method(mut self, method: &str) -> BackendRequest {
        self.method = Some(method.into());
        self
    }

    pub fn host(mut self, host: &str) -> BackendRequest {
        self.host = Some(host.into());
        self
    }

    /// The backend must see header `name` with exactly `value` (several values joined by `,`).
    pub fn header(mut self, name: &str, value: &str) -> BackendRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The backend must not see header `name` (any case).
    pub fn absent(mut self, name: &str) -> BackendRequest {
        self.absent_headers.push(name.into());
        self
    }

    fn from_sent(request: &Request) -> BackendRequest {
        BackendRequest {
            method: Some(request.method.clone()),
            host: request.host.clone(),
            path: Some(request.path.clone()),
            headers: request.headers.clone(),
            absent_headers: Vec::new(),
        }
    }
}

/// An expected redirect (upstream `RedirectRequest`): fields left `None` take the upstream
/// defaults — host not compared, scheme the request's, path the request's (without query), and
/// a port that is empty or the scheme's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub path: Option<String>,
}

impl Redirect {
    pub fn to_host(host: &str) -> Redirect {
        Redirect { host: Some(host.into()), ..Default::default() }
    }

    pub fn scheme(mut self, scheme: &str) -> Redirect {
        self.scheme = Some(scheme.into());
        self
    }

    pub fn port(mut self, port: &str) -> Redirect {
        self.port = Some(port.into());
        self
    }

    pub fn path(mut self, path: &str) -> Redirect {
        self.path = Some(path.into());
        self
    }
}

/// A request and what its answer must be (upstream `ExpectedResponse`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub request: Request,
    /// `None`: the sent request.
    pub backend_request: Option<BackendRequest>,
    /// Any of these; default `[200]`.
    pub statuses: Vec<u16>,
    /// Always compared for 200/204; default [`INFRA_NS`].
    pub namespace: String,
    /// Prefix of the answering pod's name; "" = any backend.
    pub backend: String,
    pub response_headers: Vec<(String, String)>,
    pub absent_response_headers: Vec<String>,
    pub redirect: Option<Redirect>,
    /// The SNI the backend must have seen (only TLS backends can satisfy it).
    pub sni: Option<String>,
    /// A PEM certificate that must be among those the backend's client presented.
    pub client_cert_pem: Option<String>,
}

impl Expect {
    /// `GET path` answered 200 by any backend in [`INFRA_NS`].
    pub fn get(path: &str) -> Expect {
        Expect::request(Request::get(path))
    }

    pub fn request(request: Request) -> Expect {
        Expect {
            request,
            backend_request: None,
            statuses: vec![200],
            namespace: INFRA_NS.into(),
            backend: String::new(),
            response_headers: Vec::new(),
            absent_response_headers: Vec::new(),
            redirect: None,
            sni: None,
            client_cert_pem: None,
        }
    }

    /// Sends Host `host` (and, without [`Expect::backend_request`], expects the backend to see it).
    pub fn host(mut self, host: &str) -> Expect {
        self.request.host = Some(host.into());
        self
    }

    pub fn method(mut self, method: &str) -> Expect {
        self.request.method = method.into();
        self
    }

    /// Sends the header (and, without [`Expect::backend_request`], expects the backend to see it).
    pub fn header(mut self, name: &str, value: &str) -> Expect {
        self.request.headers.push((name.into(), value.into()));
        self
    }

    pub fn status(mut self, status: u16) -> Expect {
        self.statuses = vec![status];
        self
    }

    pub fn statuses(mut self, statuses: &[u16]) -> Expect {
        self.statuses = statuses.to_vec();
        self
    }

    /// The answering pod's name must start with `backend` (e.g. `infra-backend-v1`).
    pub fn backend(mut self, backend: &str) -> Expect {
        self.backend = backend.into();
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Expect {
        self.namespace = namespace.into();
        self
    }

    pub fn backend_request(mut self, expected: BackendRequest) -> Expect {
        self.backend_request = Some(expected);
        self
    }

    pub fn response_header(mut self, name: &str, value: &str) -> Expect {
        self.response_headers.push((name.into(), value.into()));
        self
    }

    pub fn absent_response_header(mut self, name: &str) -> Expect {
        self.absent_response_headers.push(name.into());
        self
    }

    pub fn redirect(mut self, redirect: Redirect) -> Expect {
        self.redirect = Some(redirect);
        self
    }

    pub fn sni(mut self, sni: &str) -> Expect {
        self.sni = Some(sni.into());
        self
    }

    pub fn client_cert(mut self, cert_pem: &str) -> Expect {
        self.client_cert_pem = Some(cert_pem.into());
        self
    }

    /// Whether `response` (to this request sent over `scheme`) is what is expected; `Err` says
    /// the first difference.
    pub fn check(&self, response: &Response, scheme: &str) -> Result<(), String> {
        let status = response.status;
        if is_timeout(status) && self.statuses.iter().any(|s| is_timeout(*s)) {
            return Ok(());
        }
        if !self.statuses.contains(&status) {
            return Err(format!(
                "status {status}, expected one of {:?}; body {:?}",
                self.statuses,
                response.body_text()
            ));
        }
        if status == 200 || status == 204 {
            return self.check_backend(response);
        }
        if let (Some(redirect), true) = (&self.redirect, is_redirect(status)) {
            return self.check_redirect(redirect, response, scheme);
        }
        Ok(())
    }

    fn check_backend(&self, response: &Response) -> Result<(), String> {
        let echo = response.echo()?;
        let expected = self
            .backend_request
            .clone()
            .unwrap_or_else(|| BackendRequest::from_sent(&self.request));
        let differ = |what: &str, expected: &str, actual: &str| {
            Err(format!("backend saw {what} {actual:?}, expected {expected:?}; echo {echo:?}"))
        };
        if let Some(host) = expected.host.as_deref().filter(|h| !h.is_empty()) {
            if echo.host != host {
                return differ("Host", host, &echo.host);
            }
        }
        let path = expected.path.as_deref().unwrap_or(&self.request.path);
        if echo.path != path {
            return differ("path", path, &echo.path);
        }
        let method = expected.method.as_deref().unwrap_or("GET");
        if echo.method != method {
            return differ("method", method, &echo.method);
        }
        if echo.namespace != self.namespace {
            return differ("namespace", &self.namespace, &echo.namespace);
        }
        for (name, value) in &expected.headers {
            match echo.header(name) {
                Some(actual) if actual == *value => {}
                Some(actual) => return differ(&format!("header {name}"), value, &actual),
                None => return Err(format!("backend did not see header {name}; echo {echo:?}")),
            }
        }
        for (name, value) in &self.response_headers {
            match response.header(name) {
                Some(actual) if actual == *value => {}
                actual => {
                    return Err(format!(
                        "response header {name} is {actual:?}, expected {value:?}; headers {:?}",
                        response.headers
                    ))
                }
            }
        }
        for name in &self.absent_response_headers {
            if let Some(actual) = response.header(name) {
                return Err(format!("response header {name} should be absent, is {actual:?}"));
            }
        }
        for name in &expected.absent_headers {
            if let Some(actual) = echo.header(name) {
                return Err(format!("backend saw header {name} = {actual:?}, expected it absent"));
            }
        }
        if !echo.pod.starts_with(&self.backend) {
            return differ("pod", &format!("{}*", self.backend), &echo.pod);
        }
        if let Some(sni) = &self.sni {
            let actual = echo.tls.as_ref().map(|tls| tls.server_name.as_str());
            if actual != Some(sni.as_str()) {
                return Err(format!("backend saw SNI {actual:?} (None: no TLS), expected {sni:?}"));
            }
        }
        if let Some(pem) = &self.client_cert_pem {
            let wanted = certificates(pem);
            let presented: Vec<_> = echo
                .tls
                .iter()
                .flat_map(|tls| &tls.peer_certificates)
                .flat_map(|pem| certificates(pem))
                .collect();
            if !wanted.iter().all(|cert| presented.contains(cert)) {
                return Err(format!(
                    "backend's client presented {} certificate(s) ({:?}), not the expected one",
                    presented.len(),
                    echo.tls.as_ref().and_then(|tls| tls.client_certificate.clone())
                ));
            }
        }
        Ok(())
    }

    fn check_redirect(
        &self,
        redirect: &Redirect,
        response: &Response,
        scheme: &str,
    ) -> Result<(), String> {
        let location = response
            .header("location")
            .ok_or_else(|| format!("{} without Location", response.status))?;
        let actual = Location::parse(&location);
        let fail = |what: &str, expected: &str, actual: &str| {
            Err(format!("Location {location:?}: {what} {actual:?}, expected {expected:?}"))
        };
        let expected_scheme = redirect.scheme.as_deref().unwrap_or(scheme);
        if actual.scheme != expected_scheme {
            return fail("scheme", expected_scheme, &actual.scheme);
        }
        if let Some(host) = &redirect.host {
            if actual.host != *host {
                return fail("host", host, &actual.host);
            }
        }
        let expected_path = redirect.path.as_deref().unwrap_or(self.request.path_without_query());
        if actual.path != expected_path {
            return fail("path", expected_path, &actual.path);
        }
        match redirect.port.as_deref() {
            Some(port) if actual.port != port => fail("port", port, &actual.port),
            Some(_) => Ok(()),
            None => {
                let default = if expected_scheme == "https" { "443" } else { "80" };
                if actual.port.is_empty() || actual.port == default {
                    Ok(())
                } else {
                    fail("port", &format!("empty or {default}"), &actual.port)
                }
            }
        }
    }
}

fn is_timeout(status: u16) -> bool {
    status == 408 || status == 504
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 300..=305 | 307 | 308)
}

/// A `Location` value split like Go's `url.Parse` (relative ones have empty scheme and host).
#[derive(Debug, Default, PartialEq, Eq)]
struct Location {
    scheme: String,
    host: String,
    port: String,
    path: String,
}

impl Location {
    fn parse(location: &str) -> Location {
        let (scheme, rest) = match location.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => (String::new(), location),
        };
        let (authority, path) = if scheme.is_empty() {
            ("", rest)
        } else {
            rest.find('/').map_or((rest, ""), |i| rest.split_at(i))
        };
        let path = path.split(['?', '#']).next().unwrap_or("");
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                (host, port)
            }
            _ => (authority, ""),
        };
        Location {
            scheme,
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port: port.to_string(),
            path: path.to_string(),
        }
    }
}

/// The upstream harness's timing, with main's retry pause and v1.6.1's failure streak.
#[derive(Clone, Copy, Debug)]
pub struct Convergence {
    /// Matching answers in a row that make an expectation hold.
    pub consecutive: usize,
    /// Non-200 answers in a row that make a failure expectation hold.
    pub failures: usize,
    pub max_time: Duration,
    pub pause_after_miss: Duration,
}

impl Default for Convergence {
    fn default() -> Convergence {
        Convergence {
            consecutive: 3,
            failures: 5,
            max_time: Duration::from_secs(30),
            pause_after_miss: Duration::from_millis(100),
        }
    }
}

impl Convergence {
    /// Sends `expected.request` until `consecutive` answers in a row match; the last answer, or
    /// the last difference seen when `max_time` runs out.
    pub fn eventually(&self, gateway: &Gateway, expected: &Expect) -> Result<Response, String> {
        let deadline = Instant::now() + self.max_time;
        let mut streak = 0;
        let mut attempts = 0;
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            attempts += 1;
            let outcome = send(gateway, &expected.request)
                .map_err(|e| format!("request failed: {e}"))
                .and_then(|response| {
                    expected.check(&response, gateway.scheme()).map(|()| response)
                });
            match outcome {
                Ok(response) => {
                    streak += 1;
                    if streak >= self.consecutive {
                        return Ok(response);
                    }
                }
                Err(difference) => {
                    last = difference;
                    streak = 0;
                    std::thread::sleep(self.pause_after_miss);
                }
            }
        }
        Err(format!(
            "{} {} (Host {:?}) on {}: no {} matching answers in a row within {:?} \
             ({attempts} attempts); last difference: {last}",
            expected.request.method,
            expected.request.path,
            expected.request.host,
            gateway.address(),
            self.consecutive,
            self.max_time
        ))
    }

    /// Sends `request` until `failures` HTTP answers in a row are not 200; a 200 fails at once,
    /// and 408, 504 and transport errors restart the count.
    pub fn failure(&self, gateway: &Gateway, request: &Request) -> Result<Vec<u16>, String> {
        let deadline = Instant::now() + self.max_time;
        let mut statuses = Vec::new();
        let mut last = String::new();
        while Instant::now() < deadline {
            match send(gateway, request) {
                Ok(response) if response.status == 200 => {
                    return Err(format!(
                        "{} {} (Host {:?}) answered 200 where a failure was expected: {}",
                        request.method,
                        request.path,
                        request.host,
                        response.body_text()
                    ))
                }
                Ok(response) if !is_timeout(response.status) => {
                    statuses.push(response.status);
                    if statuses.len() >= self.failures {
                        return Ok(statuses);
                    }
                    continue;
                }
                Ok(response) => last = format!("status {} (does not count)", response.status),
                Err(e) => last = format!("transport error {e} (does not count)"),
            }
            statuses.clear();
            std::thread::sleep(self.pause_after_miss);
        }
        Err(format!(
            "{} {} (Host {:?}): no {} non-200 answers in a row within {:?}; last: {last}",
            request.method, request.path, request.host, self.failures, self.max_time
        ))
    }
}

/// Panics unless `expected` holds 3 times in a row within 30 s; returns the last answer.
pub fn expect_eventually(gateway: impl Into<Gateway>, expected: &Expect) -> Response {
    Convergence::default().eventually(&gateway.into(), expected).unwrap_or_else(|e| panic!("{e}"))
}

/// Panics unless `request` gets 5 non-200 HTTP answers in a row within 30 s (a 200 panics at
/// once); returns their statuses.
pub fn expect_failure(gateway: impl Into<Gateway>, request: &Request) -> Vec<u16> {
    Convergence::default().failure(&gateway.into(), request).unwrap_or_else(|e| panic!("{e}"))
}

/// The upstream weight tests' backend name: the pod name without its last two `-` parts
/// (`infra-backend-v1-7d9f6c-x2k4` → `infra-backend-v1`).
pub fn backend_of_pod(pod: &str) -> &str {
    let mut end = pod.len();
    for _ in 0..2 {
        match pod[..end].rfind('-') {
            Some(i) => end = i,
            None => return pod,
        }
    }
    &pod[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_parses_like_go() {
        let l = Location::parse("http://example.org/hostname-redirect?x=1");
        assert_eq!(
            l,
            Location {
                scheme: "http".into(),
                host: "example.org".into(),
                port: "".into(),
                path: "/hostname-redirect".into()
            }
        );
        let l = Location::parse("https://example.org:8443/a");
        assert_eq!(
            (l.host.as_str(), l.port.as_str(), l.path.as_str()),
            ("example.org", "8443", "/a")
        );
        let l = Location::parse("http://[::1]:80");
        assert_eq!((l.host.as_str(), l.port.as_str(), l.path.as_str()), ("::1", "80", ""));
        let l = Location::parse("/relative");
        assert_eq!((l.scheme.as_str(), l.host.as_str(), l.path.as_str()), ("", "", "/relative"));
    }

    fn redirect_response(status: u16, location: &str) -> Response {
        Response { status, headers: vec![("Location".into(), location.into())], body: Vec::new() }
    }

    #[test]
    fn redirect_port_defaults_to_empty_or_the_schemes_port() {
        let expect = Expect::get("/hostname-redirect")
            .status(302)
            .redirect(Redirect::to_host("example.org"));
        for location in
            ["http://example.org/hostname-redirect", "http://example.org:80/hostname-redirect"]
        {
            expect.check(&redirect_response(302, location), "http").unwrap();
        }
        for location in [
            "http://example.org:8080/hostname-redirect",
            "https://example.org/hostname-redirect",
            "http://example.com/hostname-redirect",
            "http://example.org/other",
        ] {
            assert!(expect.check(&redirect_response(302, location), "http").is_err(), "{location}");
        }
        assert!(expect
            .check(&redirect_response(301, "http://example.org/hostname-redirect"), "http")
            .is_err());
    }

    #[test]
    fn timeouts_pass_only_when_a_timeout_is_expected() {
        let response = Response { status: 504, headers: vec![], body: vec![] };
        assert!(Expect::get("/").check(&response, "http").is_err());
        Expect::get("/").statuses(&[408]).check(&response, "http").unwrap();
    }

    #[test]
    fn backend_of_pod_drops_two_parts() {
        assert_eq!(backend_of_pod("infra-backend-v1-7d9f6c-x2k4"), "infra-backend-v1");
        assert_eq!(backend_of_pod("a-b"), "a-b");
    }
}
