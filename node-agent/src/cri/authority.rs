//! The CRI socket's connections, between the socket and tonic: who is
//! calling (the peer's uid, taken when the connection is accepted), and
//! the one repair Go clients need.
//!
//! Why the repair: gRPC-Go clients of Kubernetes 1.26 and older — the
//! `crictl` and `critest` of that release among them — dial a Unix socket
//! with its path as the HTTP/2 `:authority` (`/run/stratum/cri.sock`).
//! That is no authority (RFC 9113 §8.3.1, RFC 3986 §3.2), and the h2
//! server under tonic refuses the request with `PROTOCOL_ERROR`
//! (hyperium/h2 PR 487, open for years). Newer clients, the kubelet's
//! included, send `localhost`. So every header block the client sends is
//! decoded (HPACK, with the client's dynamic table), an `:authority` that
//! does not parse as one is replaced by `localhost`, and the block is sent
//! on re-encoded with literals that add nothing to the server's dynamic
//! table; every other frame, and everything the server sends, passes
//! unchanged.
//!
//! What it refuses: a connection whose frames are not HTTP/2 as RFC 9113
//! frames them (a header block split across streams, one that does not
//! decode, one over [`MAX_HEADER_BLOCK`]) is closed; the server never sees
//! a half-rewritten block.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Largest frame the server accepts before its settings say more (RFC 9113
/// §4.2): rewritten blocks are cut to it.
const MAX_FRAME: usize = 16_384;
/// Largest header block taken: gRPC's are a few hundred bytes.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Bytes in flight between the pump and tonic.
const PIPE: usize = 256 * 1024;
/// What newer clients send, and what replaces a path.
const LOCALHOST: &[u8] = b"localhost";

/// The peer of a CRI connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerUid(pub u32);

/// A CRI connection as tonic serves it: the pipe from the pump, and the
/// peer's uid as its connect info (in each request's extensions).
pub struct CriConnection {
    pipe: DuplexStream,
    peer: PeerUid,
}

impl Connected for CriConnection {
    type ConnectInfo = PeerUid;

    fn connect_info(&self) -> PeerUid {
        self.peer
    }
}

impl AsyncRead for CriConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.pipe).poll_read(cx, buf)
    }
}

impl AsyncWrite for CriConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.pipe).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.pipe).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.pipe).poll_shutdown(cx)
    }
}

/// Takes an accepted socket: its peer's uid, and the two pumps between it
/// and the connection handed to tonic.
pub fn accept(stream: UnixStream) -> io::Result<CriConnection> {
    let peer = PeerUid(stream.peer_cred()?.uid());
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (from_client, mut to_client) = stream.into_split();
    let (mut from_server, to_server) = tokio::io::split(theirs);
    tokio::spawn(async move {
        if let Err(e) = forward_client(from_client, to_server).await {
            tracing::debug!("CRI connection closed: {e}");
        }
    });
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    });
    Ok(CriConnection { pipe: ours, peer })
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// One frame: its 9-byte header and payload.
struct Frame {
    kind: u8,
    flags: u8,
    stream: [u8; 4],
    payload: Vec<u8>,
}

impl Frame {
    fn head(&self) -> [u8; 9] {
        let len = u32::try_from(self.payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        let s = self.stream;
        [
            len[1], len[2], len[3], self.kind, self.flags, s[0], s[1], s[2], s[3],
        ]
    }
}

/// The next frame, or `None` at a clean end of the stream.
async fn read_frame(from: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 9];
    match from.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    from.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: [head[5], head[6], head[7], head[8]],
        payload,
    }))
}

async fn write_frame(to: &mut (impl AsyncWrite + Unpin), frame: &Frame) -> io::Result<()> {
    to.write_all(&frame.head()).await?;
    to.write_all(&frame.payload).await
}

