//! SPDY/3 name/value header blocks and their zlib compression.
//!
//! **Block format** (SPDY/3 §2.6.10): a 32-bit count of pairs, then for
//! each pair a 32-bit name length, the name, a 32-bit value length and the
//! value, all big-endian. A name appears once per block; several values
//! for it are joined by a NUL byte. Names are lower case.
//!
//! **Compression.** Every block on a connection is a piece of one zlib
//! stream per direction, started with SPDY/3's preset dictionary and
//! sync-flushed at the end of each block, never finished. So the state
//! lives for the connection: [`HeaderCodec`] holds the outbound deflater
//! and the inbound inflater, blocks must pass through it in the order they
//! are sent and received, and a block that fails to decompress breaks the
//! inbound context for good ([`HeaderError::ContextBroken`] from then on).
//! We compress at zlib level 9, like Go's spdystream (kubelet, crictl).
//!
//! **Refused:** a block that decompresses to more than
//! [`MAX_HEADER_BLOCK`] bytes (a decompression bomb), a pair count its bytes
//! cannot hold, truncated or trailing bytes, empty, upper-case or repeated
//! names, names or values that are not UTF-8 (everything Kubernetes sends
//! is ASCII), and a zlib stream that asks for another dictionary or ends.
//! Empty pieces between NULs are accepted, as Go accepts them.

use std::collections::BTreeMap;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::dictionary::SPDY3_DICTIONARY;
use crate::error::HeaderError;

/// Most bytes one header block may decompress to (1 MiB). Kubernetes'
/// blocks are a few dozen bytes.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Adler-32 of SPDY/3's header dictionary: the dictionary ID a peer's zlib
/// header names.
pub const SPDY3_DICTIONARY_ID: u32 = 0xe3c6_a7c2;

/// How much output room to add per inflate step.
const INFLATE_STEP: usize = 16 * 1024;

/// The name/value pairs of a SYN_STREAM, SYN_REPLY or HEADERS frame, as a
/// map from lower-case name to its values in order (like Go's
/// `http.Header`). Encoding is in name order, so it is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    map: BTreeMap<String, Vec<String>>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value for `name` (lower-cased), after any it has.
    pub fn append(&mut self, name: &str, value: impl Into<String>) {
        self.map
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.into());
    }

    /// Replaces every value of `name` (lower-cased) with `value`.
    pub fn insert(&mut self, name: &str, value: impl Into<String>) {
        self.map
            .insert(name.to_ascii_lowercase(), vec![value.into()]);
    }

    /// The first value of `name` (matched without regard to case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).first().map(String::as_str)
    }

    /// Every value of `name` (matched without regard to case), in order.
    pub fn get_all(&self, name: &str) -> &[String] {
        self.map
            .get(&name.to_ascii_lowercase())
            .map_or(&[], Vec::as_slice)
    }

    /// Removes `name` and returns its values.
    pub fn remove(&mut self, name: &str) -> Option<Vec<String>> {
        self.map.remove(&name.to_ascii_lowercase())
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every (name, value) pair, names in order, values in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map
            .iter()
            .flat_map(|(n, vs)| vs.iter().map(move |v| (n.as_str(), v.as_str())))
    }

    /// The uncompressed block: count, then length-prefixed names and
    /// NUL-joined values.
    pub fn to_block(&self) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::new();
        let count = u32::try_from(self.map.len())
            .map_err(|_| HeaderError::TooLong("(pair count)".into()))?;
        out.extend_from_slice(&count.to_be_bytes());
        for (name, values) in &self.map {
            if name.is_empty() {
                return Err(HeaderError::EmptyName);
            }
            if name.contains('\0') || values.iter().any(|v| v.contains('\0')) {
                return Err(HeaderError::NulByte(name.clone()));
            }
            let value = values.join("\0");
            for field in [name.as_str(), value.as_str()] {
                let len =
                    u32::try_from(field.len()).map_err(|_| HeaderError::TooLong(name.clone()))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(field.as_bytes());
            }
        }
        Ok(out)
    }

    /// Reads an uncompressed block, refusing what the module docs list.
    pub fn from_block(block: &[u8]) -> Result<Self, HeaderError> {
        let mut r = Reader(block);
        let count = r.u32()?;
        // Each pair takes at least 8 bytes (two lengths), so a count the
        // bytes cannot hold is refused before anything is allocated.
        if usize::try_from(count).map_or(true, |c| c > r.0.len() / 8) {
            return Err(HeaderError::BadCount {
                count,
                len: r.0.len(),
            });
        }
        let mut headers = Headers::new();
        for _ in 0..count {
            let name = r.string()?;
            if name.is_empty() {
                return Err(HeaderError::EmptyName);
            }
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(HeaderError::UppercaseName(name.to_owned()));
            }
            let value = r.string()?;
            if headers.map.contains_key(name) {
                return Err(HeaderError::DuplicateName(name.to_owned()));
            }
            let values = value.split('\0').map(str::to_owned).collect();
            headers.map.insert(name.to_owned(), values);
        }
        if !r.0.is_empty() {
            return Err(HeaderError::TrailingBytes(r.0.len()));
        }
        Ok(headers)
    }
}

