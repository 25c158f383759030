//! The NoCloud seed: a VM's cloud-init bootstrap data as the small
//! read-only disk cloud-init looks for, a FAT volume labelled `CIDATA`
//! holding `meta-data`, `user-data` and, when the VM has static addresses,
//! `network-config` (version 2).
//!
//! Why this format: it is what cloud-init's NoCloud datasource reads from a
//! disk in every distribution, so a stock Debian or Ubuntu cloud image boots
//! with the same seed as our node image, unchanged. The user-data is the
//! caller's bytes, copied verbatim; meta-data and network-config are written
//! as JSON, which is YAML too, so no value needs YAML quoting rules.
//!
//! This module refuses what cloud-init would choke on or what would let a
//! spec grow the seed without bound: user-data over [`MAX_USER_DATA`],
//! meta-data keys that are not plain identifiers or that shadow the ones the
//! agent sets (`instance-id`, `local-hostname`), more extra meta-data than
//! [`MAX_META_DATA`]. The file is made under a temporary name and renamed
//! into place, so a failed write leaves nothing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::disk::{create_new_with, DiskError};

/// The largest user-data accepted (bytes).
pub const MAX_USER_DATA: usize = 64 * 1024;
/// The largest extra meta-data accepted (bytes of keys and values).
pub const MAX_META_DATA: usize = 16 * 1024;
/// The seed volume's size: FAT12, room for the largest user-data and
/// meta-data with clusters to spare. Sparse on the host.
const VOLUME_SIZE: u64 = 1 << 20;
/// The label cloud-init's NoCloud datasource finds the volume by.
pub const LABEL: &str = "CIDATA";
/// Meta-data keys the agent sets itself.
const RESERVED_KEYS: [&str; 2] = ["instance-id", "local-hostname"];

/// What goes into a seed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seed {
    /// Stable for the VM's life: cloud-init runs its once-per-instance
    /// modules again only when this changes.
    pub instance_id: String,
    pub hostname: String,
    /// Verbatim (`#cloud-config`, a script, MIME multipart, ...).
    pub user_data: Vec<u8>,
    /// More meta-data keys, beside the two the agent sets.
    pub extra_meta_data: BTreeMap<String, String>,
    /// Static addressing of the NICs; none: the image's own default
    /// (cloud-init's DHCP on the first NIC).
    pub interfaces: Vec<StaticInterface>,
}

/// A NIC the guest configures statically, found by its MAC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticInterface {
    pub mac: String,
    /// CIDR, e.g. `10.0.0.2/24`.
    pub addresses: Vec<String>,
    /// The default route's next hop, if any.
    pub gateway: Option<String>,
    pub nameservers: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("user-data is {0} bytes, more than the limit of {MAX_USER_DATA}")]
    UserDataTooLarge(usize),
    #[error("extra meta-data is {0} bytes, more than the limit of {MAX_META_DATA}")]
    MetaDataTooLarge(usize),
    #[error("meta-data key {0:?} is not 1-64 of [A-Za-z0-9_-]")]
    BadMetaDataKey(String),
    #[error("meta-data key {0:?} is set by the agent")]
    ReservedMetaDataKey(String),
    #[error("user-data served by the metadata service must be UTF-8 text")]
    UserDataNotText,
    #[error("{0}")]
    Disk(#[from] DiskError),
}

impl Seed {
    /// Checks what the spec controls, before anything is written.
    pub fn validate(&self) -> Result<(), SeedError> {
        if self.user_data.len() > MAX_USER_DATA {
            return Err(SeedError::UserDataTooLarge(self.user_data.len()));
        }
        let mut size = 0;
        for (key, value) in &self.extra_meta_data {
            if RESERVED_KEYS.contains(&key.as_str()) {
                return Err(SeedError::ReservedMetaDataKey(key.clone()));
            }
            let plain = key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if key.is_empty() || key.len() > 64 || !plain {
                return Err(SeedError::BadMetaDataKey(key.clone()));
            }
            size += key.len() + value.len();
        }
        if size > MAX_META_DATA {
            return Err(SeedError::MetaDataTooLarge(size));
        }
        Ok(())
    }

    /// The `meta-data` file.
    pub fn meta_data(&self) -> String {
        let mut map: Map<String, Value> = self
            .extra_meta_data
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        map.insert("instance-id".into(), self.instance_id.clone().into());
        map.insert("local-hostname".into(), self.hostname.clone().into());
        format!("{}\n", Value::Object(map))
    }

