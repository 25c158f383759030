//! Firecracker's custom CPU template, `PUT /cpu-config` and the config
//! file's `cpu-config` (x86_64):
//!
//! ```json
//! {"kvm_capabilities": ["171", "!172"],
//!  "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
//!    "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxx0xxxxxxxxxxxxxxxxxxxxxxx"}]}],
//!  "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0000...0001"}]}
//! ```
//!
//! A bitmap is `0b` and up to the register's width of `0` (clear the
//! bit), `1` (set it) and `x` (leave it), most significant first; `_` may
//! separate groups. Leaves, subleaves and MSR addresses are `0x` hex, `0b`
//! binary or decimal. Before boot only.
//!
//! **What it owns.** The template as the API and config file carry it,
//! and its application at InstanceStart: each CPUID modifier rewrites the
//! bits it names in the leaf and subleaf the guest is given (after our
//! own filtering, so a template can also give back what we filter) and
//! sets that entry's KVM flags; each MSR modifier rewrites the bits it
//! names in the MSR's value as KVM sets it up for a new vCPU. A capability
//! to add must be one the host's KVM has, or the start fails naming it;
//! one to remove (`!N`) is taken and changes nothing, as we check no
//! capability list of our own beyond what the VMM itself calls.
//!
//! **What it refuses.** Unknown fields, the aarch64 sections
//! (`reg_modifiers`, `vcpu_features`), a bitmap with another character or
//! more bits than its register, a number that does not parse: at the PUT,
//! 400. A leaf/subleaf KVM does not offer, or an MSR KVM does not list:
//! at InstanceStart, which fails and leaves nothing started, as
//! Firecracker's does. A snapshot keeps the template with its
//! configuration; a restored VM has the CPUID and MSRs its vCPUs were
//! saved with.

use std::fmt;

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("cpu-config: KVM on this host has no capability {0}")]
    MissingCapability(u32),
    #[error(
        "cpu-config: CPUID leaf {leaf:#x} subleaf {subleaf:#x} is not one KVM offers the guest"
    )]
    CpuidLeaf { leaf: u32, subleaf: u32 },
    #[error("cpu-config: MSR {0:#x} is not one KVM saves and restores for a guest")]
    Msr(u32),
}

/// Firecracker's `CpuConfig` (x86_64 sections).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTemplate {
    #[serde(default)]
    pub kvm_capabilities: Vec<KvmCapability>,
    #[serde(default)]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    #[serde(default)]
    pub msr_modifiers: Vec<MsrModifier>,
}

/// `"N"`: KVM must have capability N; `"!N"`: N need not be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmCapability {
    Add(u32),
    Remove(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    #[serde(deserialize_with = "number", serialize_with = "hex")]
    pub leaf: u32,
    #[serde(deserialize_with = "number", serialize_with = "hex")]
    pub subleaf: u32,
    /// KVM's flags of the entry (`KVM_CPUID_FLAG_SIGNIFCANT_INDEX`: 1).
    pub flags: u32,
    pub modifiers: Vec<CpuidRegisterModifier>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    pub register: CpuidRegister,
    pub bitmap: BitFilter<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    #[serde(deserialize_with = "number", serialize_with = "hex")]
    pub addr: u32,
    pub bitmap: BitFilter<u64>,
}

/// The bits a bitmap sets (`mask`) and what it sets them to (`value`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BitFilter<V> {
    pub mask: V,
    pub value: V,
}

/// The two register widths a bitmap comes in.
pub trait Register: Copy + Eq + fmt::Debug {
    const BITS: u32;
    fn from_u64(v: u64) -> Self;
    fn to_u64(self) -> u64;
}

impl Register for u32 {
    const BITS: u32 = 32;
    fn from_u64(v: u64) -> Self {
        // Only ever called with a value built from at most 32 bits.
        u32::try_from(v).unwrap_or(u32::MAX)
    }
    fn to_u64(self) -> u64 {
        u64::from(self)
    }
}

impl Register for u64 {
    const BITS: u32 = 64;
    fn from_u64(v: u64) -> Self {
        v
    }
    fn to_u64(self) -> u64 {
        self
    }
}

impl<V: Register> BitFilter<V> {
    /// `register` with the bitmap's bits set as it says.
    pub fn apply(&self, register: V) -> V {
        V::from_u64((register.to_u64() & !self.mask.to_u64()) | self.value.to_u64())
    }

