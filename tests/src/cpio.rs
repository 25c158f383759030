//! Minimal writer for the `newc` cpio format the kernel unpacks as initramfs.
//!
//! Writing it directly avoids staging directories and external tools; the
//! kernel accepts several archives concatenated, which lets a per-scenario
//! archive be appended to a shared base archive.

const MAGIC: &str = "070701";
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// An in-memory newc archive under construction.
#[derive(Default)]
pub struct CpioWriter {
    buf: Vec<u8>,
    next_ino: u32,
}

impl CpioWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory; `path` is relative to the archive root ("a/b").
    pub fn dir(&mut self, path: &str, perm: u32) {
        self.entry(path, S_IFDIR | perm, 2, &[]);
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | perm, 1, data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, target.as_bytes());
    }

    /// Writes the trailer and returns the archive bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, &[]);
        self.buf
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) {
        self.next_ino += 1;
        let ino = if name == "TRAILER!!!" {
            0
        } else {
            self.next_ino
        };
        // Fixed uid/gid/mtime keep archives reproducible.
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(MAGIC.as_bytes());
        for field in fields {
            self.buf
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
        self.buf.extend_from_slice(data);
        self.pad4();
    }

    fn pad4(&mut self) {
        let padded = self.buf.len().next_multiple_of(4);
        self.buf.resize(padded, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_and_alignment() {
        let mut w = CpioWriter::new();
        w.file("init", 0o755, b"abc");
        let out = w.finish();
        assert_eq!(&out[..6], b"070701");
        // mode field is the second 8-hex field after the magic.
        assert_eq!(&out[14..22], b"000081ed");
        assert_eq!(out.len() % 4, 0);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
