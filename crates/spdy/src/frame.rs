//! SPDY/3.1 frames and the connection codec that reads and writes them.
//!
//! **Layout.** Every frame starts with 8 bytes. A control frame: a set
//! control bit, the 15-bit version (3), the 16-bit type, 8 bits of flags and
//! a 24-bit payload length. A data frame: a clear control bit, the 31-bit
//! stream ID, 8 bits of flags and a 24-bit length. All fields big-endian.
//!
//! [`Codec::decode`] reads from a byte buffer as it fills: it returns
//! `Ok(None)` until a whole frame is there, and touches nothing (not even
//! the header context) before then, so a caller appends what the socket
//! gave and calls again. [`Codec::encode`] appends a frame's bytes.
//!
//! **What we accept that the spec or Go would not.** Unknown control frame
//! types are handed back as [`Frame::Unknown`] for the caller to ignore, as
//! the spec says (Go's spdystream fails the connection instead; it never
//! sends one). Flag bits a frame does not define are ignored. A PING with ID
//! 0 is accepted (Go refuses it; the spec does not). Reserved high bits of
//! stream IDs are masked off.
//!
//! **Refused:** a control frame of a version other than 3 (Go does not
//! check), a payload longer than [`Codec::max_frame_len`], a length that
//! does not fit the frame type (e.g. a SETTINGS count that does not match
//! its length, which Go trusts for an allocation), stream 0 on frames that
//! belong to a stream, RST_STREAM status 0, a WINDOW_UPDATE delta of 0 (Go
//! does not check), and header blocks as [`crate::headers`] lists. The
//! CREDENTIAL frame of SPDY/3 was dropped in 3.1 and is just an unknown
//! type here.

use crate::error::Error;
use crate::headers::{HeaderCodec, Headers};

/// The protocol version written and accepted.
pub const SPDY_VERSION: u16 = 3;

/// Largest payload the 24-bit length field can express (16 MiB - 1); the
/// default decode limit.
pub const MAX_FRAME_LEN: usize = 0x00ff_ffff;

/// Bytes of every frame's header.
pub const FRAME_HEADER_LEN: usize = 8;

/// FIN on a data frame or a SYN_STREAM, SYN_REPLY or HEADERS frame: the
/// sender's half of the stream is done.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL on a SYN_STREAM: the receiver's half starts closed.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// CLEAR_SETTINGS on a SETTINGS frame.
pub const FLAG_SETTINGS_CLEAR_SETTINGS: u8 = 0x01;

/// Control frame type codes.
pub mod frame_type {
    /// SYN_STREAM.
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY.
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM.
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS.
    pub const SETTINGS: u16 = 4;
    /// PING.
    pub const PING: u16 = 6;
    /// GOAWAY.
    pub const GOAWAY: u16 = 7;
    /// HEADERS.
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u16 = 9;
}

const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// RST_STREAM status code. Codes this crate does not name pass through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RstStatus(pub u32);

impl RstStatus {
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: Self = Self(1);
    /// INVALID_STREAM.
    pub const INVALID_STREAM: Self = Self(2);
    /// REFUSED_STREAM.
    pub const REFUSED_STREAM: Self = Self(3);
    /// UNSUPPORTED_VERSION.
    pub const UNSUPPORTED_VERSION: Self = Self(4);
    /// CANCEL.
    pub const CANCEL: Self = Self(5);
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: Self = Self(6);
    /// FLOW_CONTROL_ERROR.
    pub const FLOW_CONTROL_ERROR: Self = Self(7);
    /// STREAM_IN_USE.
    pub const STREAM_IN_USE: Self = Self(8);
    /// STREAM_ALREADY_CLOSED.
    pub const STREAM_ALREADY_CLOSED: Self = Self(9);
    /// INVALID_CREDENTIALS (SPDY/3; unused in 3.1).
    pub const INVALID_CREDENTIALS: Self = Self(10);
    /// FRAME_TOO_LARGE.
    pub const FRAME_TOO_LARGE: Self = Self(11);
}

/// GOAWAY status code. Codes this crate does not name pass through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoAwayStatus(pub u32);

impl GoAwayStatus {
    /// OK: a normal shutdown.
    pub const OK: Self = Self(0);
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: Self = Self(1);
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: Self = Self(2);
}

/// SETTINGS IDs (24 bits on the wire).
pub mod setting_id {
    /// SETTINGS_UPLOAD_BANDWIDTH.
    pub const UPLOAD_BANDWIDTH: u32 = 1;
    /// SETTINGS_DOWNLOAD_BANDWIDTH.
    pub const DOWNLOAD_BANDWIDTH: u32 = 2;
    /// SETTINGS_ROUND_TRIP_TIME.
    pub const ROUND_TRIP_TIME: u32 = 3;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    /// SETTINGS_CURRENT_CWND.
    pub const CURRENT_CWND: u32 = 5;
    /// SETTINGS_DOWNLOAD_RETRANS_RATE.
    pub const DOWNLOAD_RETRANS_RATE: u32 = 6;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
    /// SETTINGS_CLIENT_CERTIFICATE_VECTOR_SIZE.
    pub const CLIENT_CERTIFICATE_VECTOR_SIZE: u32 = 8;
}

