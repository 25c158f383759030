//! Errors of the codec: every way a peer's bytes (or a frame we were asked
//! to send) can be refused.

/// A frame could not be decoded or encoded.
///
/// Any error from [`crate::Codec::decode`] is fatal to the connection: the
/// session answers with GOAWAY (`PROTOCOL_ERROR`) and closes. A header-block
/// error in particular leaves the connection's shared zlib context unusable,
/// and the codec refuses every later header block with
/// [`HeaderError::ContextBroken`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A control frame names a SPDY version other than 3.
    #[error("unsupported SPDY version {version} (only 3 is spoken)")]
    UnsupportedVersion {
        /// The version the frame named.
        version: u16,
    },
    /// A frame's payload is longer than the decoder's limit, or (encoding)
    /// longer than the 24-bit length field holds.
    #[error("frame payload of {len} bytes is over the limit of {max}")]
    FrameTooLarge {
        /// The payload length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A control frame's length does not fit its type.
    #[error("{frame} frame with a payload of {len} bytes (not a valid length for it)")]
    InvalidLength {
        /// The frame type.
        frame: &'static str,
        /// The payload length it had.
        len: usize,
    },
    /// A frame that belongs to a stream names stream 0.
    #[error("{frame} frame on stream 0")]
    ZeroStreamId {
        /// The frame type.
        frame: &'static str,
    },
    /// (Encoding) a stream ID over 31 bits.
    #[error("stream ID {0:#x} does not fit in 31 bits")]
    StreamIdOutOfRange(u32),
    /// RST_STREAM with status 0, which the protocol does not define.
    #[error("RST_STREAM on stream {stream_id} with status 0")]
    ZeroRstStatus {
        /// The stream it named.
        stream_id: u32,
    },
    /// WINDOW_UPDATE whose delta is 0 or over 2^31 - 1.
    #[error("WINDOW_UPDATE on stream {stream_id} with delta {delta} (must be 1..=2^31-1)")]
    InvalidWindowDelta {
        /// The stream it named (0 is the session window).
        stream_id: u32,
        /// The delta it carried.
        delta: u32,
    },
    /// (Encoding) a SYN_STREAM priority over 7.
    #[error("SYN_STREAM priority {0} (must be 0..=7)")]
    InvalidPriority(u8),
    /// (Encoding) a SETTINGS ID over 24 bits.
    #[error("SETTINGS ID {0:#x} does not fit in 24 bits")]
    SettingIdOutOfRange(u32),
    /// The frame's header block was refused.
    #[error("header block: {0}")]
    Header(#[from] HeaderError),
}

/// A name/value header block could not be compressed, decompressed or
/// read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// zlib refused the compressed bytes.
    #[error("does not decompress: {0}")]
    Decompress(String),
    /// zlib failed to compress (not expected; reported rather than hidden).
    #[error("does not compress: {0}")]
    Compress(String),
    /// The peer's zlib stream asks for a dictionary other than SPDY/3's.
    #[error("zlib stream wants dictionary {0:#010x}, not SPDY/3's")]
    WrongDictionary(u32),
    /// The peer's zlib stream ended (a header block is sync-flushed, never
    /// finished: the context lives as long as the connection).
    #[error("zlib stream ended")]
    StreamEnded,
    /// An earlier block failed, so the shared context is out of step.
    #[error("compression context broken by an earlier error")]
    ContextBroken,
    /// Decompresses to more than the limit.
    #[error("decompresses to more than {max} bytes")]
    TooLarge {
        /// The limit in force.
        max: usize,
    },
    /// The block ends in the middle of a count, a length or a string.
    #[error("truncated")]
    Truncated,
    /// The block names more pairs than its bytes could hold.
    #[error("claims {count} pairs in {len} bytes")]
    BadCount {
        /// The pair count it claimed.
        count: u32,
        /// The bytes that followed it.
        len: usize,
    },
    /// Bytes follow the last pair.
    #[error("{0} bytes after the last pair")]
    TrailingBytes(usize),
    /// A pair with an empty name.
    #[error("empty header name")]
    EmptyName,
    /// A name with an upper-case letter (SPDY names are lower case).
    #[error("header name {0:?} is not lower case")]
    UppercaseName(String),
    /// The same name twice in one block.
    #[error("header name {0:?} appears twice")]
    DuplicateName(String),
    /// A name or value that is not UTF-8.
    #[error("header name or value is not UTF-8")]
    NotUtf8,
    /// (Encoding) a name or value with a NUL byte, which the wire format
    /// uses to separate values.
    #[error("header {0:?} has a NUL byte in its name or a value")]
    NulByte(String),
    /// (Encoding) a name or value longer than a 32-bit length.
    #[error("header {0:?} is too long to encode")]
    TooLong(String),
}

/// Why a [`crate::session::Session`] ended, or why it refused a request.
///
/// The first three end the session with GOAWAY (`PROTOCOL_ERROR`): the
/// peer broke the protocol. I/O and truncation end it without one (the
/// connection is gone).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The peer's bytes are not a valid frame (or a header block we were
    /// given does not encode).
    #[error("frame: {0}")]
    Frame(#[from] Error),
    /// The peer sent more DATA than the session window allowed.
    #[error("peer sent {len} bytes of DATA with {window} left in the session window")]
    SessionWindowExceeded {
        /// The frame's payload length.
        len: usize,
        /// What was left of our session receive window.
        window: i64,
    },
    /// A WINDOW_UPDATE took our session send window past 2^31 - 1.
    #[error("WINDOW_UPDATE took the session send window past 2^31-1")]
    SendWindowOverflow,
    /// Reading or writing the connection failed.
    #[error("connection {kind:?}: {message}")]
    Io {
        /// The I/O error's kind.
        kind: std::io::ErrorKind,
        /// Its message.
        message: String,
    },
    /// The connection ended in the middle of a frame.
    #[error("connection ended in the middle of a frame")]
    Truncated,
    /// (Opening a stream) the session has ended.
    #[error("session closed")]
    Closed,
    /// (Opening a stream) the peer sent GOAWAY.
    #[error("peer sent GOAWAY: no new streams")]
    GoneAway,
    /// (Opening a stream) every 31-bit stream ID of our parity is used.
    #[error("stream IDs exhausted")]
    StreamIdsExhausted,
    /// (Opening a stream) the peer answered SYN_STREAM with RST_STREAM.
    #[error("peer refused stream {stream_id}: RST_STREAM status {}", status.0)]
    Refused {
        /// The stream.
        stream_id: u32,
        /// The peer's status.
        status: crate::frame::RstStatus,
    },
}

impl From<std::io::Error> for SessionError {
    fn from(e: std::io::Error) -> Self {
        Self::Io {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}
