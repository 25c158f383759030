//! Property tests: whatever a peer sends, decoding returns a frame, asks
//! for more bytes or gives an error, and never panics; and what we encode
//! decodes to the same frame.

use proptest::collection::vec;
use proptest::prelude::*;
use stratum_spdy::{Codec, Data, Frame, Headers, HeadersFrame, SynStream, FRAME_HEADER_LEN};

/// Decodes frames off the front of `bytes` until it needs more or errs.
fn drain(codec: &mut Codec, mut bytes: &[u8]) {
    while let Ok(Some((_, used))) = codec.decode(bytes) {
        assert!(used >= FRAME_HEADER_LEN && used <= bytes.len());
        bytes = &bytes[used..];
    }
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,15}"
}

fn headers() -> impl Strategy<Value = Headers> {
    vec((name(), "[ -~]{0,40}"), 0..8).prop_map(|pairs| pairs.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let mut codec = Codec::new().unwrap();
        drain(&mut codec, &bytes);
    }

    /// The same, with a valid SPDY/3 control header in front so the bytes
    /// reach each frame type's parser and the header decompressor.
    #[test]
    fn arbitrary_control_payloads_never_panic(
        ty in 0u16..12,
        flags in any::<u8>(),
        payload in vec(any::<u8>(), 0..256),
        declared in prop::option::of(0usize..300),
    ) {
        let len = declared.unwrap_or(payload.len());
        let mut bytes = vec![0x80, 3];
        bytes.extend_from_slice(&ty.to_be_bytes());
        bytes.push(flags);
        bytes.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes()[1..]);
        bytes.extend_from_slice(&payload);
        let mut codec = Codec::new().unwrap();
        drain(&mut codec, &bytes);
    }

    /// A real compressed block with bytes flipped must not panic the
    /// decompressor either.
    #[test]
    fn corrupted_header_blocks_never_panic(
        h in headers(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut tx = Codec::new().unwrap();
        let mut bytes = Vec::new();
        tx.encode(&Frame::Headers(HeadersFrame { stream_id: 1, fin: false, headers: h }), &mut bytes).unwrap();
        for (at, x) in flips {
            let i = at.index(bytes.len() - FRAME_HEADER_LEN) + FRAME_HEADER_LEN;
            bytes[i] ^= x;
        }
        let mut rx = Codec::new().unwrap();
        drain(&mut rx, &bytes);
    }

    #[test]
    fn encoded_frames_decode_to_themselves(
        frames in vec(
            prop_oneof![
                (1u32..=0x7fff_ffff, any::<bool>(), vec(any::<u8>(), 0..200))
                    .prop_map(|(stream_id, fin, data)| Frame::Data(Data { stream_id, fin, data })),
                (1u32..=0x7fff_ffff, 0u8..8, any::<bool>(), any::<bool>(), headers())
                    .prop_map(|(stream_id, priority, fin, unidirectional, headers)| {
                        Frame::SynStream(SynStream {
                            stream_id,
                            associated_to: 0,
                            priority,
                            slot: 0,
                            fin,
                            unidirectional,
                            headers,
                        })
                    }),
                (1u32..=0x7fff_ffff, any::<bool>(), headers())
                    .prop_map(|(stream_id, fin, headers)| Frame::Headers(HeadersFrame { stream_id, fin, headers })),
                any::<u32>().prop_map(Frame::Ping),
            ],
            1..10,
        ),
        chunk in 1usize..64,
    ) {
        let (mut tx, mut rx) = (Codec::new().unwrap(), Codec::new().unwrap());
        let mut wire = Vec::new();
        for f in &frames {
            tx.encode(f, &mut wire).unwrap();
        }
        // Fed in chunks of `chunk` bytes, as a socket might.
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some((f, used)) = rx.decode(&buf).unwrap() {
                buf.drain(..used);
                got.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }
}
