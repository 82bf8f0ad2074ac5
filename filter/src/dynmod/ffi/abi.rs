//! The Envoy 1.40 dynamic-module ABI (`v0.2.0`) as this module uses it: the C types, the enum
//! values, the callbacks Envoy exports (declared `extern "C"`), and safe wrappers around them
//! ("host calls", as the proxy-wasm SDK calls its counterpart). The exported event hooks are in
//! [`super::hooks`].
//!
//! Envoy resolves every declared callback at `dlopen` time (`RTLD_NOW`), so only callbacks the
//! module calls are declared; all of them are in 1.40's dynamic symbol table. Buffers Envoy hands
//! out stay valid only during the hook; the wrappers tie their lifetime to the `&FilterHandle`
//! borrow, and nothing keeps them after the hook returns. The values are checked against the
//! project's 1.40 ABI notes by the test below (`abi-1.40.txt`).

use std::ffi::{c_char, c_void};

/// `envoy_dynamic_module_type_envoy_buffer`: memory owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const c_char,
    length: usize,
}

const NULL_BUFFER: EnvoyBuffer = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };

impl EnvoyBuffer {
    /// # Safety
    /// `self` must come from Envoy in the current hook (valid for `'a`), or be null.
    pub(in crate::dynmod::ffi) unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.length)
        }
    }
}

/// `envoy_dynamic_module_type_module_buffer`: memory owned by the module, read by Envoy during
/// the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const c_char,
    length: usize,
}

impl ModuleBuffer {
    pub(in crate::dynmod::ffi) fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer { ptr: bytes.as_ptr().cast(), length: bytes.len() }
    }
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
struct ModuleHttpHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

/// One entry of `http_set_dynamic_metadata_string_batch`: a key and a value buffer (32 bytes,
/// as the 1.40 binary reads them).
#[repr(C)]
#[derive(Clone, Copy)]
struct KeyValue {
    key: ModuleBuffer,
    value: ModuleBuffer,
}

/// The most entries one [`FilterHandle::set_dynamic_metadata`] call takes.
pub const METADATA_BATCH: usize = 4;

/// `envoy_dynamic_module_type_http_header_type`.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum HeaderKind {
    Request = 0,
}

/// `envoy_dynamic_module_type_metadata_source_Cluster`.
pub const METADATA_SOURCE_CLUSTER: u32 = 2;

/// `envoy_dynamic_module_type_attribute_id` values (frozen enum order of abi.h).
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum Attribute {
    ResponseCodeDetails = 16,
    UpstreamTlsVersion = 43,
    UpstreamDnsSanPeerCertificate = 47,
    UpstreamUriSanPeerCertificate = 49,
    UpstreamSha256PeerCertificateDigest = 50,
    UpstreamLocalAddress = 51,
    UpstreamTransportFailureReason = 52,
}

/// `envoy_dynamic_module_type_log_level`.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// `envoy_dynamic_module_type_metrics_result_Success`.
pub const METRICS_SUCCESS: u32 = 0;

/// The ABI version this module was written against (`envoy_dynamic_module_on_program_init`).
pub const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";

/// `envoy_dynamic_module_type_on_http_filter_{request,response}_headers_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HeaderStatus {
    Continue = 0,
    StopIteration = 1,
}

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
    // Only the debug-build test hook reads request headers.
    #[cfg(debug_assertions)]
    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        kind: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        total: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        kind: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut ModuleHttpHeader,
        headers_count: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
        filter: *mut c_void,
        namespace: ModuleBuffer,
        entries: *const KeyValue,
        entries_count: usize,
    );
    fn envoy_dynamic_module_callback_http_get_metadata_string(
        filter: *mut c_void,
        source: u32,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_metadata_keys_count(
        filter: *mut c_void,
        source: u32,
        namespace: ModuleBuffer,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_metadata_list_size(
        filter: *mut c_void,
        source: u32,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        result: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_metadata_list_string(
        filter: *mut c_void,
        source: u32,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        index: usize,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        attribute: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_count: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_count: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_count: usize,
        value: u64,
    ) -> u32;
}

/// Logs under Envoy's `dynamic_modules` logger.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer points at `message`, alive for the call.
    unsafe { envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(message.as_bytes())) }
}