    /// The `network-config` file (version 2), when some NIC is static.
    pub fn network_config(&self) -> Option<String> {
        if self.interfaces.is_empty() {
            return None;
        }
        let ethernets: Map<String, Value> = self
            .interfaces
            .iter()
            .enumerate()
            .map(|(i, nic)| (format!("nic{i}"), ethernet(nic)))
            .collect();
        let config = json!({ "version": 2, "ethernets": ethernets });
        Some(format!("{config}\n"))
    }

    /// The same files as a metadata service (MMDS) document: under
    /// `latest/`, `meta-data`, `user-data` and `network-config` as text,
    /// the layout cloud-init's NoCloud reads from a URL
    /// (`ds=nocloud;s=http://169.254.169.254/latest/`). User-data must be
    /// text: the document is JSON.
    pub fn metadata_document(&self) -> Result<Value, SeedError> {
        self.validate()?;
        let user_data =
            std::str::from_utf8(&self.user_data).map_err(|_| SeedError::UserDataNotText)?;
        let mut latest = Map::new();
        latest.insert("meta-data".into(), self.meta_data().into());
        latest.insert("user-data".into(), user_data.into());
        if let Some(network) = self.network_config() {
            latest.insert("network-config".into(), network.into());
        }
        Ok(json!({ "latest": latest }))
    }

    /// Writes the seed volume at `dest`, which must not exist.
    pub fn write(&self, dest: &Path) -> Result<(), SeedError> {
        self.validate()?;
        let mut files = vec![
            ("meta-data", self.meta_data().into_bytes()),
            ("user-data", self.user_data.clone()),
        ];
        if let Some(network) = self.network_config() {
            files.push(("network-config", network.into_bytes()));
        }
        create_new_with(dest, |file| write_volume(file, &files))?;
        Ok(())
    }
}

fn ethernet(nic: &StaticInterface) -> Value {
    let mut config = json!({
        "match": { "macaddress": nic.mac.to_ascii_lowercase() },
        "addresses": nic.addresses,
    });
    if let Some(gateway) = &nic.gateway {
        let default = if gateway.contains(':') {
            "::/0"
        } else {
            "0.0.0.0/0"
        };
        config["routes"] = json!([{ "to": default, "via": gateway }]);
    }
    if !nic.nameservers.is_empty() {
        config["nameservers"] = json!({ "addresses": nic.nameservers });
    }
    config
}

