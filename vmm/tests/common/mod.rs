//! Helpers shared by the integration tests of the `vmm` binary.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::PathBuf;

/// A scratch directory under the system temp dir, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("write scratch file");
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A structurally valid x86_64 ELF whose one segment loads `size` bytes at
/// 16 MiB.
pub fn tiny_elf(size: usize) -> Vec<u8> {
    let mut image = vec![0u8; 0x78 + size];
    image[0..4].copy_from_slice(b"\x7fELF");
    image[4] = 2;
    image[5] = 1;
    image[6] = 1;
    image[16..18].copy_from_slice(&2u16.to_le_bytes());
    image[18..20].copy_from_slice(&62u16.to_le_bytes());
    image[20..24].copy_from_slice(&1u32.to_le_bytes());
    image[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
    image[32..40].copy_from_slice(&64u64.to_le_bytes());
    image[52..54].copy_from_slice(&64u16.to_le_bytes());
    image[54..56].copy_from_slice(&56u16.to_le_bytes());
    image[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    image[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
    image[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes());
    image[ph + 16..ph + 24].copy_from_slice(&0x100_0000u64.to_le_bytes());
    image[ph + 24..ph + 32].copy_from_slice(&0x100_0000u64.to_le_bytes());
    image[ph + 32..ph + 40].copy_from_slice(&(size as u64).to_le_bytes());
    image[ph + 40..ph + 48].copy_from_slice(&(size as u64).to_le_bytes());
    image
}