/// Whether `level` is enabled, to skip formatting otherwise.
pub fn log_enabled(level: LogLevel) -> bool {
    // SAFETY: no pointers.
    unsafe { envoy_dynamic_module_callback_log_enabled(level as u32) }
}

/// The shape of Envoy's `http_filter_config_define_counter`/`_gauge` callbacks.
type DefineMetric = unsafe extern "C" fn(
    config: *mut c_void,
    name: ModuleBuffer,
    label_names: *mut ModuleBuffer,
    label_names_count: usize,
    id: *mut usize,
) -> u32;

/// Envoy's filter-config object, valid while `on_http_filter_config_new` runs (metrics can be
/// defined only then).
pub struct ConfigHandle(pub(in crate::dynmod::ffi) *mut c_void);

impl ConfigHandle {
    /// Defines a counter with the given label names; its id, or None if Envoy refused.
    pub fn define_counter(&self, name: &str, labels: &[&str]) -> Option<usize> {
        self.define(envoy_dynamic_module_callback_http_filter_config_define_counter, name, labels)
    }

    /// Defines a gauge with the given label names; its id, or None if Envoy refused.
    pub fn define_gauge(&self, name: &str, labels: &[&str]) -> Option<usize> {
        self.define(envoy_dynamic_module_callback_http_filter_config_define_gauge, name, labels)
    }

    /// Calls one of Envoy's `http_filter_config_define_*` callbacks (they share one signature).
    fn define(&self, callback: DefineMetric, name: &str, labels: &[&str]) -> Option<usize> {
        let mut labels: Vec<ModuleBuffer> =
            labels.iter().map(|l| ModuleBuffer::of(l.as_bytes())).collect();
        let mut id = 0usize;
        // SAFETY: `callback` is one of Envoy's define callbacks; the config pointer comes from
        // Envoy for this call; the buffers outlive it.
        let result = unsafe {
            callback(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                labels.as_mut_ptr(),
                labels.len(),
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }
}

/// Envoy's per-stream filter object, valid for the duration of one hook call.
pub struct FilterHandle(pub(in crate::dynmod::ffi) *mut c_void);

impl FilterHandle {
    #[cfg(debug_assertions)]
    pub fn request_header(&self, name: &str) -> Option<&[u8]> {
        let mut out = NULL_BUFFER;
        let mut total = 0usize;
        // SAFETY: valid filter pointer during the hook; `out` is written by Envoy.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                HeaderKind::Request as u32,
                ModuleBuffer::of(name.as_bytes()),
                &mut out,
                0,
                &mut total,
            )
        };
        // SAFETY: Envoy's buffer lives for the hook, which `&self` spans.
        found.then(|| unsafe { out.as_slice() })
    }

    pub fn set_request_header(&self, name: &str, value: &str) {
        // SAFETY: buffers alive for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                HeaderKind::Request as u32,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }

    /// Answers the request locally (the caller then returns `StopIteration`).
    pub fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &str, details: &str) {
        let mut headers: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHttpHeader {
                key_ptr: k.as_ptr().cast(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: every buffer outlives the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(details.as_bytes()),
            )
        }
    }

    /// Sets string entries of the stream's dynamic metadata under `namespace` in one call (Envoy
    /// merges them into the namespace's struct once). At most [`METADATA_BATCH`] entries.
    pub fn set_dynamic_metadata(&self, namespace: &str, entries: &[(&str, &str)]) {
        let empty = ModuleBuffer::of(b"");
        let mut batch = [KeyValue { key: empty, value: empty }; METADATA_BATCH];
        for (slot, (key, value)) in batch.iter_mut().zip(entries) {
            *slot = KeyValue {
                key: ModuleBuffer::of(key.as_bytes()),
                value: ModuleBuffer::of(value.as_bytes()),
            };
        }
        // SAFETY: the buffers outlive the call; the count never exceeds the array.
        unsafe {
            envoy_dynamic_module_callback_http_set_dynamic_metadata_string_batch(
                self.0,
                ModuleBuffer::of(namespace.as_bytes()),
                batch.as_ptr(),
                entries.len().min(METADATA_BATCH),
            )
        }
    }

