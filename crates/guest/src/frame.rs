//! Length-prefixed framing: a 4-byte big-endian length, then that many
//! bytes of one protobuf message.
//!
//! [`FrameDecoder`] takes bytes in any chunking and yields whole messages;
//! a reader asks it how many bytes it [wants](FrameDecoder::wanted) and
//! reads no more, so its buffer never holds more than one frame. A length
//! over [`MAX_FRAME`] or a body that does not decode is an error, after
//! which the connection is to be closed: framing cannot be re-synchronised.

use prost::Message;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;
/// The largest message body either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("{given} bytes given where the decoder wanted at most {wanted}")]
    Overfed { given: usize, wanted: usize },
    #[error("frame does not decode: {0}")]
    Decode(String),
}

/// `message` as one frame.
pub fn encode(message: &impl Message) -> Result<Vec<u8>, FrameError> {
    let len = message.encoded_len();
    let header = u32::try_from(len)
        .ok()
        .filter(|_| len <= MAX_FRAME)
        .ok_or(FrameError::TooLarge(len))?;
    let mut frame = Vec::with_capacity(HEADER_LEN + len);
    frame.extend_from_slice(&header.to_be_bytes());
    message
        .encode(&mut frame)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    Ok(frame)
}

/// Reassembles frames from a byte stream, one at a time.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many bytes complete the current header or body: the most a
    /// reader should read before the next [`Self::push`]. 0 once a frame is
    /// complete: take it with [`Self::next_message`] before reading on.
    pub fn wanted(&self) -> usize {
        match self.body_len() {
            None => HEADER_LEN - self.buf.len(),
            Some(body) => HEADER_LEN + body - self.buf.len(),
        }
    }

    /// Appends bytes read from the stream: at most [`Self::wanted`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        let wanted = self.wanted();
        if bytes.len() > wanted {
            return Err(FrameError::Overfed {
                given: bytes.len(),
                wanted,
            });
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() == HEADER_LEN {
            let len = self.declared_len();
            if len > MAX_FRAME {
                self.buf.clear();
                return Err(FrameError::TooLarge(len));
            }
        }
        Ok(())
    }

    /// The message whose frame is complete, if any; it leaves the buffer.
    pub fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        if self.wanted() > 0 || self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let decoded = M::decode(&self.buf[HEADER_LEN..]);
        self.buf.clear();
        decoded
            .map(Some)
            .map_err(|e| FrameError::Decode(e.to_string()))
    }

    /// True between frames: nothing of a next frame has arrived.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty()
    }

    fn body_len(&self) -> Option<usize> {
        (self.buf.len() >= HEADER_LEN).then(|| self.declared_len())
    }

    fn declared_len(&self) -> usize {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[..HEADER_LEN]);
        u32::from_be_bytes(header) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{guest_message, GuestMessage, GuestStatus, HostMessage, Interface};
    use proptest::prelude::*;

    fn status(hostname: &str) -> GuestMessage {
        GuestMessage {
            id: 0,
            body: Some(guest_message::Body::Status(GuestStatus {
                ready: true,
                ready_detail: "cloud-init: done".into(),
                hostname: hostname.into(),
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    mac: "06:00:0a:00:00:02".into(),
                    addresses: vec!["10.0.0.2/24".into()],
                }],
                os: "Debian GNU/Linux 12 (bookworm)".into(),
                kernel: "6.1.0-57-cloud-amd64".into(),
            })),
        }
    }

    /// Feeds `bytes` in chunks of `chunk` (or less, as wanted) and collects
    /// the messages, stopping at the first error.
    fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<GuestMessage>, FrameError> {
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = decoder.wanted().min(chunk.max(1)).min(rest.len());
            decoder.push(&rest[..n])?;
            rest = &rest[n..];
            if let Some(message) = decoder.next_message()? {
                out.push(message);
            }
        }
        Ok(out)
    }

    #[test]
    fn frames_round_trip_in_any_chunking() {
        let messages = vec![status("node-a"), status(""), GuestMessage::default()];
        let mut stream = Vec::new();
        for m in &messages {
            stream.extend(encode(m).unwrap());
        }
        for chunk in [1, 3, 4, 5, 64, 100_000] {
            assert_eq!(
                decode_all(&stream, chunk).unwrap(),
                messages,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn an_empty_message_is_a_zero_length_frame() {
        let frame = encode(&HostMessage::default()).unwrap();
        assert_eq!(frame, [0, 0, 0, 0]);
        let mut decoder = FrameDecoder::new();
        decoder.push(&frame).unwrap();
        assert_eq!(
            decoder.next_message::<HostMessage>().unwrap(),
            Some(HostMessage::default())
        );
        assert!(decoder.is_idle());
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_body() {
        let mut decoder = FrameDecoder::new();
        let header = u32::try_from(MAX_FRAME + 1).unwrap().to_be_bytes();
        assert_eq!(
            decoder.push(&header),
            Err(FrameError::TooLarge(MAX_FRAME + 1))
        );
        let mut decoder = FrameDecoder::new();
        assert!(decoder.push(&u32::MAX.to_be_bytes()).is_err());
    }

    #[test]
    fn a_frame_at_the_limit_is_accepted() {
        let big = status(&"h".repeat(MAX_FRAME - 300));
        let len = big.encoded_len();
        assert!(len <= MAX_FRAME, "{len}");
        assert_eq!(decode_all(&encode(&big).unwrap(), 4096).unwrap(), vec![big]);
        let too_big = status(&"h".repeat(MAX_FRAME));
        assert!(matches!(encode(&too_big), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn more_than_wanted_is_refused() {
        let mut decoder = FrameDecoder::new();
        assert_eq!(
            decoder.push(&[0, 0, 0, 1, 9]),
            Err(FrameError::Overfed {
                given: 5,
                wanted: 4
            })
        );
    }

    #[test]
    fn a_body_that_does_not_decode_is_an_error() {
        // Field 1 (id) as a length-delimited field of 200 bytes: truncated.
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0, 0, 0, 3]).unwrap();
        decoder.push(&[0x0a, 200, 1]).unwrap();
        assert!(matches!(
            decoder.next_message::<GuestMessage>(),
            Err(FrameError::Decode(_))
        ));
        assert!(decoder.is_idle(), "the bad frame is dropped");
    }

    proptest! {
        /// Whatever a peer sends, the decoder neither panics nor buffers
        /// more than one frame.
        #[test]
        fn garbage_never_panics_and_stays_bounded(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            chunk in 1usize..700,
        ) {
            let mut decoder = FrameDecoder::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = decoder.wanted().min(chunk).min(rest.len());
                if decoder.push(&rest[..n]).is_err() {
                    break;
                }
                rest = &rest[n..];
                prop_assert!(decoder.buf.len() <= HEADER_LEN + MAX_FRAME);
                if decoder.next_message::<GuestMessage>().is_err() {
                    break;
                }
            }
        }

        #[test]
        fn any_status_round_trips(hostname in ".{0,200}", detail in ".{0,50}", ready: bool) {
            let mut m = status(&hostname);
            if let Some(guest_message::Body::Status(s)) = m.body.as_mut() {
                s.ready = ready;
                s.ready_detail = detail;
            }
            prop_assert_eq!(decode_all(&encode(&m).unwrap(), 7).unwrap(), vec![m]);
        }
    }
}