impl<N: AsRef<str>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (n, v) in iter {
            h.append(n.as_ref(), v);
        }
        h
    }
}

/// Reads big-endian fields off the front of a slice, without panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeaderError> {
        if n > self.0.len() {
            return Err(HeaderError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, HeaderError> {
        let b = self.take(4)?;
        let arr: [u8; 4] = b.try_into().map_err(|_| HeaderError::Truncated)?;
        Ok(u32::from_be_bytes(arr))
    }

    fn string(&mut self) -> Result<&'a str, HeaderError> {
        let len = usize::try_from(self.u32()?).map_err(|_| HeaderError::Truncated)?;
        std::str::from_utf8(self.take(len)?).map_err(|_| HeaderError::NotUtf8)
    }
}

/// One connection's header compression state: the zlib stream we send
/// (deflate) and the one we receive (inflate), both with SPDY/3's
/// dictionary. See the module docs.
pub struct HeaderCodec {
    deflate: Compress,
    inflate: Decompress,
    /// An inbound block failed: the inflater is out of step with the peer.
    inflate_broken: bool,
    /// An outbound block failed part-way: the peer's inflater would be.
    deflate_broken: bool,
    max_block: usize,
}

impl std::fmt::Debug for HeaderCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCodec")
            .field("sent_bytes", &self.deflate.total_out())
            .field("received_bytes", &self.inflate.total_in())
            .field("inflate_broken", &self.inflate_broken)
            .field("deflate_broken", &self.deflate_broken)
            .field("max_block", &self.max_block)
            .finish()
    }
}

impl HeaderCodec {
    /// Fresh contexts for a new connection, with the
    /// [`MAX_HEADER_BLOCK`] limit.
    pub fn new() -> Result<Self, HeaderError> {
        Self::with_max_block(MAX_HEADER_BLOCK)
    }

    /// Fresh contexts, refusing blocks that decompress to more than
    /// `max_block` bytes.
    pub fn with_max_block(max_block: usize) -> Result<Self, HeaderError> {
        let mut deflate = Compress::new(Compression::best(), true);
        deflate
            .set_dictionary(&SPDY3_DICTIONARY)
            .map_err(|e| HeaderError::Compress(e.to_string()))?;
        Ok(Self {
            deflate,
            inflate: Decompress::new(true),
            inflate_broken: false,
            deflate_broken: false,
            max_block,
        })
    }

    /// Compresses `headers` as the next block of the outbound stream.
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, HeaderError> {
        // Validation happens here, before the stream is touched.
        let plain = headers.to_block()?;
        self.compress_raw(&plain)
    }