    /// A string value of the route's cluster's `filter_metadata[namespace]`.
    pub fn cluster_metadata_string(&self, namespace: &str, key: &str) -> Option<&[u8]> {
        let mut out = NULL_BUFFER;
        // SAFETY: valid pointers for the call; the result lives for the hook.
        unsafe {
            envoy_dynamic_module_callback_http_get_metadata_string(
                self.0,
                METADATA_SOURCE_CLUSTER,
                ModuleBuffer::of(namespace.as_bytes()),
                ModuleBuffer::of(key.as_bytes()),
                &mut out,
            )
            .then(|| out.as_slice())
        }
    }

    /// How many keys the cluster's `filter_metadata[namespace]` has (0 when absent).
    pub fn cluster_metadata_key_count(&self, namespace: &str) -> usize {
        // SAFETY: valid pointers for the call.
        unsafe {
            envoy_dynamic_module_callback_http_get_metadata_keys_count(
                self.0,
                METADATA_SOURCE_CLUSTER,
                ModuleBuffer::of(namespace.as_bytes()),
            )
        }
    }

    /// The length of a list value of the cluster's metadata, if the key holds a list.
    pub fn cluster_metadata_list_len(&self, namespace: &str, key: &str) -> Option<usize> {
        let mut len = 0usize;
        // SAFETY: valid pointers for the call.
        unsafe {
            envoy_dynamic_module_callback_http_get_metadata_list_size(
                self.0,
                METADATA_SOURCE_CLUSTER,
                ModuleBuffer::of(namespace.as_bytes()),
                ModuleBuffer::of(key.as_bytes()),
                &mut len,
            )
        }
        .then_some(len)
    }

    /// A string element of a list value of the cluster's metadata.
    pub fn cluster_metadata_list_string(
        &self,
        namespace: &str,
        key: &str,
        index: usize,
    ) -> Option<&[u8]> {
        let mut out = NULL_BUFFER;
        // SAFETY: valid pointers for the call; the result lives for the hook.
        unsafe {
            envoy_dynamic_module_callback_http_get_metadata_list_string(
                self.0,
                METADATA_SOURCE_CLUSTER,
                ModuleBuffer::of(namespace.as_bytes()),
                ModuleBuffer::of(key.as_bytes()),
                index,
                &mut out,
            )
            .then(|| out.as_slice())
        }
    }

    pub fn attribute(&self, attribute: Attribute) -> Option<&[u8]> {
        let mut out = NULL_BUFFER;
        // SAFETY: valid pointers for the call; the result lives for the hook.
        unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0,
                attribute as u32,
                &mut out,
            )
            .then(|| out.as_slice())
        }
    }

    /// Adds 1 to a labelled counter; `labels` are the values, in definition order (at most 2).
    pub fn increment_counter(&self, id: usize, labels: &[&[u8]]) {
        let mut buffers = [ModuleBuffer::of(b""); 2];
        for (buffer, label) in buffers.iter_mut().zip(labels) {
            *buffer = ModuleBuffer::of(label);
        }
        // SAFETY: valid pointers for the call.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.0,
                id,
                buffers.as_mut_ptr(),
                labels.len().min(buffers.len()),
                1,
            );
        }
    }
}

// ---- Certificate validator (`envoy.tls.cert_validator.dynamic_modules`) --------------------

#[cfg(feature = "validator")]
pub use validator::{
    CounterSink, ValidationCall, ValidationResult, ALERT_INTERNAL_ERROR, SSL_VERIFY_PEER,
};

/// What the certificate validator needs from the ABI; compiled only with the `validator`
/// feature (so a build without it declares no validator symbol).
#[cfg(feature = "validator")]
mod validator {
    use super::*;