    /// Parses `0b` + `0`, `1`, `x` (and `_`), most significant bit first.
    pub fn parse(text: &str) -> Result<Self, String> {
        let digits = text.strip_prefix("0b").unwrap_or(text);
        let (mut mask, mut value, mut bit) = (0u64, 0u64, 0u32);
        for c in digits.bytes().rev() {
            if c == b'_' {
                continue;
            }
            if bit == V::BITS {
                return Err(format!("bitmap {text} has more than {} bits", V::BITS));
            }
            match c {
                b'x' => {}
                b'0' => mask |= 1 << bit,
                b'1' => {
                    mask |= 1 << bit;
                    value |= 1 << bit;
                }
                other => {
                    return Err(format!(
                        "bitmap {text}: {:?} is not 0, 1, x or _",
                        char::from(other)
                    ))
                }
            }
            bit += 1;
        }
        Ok(Self {
            mask: V::from_u64(mask),
            value: V::from_u64(value),
        })
    }
}

impl<V: Register> fmt::Display for BitFilter<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0b")?;
        for bit in (0..V::BITS).rev() {
            let c = if self.mask.to_u64() >> bit & 1 == 0 {
                'x'
            } else if self.value.to_u64() >> bit & 1 == 1 {
                '1'
            } else {
                '0'
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl<V: Register> Serialize for BitFilter<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de, V: Register> Deserialize<'de> for BitFilter<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(D::Error::custom)
    }
}

impl Serialize for KvmCapability {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KvmCapability::Add(n) => s.collect_str(n),
            KvmCapability::Remove(n) => s.collect_str(&format_args!("!{n}")),
        }
    }
}

impl<'de> Deserialize<'de> for KvmCapability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let (remove, digits) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let n = digits.parse::<u32>().map_err(|_| {
            D::Error::custom(format!(
                "kvm capability {text:?} is not a number (or ! and a number)"
            ))
        })?;
        Ok(if remove {
            KvmCapability::Remove(n)
        } else {
            KvmCapability::Add(n)
        })
    }
}

/// A `0x` hex, `0b` binary or decimal string, as Firecracker's templates
/// write leaves and addresses.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    let parsed = if let Some(hex) = text.strip_prefix("0x") {
        u32::from_str_radix(hex, 16)
    } else if let Some(bin) = text.strip_prefix("0b") {
        u32::from_str_radix(bin, 2)
    } else {
        text.parse::<u32>()
    };
    parsed.map_err(|_| D::Error::custom(format!("{text:?} is not a 32-bit number")))
}

fn hex<S: Serializer>(n: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{n:#x}"))
}

impl CpuTemplate {
    /// The capabilities KVM must have.
    pub fn required_capabilities(&self) -> impl Iterator<Item = u32> + '_ {
        self.kvm_capabilities.iter().filter_map(|c| match c {
            KvmCapability::Add(n) => Some(*n),
            KvmCapability::Remove(_) => None,
        })
    }

    /// Applies the CPUID modifiers to the CPUID a vCPU is about to get.
    pub fn apply_to_cpuid(&self, cpuid: &mut CpuId) -> Result<(), Error> {
        for leaf in &self.cpuid_modifiers {
            let entry = cpuid
                .as_mut_slice()
                .iter_mut()
                .find(|e| e.function == leaf.leaf && e.index == leaf.subleaf)
                .ok_or(Error::CpuidLeaf {
                    leaf: leaf.leaf,
                    subleaf: leaf.subleaf,
                })?;
            entry.flags = leaf.flags;
            for m in &leaf.modifiers {
                let register = register_of(entry, m.register);
                *register = m.bitmap.apply(*register);
            }
        }
        Ok(())
    }

    /// The MSR values the modifiers ask for, from the values KVM gave a
    /// new vCPU (`current`, in the order of `msr_modifiers`).
    pub fn msr_values(&self, current: &[u64]) -> Vec<(u32, u64)> {
        self.msr_modifiers
            .iter()
            .zip(current)
            .map(|(m, value)| (m.addr, m.bitmap.apply(*value)))
            .collect()
    }

    /// Checks the MSRs named against the ones KVM lists.
    pub fn check_msrs(&self, supported: &[u32]) -> Result<(), Error> {
        match self
            .msr_modifiers
            .iter()
            .find(|m| !supported.contains(&m.addr))
        {
            Some(m) => Err(Error::Msr(m.addr)),
            None => Ok(()),
        }
    }
}

