//! Hand-written bindings to the Envoy 1.40 dynamic-module ABI (`v0.2.0`): the required HTTP
//! filter hooks, the five certificate-validator hooks, and the few callbacks both use. This is
//! the only module with `unsafe`.
//!
//! Rules kept here:
//! - Envoy resolves every declared callback at `dlopen` time (`RTLD_NOW`), so only callbacks the
//!   filter calls are declared; all of them are in 1.40's dynamic symbol table.
//! - Every hook runs its body inside [`guard`]: a panic unwinding across `extern "C"` would abort
//!   Envoy, so it is caught, logged, and turned into the hook's safe default (or a 500).
//! - Buffers Envoy hands out stay valid only during the hook; the safe wrappers tie their
//!   lifetime to the `&FilterHandle` borrow, and nothing keeps them after the hook returns.

// The one module where `unsafe` (and `#[no_mangle]`) is allowed; the crate denies it elsewhere.
#![allow(unsafe_code)]
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{Config, Filter, HeaderStatus};

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
    unsafe fn as_slice<'a>(self) -> &'a [u8] {
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
struct ModuleBuffer {
    ptr: *const c_char,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> ModuleBuffer {
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
const METADATA_SOURCE_CLUSTER: u32 = 2;

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
const METRICS_SUCCESS: u32 = 0;

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

/// Envoy's filter-config object, valid while `on_http_filter_config_new` runs (metrics can be
/// defined only then).
pub struct ConfigHandle(*mut c_void);

impl ConfigHandle {
    /// Defines a counter with the given label names; its id, or None if Envoy refused.
    pub fn define_counter(&self, name: &str, labels: &[&str]) -> Option<usize> {
        let mut labels: Vec<ModuleBuffer> =
            labels.iter().map(|l| ModuleBuffer::of(l.as_bytes())).collect();
        let mut id = 0usize;
        // SAFETY: the config pointer comes from Envoy for this call; the buffers outlive it.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
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
pub struct FilterHandle(*mut c_void);

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

/// Logs a caught panic. Formatting and logging are themselves guarded: nothing may unwind out.
fn report_panic(hook: &str, payload: Box<dyn std::any::Any + Send>) {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic)");
    let _ = catch_unwind(|| log(LogLevel::Error, &format!("backendtls: panic in {hook}: {what}")));
}

/// Runs a hook body, turning a panic into `fallback` (after logging it).
fn guard<T>(hook: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        report_panic(hook, payload);
        fallback
    })
}

/// A headers hook that could not run its body (a panic, or no filter): answer 500 rather than
/// let an unchecked request through. If even that panics, stop the filter chain: a stream
/// neither answered nor continued is reset by Envoy rather than forwarded.
fn fail_closed(filter: *mut c_void, hook: &str) -> u32 {
    let handle = FilterHandle(filter);
    guard(hook, HeaderStatus::StopIteration as u32, || {
        handle.send_response(
            500,
            &[("content-type", "text/plain")],
            "backendtls: internal error\n",
            "backendtls_internal_error",
        );
        HeaderStatus::StopIteration as u32
    })
}

/// The ABI version this module was written against.
static ABI_VERSION: &[u8] = b"v0.2.0\0";

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr().cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard("config_new", std::ptr::null(), || {
        // SAFETY: both buffers come from Envoy for this call.
        let (name, config) = unsafe { (name.as_slice(), config.as_slice()) };
        match Config::new(&ConfigHandle(config_envoy), name, config) {
            Ok(config) => {
                log(
                    LogLevel::Info,
                    &format!("backendtls: filter configured: {:?}", config.settings()),
                );
                Box::into_raw(Box::new(config)).cast_const().cast()
            }
            Err(e) => {
                log(LogLevel::Error, &format!("backendtls: {e}"));
                std::ptr::null()
            }
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guard("config_destroy", (), || {
        if !config.is_null() {
            // SAFETY: created by Box::into_raw in config_new; Envoy destroys it once.
            drop(unsafe { Box::from_raw(config.cast::<Config>().cast_mut()) });
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy: *mut c_void,
) -> *const c_void {
    guard("filter_new", std::ptr::null(), || {
        if config.is_null() {
            return std::ptr::null();
        }
        // SAFETY: Envoy keeps the config alive for as long as filters made from it exist.
        let config: &'static Config = unsafe { &*config.cast::<Config>() };
        Box::into_raw(Box::new(Filter::new(config))).cast_const().cast()
    })
}

/// # Safety
/// `filter` is non-null and the pointer `filter_new` returned, not yet destroyed; Envoy calls a
/// stream's hooks from one thread. Only a shared reference is made: a hook may re-enter another
/// hook of the same stream (`send_response` runs the response path before it returns), and
/// [`Filter`] keeps its state in a `Cell` for that reason.
unsafe fn filter_ref<'a>(filter: *const c_void) -> &'a Filter {
    &*filter.cast::<Filter>()
}

/// A headers hook: the body on the filter, or a 500 when there is no filter (`filter_new` failed,
/// e.g. after a caught panic, and returned null) or the body panicked.
fn headers_hook(
    hook: &str,
    filter_envoy: *mut c_void,
    filter: *const c_void,
    body: impl FnOnce(&Filter, &FilterHandle) -> HeaderStatus,
) -> u32 {
    if filter.is_null() {
        log(LogLevel::Error, &format!("backendtls: {hook} without a filter (filter_new failed)"));
        return fail_closed(filter_envoy, hook);
    }
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: non-null, and see `filter_ref`.
        let filter = unsafe { filter_ref(filter) };
        body(filter, &FilterHandle(filter_envoy)) as u32
    }))
    .unwrap_or_else(|payload| {
        report_panic(hook, payload);
        fail_closed(filter_envoy, hook)
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    headers_hook("request_headers", filter_envoy, filter, Filter::on_request_headers)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    headers_hook("response_headers", filter_envoy, filter, Filter::on_response_headers)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    guard("filter_destroy", (), || {
        if !filter.is_null() {
            // SAFETY: created by Box::into_raw in filter_new; Envoy destroys it once.
            drop(unsafe { Box::from_raw(filter.cast::<Filter>().cast_mut()) });
        }
    })
}

// The remaining required hooks: the filter has nothing to do in them. They touch no pointers
// and cannot panic, so they need no guard.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _: *mut c_void,
    _: *const c_void,
    _: bool,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _: *mut c_void,
    _: *const c_void,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _: *mut c_void,
    _: *const c_void,
    _: bool,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _: *mut c_void,
    _: *const c_void,
) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _: *mut c_void,
    _: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _: *mut c_void,
    _: *const c_void,
    _: u64,
    _: u32,
    _: *mut c_void,
    _: usize,
    _: *mut c_void,
    _: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _: *mut c_void,
    _: *const c_void,
    _: u64,
    _: *mut c_void,
    _: usize,
    _: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _: *mut c_void,
    _: *const c_void,
    _: u64,
    _: *const c_void,
    _: usize,
    _: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _: *mut c_void,
    _: *const c_void,
    _: u64,
    _: *mut c_void,
    _: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _: *mut c_void,
    _: *const c_void,
    _: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _: *mut c_void,
    _: *const c_void,
    _: u64,
    _: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _: *mut c_void,
    _: *const c_void,
    _: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: *mut c_void,
    _: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: *mut c_void,
    _: *const c_void,
) {
}

// ---- Certificate validator (`envoy.tls.cert_validator.dynamic_modules`) --------------------
//
// Envoy resolves all five hooks when a cluster's TLS context names the validator, creates one
// module config per TLS context, and calls `do_verify_cert_chain` synchronously on the worker
// thread doing the handshake, possibly on several workers at once for the same config (hence
// `CertValidator: Sync`).

#[cfg(feature = "validator")]
pub use validator_abi::{CounterSink, ValidationCall};

/// Everything the certificate validator needs from the ABI; compiled only with the `validator`
/// feature (so a build without it declares no validator symbol).
#[cfg(feature = "validator")]
mod validator_abi {
    use super::*;
    use crate::dynmod::cert_validator::{CertValidator, Verdict};

    extern "C" {
        fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
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
    }

    /// Envoy's certificate-validator config object as passed to one `do_verify_cert_chain` call.
    pub struct ValidationCall(*mut c_void);

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
        const VERIFIED: ValidationResult =
            ValidationResult { status: 0, detailed_status: 2, tls_alert: 0, has_tls_alert: false };

        fn failed(alert: u8) -> ValidationResult {
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
    const SSL_VERIFY_PEER: i32 = 0x01;
    /// TLS `internal_error`, for a validator that could not decide.
    const ALERT_INTERNAL_ERROR: u8 = 80;

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_cert_validator_config_new(
        _config_envoy: *mut c_void,
        name: EnvoyBuffer,
        config: EnvoyBuffer,
    ) -> *const c_void {
        guard("cert_validator_config_new", std::ptr::null(), || {
            // SAFETY: both buffers come from Envoy for this call.
            let (name, config) = unsafe { (name.as_slice(), config.as_slice()) };
            match CertValidator::new(name, config) {
                Ok(validator) => Box::into_raw(Box::new(validator)).cast_const().cast(),
                Err(e) => {
                    log(LogLevel::Error, &format!("backendtls: {e}"));
                    std::ptr::null()
                }
            }
        })
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_cert_validator_config_destroy(
        validator: *const c_void,
    ) {
        guard("cert_validator_config_destroy", (), || {
            if !validator.is_null() {
                // SAFETY: created by Box::into_raw in cert_validator_config_new; destroyed once.
                drop(unsafe { Box::from_raw(validator.cast::<CertValidator>().cast_mut()) });
            }
        })
    }

    /// # Safety
    /// `validator` is the pointer `cert_validator_config_new` returned, not yet destroyed. Envoy
    /// may call the validator from several workers at once, so only a shared reference is made.
    unsafe fn validator_ref<'a>(validator: *const c_void) -> &'a CertValidator {
        &*validator.cast::<CertValidator>()
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_cert_validator_do_verify_cert_chain(
        config_envoy: *mut c_void,
        validator: *const c_void,
        certs: *const EnvoyBuffer,
        certs_count: usize,
        host_name: EnvoyBuffer,
        is_server: bool,
    ) -> ValidationResult {
        let call = ValidationCall(config_envoy);
        catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: Envoy passes `certs_count` DER buffers that live for this call (null when
            // empty); see `validator_ref` for the validator.
            let (validator, buffers, host_name) = unsafe {
                let buffers = if certs.is_null() || certs_count == 0 {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(certs, certs_count)
                };
                (validator_ref(validator), buffers, host_name.as_slice())
            };
            // SAFETY: each buffer is one certificate Envoy encoded for this call.
            let chain: Vec<&[u8]> = buffers.iter().map(|b| unsafe { b.as_slice() }).collect();
            match validator.verify(&call, &chain, host_name, is_server) {
                Verdict::Verified => ValidationResult::VERIFIED,
                Verdict::Failed { alert } => ValidationResult::failed(alert),
            }
        }))
        .unwrap_or_else(|payload| {
            report_panic("cert_validator_do_verify_cert_chain", payload);
            // Fail closed: a validator that could not decide must not let the handshake through.
            guard("cert_validator_do_verify_cert_chain (after panic)", (), || {
                call.set_error_details("backendtls: internal: the certificate validator panicked")
            });
            ValidationResult::failed(ALERT_INTERNAL_ERROR)
        })
    }

    /// Touches no pointer and cannot panic: no guard needed.
    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_cert_validator_get_ssl_verify_mode(
        _validator: *const c_void,
        _handshaker_provides_certificates: bool,
    ) -> i32 {
        SSL_VERIFY_PEER
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_cert_validator_update_digest(
        validator: *const c_void,
        out: *mut ModuleBuffer,
    ) {
        guard("cert_validator_update_digest", (), || {
            if validator.is_null() || out.is_null() {
                return;
            }
            // SAFETY: see `validator_ref`; `out` is Envoy's buffer to fill. The digest lives as
            // long as the validator config, which outlives Envoy's use of it (Envoy hashes it at
            // once).
            unsafe {
                let digest = validator_ref(validator).digest();
                *out = ModuleBuffer::of(digest);
            }
        })
    }
}
