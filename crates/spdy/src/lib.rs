//! SPDY/3.1 framing for the CRI streaming server.
//!
//! Kubelets and crictl reach `Exec`, `Attach` and `PortForward` over an
//! HTTP/1.1 connection upgraded to SPDY/3.1, as Go's
//! `github.com/moby/spdystream` and
//! `k8s.io/apimachinery/pkg/util/httpstream/spdy` speak it; the runtime is
//! the server and the client opens the streams. This crate owns the wire
//! protocol below that: the frames ([`Frame`], read and written by
//! [`Codec`]) and the zlib-compressed name/value header blocks
//! ([`Headers`], [`HeaderCodec`]) whose compression context lives as long
//! as the connection.
//!
//! The codec does no I/O: [`Codec::decode`] reads from a buffer the caller
//! fills and says when it needs more bytes, and [`Codec::encode`] appends
//! to one. Above it, [`session`] runs a connection with Tokio: streams,
//! flow-control windows, PING and GOAWAY. Neither knows HTTP upgrades or
//! Kubernetes' stream types (`error`, `stdin`, `stdout`, `stderr`,
//! `resize`, `data`); those belong to the streaming server above it.
//!
//! Everything read from the peer is checked, and what the protocol does
//! not allow is an [`Error`], never a panic: the frame and header modules
//! list what each refuses, and where we and Go's implementation part from
//! the spec.
//!
//! ```
//! use stratum_spdy::{Codec, Frame, Headers, SynReply};
//!
//! // One codec per connection and side.
//! let (mut server, mut client) = (Codec::new()?, Codec::new()?);
//! let mut wire = Vec::new();
//! let mut headers = Headers::new();
//! headers.append("streamtype", "stdout");
//! let reply = Frame::SynReply(SynReply { stream_id: 1, fin: false, headers });
//! server.encode(&reply, &mut wire)?;
//! // A partial frame asks for more bytes; the whole one decodes.
//! assert_eq!(client.decode(&wire[..wire.len() - 1])?, None);
//! assert_eq!(client.decode(&wire)?, Some((reply, wire.len())));
//! # Ok::<(), stratum_spdy::Error>(())
//! ```

mod dictionary;
pub mod error;
pub mod frame;
pub mod headers;
pub mod session;

pub use error::{Error, HeaderError, SessionError};
pub use frame::{
    Codec, Data, Frame, GoAway, GoAwayStatus, HeadersFrame, RstStatus, RstStream, Setting,
    Settings, SynReply, SynStream, UnknownControl, WindowUpdate, FLAG_FIN, FRAME_HEADER_LEN,
    MAX_FRAME_LEN, SPDY_VERSION,
};
pub use headers::{HeaderCodec, Headers, MAX_HEADER_BLOCK};
pub use session::{Config, FlowControl, Role, Session, Stream};
