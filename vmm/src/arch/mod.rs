//! Architecture-specific parts of the VM. Only x86_64 exists today.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
