//! How a record is laid out in its table: one format-version byte, then the
//! protobuf encoding of the generated record message
//! (`proto/stratum/agent/v1/records.proto`).
//!
//! Protobuf rather than serde JSON because the records embed the API's own
//! messages (a VM's spec is stored exactly as the API received it), so
//! there is no second schema to keep in step with the proto files;
//! protobuf's field-number rules let an older or newer agent read the
//! records (unknown fields are skipped, missing ones take defaults); and
//! prost reports undecodable bytes as an error, never a panic. The version
//! byte is for a change protobuf cannot absorb: a reader refuses a version
//! it does not know instead of misreading it.
//!
//! Decoding also checks what a record needs to mean anything (an id equal
//! to its key, a spec) so truncated or foreign bytes that happen to decode
//! are reported as [`StoreError::Corrupt`] too.

use prost::Message;
use redb::TableDefinition;

use super::error::StoreError;
use crate::records::{ImageOwnersRecord, PodRecord, PoolRecord, SnapshotRecord, VmRecord};

/// The layout version written in front of every record.
pub const FORMAT_VERSION: u8 = 1;

/// A message stored in its own table, keyed by its id.
pub trait Record: Message + Default + Sized {
    /// Its table's name, for messages.
    const TABLE_NAME: &'static str;
    /// Its table.
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]>;

    /// Its id, the table key.
    fn id(&self) -> &str;

    /// Why the record is unusable, if it is.
    fn missing(&self) -> Option<&'static str>;
}

impl Record for PoolRecord {
    const TABLE_NAME: &'static str = "pools";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("pools");

    fn id(&self) -> &str {
        &self.id
    }

    fn missing(&self) -> Option<&'static str> {
        if self.id.is_empty() {
            Some("no id")
        } else if self.spec.is_none() {
            Some("no spec")
        } else if self.parent_id.is_empty() {
            Some("no parent id")
        } else {
            None
        }
    }
}

impl Record for VmRecord {
    const TABLE_NAME: &'static str = "vms";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("vms");

    fn id(&self) -> &str {
        &self.id
    }

    fn missing(&self) -> Option<&'static str> {
        if self.id.is_empty() {
            Some("no id")
        } else if self.spec.is_none() {
            Some("no spec")
        } else if self.runtime.is_none() {
            Some("no runtime record")
        } else {
            None
        }
    }
}

impl Record for PodRecord {
    const TABLE_NAME: &'static str = "pods";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("pods");

    fn id(&self) -> &str {
        &self.id
    }

    fn missing(&self) -> Option<&'static str> {
        if self.id.is_empty() {
            Some("no id")
        } else if self.spec.is_none() {
            Some("no spec")
        } else if self.status.is_none() {
            Some("no status")
        } else {
            None
        }
    }
}

impl Record for SnapshotRecord {
    const TABLE_NAME: &'static str = "snapshots";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("snapshots");

    fn id(&self) -> &str {
        &self.id
    }

    fn missing(&self) -> Option<&'static str> {
        if self.id.is_empty() {
            Some("no id")
        } else if self.vm.as_ref().is_none_or(|vm| vm.spec.is_none()) {
            Some("no VM spec")
        } else if self.gid == 0 {
            Some("no group")
        } else {
            None
        }
    }
}

impl Record for ImageOwnersRecord {
    const TABLE_NAME: &'static str = "image_owners";
    const TABLE: TableDefinition<'static, &'static str, &'static [u8]> =
        TableDefinition::new("image_owners");

    fn id(&self) -> &str {
        &self.id
    }

    fn missing(&self) -> Option<&'static str> {
        if self.id.is_empty() {
            Some("no id")
        } else {
            None
        }
    }
}

/// The stored bytes of `record`, refused if it is unusable.
pub fn encode<R: Record>(record: &R) -> Result<Vec<u8>, StoreError> {
    if let Some(reason) = record.missing() {
        return Err(StoreError::InvalidRecord {
            table: R::TABLE_NAME,
            reason: reason.to_string(),
        });
    }
    let mut bytes = Vec::with_capacity(1 + record.encoded_len());
    bytes.push(FORMAT_VERSION);
    record.encode_raw(&mut bytes);
    Ok(bytes)
}

/// The record stored under `key` as `bytes`.
pub fn decode<R: Record>(key: &str, bytes: &[u8]) -> Result<R, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: R::TABLE_NAME,
        key: key.to_string(),
        reason,
    };
    let (version, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty".to_string()))?;
    if *version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {version}, this agent reads {FORMAT_VERSION}"
        )));
    }
    let record = R::decode(body).map_err(|e| corrupt(e.to_string()))?;
    if let Some(reason) = record.missing() {
        return Err(corrupt(reason.to_string()));
    }
    if record.id() != key {
        return Err(corrupt(format!("holds id {:?}", record.id())));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::VmRuntime;
    use stratum_api::proto::{ResourcePoolSpec, VmSpec};

    fn pool() -> PoolRecord {
        PoolRecord {
            id: "pool-1".into(),
            parent_id: "root".into(),
            spec: Some(ResourcePoolSpec {
                name: "prod".into(),
                ..Default::default()
            }),
            created_at: None,
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&pool()).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<PoolRecord>("pool-1", &bytes).unwrap(), pool());
    }

    #[test]
    fn unusable_records_are_not_written() {
        let no_spec = PoolRecord {
            spec: None,
            ..pool()
        };
        assert!(matches!(
            encode(&no_spec),
            Err(StoreError::InvalidRecord { .. })
        ));
        let vm = VmRecord {
            id: "vm-1".into(),
            spec: Some(VmSpec::default()),
            ..Default::default()
        };
        assert!(encode(&vm).is_err(), "no runtime");
        let vm = VmRecord {
            runtime: Some(VmRuntime::default()),
            ..vm
        };
        assert!(encode(&vm).is_ok());
    }

    #[test]
    fn bad_bytes_are_corrupt_not_panics() {
        let good = encode(&pool()).unwrap();
        let mut future = good.clone();
        future[0] = 2;
        let truncated = &good[..good.len() - 3];
        let cases: [&[u8]; 5] = [
            &[],
            &[FORMAT_VERSION],
            &future,
            truncated,
            &[1, 0xff, 0xff, 0xff],
        ];
        for bytes in cases {
            let err = decode::<PoolRecord>("pool-1", bytes).unwrap_err();
            assert!(
                matches!(err, StoreError::Corrupt { table: "pools", .. }),
                "{bytes:?}: {err}"
            );
        }
    }

    #[test]
    fn a_record_under_another_key_is_corrupt() {
        let bytes = encode(&pool()).unwrap();
        let err = decode::<PoolRecord>("pool-2", &bytes).unwrap_err();
        assert!(err.to_string().contains("holds id \"pool-1\""), "{err}");
    }
}
