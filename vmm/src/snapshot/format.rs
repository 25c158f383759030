//! The snapshot state file's envelope: a fixed header, then the VM's state
//! as JSON.
//!
//! What it owns: telling a snapshot this vmm can restore from anything
//! else, before a byte of it is believed. The header holds a magic string,
//! the format version, the length of the state and its SHA-256; [`read`]
//! checks all four and the file's size before decoding, so a truncated,
//! corrupt, foreign or newer file is refused with what is wrong with it,
//! and nothing is built from it.
//!
//! Why JSON for the state: it is small (registers, device registers, queue
//! addresses: tens of KiB per vCPU at most), an operator can read it
//! (`tail -c +65 vm.snap | jq`), and serde's defaults let a later format
//! version add fields. Guest memory is not in this file: it is the memory
//! file, which is mapped, not parsed.
//!
//! What it refuses: state over [`MAX_STATE_SIZE`], any version but
//! [`FORMAT_VERSION`] (a newer vmm's file may mean what this one cannot
//! restore; an older one's is refused until a migration exists for it),
//! and bytes after the state.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The first bytes of every snapshot state file.
pub const MAGIC: [u8; 16] = *b"STRATUM-VMSTATE\0";
/// The format this vmm writes and reads. Bumped when a field's meaning
/// changes or a field becomes required.
pub const FORMAT_VERSION: u32 = 1;
/// The largest state accepted: a VM's state is far smaller; the bound keeps
/// a hostile header from making us allocate.
pub const MAX_STATE_SIZE: u64 = 64 << 20;
/// Magic, version, reserved, length, SHA-256.
pub const HEADER_LEN: usize = 16 + 4 + 4 + 8 + 32;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a VM snapshot: the file does not start with a snapshot header")]
    Foreign,
    #[error(
        "the snapshot is of format version {found}, and this vmm reads version {FORMAT_VERSION} \
         only{hint}",
        hint = if *found > FORMAT_VERSION { " (it was made by a newer vmm)" } else { "" }
    )]
    Version { found: u32 },
    #[error("the snapshot is truncated: {what}")]
    Truncated { what: String },
    #[error("the snapshot's state is {0} bytes, more than the {MAX_STATE_SIZE} accepted")]
    TooLarge(u64),
    #[error("the snapshot is corrupt: its state does not match its checksum")]
    Checksum,
    #[error("the snapshot has bytes after its state")]
    TrailingData,
    #[error("cannot read the snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("the snapshot's state cannot be decoded: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("the VM's state cannot be encoded: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Writes `state` with its header.
pub fn write<T: Serialize>(out: &mut impl Write, state: &T) -> Result<(), FormatError> {
    let body = serde_json::to_vec(state).map_err(FormatError::Encode)?;
    let length = body.len() as u64;
    if length > MAX_STATE_SIZE {
        return Err(FormatError::TooLarge(length));
    }
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&length.to_le_bytes());
    header.extend_from_slice(&Sha256::digest(&body));
    out.write_all(&header)?;
    out.write_all(&body)?;
    Ok(())
}

/// The header's fields, checked as far as they can be without the state.
struct Header {
    version: u32,
    length: u64,
    digest: [u8; 32],
}

fn read_header(input: &mut impl Read) -> Result<Header, FormatError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_up_to(input, &mut header)?;
    if got < MAGIC.len() || header[..MAGIC.len()] != MAGIC {
        return Err(FormatError::Foreign);
    }
    if got < HEADER_LEN {
        return Err(FormatError::Truncated {
            what: format!("{got} bytes, shorter than the {HEADER_LEN}-byte header"),
        });
    }
    let field = |at: usize, len: usize| &header[at..at + len];
    let version = u32::from_le_bytes(field(16, 4).try_into().unwrap_or_default());
    let length = u64::from_le_bytes(field(24, 8).try_into().unwrap_or_default());
    let mut digest = [0u8; 32];
    digest.copy_from_slice(field(32, 32));
    Ok(Header {
        version,
        length,
        digest,
    })
}

/// The format version of the snapshot `input` holds (Firecracker's
/// `--describe-snapshot`): only the header is read.
pub fn version(input: &mut impl Read) -> Result<u32, FormatError> {
    Ok(read_header(input)?.version)
}

/// Reads a state written by [`write`], refusing anything else (see the
/// module doc).
pub fn read<T: DeserializeOwned>(input: &mut impl Read) -> Result<T, FormatError> {
    let header = read_header(input)?;
    if header.version != FORMAT_VERSION {
        return Err(FormatError::Version {
            found: header.version,
        });
    }
    if header.length > MAX_STATE_SIZE {
        return Err(FormatError::TooLarge(header.length));
    }
    // Bounded above, so the allocation is too.
    let length =
        usize::try_from(header.length).map_err(|_| FormatError::TooLarge(header.length))?;
    let mut body = vec![0u8; length];
    let got = read_up_to(input, &mut body)?;
    if got < length {
        return Err(FormatError::Truncated {
            what: format!("{got} of its {length} bytes of state"),
        });
    }
    if input.read(&mut [0u8; 1])? != 0 {
        return Err(FormatError::TrailingData);
    }
    if Sha256::digest(&body).as_slice() != header.digest {
        return Err(FormatError::Checksum);
    }
    serde_json::from_slice(&body).map_err(FormatError::Decode)
}

/// Fills `buf` as far as `input` goes; how many bytes that was.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> Result<usize, std::io::Error> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        name: String,
        registers: Vec<u64>,
    }

    fn state() -> State {
        State {
            name: "vm".into(),
            registers: vec![1, 2, u64::MAX],
        }
    }

    fn written() -> Vec<u8> {
        let mut file = Vec::new();
        write(&mut file, &state()).unwrap();
        file
    }

    fn read_back(file: &[u8]) -> Result<State, FormatError> {
        read(&mut &file[..])
    }

    #[test]
    fn a_written_state_reads_back() {
        let file = written();
        assert_eq!(&file[..16], b"STRATUM-VMSTATE\0");
        assert_eq!(read_back(&file).unwrap(), state());
        assert_eq!(version(&mut &file[..]).unwrap(), FORMAT_VERSION);
    }

    #[test]
    fn every_truncation_is_refused() {
        let file = written();
        for cut in 0..file.len() {
            let error = read_back(&file[..cut]).unwrap_err();
            assert!(
                matches!(error, FormatError::Foreign | FormatError::Truncated { .. }),
                "cut at {cut}: {error}"
            );
        }
    }

    #[test]
    fn foreign_newer_corrupt_and_padded_files_are_refused() {
        let file = written();
        let elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0 and more bytes".to_vec();
        assert!(matches!(read_back(&elf), Err(FormatError::Foreign)));

        let mut newer = file.clone();
        newer[16..20].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let error = read_back(&newer).unwrap_err();
        assert!(error.to_string().contains("made by a newer vmm"), "{error}");
        assert_eq!(version(&mut &newer[..]).unwrap(), FORMAT_VERSION + 1);

        let mut flipped = file.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert!(matches!(read_back(&flipped), Err(FormatError::Checksum)));

        let mut padded = file.clone();
        padded.push(b'\n');
        assert!(matches!(read_back(&padded), Err(FormatError::TrailingData)));

        let mut huge = file;
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(read_back(&huge), Err(FormatError::TooLarge(_))));
    }

    #[test]
    fn a_checksummed_body_that_is_not_the_state_is_a_decode_error() {
        let mut file = Vec::new();
        write(&mut file, &vec!["not", "a", "state"]).unwrap();
        assert!(matches!(read_back(&file), Err(FormatError::Decode(_))));
    }
}
