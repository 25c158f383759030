//! The two resources pools account for, and an amount of each.
//!
//! CPU is counted in millicores (1000 = one logical host CPU for the whole
//! time): unlike vSphere's MHz it means the same on every host, and it is
//! the unit Kubernetes requests use, so pods and VMs share it.
//! Memory is counted in bytes, the unit of the cgroup files that enforce it
//! and of Kubernetes memory quantities, so nothing is rounded on the way.

use std::fmt;

/// Millicores in one logical CPU.
pub const MILLICORES_PER_CPU: u64 = 1000;
/// Bytes in one MiB.
pub const MIB: u64 = 1 << 20;

/// A resource a pool allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// CPU time, in millicores.
    Cpu,
    /// Memory, in bytes.
    Memory,
}

impl Resource {
    /// Both resources, in a fixed order.
    pub const ALL: [Resource; 2] = [Resource::Cpu, Resource::Memory];

    /// The unit amounts of this resource are counted in.
    pub fn unit(self) -> &'static str {
        match self {
            Resource::Cpu => "millicores",
            Resource::Memory => "bytes",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        })
    }
}

/// An amount of each resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_millicores: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl Resources {
    /// Nothing of either resource.
    pub const ZERO: Resources = Resources {
        cpu_millicores: 0,
        memory_bytes: 0,
    };

    /// `cpu_millicores` of CPU and `memory_bytes` of memory.
    pub const fn new(cpu_millicores: u64, memory_bytes: u64) -> Self {
        Resources {
            cpu_millicores,
            memory_bytes,
        }
    }

    /// The amount of `resource`.
    pub fn get(&self, resource: Resource) -> u64 {
        match resource {
            Resource::Cpu => self.cpu_millicores,
            Resource::Memory => self.memory_bytes,
        }
    }

    /// Set the amount of `resource`.
    pub fn set(&mut self, resource: Resource, amount: u64) {
        match resource {
            Resource::Cpu => self.cpu_millicores = amount,
            Resource::Memory => self.memory_bytes = amount,
        }
    }

    /// Each amount minus `other`'s, or `None` if `other` has more of either.
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        Some(Resources {
            cpu_millicores: self.cpu_millicores.checked_sub(other.cpu_millicores)?,
            memory_bytes: self.memory_bytes.checked_sub(other.memory_bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_and_set_address_one_resource() {
        let mut r = Resources::new(1500, 64 * MIB);
        assert_eq!(r.get(Resource::Cpu), 1500);
        r.set(Resource::Memory, MIB);
        assert_eq!(r, Resources::new(1500, MIB));
    }

    #[test]
    fn checked_sub_refuses_to_go_negative() {
        let a = Resources::new(1000, 10);
        assert_eq!(
            a.checked_sub(&Resources::new(400, 10)),
            Some(Resources::new(600, 0))
        );
        assert_eq!(a.checked_sub(&Resources::new(1001, 0)), None);
    }

    #[test]
    fn display_and_units() {
        assert_eq!(Resource::Cpu.to_string(), "cpu");
        assert_eq!(Resource::Memory.unit(), "bytes");
    }
}
