//! The MMDS document: what `PUT /mmds` sets, `PATCH /mmds` merges into
//! (RFC 7396) and the guest reads by path (a JSON pointer, RFC 6901), with
//! the version and format options `PUT /mmds/config` sets and the session
//! tokens the guest asks for.
//!
//! The serialised document never grows past the limit (`--mmds-size-limit`):
//! a PUT or PATCH that would make it larger is refused and changes nothing.
//! Error texts are Firecracker's, which its clients may match.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::token::{self, TokenAuthority};

/// How the guest must ask: V1 answers any GET, V2 only one carrying a
/// session token (Firecracker's default is V1, which it deprecates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    #[default]
    V1,
    V2,
}

/// The format of a guest's answer: IMDS plain text (EC2's) unless it asks
/// for `application/json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Imds,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("The MMDS patch request doesn't fit.")]
    LimitExceeded,
    #[error("The MMDS resource does not exist.")]
    NotFound,
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    #[error("Cannot retrieve value. The value has an unsupported type.")]
    UnsupportedValueType,
}

#[derive(Debug)]
pub struct DataStore {
    version: MmdsVersion,
    imds_compat: bool,
    data: Value,
    /// A PUT happened: before it a PATCH has nothing to merge into.
    initialized: bool,
    /// The largest serialised document, in bytes.
    limit: usize,
    tokens: TokenAuthority,
}

impl DataStore {
    pub fn new(limit: usize) -> Self {
        Self {
            version: MmdsVersion::default(),
            imds_compat: false,
            data: Value::Null,
            initialized: false,
            limit,
            tokens: TokenAuthority::default(),
        }
    }

    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    pub fn imds_compat(&self) -> bool {
        self.imds_compat
    }

    /// `PUT /mmds/config`'s version and `imds_compat` (EC2's behaviour:
    /// IMDS text whatever the guest's `Accept`).
    pub fn configure(&mut self, version: MmdsVersion, imds_compat: bool) {
        self.version = version;
        self.imds_compat = imds_compat;
    }

    /// `PUT /mmds`: `data` becomes the document.
    pub fn put(&mut self, data: Value) -> Result<(), Error> {
        self.check_size(&data)?;
        self.data = data;
        self.initialized = true;
        Ok(())
    }

    /// `PATCH /mmds`: `patch` merged into the document (RFC 7396).
    pub fn patch(&mut self, patch: &Value) -> Result<(), Error> {
        if !self.initialized {
            return Err(Error::NotInitialized);
        }
        let mut data = self.data.clone();
        merge_patch(&mut data, patch);
        self.check_size(&data)?;
        self.data = data;
        Ok(())
    }

    /// `GET /mmds`: the whole document (`null` before any PUT).
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// The value at `path` (a guest's request path: a JSON pointer, one
    /// trailing `/` ignored) in `format`, or in IMDS text with
    /// `imds_compat`.
    pub fn get(&self, path: &str, format: OutputFormat) -> Result<String, Error> {
        let pointer = path.strip_suffix('/').unwrap_or(path);
        let value = self.data.pointer(pointer).ok_or(Error::NotFound)?;
        match (format, self.imds_compat) {
            (OutputFormat::Json, false) => Ok(value.to_string()),
            _ => format_imds(value),
        }
    }

    /// A new session token living `ttl_seconds`.
    pub fn issue_token(&mut self, ttl_seconds: u32) -> Result<String, token::Error> {
        self.tokens.issue(ttl_seconds)
    }

    /// Whether `token` was issued here and has not expired.
    pub fn is_valid_token(&self, token: &str) -> bool {
        self.tokens.is_valid(token)
    }

    fn check_size(&self, data: &Value) -> Result<(), Error> {
        // Serialising a `Value` cannot fail (its keys are strings); were it
        // to, the document is refused rather than let in unmeasured.
        match serde_json::to_vec(data) {
            Ok(bytes) if bytes.len() <= self.limit => Ok(()),
            _ => Err(Error::LimitExceeded),
        }
    }
}

/// RFC 7396's JSON merge patch of `target` by `patch`: objects merge key by
/// key, a `null` removes the key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(doc) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            doc.remove(key);
        } else {
            merge_patch(doc.entry(key.as_str()).or_insert(Value::Null), value);
        }
    }
}