    extern "C" {
        fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
            config: *mut c_void,
            id: usize,
            label_values: *mut ModuleBuffer,
            label_values_count: usize,
            value: u64,
        ) -> u32;
        fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
            config: *mut c_void,
            id: usize,
            label_values: *mut ModuleBuffer,
            label_values_count: usize,
            value: u64,
        ) -> u32;
        fn envoy_dynamic_module_callback_cert_validator_set_error_details(
            config: *mut c_void,
            details: ModuleBuffer,
        );
    }

    impl ConfigHandle {
        /// A handle on this filter config that may update its counters later, from any thread
        /// (the certificate validator's; see [`CounterSink`]).
        pub fn counter_sink(&self) -> CounterSink {
            CounterSink(self.0)
        }
    }

    /// An HTTP filter config's counters, kept beyond `config_new` so that the certificate
    /// validator, which has no metrics callback of its own in 1.40, can count through them.
    ///
    /// Envoy's `http_filter_config_increment_counter` takes the config object and updates the
    /// (thread-safe) counter from any thread. The pointer is valid until Envoy has called
    /// `on_http_filter_config_destroy` for it; the owner ([`crate::dynmod::handshake_counters`])
    /// drops the sink in that hook, under the lock that every increment holds.
    pub struct CounterSink(*mut c_void);

    // SAFETY: the pointer is only passed to Envoy's config-level counter callback, which Envoy
    // allows from any thread; the sink's owner guarantees it is not used after config_destroy.
    unsafe impl Send for CounterSink {}
    // SAFETY: as above; the callback takes no lock of ours and only adds to Envoy's atomic
    // counters.
    unsafe impl Sync for CounterSink {}

    impl CounterSink {
        /// Adds 1 to a labelled counter; `labels` are the values, in definition order (at most 2).
        /// Whether Envoy accepted it.
        pub fn increment(&self, id: usize, labels: &[&[u8]]) -> bool {
            let mut buffers = [ModuleBuffer::of(b""); 2];
            for (buffer, label) in buffers.iter_mut().zip(labels) {
                *buffer = ModuleBuffer::of(label);
            }
            // SAFETY: the config pointer is alive (see the type's invariant); the buffers outlive
            // the call.
            let result = unsafe {
                envoy_dynamic_module_callback_http_filter_config_increment_counter(
                    self.0,
                    id,
                    buffers.as_mut_ptr(),
                    labels.len().min(buffers.len()),
                    1,
                )
            };
            result == METRICS_SUCCESS
        }

        /// Sets a gauge labelled by one value. Whether Envoy accepted it.
        pub fn set_gauge(&self, id: usize, label: &[u8], value: u64) -> bool {
            let mut buffers = [ModuleBuffer::of(label)];
            // SAFETY: as for `increment`.
            let result = unsafe {
                envoy_dynamic_module_callback_http_filter_config_set_gauge(
                    self.0,
                    id,
                    buffers.as_mut_ptr(),
                    buffers.len(),
                    value,
                )
            };
            result == METRICS_SUCCESS
        }
    }

    /// Envoy's certificate-validator config object as passed to one `do_verify_cert_chain` call.
    pub struct ValidationCall(pub(in crate::dynmod::ffi) *mut c_void);

    impl ValidationCall {
        /// The detail Envoy appends to the handshake's failure reason (`CERTIFICATE_VERIFY_FAILED:
        /// <details>`), visible as `%UPSTREAM_TRANSPORT_FAILURE_REASON%` and in 503 details.
        pub fn set_error_details(&self, details: &str) {
            // SAFETY: the pointer comes from Envoy for this call; Envoy copies the bytes.
            unsafe {
                envoy_dynamic_module_callback_cert_validator_set_error_details(
                    self.0,
                    ModuleBuffer::of(details.as_bytes()),
                )
            }
        }
    }

    /// `envoy_dynamic_module_type_cert_validator_validation_result`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ValidationResult {
        /// `..._validation_status`: 0 Successful, 1 Failed.
        status: u32,
        /// `..._client_validation_status`: 0 NotValidated, 1 NoClientCertificate, 2 Validated,
        /// 3 Failed.
        detailed_status: u32,
        tls_alert: u8,
        has_tls_alert: bool,
    }

    impl ValidationResult {
        pub(in crate::dynmod::ffi) const VERIFIED: ValidationResult =
            ValidationResult { status: 0, detailed_status: 2, tls_alert: 0, has_tls_alert: false };

        /// (status, detailed status, alert, has alert), for the ABI test.
        #[cfg(test)]
        pub(in crate::dynmod::ffi) fn fields(self) -> (u32, u32, u8, bool) {
            (self.status, self.detailed_status, self.tls_alert, self.has_tls_alert)
        }

        pub(in crate::dynmod::ffi) fn failed(alert: u8) -> ValidationResult {
            ValidationResult {
                status: 1,
                detailed_status: 3,
                tls_alert: alert,
                has_tls_alert: true,
            }
        }
    }

    /// BoringSSL's `SSL_VERIFY_PEER`: Envoy then installs its verify callback, which calls the
    /// module (`SSL_VERIFY_NONE` would skip verification altogether).
    pub const SSL_VERIFY_PEER: i32 = 0x01;
    /// TLS `internal_error`, for a validator that could not decide.
    pub const ALERT_INTERNAL_ERROR: u8 = 80;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// `abi-1.40.txt`: (group, name) -> value.
    fn recorded() -> BTreeMap<(String, String), String> {
        let mut values = BTreeMap::new();
        for line in include_str!("abi-1.40.txt").lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [group, name, value] = parts[..] else { panic!("malformed line {line:?}") };
            let previous = values.insert((group.to_owned(), name.to_owned()), value.to_owned());
            assert!(previous.is_none(), "{group} {name} recorded twice");
        }
        values
    }

    /// Every value this module declares, as (group, name, value).
    fn declared() -> Vec<(&'static str, &'static str, String)> {
        let mut declared = vec![
            ("abi_version", "version", ABI_VERSION.to_str().unwrap().to_owned()),
            ("http_header_type", "Request", (HeaderKind::Request as u32).to_string()),
            ("metadata_source", "Cluster", METADATA_SOURCE_CLUSTER.to_string()),
            ("metrics_result", "Success", METRICS_SUCCESS.to_string()),
            ("headers_status", "Continue", (HeaderStatus::Continue as u32).to_string()),
            ("headers_status", "StopIteration", (HeaderStatus::StopIteration as u32).to_string()),
            ("struct_size", "envoy_buffer", size_of::<EnvoyBuffer>().to_string()),
            ("struct_size", "module_buffer", size_of::<ModuleBuffer>().to_string()),
            ("struct_size", "module_http_header", size_of::<ModuleHttpHeader>().to_string()),
            ("struct_size", "key_value_pair", size_of::<KeyValue>().to_string()),
        ];
        for (name, attribute) in [
            ("ResponseCodeDetails", Attribute::ResponseCodeDetails),
            ("UpstreamTlsVersion", Attribute::UpstreamTlsVersion),
            ("UpstreamDnsSanPeerCertificate", Attribute::UpstreamDnsSanPeerCertificate),
            ("UpstreamUriSanPeerCertificate", Attribute::UpstreamUriSanPeerCertificate),
            ("UpstreamSha256PeerCertificateDigest", Attribute::UpstreamSha256PeerCertificateDigest),
            ("UpstreamLocalAddress", Attribute::UpstreamLocalAddress),
            ("UpstreamTransportFailureReason", Attribute::UpstreamTransportFailureReason),
        ] {
            declared.push(("attribute_id", name, (attribute as u32).to_string()));
        }
        for (name, level) in [
            ("Debug", LogLevel::Debug),
            ("Info", LogLevel::Info),
            ("Warn", LogLevel::Warn),
            ("Error", LogLevel::Error),
        ] {
            declared.push(("log_level", name, (level as u32).to_string()));
        }
        #[cfg(feature = "validator")]
        {
            let (status, detailed, _, has_alert) = ValidationResult::VERIFIED.fields();
            assert!(!has_alert);
            declared.push(("validation_status", "Successful", status.to_string()));
            declared.push(("client_validation_status", "Validated", detailed.to_string()));
            let (status, detailed, alert, has_alert) = ValidationResult::failed(42).fields();
            assert_eq!((alert, has_alert), (42, true));
            declared.push(("validation_status", "Failed", status.to_string()));
            declared.push(("client_validation_status", "Failed", detailed.to_string()));
            declared.push((
                "struct_size",
                "cert_validator_validation_result",
                size_of::<ValidationResult>().to_string(),
            ));
        }
        declared
    }

    #[test]
    fn declared_values_are_the_recorded_1_40_abi() {
        let recorded = recorded();
        let mut wrong = Vec::new();
        for (group, name, value) in declared() {
            match recorded.get(&(group.to_owned(), name.to_owned())) {
                Some(expected) if *expected == value => {}
                Some(expected) => wrong.push(format!("{group} {name}: {value}, ABI {expected}")),
                None => wrong.push(format!("{group} {name}: not in abi-1.40.txt")),
            }
        }
        assert!(
            wrong.is_empty(),
            "declarations that differ from the 1.40 ABI:\n{}",
            wrong.join("\n")
        );
    }
}