    /// Compresses an already serialized block (tests use it to send
    /// blocks [`Headers`] would not produce).
    pub(crate) fn compress_raw(&mut self, plain: &[u8]) -> Result<Vec<u8>, HeaderError> {
        if self.deflate_broken {
            return Err(HeaderError::ContextBroken);
        }
        let result = self.deflate_block(plain);
        if result.is_err() {
            self.deflate_broken = true;
        }
        result
    }

    fn deflate_block(&mut self, plain: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::new();
        let mut consumed = 0usize;
        loop {
            let rest = plain.get(consumed..).ok_or(HeaderError::Truncated)?;
            out.reserve(rest.len() / 2 + 64);
            let (in0, out0) = (self.deflate.total_in(), self.deflate.total_out());
            self.deflate
                .compress_vec(rest, &mut out, FlushCompress::Sync)
                .map_err(|e| HeaderError::Compress(e.to_string()))?;
            let read = progress(in0, self.deflate.total_in())?;
            let wrote = progress(out0, self.deflate.total_out())?;
            consumed = consumed.saturating_add(read);
            // The flush is complete once all input is in and zlib stopped
            // with output room to spare.
            if consumed >= plain.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if read == 0 && wrote == 0 && out.len() < out.capacity() {
                return Err(HeaderError::Compress("deflate made no progress".into()));
            }
        }
    }

    /// Marks the outbound context out of step with the peer (a compressed
    /// block that was not sent).
    pub(crate) fn break_outbound(&mut self) {
        self.deflate_broken = true;
    }

    /// Decompresses the next block of the inbound stream and reads it.
    pub fn decompress(&mut self, compressed: &[u8]) -> Result<Headers, HeaderError> {
        let plain = self.decompress_raw(compressed)?;
        Headers::from_block(&plain)
    }

    /// Decompresses the next inbound block to its serialized bytes.
    pub fn decompress_raw(&mut self, compressed: &[u8]) -> Result<Vec<u8>, HeaderError> {
        if self.inflate_broken {
            return Err(HeaderError::ContextBroken);
        }
        let result = self.inflate_block(compressed);
        if result.is_err() {
            self.inflate_broken = true;
        }
        result
    }

    fn inflate_block(&mut self, compressed: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::new();
        let mut consumed = 0usize;
        loop {
            let rest = compressed.get(consumed..).ok_or(HeaderError::Truncated)?;
            // Room for at most one byte over the limit: enough to see it
            // crossed, never a buffer the size of the bomb.
            let room = self.max_block.saturating_add(1).saturating_sub(out.len());
            out.reserve_exact(room.min(INFLATE_STEP));
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress_vec(rest, &mut out, FlushDecompress::Sync);
            let read = progress(in0, self.inflate.total_in())?;
            let wrote = progress(out0, self.inflate.total_out())?;
            consumed = consumed.saturating_add(read);
            match status {
                Ok(Status::StreamEnd) => return Err(HeaderError::StreamEnded),
                Ok(Status::Ok | Status::BufError) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(SPDY3_DICTIONARY_ID) => {
                        self.inflate
                            .set_dictionary(&SPDY3_DICTIONARY)
                            .map_err(|e| HeaderError::Decompress(e.to_string()))?;
                        continue;
                    }
                    Some(other) => return Err(HeaderError::WrongDictionary(other)),
                    None => return Err(HeaderError::Decompress(e.to_string())),
                },
            }
            if out.len() > self.max_block {
                return Err(HeaderError::TooLarge {
                    max: self.max_block,
                });
            }
            if consumed >= compressed.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if read == 0 && wrote == 0 && out.len() < out.capacity() {
                // Input left that zlib will not take: nothing more comes of it.
                return Err(HeaderError::Decompress("inflate made no progress".into()));
            }
        }
    }
}

