//! The filter's own configuration: a JSON object, passed by both builds as a string
//! (`google.protobuf.StringValue`), e.g. `{"request_header": "x-backendtls-policy"}`.
#![forbid(unsafe_code)]

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// When set, requests to a governed backend carry this header with the policy's name
    /// (`<namespace>/<name>`). Off by default.
    #[serde(default)]
    pub request_header: Option<String>,
    /// Test hook of **debug builds only** (release builds refuse the key as unknown): in the
    /// dynamic-module build a request carrying this header panics deliberately inside the filter
    /// logic, to show that a panic is caught at the FFI boundary (the request gets a 500, Envoy
    /// keeps running).
    #[cfg(debug_assertions)]
    #[serde(default)]
    pub debug_panic_header: Option<String>,
}

/// Why the filter's configuration was refused (Envoy then refuses the filter).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not the JSON object above (syntax, an unknown key, a wrong type).
    #[error("invalid backendtls filter configuration: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "invalid backendtls filter configuration: header name {0:?} must be a non-empty \
         lower-case HTTP token"
    )]
    BadHeaderName(String),
    /// The dynamic module could not define its counters.
    #[error("invalid backendtls filter configuration: Envoy refused to define counter {0}")]
    Counter(String),
}

impl FilterConfig {
    /// Parses the configuration bytes; empty (or whitespace) means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(FilterConfig::default());
        }
        let config: FilterConfig = serde_json::from_slice(bytes)?;
        #[cfg(debug_assertions)]
        let names = [&config.request_header, &config.debug_panic_header];
        #[cfg(not(debug_assertions))]
        let names = [&config.request_header];
        for name in names.into_iter().flatten() {
            let token = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
            if name.is_empty() || !name.chars().all(token) {
                return Err(ConfigError::BadHeaderName(name.clone()));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_null_mean_defaults() {
        assert_eq!(FilterConfig::parse(b"").unwrap(), FilterConfig::default());
        assert_eq!(
            FilterConfig::parse(br#"{"request_header": null}"#).unwrap(),
            FilterConfig::default()
        );
    }

    #[test]
    fn header_names_are_checked() {
        let c = FilterConfig::parse(br#"{"request_header":"x-backendtls-policy"}"#).unwrap();
        assert_eq!(c.request_header.as_deref(), Some("x-backendtls-policy"));
        assert!(FilterConfig::parse(br#"{"request_header":"X-Upper"}"#).is_err());
        assert!(FilterConfig::parse(br#"{"request_header":"a b"}"#).is_err());
        assert!(FilterConfig::parse(br#"{"request_headr":"x"}"#).is_err());
        assert!(FilterConfig::parse(b"not json").is_err());
    }

    #[test]
    fn the_panic_hook_exists_in_debug_builds_only() {
        let parsed = FilterConfig::parse(br#"{"debug_panic_header":"x-panic"}"#);
        assert_eq!(parsed.is_ok(), cfg!(debug_assertions), "{parsed:?}");
    }
}
