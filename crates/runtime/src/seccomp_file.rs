//! A seccomp profile from a file on the host: Kubernetes' `Localhost`
//! profiles, which the kubelet names by path and which are written in
//! Docker's JSON format (what `seccomp.json` files, the Security Profiles
//! Operator and critest use).
//!
//! Docker's format is the OCI `linux.seccomp` section plus a few fields:
//! the module turns a profile into the OCI one and refuses what it would
//! otherwise have to drop silently — conditional rules (`includes` /
//! `excludes` on capabilities, architectures or kernel versions), which
//! only Docker's own code evaluates. An `archMap` (Docker's default
//! profile has one) becomes the list of architectures it names. A file
//! that is not such a profile is an error naming what is wrong. Reading
//! the file — a path a caller named — is the caller's, off every lock.

pub use oci_spec::runtime::LinuxSeccomp;
use serde_json::{Map, Value};

use super::error::{Result, RuntimeError};

/// The most of a profile file read (Docker's default profile is ~20 KiB).
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

fn invalid(reason: &'static str, detail: impl Into<String>) -> RuntimeError {
    RuntimeError::invalid("seccomp profile", detail, reason)
}

/// The OCI profile for a Docker-format profile's bytes.
pub fn parse(bytes: &[u8]) -> Result<LinuxSeccomp> {
    let mut profile: Map<String, Value> = match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(invalid("is not a JSON object", "")),
        Err(e) => return Err(invalid("is not JSON", e.to_string())),
    };
    if !profile.contains_key("defaultAction") {
        return Err(invalid("has no defaultAction", ""));
    }
    if let Some(arch_map) = profile.remove("archMap") {
        if !profile.contains_key("architectures") {
            profile.insert("architectures".into(), architectures_of(&arch_map)?);
        }
    }
    if let Some(rules) = profile.get_mut("syscalls") {
        let Value::Array(rules) = rules else {
            return Err(invalid("has syscalls that are not a list", ""));
        };
        for rule in rules.iter_mut() {
            normalize_rule(rule)?;
        }
    }
    serde_json::from_value(Value::Object(profile))
        .map_err(|e| invalid("does not read as a seccomp profile", e.to_string()))
}

/// `archMap: [{architecture, subArchitectures}]` as one list.
fn architectures_of(arch_map: &Value) -> Result<Value> {
    let Value::Array(entries) = arch_map else {
        return Err(invalid("has an archMap that is not a list", ""));
    };
    let mut all = Vec::new();
    for entry in entries {
        if let Some(arch) = entry.get("architecture") {
            all.push(arch.clone());
        }
        if let Some(Value::Array(subs)) = entry.get("subArchitectures") {
            all.extend(subs.iter().cloned());
        }
    }
    Ok(Value::Array(all))
}

/// A rule as OCI has it: `name` folded into `names`, comments dropped,
/// conditions refused.
fn normalize_rule(rule: &mut Value) -> Result<()> {
    let Value::Object(fields) = rule else {
        return Err(invalid("has a syscall rule that is not an object", ""));
    };
    for condition in ["includes", "excludes"] {
        let empty = match fields.get(condition) {
            None | Some(Value::Null) => true,
            Some(Value::Object(o)) => o.is_empty(),
            Some(_) => false,
        };
        if !empty {
            return Err(invalid(
                "has a conditional rule (includes/excludes), which is not supported",
                format!("{:?}", fields.get("names").or(fields.get("name"))),
            ));
        }
        fields.remove(condition);
    }
    fields.remove("comment");
    if let Some(name) = fields.remove("name") {
        let names = fields
            .entry("names")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(names) = names {
            names.push(name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Arch, LinuxSeccompAction};

    #[test]
    fn critests_profile_reads_as_oci() {
        let profile = parse(
            br#"{
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]
            }"#,
        )
        .unwrap();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
        let rules = profile.syscalls().clone().unwrap();
        assert_eq!(rules[0].names(), &["chmod", "fchmodat"]);
        assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActErrno);
    }

    #[test]
    fn dockers_extra_fields_are_folded_in() {
        let profile = parse(
            br#"{
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 1,
                "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                             "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
                "syscalls": [
                    {"name": "read", "action": "SCMP_ACT_ALLOW", "comment": "old style",
                     "includes": {}, "excludes": {}},
                    {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}
                ]
            }"#,
        )
        .unwrap();
        assert_eq!(
            profile.architectures().clone().unwrap(),
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        let rules = profile.syscalls().clone().unwrap();
        assert_eq!(rules[0].names(), &["read"]);
        assert_eq!(rules[1].args().clone().unwrap().len(), 1);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"defaultAction": "SCMP_ACT_NOPE"}"#,
            br#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}"#,
            br#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