/// Bytes a zlib counter moved, as a usize.
fn progress(before: u64, after: u64) -> Result<usize, HeaderError> {
    usize::try_from(after.saturating_sub(before))
        .map_err(|_| HeaderError::Decompress("counter overflow".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k8s_headers() -> Headers {
        [
            ("streamType", "stdout"),
            ("port", "8080"),
            ("requestID", "0"),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn dictionary_is_spdy3s() {
        assert_eq!(SPDY3_DICTIONARY.len(), 1423);
        // zlib returns the dictionary's Adler-32 when it is set: the ID
        // SPDY/3 peers (Chromium, Go) put in their first block.
        let mut c = Compress::new(Compression::best(), true);
        assert_eq!(
            c.set_dictionary(&SPDY3_DICTIONARY).unwrap(),
            SPDY3_DICTIONARY_ID
        );
    }

    #[test]
    fn first_block_starts_like_gos() {
        // Go's zlib.NewWriterLevelDict(BestCompression, dict) writes the
        // zlib header 0x78 0xf9 (level 9, FDICT) and the dictionary's ID.
        let mut codec = HeaderCodec::new().unwrap();
        let block = codec.compress(&k8s_headers()).unwrap();
        assert_eq!(block[..6], [0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2]);
        // Sync flush: every block ends with an empty stored block.
        assert_eq!(block[block.len() - 4..], [0x00, 0x00, 0xff, 0xff]);
    }

    #[test]
    fn block_round_trip() {
        let h = k8s_headers();
        let plain = h.to_block().unwrap();
        assert_eq!(Headers::from_block(&plain).unwrap(), h);
        assert_eq!(h.get("StreamType"), Some("stdout"));
        assert_eq!(h.get("requestid"), Some("0"));
    }

    #[test]
    fn plain_block_layout() {
        let mut h = Headers::new();
        h.append("a", "x");
        h.append("a", "yz");
        assert_eq!(
            h.to_block().unwrap(),
            [0, 0, 0, 1, 0, 0, 0, 1, b'a', 0, 0, 0, 4, b'x', 0, b'y', b'z']
        );
        let back = Headers::from_block(&h.to_block().unwrap()).unwrap();
        assert_eq!(back.get_all("a"), ["x", "yz"]);
    }

    #[test]
    fn compressed_round_trip_over_one_context() {
        let mut tx = HeaderCodec::new().unwrap();
        let mut rx = HeaderCodec::new().unwrap();
        let mut sizes = Vec::new();
        for i in 0..20 {
            let mut h = k8s_headers();
            h.insert("requestid", i.to_string());
            let block = tx.compress(&h).unwrap();
            sizes.push(block.len());
            assert_eq!(rx.decompress(&block).unwrap(), h, "block {i}");
        }
        // The shared window makes repeats cheap.
        assert!(sizes[19] < sizes[0], "{sizes:?}");
    }

    #[test]
    fn empty_and_large_blocks_round_trip() {
        let mut tx = HeaderCodec::new().unwrap();
        let mut rx = HeaderCodec::new().unwrap();
        let empty = Headers::new();
        assert_eq!(rx.decompress(&tx.compress(&empty).unwrap()).unwrap(), empty);
        // Incompressible-ish value bigger than one inflate step.
        let mut big = Headers::new();
        let value: String = (0..100_000u32)
            .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
            .collect();
        big.append("big", value);
        assert_eq!(rx.decompress(&tx.compress(&big).unwrap()).unwrap(), big);
        assert_eq!(rx.decompress(&tx.compress(&empty).unwrap()).unwrap(), empty);
    }

    #[test]
    fn bomb_is_refused() {
        let mut tx = HeaderCodec::new().unwrap();
        let mut rx = HeaderCodec::with_max_block(4096).unwrap();
        let mut h = Headers::new();
        h.append("x", "a".repeat(100_000));
        let block = tx.compress(&h).unwrap();
        assert!(block.len() < 1000);
        assert_eq!(
            rx.decompress(&block),
            Err(HeaderError::TooLarge { max: 4096 })
        );
        // And the context is now broken.
        assert_eq!(rx.decompress(&block), Err(HeaderError::ContextBroken));
    }

    #[test]
    fn garbage_does_not_decompress_and_breaks_the_context() {
        let mut rx = HeaderCodec::new().unwrap();
        assert!(matches!(
            rx.decompress(b"\x12\x34garbage"),
            Err(HeaderError::Decompress(_))
        ));
        assert_eq!(rx.decompress(b""), Err(HeaderError::ContextBroken));
    }

    #[test]
    fn other_dictionary_is_refused() {
        // zlib header with FDICT and a dictionary ID that is not SPDY/3's.
        let mut c = Compress::new(Compression::best(), true);
        c.set_dictionary(b"not the spdy dictionary").unwrap();
        let mut out = Vec::with_capacity(128);
        c.compress_vec(b"\0\0\0\0", &mut out, FlushCompress::Sync)
            .unwrap();
        let mut rx = HeaderCodec::new().unwrap();
        assert!(matches!(
            rx.decompress(&out),
            Err(HeaderError::WrongDictionary(id)) if id != SPDY3_DICTIONARY_ID
        ));
    }

    #[test]
    fn finished_stream_is_refused() {
        let mut c = Compress::new(Compression::best(), true);
        c.set_dictionary(&SPDY3_DICTIONARY).unwrap();
        let mut out = Vec::with_capacity(128);
        c.compress_vec(b"\0\0\0\0", &mut out, FlushCompress::Finish)
            .unwrap();
        let mut rx = HeaderCodec::new().unwrap();
        assert_eq!(rx.decompress(&out), Err(HeaderError::StreamEnded));
    }

    #[test]
    fn malformed_plain_blocks() {
        let cases: &[(&[u8], HeaderError)] = &[
            (b"", HeaderError::Truncated),
            (b"\0\0", HeaderError::Truncated),
            (
                b"\xff\xff\xff\xff\0\0\0\0",
                HeaderError::BadCount {
                    count: u32::MAX,
                    len: 4,
                },
            ),
            (b"\0\0\0\x01\0\0\0\x01a\0\0\0", HeaderError::Truncated),
            (
                b"\0\0\0\x01\0\0\0\x01a\xff\xff\xff\xff",
                HeaderError::Truncated,
            ),
            (b"\0\0\0\x01\0\0\0\0\0\0\0\0", HeaderError::EmptyName),
            (
                b"\0\0\0\x01\0\0\0\x01A\0\0\0\0",
                HeaderError::UppercaseName("A".into()),
            ),
            (
                b"\0\0\0\x02\0\0\0\x01a\0\0\0\0\0\0\0\x01a\0\0\0\0",
                HeaderError::DuplicateName("a".into()),
            ),
            (b"\0\0\0\x01\0\0\0\x01\xff\0\0\0\0", HeaderError::NotUtf8),
            (b"\0\0\0\0\x01", HeaderError::TrailingBytes(1)),
        ];
        for (block, want) in cases {
            assert_eq!(Headers::from_block(block).as_ref(), Err(want), "{block:?}");
        }
    }

    #[test]
    fn nul_splits_values_like_go() {
        let block = b"\0\0\0\x01\0\0\0\x01a\0\0\0\x03x\0\0";
        let h = Headers::from_block(block).unwrap();
        assert_eq!(h.get_all("a"), ["x", "", ""]);
    }

    #[test]
    fn unencodable_headers_are_refused_before_the_stream_moves() {
        let mut tx = HeaderCodec::new().unwrap();
        let mut bad = Headers::new();
        bad.append("a", "x\0y");
        assert_eq!(tx.compress(&bad), Err(HeaderError::NulByte("a".into())));
        let mut empty_name = Headers::new();
        empty_name.append("", "x");
        assert_eq!(tx.compress(&empty_name), Err(HeaderError::EmptyName));
        // The outbound context is still good.
        let mut rx = HeaderCodec::new().unwrap();
        let h = k8s_headers();
        assert_eq!(rx.decompress(&tx.compress(&h).unwrap()).unwrap(), h);
    }
}