/// SYN_STREAM: the peer opens a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynStream {
    /// The new stream (odd from a client).
    pub stream_id: u32,
    /// The stream this one is associated with, or 0.
    pub associated_to: u32,
    /// 0 (highest) to 7.
    pub priority: u8,
    /// Credential slot (unused in 3.1; Go sends 0).
    pub slot: u8,
    /// The sender sends nothing more on it.
    pub fin: bool,
    /// The receiver may not send on it.
    pub unidirectional: bool,
    /// The stream's headers (Kubernetes: `streamtype`, `port`, `requestid`).
    pub headers: Headers,
}

/// SYN_REPLY: the receiver of a SYN_STREAM accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynReply {
    /// The stream accepted.
    pub stream_id: u32,
    /// The sender sends nothing more on it.
    pub fin: bool,
    /// Reply headers.
    pub headers: Headers,
}

/// RST_STREAM: a stream ends abnormally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RstStream {
    /// The stream.
    pub stream_id: u32,
    /// Why (never 0).
    pub status: RstStatus,
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// FLAG_SETTINGS_PERSIST_VALUE (1) / FLAG_SETTINGS_PERSISTED (2).
    pub flags: u8,
    /// The setting (24 bits): see [`setting_id`].
    pub id: u32,
    /// Its value.
    pub value: u32,
}

/// SETTINGS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// FLAG_SETTINGS_CLEAR_SETTINGS.
    pub clear: bool,
    /// The entries in order.
    pub entries: Vec<Setting>,
}

/// GOAWAY: the sender accepts no new streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoAway {
    /// Last stream the sender acted on (0 if none).
    pub last_good_stream_id: u32,
    /// Why.
    pub status: GoAwayStatus,
}

/// HEADERS: more headers for an open stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadersFrame {
    /// The stream.
    pub stream_id: u32,
    /// The sender sends nothing more on it.
    pub fin: bool,
    /// The headers.
    pub headers: Headers,
}

/// WINDOW_UPDATE: the receiver can take `delta` more bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUpdate {
    /// The stream, or 0 for the whole session (SPDY/3.1).
    pub stream_id: u32,
    /// 1..=2^31-1.
    pub delta: u32,
}

/// DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// The stream (never 0).
    pub stream_id: u32,
    /// The sender's last data on it.
    pub fin: bool,
    /// The payload.
    pub data: Vec<u8>,
}

/// A control frame of a type this crate does not know, to be ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownControl {
    /// Its type code.
    pub frame_type: u16,
    /// Its flags.
    pub flags: u8,
    /// Its payload, unread.
    pub payload: Vec<u8>,
}

/// A SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// SYN_STREAM.
    SynStream(SynStream),
    /// SYN_REPLY.
    SynReply(SynReply),
    /// RST_STREAM.
    RstStream(RstStream),
    /// SETTINGS.
    Settings(Settings),
    /// PING, with its ID.
    Ping(u32),
    /// GOAWAY.
    GoAway(GoAway),
    /// HEADERS.
    Headers(HeadersFrame),
    /// WINDOW_UPDATE.
    WindowUpdate(WindowUpdate),
    /// DATA.
    Data(Data),
    /// A control frame type unknown here (received only).
    Unknown(UnknownControl),
}

/// One connection's framing state: the header compression contexts and the
/// decode limit. One per connection, used for every frame in order.
#[derive(Debug)]
pub struct Codec {
    headers: HeaderCodec,
    max_frame_len: usize,
}

impl Codec {
    /// A codec for a new connection, with the protocol's own frame limit.
    pub fn new() -> Result<Self, Error> {
        Ok(Self {
            headers: HeaderCodec::new()?,
            max_frame_len: MAX_FRAME_LEN,
        })
    }