/// EC2's IMDS text: a string as it is; an object as its keys, one a line,
/// those of objects with a trailing `/`. Nothing else has an IMDS form.
pub fn format_imds(value: &Value) -> Result<String, Error> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Object(map) => Ok(map
            .iter()
            .map(|(key, value)| {
                if value.is_object() {
                    format!("{key}/")
                } else {
                    key.clone()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")),
        _ => Err(Error::UnsupportedValueType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> DataStore {
        let mut store = DataStore::new(51_200);
        store
            .put(json!({
                "latest": {
                    "meta-data": {"ami-id": "ami-12345678", "reservation-id": "r-fea54097"},
                    "user-data": "hello"
                },
                "age": 43,
                "list": ["a", "b"]
            }))
            .unwrap();
        store
    }

    #[test]
    fn put_patch_get() {
        let mut store = DataStore::new(1000);
        assert_eq!(store.data(), &Value::Null);
        assert_eq!(
            store.patch(&json!({"a": 1})),
            Err(Error::NotInitialized),
            "a PATCH before any PUT"
        );
        store
            .put(json!({"a": {"b": "c", "d": "e"}, "f": 1}))
            .unwrap();
        store
            .patch(&json!({"a": {"b": null, "x": "y"}, "f": [1]}))
            .unwrap();
        assert_eq!(store.data(), &json!({"a": {"d": "e", "x": "y"}, "f": [1]}));
        store.patch(&json!("whole")).unwrap();
        assert_eq!(store.data(), &json!("whole"));
    }

    #[test]
    fn merge_patch_follows_rfc_7396_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }

    #[test]
    fn the_size_limit_refuses_and_changes_nothing() {
        let mut store = DataStore::new(20);
        // {"a":"0123456789"} is 18 bytes.
        store.put(json!({"a": "0123456789"})).unwrap();
        assert_eq!(
            store.put(json!({"a": "0123456789abc"})),
            Err(Error::LimitExceeded)
        );
        assert_eq!(store.patch(&json!({"b": "c"})), Err(Error::LimitExceeded));
        assert_eq!(store.data(), &json!({"a": "0123456789"}));
        // Exactly at the limit is fine: {"a":"0123456789ab"} is 20 bytes.
        store.patch(&json!({"a": "0123456789ab"})).unwrap();
        assert_eq!(DataStore::new(0).put(json!({})), Err(Error::LimitExceeded));
    }

    #[test]
    fn imds_and_json_formats() {
        let mut store = store();
        assert_eq!(
            store.get("/latest", OutputFormat::Imds).unwrap(),
            "meta-data/\nuser-data"
        );
        assert_eq!(
            store.get("/latest/meta-data/", OutputFormat::Imds).unwrap(),
            "ami-id\nreservation-id"
        );
        assert_eq!(
            store
                .get("/latest/meta-data/ami-id", OutputFormat::Imds)
                .unwrap(),
            "ami-12345678"
        );
        assert_eq!(
            store
                .get("/latest/meta-data/ami-id", OutputFormat::Json)
                .unwrap(),
            "\"ami-12345678\""
        );
        assert_eq!(
            store.get("/latest/meta-data", OutputFormat::Json).unwrap(),
            r#"{"ami-id":"ami-12345678","reservation-id":"r-fea54097"}"#
        );
        assert_eq!(store.get("/age", OutputFormat::Json).unwrap(), "43");
        assert_eq!(
            store.get("/age", OutputFormat::Imds),
            Err(Error::UnsupportedValueType)
        );
        assert_eq!(
            store.get("/list", OutputFormat::Imds),
            Err(Error::UnsupportedValueType)
        );
        assert_eq!(
            store.get("/nothing", OutputFormat::Imds),
            Err(Error::NotFound)
        );
        assert_eq!(
            store.get("/latest/meta-data/ami-id/x", OutputFormat::Json),
            Err(Error::NotFound)
        );
        // The root: the whole document.
        assert_eq!(
            store.get("/", OutputFormat::Imds).unwrap(),
            "age\nlatest/\nlist"
        );
        store.configure(MmdsVersion::V2, true);
        assert_eq!(
            store
                .get("/latest/meta-data/ami-id", OutputFormat::Json)
                .unwrap(),
            "ami-12345678",
            "imds_compat answers IMDS text whatever the Accept"
        );
    }
}