fn register_of(entry: &mut kvm_cpuid_entry2, register: CpuidRegister) -> &mut u32 {
    match register {
        CpuidRegister::Eax => &mut entry.eax,
        CpuidRegister::Ebx => &mut entry.ebx,
        CpuidRegister::Ecx => &mut entry.ecx,
        CpuidRegister::Edx => &mut entry.edx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(json: &str) -> Result<CpuTemplate, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn firecracker_templates_parse_and_print_back() {
        let json = r#"{
            "kvm_capabilities": ["171", "!172"],
            "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0b0", "flags": 0, "modifiers": [
                {"register": "ecx", "bitmap": "0bxxxxxxxx0xxxxxxxxxxxxxxxxxxx_xx01"}]}],
            "msr_modifiers": [{"addr": "266", "bitmap": "0b1"}]
        }"#;
        let t = template(json).unwrap();
        assert_eq!(
            t.kvm_capabilities,
            [KvmCapability::Add(171), KvmCapability::Remove(172)]
        );
        let leaf = &t.cpuid_modifiers[0];
        assert_eq!((leaf.leaf, leaf.subleaf, leaf.flags), (1, 0, 0));
        let bitmap = leaf.modifiers[0].bitmap;
        assert_eq!(bitmap.mask, (1 << 23) | 0b11);
        assert_eq!(bitmap.value, 0b01);
        assert_eq!(t.msr_modifiers[0].addr, 0x10a);
        assert_eq!(t.msr_modifiers[0].bitmap, BitFilter { mask: 1, value: 1 });
        assert_eq!(t.required_capabilities().collect::<Vec<_>>(), [171]);
        // What GET /vm/config shows parses to the same template.
        let printed = serde_json::to_value(&t).unwrap();
        assert_eq!(printed["cpuid_modifiers"][0]["leaf"], "0x1");
        assert_eq!(printed["kvm_capabilities"][1], "!172");
        assert_eq!(template(&printed.to_string()).unwrap(), t);
    }

    #[test]
    fn bad_templates_are_refused() {
        for (json, why) in [
            (r#"{"reg_modifiers": []}"#, "unknown field"),
            (r#"{"vcpu_features": []}"#, "unknown field"),
            (r#"{"kvm_capabilities": ["x1"]}"#, "not a number"),
            (
                r#"{"cpuid_modifiers": [{"leaf": "0xZ", "subleaf": "0", "flags": 0, "modifiers": []}]}"#,
                "not a 32-bit number",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "flags": 0,
                   "modifiers": [{"register": "esi", "bitmap": "0b1"}]}]}"#,
                "unknown variant",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "flags": 0,
                   "modifiers": [{"register": "eax", "bitmap": "0b12"}]}]}"#,
                "is not 0, 1, x or _",
            ),
            (
                r#"{"msr_modifiers": [{"addr": "0x10", "bitmap": "0b10000000000000000000000000000000000000000000000000000000000000000"}]}"#,
                "more than 64 bits",
            ),
        ] {
            let error = template(json).unwrap_err().to_string();
            assert!(error.contains(why), "{json}: {error}");
        }
        let wide = "0b1".to_string() + &"0".repeat(32);
        assert!(BitFilter::<u32>::parse(&wide).is_err());
        assert!(BitFilter::<u64>::parse(&wide).is_ok());
    }

    #[test]
    fn modifiers_rewrite_only_the_bits_they_name() {
        let filter = BitFilter::<u32>::parse("0b1x0x").unwrap();
        assert_eq!(filter.apply(0b0000), 0b1000);
        assert_eq!(filter.apply(0b1111), 0b1101);
        assert_eq!(filter.apply(0xffff_0000), 0xffff_0008);
        assert_eq!(filter.to_string().len(), 34);
        assert!(filter.to_string().ends_with("1x0x"));
    }

    #[test]
    fn cpuid_modifiers_need_the_leaf_and_set_its_flags() {
        let mut cpuid = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                index: 0,
                ecx: 0xffff_ffff,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 1,
                ebx: 0,
                ..Default::default()
            },
        ])
        .unwrap();
        let t = template(
            r#"{"cpuid_modifiers": [
                {"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                 "modifiers": [{"register": "ecx", "bitmap": "0b0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]},
                {"leaf": "0x7", "subleaf": "0x1", "flags": 1,
                 "modifiers": [{"register": "ebx", "bitmap": "0b101"}]}]}"#,
        )
        .unwrap();
        t.apply_to_cpuid(&mut cpuid).unwrap();
        let entries = cpuid.as_slice();
        assert_eq!(entries[0].ecx, 0x7fff_ffff);
        assert_eq!((entries[1].ebx, entries[1].flags), (0b101, 1));
        let missing = template(
            r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0", "flags": 1, "modifiers": []}]}"#,
        )
        .unwrap();
        assert_eq!(
            missing.apply_to_cpuid(&mut cpuid),
            Err(Error::CpuidLeaf {
                leaf: 7,
                subleaf: 0
            })
        );
    }

    #[test]
    fn msr_modifiers_need_a_listed_msr() {
        let t = template(r#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b1x"}]}"#).unwrap();
        assert_eq!(t.check_msrs(&[0x10, 0x10a]), Ok(()));
        assert_eq!(t.check_msrs(&[0x10]), Err(Error::Msr(0x10a)));
        assert_eq!(t.msr_values(&[0b01]), [(0x10a, 0b11)]);
    }
}