    /// Refuses payloads over `max` bytes when decoding (capped at
    /// [`MAX_FRAME_LEN`]), so a peer cannot make us buffer more.
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max.min(MAX_FRAME_LEN);
        self
    }

    /// The decode limit on a frame's payload.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The header compression contexts.
    pub fn header_codec(&mut self) -> &mut HeaderCodec {
        &mut self.headers
    }

    /// Decodes the frame at the front of `buf`: `Ok(Some((frame, used)))`
    /// with the bytes it took, or `Ok(None)` if `buf` holds only part of a
    /// frame (nothing is consumed or changed then).
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, Error> {
        let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let word0 = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let flags = header[4];
        let len =
            usize::from(header[5]) << 16 | usize::from(header[6]) << 8 | usize::from(header[7]);
        let control = word0 & 0x8000_0000 != 0;
        if control {
            // Checked before waiting for the payload, so a peer speaking
            // another version is told at once.
            let version = ((word0 >> 16) & 0x7fff) as u16;
            if version != SPDY_VERSION {
                return Err(Error::UnsupportedVersion { version });
            }
        }
        if len > self.max_frame_len {
            return Err(Error::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let total = FRAME_HEADER_LEN + len;
        let Some(payload) = buf.get(FRAME_HEADER_LEN..total) else {
            return Ok(None);
        };
        let frame = if control {
            self.decode_control((word0 & 0xffff) as u16, flags, payload)?
        } else {
            let stream_id = word0 & STREAM_ID_MASK;
            if stream_id == 0 {
                return Err(Error::ZeroStreamId { frame: "DATA" });
            }
            Frame::Data(Data {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                data: payload.to_vec(),
            })
        };
        Ok(Some((frame, total)))
    }

    fn decode_control(&mut self, ty: u16, flags: u8, p: &[u8]) -> Result<Frame, Error> {
        let fin = flags & FLAG_FIN != 0;
        let frame = match ty {
            frame_type::SYN_STREAM => {
                let name = "SYN_STREAM";
                let (Some(stream_id), Some(associated_to), Some(&[prio, slot]), Some(block)) =
                    (word(p, 0), word(p, 4), p.get(8..10), p.get(10..))
                else {
                    return Err(Error::InvalidLength {
                        frame: name,
                        len: p.len(),
                    });
                };
                let stream_id = nonzero_stream(stream_id & STREAM_ID_MASK, name)?;
                Frame::SynStream(SynStream {
                    stream_id,
                    associated_to: associated_to & STREAM_ID_MASK,
                    priority: prio >> 5,
                    slot,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.headers.decompress(block)?,
                })
            }
            frame_type::SYN_REPLY | frame_type::HEADERS => {
                let name = if ty == frame_type::SYN_REPLY {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                };
                let (Some(stream_id), Some(block)) = (word(p, 0), p.get(4..)) else {
                    return Err(Error::InvalidLength {
                        frame: name,
                        len: p.len(),
                    });
                };
                let stream_id = nonzero_stream(stream_id & STREAM_ID_MASK, name)?;
                let headers = self.headers.decompress(block)?;
                if ty == frame_type::SYN_REPLY {
                    Frame::SynReply(SynReply {
                        stream_id,
                        fin,
                        headers,
                    })
                } else {
                    Frame::Headers(HeadersFrame {
                        stream_id,
                        fin,
                        headers,
                    })
                }
            }
            frame_type::RST_STREAM => {
                let (stream_id, status) = two_words(p, "RST_STREAM")?;
                let stream_id = nonzero_stream(stream_id & STREAM_ID_MASK, "RST_STREAM")?;
                if status == 0 {
                    return Err(Error::ZeroRstStatus { stream_id });
                }
                Frame::RstStream(RstStream {
                    stream_id,
                    status: RstStatus(status),
                })
            }
            frame_type::SETTINGS => {
                let bad = || Error::InvalidLength {
                    frame: "SETTINGS",
                    len: p.len(),
                };
                let count = word(p, 0).ok_or_else(bad)?;
                let entries = p.get(4..).ok_or_else(bad)?;
                // The count must match the length exactly: it is checked
                // against the bytes before anything is allocated for it.
                if usize::try_from(count).ok().and_then(|c| c.checked_mul(8)) != Some(entries.len())
                {
                    return Err(bad());
                }
                let entries = entries
                    .chunks_exact(8)
                    .map(|e| {
                        let id_word = word(e, 0).unwrap_or_default();
                        Setting {
                            flags: (id_word >> 24) as u8,
                            id: id_word & 0x00ff_ffff,
                            value: word(e, 4).unwrap_or_default(),
                        }
                    })
                    .collect();
                Frame::Settings(Settings {
                    clear: flags & FLAG_SETTINGS_CLEAR_SETTINGS != 0,
                    entries,
                })
            }
            frame_type::PING => {
                if p.len() != 4 {
                    return Err(Error::InvalidLength {
                        frame: "PING",
                        len: p.len(),
                    });
                }
                Frame::Ping(word(p, 0).unwrap_or_default())
            }
            frame_type::GOAWAY => {
                let (last, status) = two_words(p, "GOAWAY")?;
                Frame::GoAway(GoAway {
                    last_good_stream_id: last & STREAM_ID_MASK,
                    status: GoAwayStatus(status),
                })
            }
            frame_type::WINDOW_UPDATE => {
                let (stream_id, delta) = two_words(p, "WINDOW_UPDATE")?;
                let (stream_id, delta) = (stream_id & STREAM_ID_MASK, delta & STREAM_ID_MASK);
                if delta == 0 {
                    return Err(Error::InvalidWindowDelta { stream_id, delta });
                }
                Frame::WindowUpdate(WindowUpdate { stream_id, delta })
            }
            other => Frame::Unknown(UnknownControl {
                frame_type: other,
                flags,
                payload: p.to_vec(),
            }),
        };
        Ok(frame)
    }

    /// Appends `frame`'s bytes to `out`. On error nothing is appended, and
    /// the outbound header context moves only for a frame that is written.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), Error> {
        match frame {
            Frame::SynStream(f) => {
                let stream_id = check_stream(f.stream_id, "SYN_STREAM")?;
                if f.associated_to > STREAM_ID_MASK {
                    return Err(Error::StreamIdOutOfRange(f.associated_to));
                }
                if f.priority > 7 {
                    return Err(Error::InvalidPriority(f.priority));
                }
                let block = self.headers.compress(&f.headers)?;
                let flags = flag(f.fin, FLAG_FIN) | flag(f.unidirectional, FLAG_UNIDIRECTIONAL);
                let mut p = Vec::with_capacity(10 + block.len());
                p.extend_from_slice(&stream_id.to_be_bytes());
                p.extend_from_slice(&f.associated_to.to_be_bytes());
                p.push(f.priority << 5);
                p.push(f.slot);
                p.extend_from_slice(&block);
                self.control_with_block(out, frame_type::SYN_STREAM, flags, &p)
            }
            Frame::SynReply(SynReply {
                stream_id,
                fin,
                headers,
            })
            | Frame::Headers(HeadersFrame {
                stream_id,
                fin,
                headers,
            }) => {
                let (ty, name) = match frame {
                    Frame::SynReply(_) => (frame_type::SYN_REPLY, "SYN_REPLY"),
                    _ => (frame_type::HEADERS, "HEADERS"),
                };
                let stream_id = check_stream(*stream_id, name)?;
                let block = self.headers.compress(headers)?;
                let mut p = Vec::with_capacity(4 + block.len());
                p.extend_from_slice(&stream_id.to_be_bytes());
                p.extend_from_slice(&block);
                self.control_with_block(out, ty, flag(*fin, FLAG_FIN), &p)
            }
            Frame::RstStream(f) => {
                let stream_id = check_stream(f.stream_id, "RST_STREAM")?;
                if f.status.0 == 0 {
                    return Err(Error::ZeroRstStatus { stream_id });
                }
                control(
                    out,
                    frame_type::RST_STREAM,
                    0,
                    &words(&[stream_id, f.status.0]),
                )
            }
            Frame::Settings(f) => {
                let count = u32::try_from(f.entries.len()).map_err(|_| Error::FrameTooLarge {
                    len: f.entries.len(),
                    max: MAX_FRAME_LEN,
                })?;
                let mut p = Vec::with_capacity(4 + 8 * f.entries.len());
                p.extend_from_slice(&count.to_be_bytes());
                for e in &f.entries {
                    if e.id > 0x00ff_ffff {
                        return Err(Error::SettingIdOutOfRange(e.id));
                    }
                    p.extend_from_slice(&(u32::from(e.flags) << 24 | e.id).to_be_bytes());
                    p.extend_from_slice(&e.value.to_be_bytes());
                }
                let flags = flag(f.clear, FLAG_SETTINGS_CLEAR_SETTINGS);
                control(out, frame_type::SETTINGS, flags, &p)
            }
            Frame::Ping(id) => control(out, frame_type::PING, 0, &id.to_be_bytes()),
            Frame::GoAway(f) => {
                if f.last_good_stream_id > STREAM_ID_MASK {
                    return Err(Error::StreamIdOutOfRange(f.last_good_stream_id));
                }
                control(
                    out,
                    frame_type::GOAWAY,
                    0,
                    &words(&[f.last_good_stream_id, f.status.0]),
                )
            }
            Frame::WindowUpdate(f) => {
                if f.stream_id > STREAM_ID_MASK {
                    return Err(Error::StreamIdOutOfRange(f.stream_id));
                }
                if f.delta == 0 || f.delta > STREAM_ID_MASK {
                    return Err(Error::InvalidWindowDelta {
                        stream_id: f.stream_id,
                        delta: f.delta,
                    });
                }
                control(
                    out,
                    frame_type::WINDOW_UPDATE,
                    0,
                    &words(&[f.stream_id, f.delta]),
                )
            }
            Frame::Data(f) => {
                let stream_id = check_stream(f.stream_id, "DATA")?;
                let len = frame_len(f.data.len())?;
                out.reserve(FRAME_HEADER_LEN + f.data.len());
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(
                    &(u32::from(flag(f.fin, FLAG_FIN)) << 24 | len).to_be_bytes(),
                );
                out.extend_from_slice(&f.data);
                Ok(())
            }
            Frame::Unknown(f) => control(out, f.frame_type, f.flags, &f.payload),
        }
    }
}

