//! The event hooks Envoy calls (`envoy_dynamic_module_on_*`, "the dispatcher" in the proxy-wasm
//! SDK's terms): each turns Envoy's pointers into the safe handles of [`super::abi`] and calls the
//! module's logic in [`crate::dynmod`].
//!
//! Every hook runs its body inside [`guard`]: a panic unwinding across `extern "C"` would abort
//! Envoy (the crate refuses to build with `panic = "abort"`), so it is caught, logged, and turned
//! into the hook's safe default: a 500 for a request, a refused handshake for the validator.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::abi::{
    log, ConfigHandle, EnvoyBuffer, FilterHandle, HeaderStatus, LogLevel, ABI_VERSION,
};
use crate::dynmod::{Config, Filter};

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

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr()
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
mod validator {
    use super::*;
    use crate::dynmod::cert_validator::{CertValidator, Verdict};
    use crate::dynmod::ffi::abi::{
        ModuleBuffer, ValidationCall, ValidationResult, ALERT_INTERNAL_ERROR, SSL_VERIFY_PEER,
    };

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
