//! Frames captured from other SPDY/3 implementations, decoded by ours.
//!
//! `data/browser-syn-stream.bin` is the SYN_STREAM of a browser's request
//! over SPDY/3.1 (a Chrome user agent), from the test data of proxygen's
//! SPDY codec (`proxygen/lib/http/codec/test/SPDYCodecTest.cpp`,
//! `synStream[]`): 1,058 bytes whose header block was compressed by a C
//! zlib with SPDY/3's dictionary, so it checks our dictionary, inflater
//! and block reader against an implementation that is not ours.

use stratum_spdy::{Codec, Frame, UnknownControl};

const BROWSER_SYN_STREAM: &[u8] = include_bytes!("data/browser-syn-stream.bin");

#[test]
fn browser_syn_stream_decodes() {
    let mut codec = Codec::new().unwrap();
    let (frame, used) = codec.decode(BROWSER_SYN_STREAM).unwrap().unwrap();
    assert_eq!(used, BROWSER_SYN_STREAM.len());
    let Frame::SynStream(syn) = frame else {
        panic!("not a SYN_STREAM: {frame:?}");
    };
    assert_eq!(syn.stream_id, 1);
    assert_eq!(syn.associated_to, 0);
    assert_eq!(syn.priority, 0);
    assert!(syn.fin);
    assert!(!syn.unidirectional);
    let h = &syn.headers;
    assert_eq!(h.len(), 13);
    assert_eq!(h.get(":method"), Some("GET"));
    assert_eq!(h.get(":version"), Some("HTTP/1.1"));
    assert_eq!(h.get(":scheme"), Some("https"));
    assert_eq!(h.get(":path"), Some("/status.php"));
    assert_eq!(h.get(":host"), Some("www.afrind.sb.facebook.com"));
    assert_eq!(h.get("accept-encoding"), Some("gzip, deflate, sdch"));
    assert_eq!(h.get("accept-language"), Some("en-US,en;q=0.8"));
    assert!(h
        .get("cookie")
        .is_some_and(|c| c.starts_with("m_ts=1416951706;")));
}

#[test]
fn browser_syn_stream_split_anywhere_waits_for_the_rest() {
    let mut codec = Codec::new().unwrap();
    for cut in 0..BROWSER_SYN_STREAM.len() {
        assert_eq!(
            codec.decode(&BROWSER_SYN_STREAM[..cut]).unwrap(),
            None,
            "cut at {cut}"
        );
    }
    assert!(codec.decode(BROWSER_SYN_STREAM).unwrap().is_some());
}

#[test]
fn browser_syn_stream_is_refused_over_the_limits() {
    // Frame limit: refused from its 8-byte header alone.
    let mut small_frames = Codec::new().unwrap().with_max_frame_len(500);
    assert!(matches!(
        small_frames.decode(&BROWSER_SYN_STREAM[..8]),
        Err(stratum_spdy::Error::FrameTooLarge {
            len: 1050,
            max: 500
        })
    ));
    // Its block inflates to 1,271 bytes.
    let mut codec = Codec::new().unwrap();
    *codec.header_codec() = stratum_spdy::HeaderCodec::with_max_block(600).unwrap();
    assert_eq!(
        codec.decode(BROWSER_SYN_STREAM),
        Err(stratum_spdy::Error::Header(
            stratum_spdy::HeaderError::TooLarge { max: 600 }
        ))
    );
}

#[test]
fn unknown_control_type_is_handed_back_to_ignore() {
    // proxygen's `spdy3UnknownCtlFrame`: type 11, two bytes of payload.
    let bytes = [0x80, 0x03, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x02, 0xd4, 0x74];
    let mut codec = Codec::new().unwrap();
    assert_eq!(
        codec.decode(&bytes).unwrap(),
        Some((
            Frame::Unknown(UnknownControl {
                frame_type: 11,
                flags: 0,
                payload: vec![0xd4, 0x74],
            }),
            10
        ))
    );
}
