//! Whether an executable can run in a jail without libraries.

use std::io::Read;
use std::path::Path;

/// Program header type of the dynamic loader's path.
const PT_INTERP: u32 = 3;

/// Whether the ELF64 little-endian executable at `path` has no program
/// interpreter (statically linked, static-pie included). `false` for
/// anything that is not such an ELF file.
pub fn is_static(path: &Path) -> std::io::Result<bool> {
    let mut head = Vec::new();
    std::fs::File::open(path)?
        .take(64 * 1024)
        .read_to_end(&mut head)?;
    Ok(has_no_interpreter(&head).unwrap_or(false))
}

/// `None` when `image` is not a well-formed ELF64 LE header and program
/// header table (within the bytes given).
fn has_no_interpreter(image: &[u8]) -> Option<bool> {
    if image.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(image.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let entry_size = usize::from(u16_at(0x36)?);
    let count = usize::from(u16_at(0x38)?);
    if entry_size < 4 {
        return None;
    }
    for i in 0..count {
        let at = phoff.checked_add(i.checked_mul(entry_size)?)?;
        if u32_at(at)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_static_is_static_and_a_dynamic_binary_is_not() {
        // Debian's busybox-static (a `make` dependency) and coreutils.
        assert!(is_static(Path::new("/bin/busybox")).unwrap());
        assert!(!is_static(Path::new("/bin/ls")).unwrap());
    }

    #[test]
    fn garbage_and_truncated_headers_are_not_static_executables() {
        assert_eq!(has_no_interpreter(b""), None);
        assert_eq!(has_no_interpreter(b"#!/bin/sh\n"), None);
        let mut header = b"\x7fELF\x02\x01".to_vec();
        header.resize(0x40, 0);
        // phoff 0x40, entry size 56, 3 entries, but no table follows.
        header[0x20] = 0x40;
        header[0x36] = 56;
        header[0x38] = 3;
        assert_eq!(has_no_interpreter(&header), None);
        header.resize(0x40 + 3 * 56, 0);
        assert_eq!(has_no_interpreter(&header), Some(true));
        header[0x40 + 56] = PT_INTERP as u8;
        assert_eq!(has_no_interpreter(&header), Some(false));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_answered_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = has_no_interpreter(&bytes);
        }
    }
}
