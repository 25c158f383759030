//! `-o json`: the API's messages as `stratum-api` serialises them (its
//! `serde` feature, the protobuf JSON mapping): keys are the fields'
//! lowerCamelCase JSON names (`memoryBytes`), enums their full proto names
//! (`VM_STATE_RUNNING`), a oneof's set member a field of its message
//! (`vmState`), timestamps RFC 3339 strings, 64-bit integers JSON numbers
//! (so `jq` arithmetic works), and every field is written, unset message
//! fields as `null`.
//!
//! One thing nodectl adds: bytes that are a command's or a container's
//! output (log messages, exec output) are written as text, not base64: a
//! string with invalid UTF-8 replaced by U+FFFD, and then the exact bytes
//! in base64 beside it under `<field>Base64`.

use serde::Serialize;
use serde_json::{Map, Value};

use stratum_api::proto::{ExecSyncResponse, LogRecord};

/// Any message of the API as JSON.
pub fn to_value<T: Serialize>(message: &T) -> serde_json::Result<Value> {
    serde_json::to_value(message)
}

/// Replaces the base64 of `bytes` under `key` with its text, and, when it
/// is not UTF-8, puts its exact bytes under `<key>Base64` too.
fn bytes_as_text(map: &mut Map<String, Value>, key: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            map.insert(key.into(), Value::from(text));
        }
        Err(_) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            map.insert(format!("{key}Base64"), Value::from(base64(bytes)));
            map.insert(key.into(), Value::from(text));
        }
    }
}

/// A message with some of its bytes fields written as text.
fn with_text(message: &impl Serialize, fields: &[(&str, &[u8])]) -> serde_json::Result<Value> {
    let mut value = to_value(message)?;
    if let Some(map) = value.as_object_mut() {
        for (key, bytes) in fields {
            bytes_as_text(map, key, bytes);
        }
    }
    Ok(value)
}

/// Standard base64 with padding (RFC 4648 section 4), as proto3 JSON
/// writes bytes.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One `LogRecord` (a line of `pod logs -o json`): its message as text.
pub fn log_record(r: &LogRecord) -> serde_json::Result<Value> {
    with_text(r, &[("message", &r.message)])
}

/// `PodService.ExecSync`'s answer: its output as text.
pub fn exec_result(r: &ExecSyncResponse) -> serde_json::Result<Value> {
    with_text(r, &[("stdout", &r.stdout), ("stderr", &r.stderr)])
}