impl Codec {
    /// [`control`] for a frame whose header block is already compressed:
    /// if it cannot be written, the peer will never see a block our
    /// context has moved past, so the outbound context is broken.
    fn control_with_block(
        &mut self,
        out: &mut Vec<u8>,
        ty: u16,
        flags: u8,
        payload: &[u8],
    ) -> Result<(), Error> {
        let result = control(out, ty, flags, payload);
        if result.is_err() {
            self.headers.break_outbound();
        }
        result
    }
}

/// Appends a control frame with this payload.
fn control(out: &mut Vec<u8>, ty: u16, flags: u8, payload: &[u8]) -> Result<(), Error> {
    let len = frame_len(payload.len())?;
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&(0x8000 | SPDY_VERSION).to_be_bytes());
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(u32::from(flags) << 24 | len).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// `bit` if `on`.
fn flag(on: bool, bit: u8) -> u8 {
    if on {
        bit
    } else {
        0
    }
}

/// A payload length as the 24-bit field, or FrameTooLarge.
fn frame_len(len: usize) -> Result<u32, Error> {
    u32::try_from(len)
        .ok()
        .filter(|&l| l as usize <= MAX_FRAME_LEN)
        .ok_or(Error::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        })
}

/// The big-endian u32 at `at`, if the slice holds it.
fn word(p: &[u8], at: usize) -> Option<u32> {
    let b = p.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

/// A payload of exactly two words.
fn two_words(p: &[u8], frame: &'static str) -> Result<(u32, u32), Error> {
    match (p.len(), word(p, 0), word(p, 4)) {
        (8, Some(a), Some(b)) => Ok((a, b)),
        _ => Err(Error::InvalidLength {
            frame,
            len: p.len(),
        }),
    }
}

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_be_bytes()).collect()
}

