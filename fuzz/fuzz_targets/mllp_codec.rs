//! Fuzz target `mllp_codec`: `sealpost_hl7::mllp::MllpCodec` decoding an arbitrary byte
//! stream handed over in arbitrary chunks, as `FramedRead` drives it (decode until it
//! wants more bytes, stop at the first error, `decode_eof` at the end). The first bytes
//! of the input choose the largest frame and the chunk sizes (layout in
//! `sealpost_fuzz::mllp_input`). Beyond "no panic" it checks: no decoded frame is longer
//! than the limit or holds a delimiter byte; the frames and whether the stream fails do
//! not depend on how it was chunked; and encoding a payload then decoding it (chunked the
//! same way) gives back exactly that payload, or encoding refuses it for its size or a
//! delimiter byte.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sealpost_fuzz::mllp_input::{self, Plan};
use sealpost_hl7::mllp::{MLLP_END, MLLP_START, MllpCodec, MllpError};
use tokio_util::codec::{Decoder, Encoder};

/// What a stream decoded to: its frames, and whether decoding stopped on an error.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    frames: Vec<Vec<u8>>,
    failed: bool,
}

fn decode_chunks(max: usize, chunks: &[&[u8]]) -> Decoded {
    let mut codec = MllpCodec::new(max);
    assert_eq!(codec.max_frame_bytes(), max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut check = |frame: &[u8]| {
        assert!(
            frame.len() <= max,
            "frame of {} bytes > max {max}",
            frame.len()
        );
        assert!(!frame.contains(&MLLP_START) && !frame.contains(&MLLP_END[0]));
        frames.push(frame.to_vec());
    };
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => check(&frame),
                Ok(None) => break,
                Err(_) => {
                    return Decoded {
                        frames,
                        failed: true,
                    };
                }
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => check(&frame),
            Ok(None) => {
                return Decoded {
                    frames,
                    failed: false,
                };
            }
            Err(_) => {
                return Decoded {
                    frames,
                    failed: true,
                };
            }
        }
    }
}

/// Encodes `payload` and decodes it back with the plan's chunking.
fn round_trip(plan: &Plan<'_>, payload: &[u8]) {
    let max = plan.max_frame_bytes;
    let mut wire = BytesMut::new();
    match MllpCodec::new(max).encode(payload, &mut wire) {
        Ok(()) => {
            assert!(payload.len() <= max);
            assert!(!payload.contains(&MLLP_START) && !payload.contains(&MLLP_END[0]));
            let framed = Plan {
                stream: &wire[..],
                ..*plan
            };
            let decoded = decode_chunks(max, &framed.chunks());
            assert_eq!(
                decoded,
                Decoded {
                    frames: vec![payload.to_vec()],
                    failed: false,
                }
            );
        }
        Err(MllpError::FrameTooLarge { max: m }) => {
            assert_eq!(m, max);
            assert!(payload.len() > max);
        }
        Err(MllpError::DelimiterInPayload) => {
            assert!(payload.len() <= max);
            assert!(payload.contains(&MLLP_START) || payload.contains(&MLLP_END[0]));
        }
        Err(e) => panic!("encoding failed unexpectedly: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(plan) = mllp_input::parse(data) else {
        return;
    };
    let max = plan.max_frame_bytes;
    let chunked = decode_chunks(max, &plan.chunks());
    let whole = decode_chunks(max, &[plan.stream]);
    assert_eq!(
        chunked, whole,
        "chunking changed what the stream decodes to"
    );

    // The stream itself as one payload (refused when it holds a delimiter), and the stream
    // without its delimiter bytes (refused only when too large).
    round_trip(&plan, plan.stream);
    let clean: Vec<u8> = plan
        .stream
        .iter()
        .copied()
        .filter(|&b| b != MLLP_START && b != MLLP_END[0])
        .collect();
    round_trip(&plan, &clean);
});