/// The client's side: the preface, then frame by frame, header blocks
/// rewritten.
async fn forward_client(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> io::Result<()> {
    let mut preface = [0u8; PREFACE.len()];
    from.read_exact(&mut preface).await?;
    to.write_all(&preface).await?;
    if &preface != PREFACE {
        // Not HTTP/2 with prior knowledge: the server says so and closes.
        return tokio::io::copy(&mut from, &mut to).await.map(|_| ());
    }
    let mut decoder = Decoder::new();
    while let Some(frame) = read_frame(&mut from).await? {
        if frame.kind != FRAME_HEADERS {
            write_frame(&mut to, &frame).await?;
            continue;
        }
        let (priority, mut block) = header_fragment(&frame)?;
        let mut flags = frame.flags;
        while flags & FLAG_END_HEADERS == 0 {
            let next = read_frame(&mut from)
                .await?
                .ok_or_else(|| invalid("the connection ended inside a header block"))?;
            if next.kind != FRAME_CONTINUATION || next.stream != frame.stream {
                return Err(invalid("a header block was interrupted"));
            }
            block.extend_from_slice(&next.payload);
            if block.len() > MAX_HEADER_BLOCK {
                return Err(invalid("a header block is too large"));
            }
            flags |= next.flags & FLAG_END_HEADERS;
        }
        let headers = decoder
            .decode(&block)
            .map_err(|e| invalid(format!("a header block does not decode: {e}")))?;
        let encoded = encode_literals(&with_host_authority(headers));
        for out in header_frames(frame.stream, frame.flags, priority, &encoded) {
            write_frame(&mut to, &out).await?;
        }
    }
    to.shutdown().await
}

/// A HEADERS frame's priority fields (if any) and its block fragment,
/// padding removed.
fn header_fragment(frame: &Frame) -> io::Result<(Option<[u8; 5]>, Vec<u8>)> {
    let mut rest = frame.payload.as_slice();
    let mut pad = 0usize;
    if frame.flags & FLAG_PADDED != 0 {
        let (&len, tail) = rest
            .split_first()
            .ok_or_else(|| invalid("a padded frame without its pad length"))?;
        pad = usize::from(len);
        rest = tail;
    }
    let mut priority = None;
    if frame.flags & FLAG_PRIORITY != 0 {
        let (fields, tail) = rest
            .split_at_checked(5)
            .ok_or_else(|| invalid("a HEADERS frame too short for its priority"))?;
        let mut p = [0u8; 5];
        p.copy_from_slice(fields);
        priority = Some(p);
        rest = tail;
    }
    let keep = rest
        .len()
        .checked_sub(pad)
        .ok_or_else(|| invalid("padding longer than its frame"))?;
    Ok((priority, rest[..keep].to_vec()))
}

/// The headers, an `:authority` that is not one replaced by `localhost`.
fn with_host_authority(mut headers: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    for (name, value) in &mut headers {
        if name.as_slice() == b":authority"
            && tonic::codegen::http::uri::Authority::try_from(value.as_slice()).is_err()
        {
            *value = LOCALHOST.to_vec();
        }
    }
    headers
}

/// HPACK literals without indexing, names and values as raw strings
/// (RFC 7541 §6.2.2): nothing enters the server's dynamic table.
fn encode_literals(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        for s in [name, value] {
            // A 7-bit prefix integer with the Huffman bit clear.
            out.extend(loona_hpack::encoder::encode_integer(s.len(), 7));
            out.extend_from_slice(s);
        }
    }
    out
}

/// A HEADERS frame and as many CONTINUATION frames as the block needs.
fn header_frames(
    stream: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    block: &[u8],
) -> Vec<Frame> {
    let first_room = MAX_FRAME - if priority.is_some() { 5 } else { 0 };
    let (first, rest) = block.split_at(first_room.min(block.len()));
    let mut chunks: Vec<&[u8]> = vec![first];
    chunks.extend(rest.chunks(MAX_FRAME));
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let end = if i == last { FLAG_END_HEADERS } else { 0 };
            if i == 0 {
                let mut payload = Vec::with_capacity(chunk.len() + 5);
                let mut first_flags = (flags & FLAG_END_STREAM) | end;
                if let Some(p) = priority {
                    payload.extend_from_slice(&p);
                    first_flags |= FLAG_PRIORITY;
                }
                payload.extend_from_slice(chunk);
                Frame {
                    kind: FRAME_HEADERS,
                    flags: first_flags,
                    stream,
                    payload,
                }
            } else {
                Frame {
                    kind: FRAME_CONTINUATION,
                    flags: end,
                    stream,
                    payload: chunk.to_vec(),
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":authority".to_vec(), authority.as_bytes().to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
        ]
    }

    #[test]
    fn a_socket_path_becomes_localhost_and_a_host_stays() {
        let fixed = with_host_authority(headers("/run/stratum/cri.sock"));
        assert_eq!(fixed[1].1, b"localhost");
        let fixed = with_host_authority(headers("%2Frun%2Fstratum%2Fcri.sock"));
        assert_eq!(fixed[1].1, b"localhost");
        let kept = with_host_authority(headers("localhost:1234"));
        assert_eq!(kept[1].1, b"localhost:1234");
    }

    #[test]
    fn literals_decode_to_the_same_headers_and_leave_the_table_empty() {
        let list = headers("localhost");
        let encoded = encode_literals(&list);
        let mut decoder = Decoder::new();
        assert_eq!(decoder.decode(&encoded).unwrap(), list);
        // Again: nothing was indexed, so the same bytes decode the same.
        assert_eq!(decoder.decode(&encoded).unwrap(), list);
    }

    #[test]
    fn large_blocks_are_cut_into_continuations() {
        let block = vec![7u8; MAX_FRAME * 2 + 10];
        let frames = header_frames([0, 0, 0, 1], FLAG_END_STREAM, Some([0; 5]), &block);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].kind, FRAME_HEADERS);
        assert_eq!(
            frames[0].flags,
            FLAG_END_STREAM | FLAG_PRIORITY,
            "END_HEADERS only on the last"
        );
        assert!(frames.iter().all(|f| f.payload.len() <= MAX_FRAME));
        assert_eq!(frames[2].kind, FRAME_CONTINUATION);
        assert_eq!(frames[2].flags, FLAG_END_HEADERS);
        let total: usize = frames.iter().map(|f| f.payload.len()).sum();
        assert_eq!(total, block.len() + 5);
    }

    #[test]
    fn padding_and_priority_are_taken_off_the_fragment() {
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[1, 2, 3, 4, 5]);
        payload.extend_from_slice(b"block");
        payload.extend_from_slice(&[0, 0, 0]);
        let frame = Frame {
            kind: FRAME_HEADERS,
            flags: FLAG_PADDED | FLAG_PRIORITY | FLAG_END_HEADERS,
            stream: [0, 0, 0, 1],
            payload,
        };
        let (priority, block) = header_fragment(&frame).unwrap();
        assert_eq!(priority, Some([1, 2, 3, 4, 5]));
        assert_eq!(block, b"block");
        let short = Frame {
            payload: vec![9],
            ..frame
        };
        assert!(header_fragment(&short).is_err());
    }
}