fn nonzero_stream(id: u32, frame: &'static str) -> Result<u32, Error> {
    if id == 0 {
        Err(Error::ZeroStreamId { frame })
    } else {
        Ok(id)
    }
}

/// A stream ID to send: nonzero and 31 bits.
fn check_stream(id: u32, frame: &'static str) -> Result<u32, Error> {
    if id > STREAM_ID_MASK {
        return Err(Error::StreamIdOutOfRange(id));
    }
    nonzero_stream(id, frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::HeaderError;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().copied().collect()
    }

    /// One of every frame type, with flags set where a type has them.
    fn every_frame() -> Vec<Frame> {
        vec![
            Frame::SynStream(SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: headers(&[("streamtype", "error"), ("requestid", "0")]),
            }),
            Frame::SynStream(SynStream {
                stream_id: 0x7fff_ffff,
                associated_to: 3,
                priority: 7,
                slot: 9,
                fin: true,
                unidirectional: true,
                headers: headers(&[("streamtype", "data"), ("port", "8080")]),
            }),
            Frame::SynReply(SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new(),
            }),
            Frame::SynReply(SynReply {
                stream_id: 3,
                fin: true,
                headers: headers(&[("a", "b")]),
            }),
            Frame::RstStream(RstStream {
                stream_id: 5,
                status: RstStatus::CANCEL,
            }),
            Frame::Settings(Settings {
                clear: false,
                entries: vec![],
            }),
            Frame::Settings(Settings {
                clear: true,
                entries: vec![
                    Setting {
                        flags: 1,
                        id: setting_id::INITIAL_WINDOW_SIZE,
                        value: 65536,
                    },
                    Setting {
                        flags: 0,
                        id: 0x00ff_ffff,
                        value: u32::MAX,
                    },
                ],
            }),
            Frame::Ping(1),
            Frame::Ping(u32::MAX),
            Frame::GoAway(GoAway {
                last_good_stream_id: 7,
                status: GoAwayStatus::OK,
            }),
            Frame::Headers(HeadersFrame {
                stream_id: 7,
                fin: true,
                headers: headers(&[("x", "1"), ("x", "2")]),
            }),
            Frame::WindowUpdate(WindowUpdate {
                stream_id: 0,
                delta: 1,
            }),
            Frame::WindowUpdate(WindowUpdate {
                stream_id: 9,
                delta: 0x7fff_ffff,
            }),
            Frame::Data(Data {
                stream_id: 1,
                fin: false,
                data: b"hello".to_vec(),
            }),
            Frame::Data(Data {
                stream_id: 1,
                fin: true,
                data: vec![],
            }),
            Frame::Unknown(UnknownControl {
                frame_type: 10, // SPDY/3's CREDENTIAL, gone in 3.1
                flags: 0x80,
                payload: vec![1, 2, 3],
            }),
        ]
    }

    fn encode_one(tx: &mut Codec, f: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        tx.encode(f, &mut out).unwrap();
        out
    }

    #[test]
    fn every_frame_round_trips() {
        let (mut tx, mut rx) = (Codec::new().unwrap(), Codec::new().unwrap());
        for f in every_frame() {
            let bytes = encode_one(&mut tx, &f);
            let (back, used) = rx.decode(&bytes).unwrap().unwrap();
            assert_eq!(back, f);
            assert_eq!(used, bytes.len());
        }
    }

    #[test]
    fn a_frame_split_at_every_byte_decodes_only_when_whole() {
        let (mut tx, mut rx) = (Codec::new().unwrap(), Codec::new().unwrap());
        for f in every_frame() {
            let bytes = encode_one(&mut tx, &f);
            for cut in 0..bytes.len() {
                assert_eq!(
                    rx.decode(&bytes[..cut]).unwrap(),
                    None,
                    "{f:?} cut at {cut}"
                );
            }
            // The header context was not touched by the partial calls.
            assert_eq!(rx.decode(&bytes).unwrap(), Some((f, bytes.len())));
        }
    }

    #[test]
    fn a_stream_fed_byte_by_byte() {
        let (mut tx, mut rx) = (Codec::new().unwrap(), Codec::new().unwrap());
        let frames = every_frame();
        let mut wire = Vec::new();
        for f in &frames {
            tx.encode(f, &mut wire).unwrap();
        }
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        for &b in &wire {
            buf.push(b);
            while let Some((f, used)) = rx.decode(&buf).unwrap() {
                buf.drain(..used);
                got.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, frames);
    }

    #[test]
    fn fixed_frames_have_gos_bytes() {
        // The layouts spdystream's writer produces (version 3).
        let mut tx = Codec::new().unwrap();
        let cases: Vec<(Frame, Vec<u8>)> = vec![
            (
                Frame::RstStream(RstStream {
                    stream_id: 3,
                    status: RstStatus::PROTOCOL_ERROR,
                }),
                vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 1],
            ),
            (Frame::Ping(5), vec![0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 5]),
            (
                Frame::GoAway(GoAway {
                    last_good_stream_id: 9,
                    status: GoAwayStatus::OK,
                }),
                vec![0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0, 0],
            ),
            (
                Frame::WindowUpdate(WindowUpdate {
                    stream_id: 1,
                    delta: 0x1000,
                }),
                vec![0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0x10, 0],
            ),
            (
                Frame::Settings(Settings {
                    clear: false,
                    entries: vec![Setting {
                        flags: 1,
                        id: 4,
                        value: 100,
                    }],
                }),
                vec![
                    0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 1, 0, 0, 4, 0, 0, 0, 100,
                ],
            ),
            (
                Frame::Data(Data {
                    stream_id: 1,
                    fin: true,
                    data: b"hi".to_vec(),
                }),
                vec![0, 0, 0, 1, 1, 0, 0, 2, b'h', b'i'],
            ),
        ];
        for (f, want) in cases {
            assert_eq!(encode_one(&mut tx, &f), want, "{f:?}");
        }
    }

    #[test]
    fn syn_stream_layout() {
        let mut tx = Codec::new().unwrap();
        let f = Frame::SynStream(SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 2,
            slot: 0,
            fin: false,
            unidirectional: true,
            headers: headers(&[("streamtype", "stdin")]),
        });
        let b = encode_one(&mut tx, &f);
        assert_eq!(b[..5], [0x80, 3, 0, 1, FLAG_UNIDIRECTIONAL]);
        let len = usize::from(b[5]) << 16 | usize::from(b[6]) << 8 | usize::from(b[7]);
        assert_eq!(len, b.len() - 8);
        assert_eq!(b[8..18], [0, 0, 0, 1, 0, 0, 0, 0, 2 << 5, 0]);
        // Then the zlib block, as Go's compressor starts it.
        assert_eq!(b[18..24], [0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2]);
    }

    #[test]
    fn reserved_bits_are_masked() {
        let mut rx = Codec::new().unwrap();
        let data = [0x80, 0, 0, 0, 0, 0, 0, 0];
        // A control frame of version 0 is refused, not read as data.
        assert_eq!(
            rx.decode(&data),
            Err(Error::UnsupportedVersion { version: 0 })
        );
        let wu = [0x80, 3, 0, 9, 0, 0, 0, 8, 0x80, 0, 0, 1, 0x80, 0, 0, 2];
        assert_eq!(
            rx.decode(&wu).unwrap(),
            Some((
                Frame::WindowUpdate(WindowUpdate {
                    stream_id: 1,
                    delta: 2
                }),
                16
            ))
        );
    }

    /// Frames from spdystream's own tests (`spdy/spdy_test.go`): they are
    /// SPDY/2 (version 2), which we refuse by version.
    #[test]
    fn gos_spdy2_test_frames_are_refused_by_version() {
        let syn_stream_v2: [u8; 32] = [
            0x80, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x17, 0xf9, 0xdf, 0xa2, 0x51, 0xb2, 0x62, 0x60, 0x00, 0x00,
            0x00, 0x00, 0xff, 0xff,
        ];
        let mut rx = Codec::new().unwrap();
        assert_eq!(
            rx.decode(&syn_stream_v2),
            Err(Error::UnsupportedVersion { version: 2 })
        );
        // The same frame as version 3: its zlib header was corrupted on
        // purpose (0x17 for 0x78), and it does not decompress.
        let mut v3 = syn_stream_v2;
        v3[1] = 3;
        assert!(matches!(
            rx.decode(&v3),
            Err(Error::Header(HeaderError::Decompress(_)))
        ));
    }

    #[test]
    fn malformed_frames_each_give_their_error() {
        let cases: Vec<(Vec<u8>, Error)> = vec![
            (
                vec![0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1],
                Error::UnsupportedVersion { version: 2 },
            ),
            (
                vec![0, 0, 0, 0, 0, 0, 0, 1, 0],
                Error::ZeroStreamId { frame: "DATA" },
            ),
            (
                vec![0x80, 3, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0],
                Error::InvalidLength {
                    frame: "SYN_STREAM",
                    len: 9,
                },
            ),
            (
                vec![0x80, 3, 0, 2, 0, 0, 0, 3, 0, 0, 1],
                Error::InvalidLength {
                    frame: "SYN_REPLY",
                    len: 3,
                },
            ),
            (
                vec![0x80, 3, 0, 8, 0, 0, 0, 4, 0, 0, 0, 0],
                Error::ZeroStreamId { frame: "HEADERS" },
            ),
            (
                vec![0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1],
                Error::InvalidLength {
                    frame: "RST_STREAM",
                    len: 4,
                },
            ),
            (
                vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1],
                Error::ZeroStreamId {
                    frame: "RST_STREAM",
                },
            ),
            (
                vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0],
                Error::ZeroRstStatus { stream_id: 1 },
            ),
            (
                // Count 0xffffffff in a 4-byte SETTINGS: no allocation.
                vec![0x80, 3, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
                Error::InvalidLength {
                    frame: "SETTINGS",
                    len: 4,
                },
            ),
            (
                vec![0x80, 3, 0, 4, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 1],
                Error::InvalidLength {
                    frame: "SETTINGS",
                    len: 8,
                },
            ),
            (
                vec![0x80, 3, 0, 4, 0, 0, 0, 0],
                Error::InvalidLength {
                    frame: "SETTINGS",
                    len: 0,
                },
            ),
            (
                vec![0x80, 3, 0, 6, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 1],
                Error::InvalidLength {
                    frame: "PING",
                    len: 8,
                },
            ),
            (
                vec![0x80, 3, 0, 7, 0, 0, 0, 4, 0, 0, 0, 1],
                Error::InvalidLength {
                    frame: "GOAWAY",
                    len: 4,
                },
            ),
            (
                vec![0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0x80, 0, 0, 0],
                Error::InvalidWindowDelta {
                    stream_id: 1,
                    delta: 0,
                },
            ),
            (
                vec![
                    0x80, 3, 0, 9, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0,
                ],
                Error::InvalidLength {
                    frame: "WINDOW_UPDATE",
                    len: 12,
                },
            ),
        ];
        for (bytes, want) in cases {
            let mut rx = Codec::new().unwrap();
            assert_eq!(rx.decode(&bytes), Err(want), "{bytes:02x?}");
        }
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header_alone() {
        let mut rx = Codec::new().unwrap().with_max_frame_len(1024);
        assert_eq!(rx.max_frame_len(), 1024);
        // Only the 8-byte header is there: refused without waiting.
        assert_eq!(
            rx.decode(&[0, 0, 0, 1, 0, 0, 4, 1]),
            Err(Error::FrameTooLarge {
                len: 1025,
                max: 1024
            })
        );
        assert_eq!(
            rx.decode(&[0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff]),
            Err(Error::FrameTooLarge {
                len: MAX_FRAME_LEN,
                max: 1024
            })
        );
        // Exactly the limit is fine (and waits for its bytes).
        assert_eq!(rx.decode(&[0, 0, 0, 1, 0, 0, 4, 0]), Ok(None));
        // The limit cannot be raised past what the field holds.
        assert_eq!(
            Codec::new()
                .unwrap()
                .with_max_frame_len(usize::MAX)
                .max_frame_len(),
            MAX_FRAME_LEN
        );
    }

    #[test]
    fn a_bad_header_block_breaks_the_inbound_context() {
        let mut rx = Codec::new().unwrap();
        let bad = [
            0x80, 3, 0, 8, 0, 0, 0, 8, 0, 0, 0, 1, b'j', b'u', b'n', b'k',
        ];
        assert!(matches!(
            rx.decode(&bad),
            Err(Error::Header(HeaderError::Decompress(_)))
        ));
        let mut tx = Codec::new().unwrap();
        let good = encode_one(
            &mut tx,
            &Frame::Headers(HeadersFrame {
                stream_id: 1,
                fin: false,
                headers: headers(&[("a", "b")]),
            }),
        );
        assert_eq!(
            rx.decode(&good),
            Err(Error::Header(HeaderError::ContextBroken))
        );
        // Frames without a header block still decode.
        assert_eq!(
            rx.decode(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]).unwrap(),
            Some((Frame::Ping(1), 12))
        );
    }

    #[test]
    fn a_header_block_that_is_not_a_valid_block_is_refused() {
        // Compressed fine, but the block inside names "A".
        let mut tx = Codec::new().unwrap();
        let block = tx
            .header_codec()
            .compress_raw(b"\0\0\0\x01\0\0\0\x01A\0\0\0\x01b")
            .unwrap();
        let mut bytes = vec![0x80, 3, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1];
        bytes[7] = u8::try_from(4 + block.len()).unwrap();
        bytes.extend_from_slice(&block);
        let mut rx = Codec::new().unwrap();
        assert_eq!(
            rx.decode(&bytes),
            Err(Error::Header(HeaderError::UppercaseName("A".into())))
        );
    }

    #[test]
    fn unencodable_frames_are_refused_and_write_nothing() {
        let mut tx = Codec::new().unwrap();
        let syn = |stream_id, associated_to, priority| {
            Frame::SynStream(SynStream {
                stream_id,
                associated_to,
                priority,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new(),
            })
        };
        let cases = vec![
            (
                syn(0, 0, 0),
                Error::ZeroStreamId {
                    frame: "SYN_STREAM",
                },
            ),
            (
                syn(0x8000_0001, 0, 0),
                Error::StreamIdOutOfRange(0x8000_0001),
            ),
            (
                syn(1, 0x8000_0000, 0),
                Error::StreamIdOutOfRange(0x8000_0000),
            ),
            (syn(1, 0, 8), Error::InvalidPriority(8)),
            (
                Frame::SynReply(SynReply {
                    stream_id: 0,
                    fin: false,
                    headers: Headers::new(),
                }),
                Error::ZeroStreamId { frame: "SYN_REPLY" },
            ),
            (
                Frame::RstStream(RstStream {
                    stream_id: 1,
                    status: RstStatus(0),
                }),
                Error::ZeroRstStatus { stream_id: 1 },
            ),
            (
                Frame::WindowUpdate(WindowUpdate {
                    stream_id: 1,
                    delta: 0,
                }),
                Error::InvalidWindowDelta {
                    stream_id: 1,
                    delta: 0,
                },
            ),
            (
                Frame::WindowUpdate(WindowUpdate {
                    stream_id: 1,
                    delta: 0x8000_0000,
                }),
                Error::InvalidWindowDelta {
                    stream_id: 1,
                    delta: 0x8000_0000,
                },
            ),
            (
                Frame::GoAway(GoAway {
                    last_good_stream_id: u32::MAX,
                    status: GoAwayStatus::OK,
                }),
                Error::StreamIdOutOfRange(u32::MAX),
            ),
            (
                Frame::Settings(Settings {
                    clear: false,
                    entries: vec![Setting {
                        flags: 0,
                        id: 0x0100_0000,
                        value: 0,
                    }],
                }),
                Error::SettingIdOutOfRange(0x0100_0000),
            ),
            (
                Frame::Data(Data {
                    stream_id: 0,
                    fin: false,
                    data: vec![],
                }),
                Error::ZeroStreamId { frame: "DATA" },
            ),
            (
                Frame::Data(Data {
                    stream_id: 1,
                    fin: false,
                    data: vec![0; MAX_FRAME_LEN + 1],
                }),
                Error::FrameTooLarge {
                    len: MAX_FRAME_LEN + 1,
                    max: MAX_FRAME_LEN,
                },
            ),
            (
                Frame::Headers(HeadersFrame {
                    stream_id: 1,
                    fin: false,
                    headers: headers(&[("a", "x\0y")]),
                }),
                Error::Header(HeaderError::NulByte("a".into())),
            ),
        ];
        for (f, want) in cases {
            let mut out = Vec::new();
            assert_eq!(tx.encode(&f, &mut out), Err(want));
            assert!(out.is_empty());
        }
        // None of that moved the outbound context.
        let mut rx = Codec::new().unwrap();
        let f = Frame::SynReply(SynReply {
            stream_id: 1,
            fin: false,
            headers: headers(&[("a", "b")]),
        });
        assert_eq!(rx.decode(&encode_one(&mut tx, &f)).unwrap().unwrap().0, f);
    }

    #[test]
    fn largest_data_frame_round_trips() {
        let (mut tx, mut rx) = (Codec::new().unwrap(), Codec::new().unwrap());
        let f = Frame::Data(Data {
            stream_id: 1,
            fin: false,
            data: vec![7; MAX_FRAME_LEN],
        });
        let bytes = encode_one(&mut tx, &f);
        assert_eq!(rx.decode(&bytes).unwrap(), Some((f, MAX_FRAME_LEN + 8)));
    }
}