/// Formats `file` as a FAT volume labelled [`LABEL`] holding `files`.
fn write_volume(file: &File, files: &[(&str, Vec<u8>)]) -> io::Result<()> {
    file.set_len(VOLUME_SIZE)?;
    let mut label = [b' '; 11];
    label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());
    fatfs::format_volume(file, fatfs::FormatVolumeOptions::new().volume_label(label))?;
    let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new())?;
    {
        let root = fs.root_dir();
        for (name, content) in files {
            let mut entry = root.create_file(name)?;
            entry.truncate()?;
            entry.write_all(content)?;
            entry.flush()?;
        }
    }
    fs.unmount()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::Command;

    fn seed() -> Seed {
        Seed {
            instance_id: "vm-0123".into(),
            hostname: "etcd-0".into(),
            user_data: b"#cloud-config\nhostname: etcd-0\nruncmd:\n  - [touch, /run/x]\n".to_vec(),
            extra_meta_data: BTreeMap::from([("zone".into(), "rack \"7\"\n".into())]),
            interfaces: vec![StaticInterface {
                mac: "06:00:AC:10:00:02".into(),
                addresses: vec!["172.16.0.2/24".into()],
                gateway: Some("172.16.0.1".into()),
                nameservers: vec!["172.16.0.1".into()],
            }],
        }
    }

    fn read_back(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let file = File::open(path).unwrap();
        let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), LABEL);
        let mut out = BTreeMap::new();
        for entry in fs.root_dir().iter() {
            let entry = entry.unwrap();
            let mut content = Vec::new();
            entry.to_file().read_to_end(&mut content).unwrap();
            out.insert(entry.file_name(), content);
        }
        out
    }

    #[test]
    fn the_volume_holds_the_three_files_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let seed = seed();
        seed.write(&path).unwrap();
        let files = read_back(&path);
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["meta-data", "network-config", "user-data"]
        );
        assert_eq!(files["user-data"], seed.user_data);
        let meta: Value = serde_json::from_slice(&files["meta-data"]).unwrap();
        assert_eq!(meta["instance-id"], "vm-0123");
        assert_eq!(meta["local-hostname"], "etcd-0");
        assert_eq!(meta["zone"], "rack \"7\"\n");
        let net: Value = serde_json::from_slice(&files["network-config"]).unwrap();
        assert_eq!(net["version"], 2);
        let nic = &net["ethernets"]["nic0"];
        assert_eq!(nic["match"]["macaddress"], "06:00:ac:10:00:02");
        assert_eq!(nic["addresses"][0], "172.16.0.2/24");
        assert_eq!(nic["routes"][0]["via"], "172.16.0.1");
        assert_eq!(nic["nameservers"]["addresses"][0], "172.16.0.1");
        // Sparse: the volume's holes take no space.
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 < VOLUME_SIZE);
    }

    /// Debian's own tools read the volume the way the guest's kernel and
    /// blkid will: fsck.fat finds nothing wrong, blkid the label cloud-init
    /// looks for, mtools the files.
    #[test]
    fn debian_tools_read_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        seed().write(&path).unwrap();
        let run = |program: &str, args: &[&str]| {
            let out = Command::new(program)
                .args(args)
                .arg(&path)
                .env("MTOOLS_SKIP_CHECK", "1")
                .output()
                .unwrap_or_else(|e| panic!("{program} (`make deps` installs it): {e}"));
            assert!(out.status.success(), "{program}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        run("fsck.fat", &["-n"]);
        let blkid = run("blkid", &["-o", "export"]);
        assert!(blkid.contains("LABEL=CIDATA"), "{blkid}");
        assert!(blkid.contains("TYPE=vfat"), "{blkid}");
        let listing = run("mdir", &["-b", "-i"]);
        for name in ["meta-data", "user-data", "network-config"] {
            assert!(listing.contains(name), "{name} in {listing}");
        }
    }

    #[test]
    fn no_static_nic_no_network_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let seed = Seed {
            interfaces: Vec::new(),
            ..seed()
        };
        seed.write(&path).unwrap();
        assert!(!read_back(&path).contains_key("network-config"));
    }

    #[test]
    fn bad_input_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let cases = [
            Seed {
                user_data: vec![b'x'; MAX_USER_DATA + 1],
                ..seed()
            },
            Seed {
                extra_meta_data: BTreeMap::from([("instance-id".into(), "x".into())]),
                ..seed()
            },
            Seed {
                extra_meta_data: BTreeMap::from([("a b".into(), "x".into())]),
                ..seed()
            },
            Seed {
                extra_meta_data: BTreeMap::from([("k".into(), "v".repeat(MAX_META_DATA))]),
                ..seed()
            },
        ];
        for case in cases {
            assert!(case.write(&path).is_err());
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
        let at_limit = Seed {
            user_data: vec![b'x'; MAX_USER_DATA],
            ..seed()
        };
        at_limit.write(&path).unwrap();
        assert_eq!(read_back(&path)["user-data"].len(), MAX_USER_DATA);
        assert!(matches!(
            seed().write(&path),
            Err(SeedError::Disk(DiskError::AlreadyExists(_)))
        ));
    }

    #[test]
    fn the_metadata_document_holds_the_seeds_files_as_text() {
        let seed = seed();
        let document = seed.metadata_document().unwrap();
        let latest = &document["latest"];
        assert_eq!(latest["meta-data"], seed.meta_data());
        assert_eq!(
            latest["user-data"].as_str().map(str::as_bytes),
            Some(&seed.user_data[..])
        );
        assert_eq!(latest["network-config"], seed.network_config().unwrap());
        let no_nics = Seed {
            interfaces: Vec::new(),
            ..seed.clone()
        };
        assert!(no_nics.metadata_document().unwrap()["latest"]
            .get("network-config")
            .is_none());
        let binary = Seed {
            user_data: vec![0x1f, 0x8b, 0xff],
            ..seed
        };
        assert!(matches!(
            binary.metadata_document(),
            Err(SeedError::UserDataNotText)
        ));
    }
}
