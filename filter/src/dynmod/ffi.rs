//! Hand-written bindings to the Envoy 1.40 dynamic-module ABI (`v0.2.0`): the required HTTP
//! filter hooks and the few callbacks the filter uses. This is the only module with `unsafe`.
//!
//! Rules kept here:
//! - Envoy resolves every declared callback at `dlopen` time (`RTLD_NOW`), so only callbacks the
//!   filter calls are declared; all of them are in 1.40's dynamic symbol table.
//! - Every hook runs its body inside [`guard`]: a panic unwinding across `extern "C"` would abort
//!   Envoy, so it is caught, logged, and turned into the hook's safe default (or a 500).
//! - Buffers Envoy hands out stay valid only during the hook; the safe wrappers tie their
//!   lifetime to the `&FilterHandle` borrow, and nothing keeps them after the hook returns.

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
    UpstreamAddress = 41,
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
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
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

/// The hook bodies after a panic in the request or response path: answer 500 rather than let
/// an unchecked request through.
fn fail_closed(filter: *mut c_void, hook: &str) -> u32 {
    let handle = FilterHandle(filter);
    guard(hook, HeaderStatus::Continue as u32, || {
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
        // SAFETY: Envoy keeps the config alive for as long as filters made from it exist.
        let config: &'static Config = unsafe { &*config.cast::<Config>() };
        Box::into_raw(Box::new(Filter::new(config))).cast_const().cast()
    })
}

/// # Safety
/// `filter` is the pointer `filter_new` returned, not yet destroyed; Envoy calls a stream's hooks
/// from one thread, one at a time.
unsafe fn filter_mut<'a>(filter: *const c_void) -> &'a mut Filter {
    &mut *filter.cast::<Filter>().cast_mut()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: see `filter_mut`.
        let filter = unsafe { filter_mut(filter) };
        filter.on_request_headers(&FilterHandle(filter_envoy)) as u32
    }))
    .unwrap_or_else(|payload| {
        report_panic("request_headers", payload);
        fail_closed(filter_envoy, "request_headers (after panic)")
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: see `filter_mut`.
        let filter = unsafe { filter_mut(filter) };
        filter.on_response_headers(&FilterHandle(filter_envoy)) as u32
    }))
    .unwrap_or_else(|payload| {
        report_panic("response_headers", payload);
        fail_closed(filter_envoy, "response_headers (after panic)")
    })
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
