//! MLLP (Minimal Lower Layer Protocol) framing for tokio: each HL7 message travels as
//! `0x0B <payload> 0x1C 0x0D`. [`MllpCodec`] decodes frames into their payload bytes and
//! wraps outgoing payloads. Decoding is bounded: bytes outside a frame are skipped but
//! counted against [`GARBAGE_BYTES_MAX`], and a frame is refused as soon as it grows past
//! its limit, so neither a noisy nor a hostile peer can make it buffer without bound.
//! After any error the connection should be closed; the codec does not try to resync.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

/// Byte that opens an MLLP frame (vertical tab).
pub const MLLP_START: u8 = 0x0B;
/// Bytes that close an MLLP frame (file separator, carriage return).
pub const MLLP_END: [u8; 2] = [0x1C, 0x0D];
/// Default largest frame payload, in bytes.
pub const MLLP_FRAME_BYTES_DEFAULT_MAX: usize = 16 * 1024 * 1024;
/// Most bytes accepted outside a frame before a start byte arrives, in bytes.
pub const GARBAGE_BYTES_MAX: usize = 4096;
/// Bytes the envelope adds around a payload (start byte and the two end bytes).
pub const MLLP_ENVELOPE_BYTES: usize = 3;

/// Why a stream could not be framed.
#[derive(Debug, Error)]
pub enum MllpError {
    #[error(
        "more than {GARBAGE_BYTES_MAX} bytes arrived outside an MLLP frame (no 0x0B start byte)"
    )]
    Garbage,
    #[error("MLLP frame payload is larger than {max} bytes")]
    FrameTooLarge { max: usize },
    #[error("MLLP start byte 0x0B arrived inside a frame, before its end bytes 0x1C 0x0D")]
    UnexpectedStart,
    #[error("MLLP end byte 0x1C was not followed by 0x0D")]
    BadEnd,
    #[error("connection closed inside an MLLP frame")]
    Truncated,
    #[error("payload contains an MLLP delimiter byte (0x0B or 0x1C) and cannot be framed")]
    DelimiterInPayload,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// MLLP frame codec: decodes to the payload (without envelope), encodes by wrapping.
#[derive(Debug, Clone)]
pub struct MllpCodec {
    max_frame_bytes: usize,
    /// A start byte has been consumed and the buffer now begins with payload.
    in_frame: bool,
    /// Payload bytes at the front of the buffer already searched for delimiters.
    scanned_bytes: usize,
    /// Bytes skipped since the last frame started.
    garbage_bytes: usize,
}

impl Default for MllpCodec {
    fn default() -> Self {
        MllpCodec::new(MLLP_FRAME_BYTES_DEFAULT_MAX)
    }
}

impl MllpCodec {
    /// A codec refusing frames whose payload exceeds `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> MllpCodec {
        MllpCodec {
            max_frame_bytes,
            in_frame: false,
            scanned_bytes: 0,
            garbage_bytes: 0,
        }
    }

    /// The largest payload accepted, in bytes.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    fn reset(&mut self) {
        self.in_frame = false;
        self.scanned_bytes = 0;
    }

    fn too_large(&mut self, src: &mut BytesMut) -> MllpError {
        src.clear();
        self.reset();
        MllpError::FrameTooLarge {
            max: self.max_frame_bytes,
        }
    }

    /// Skips to the next start byte; returns false when none is buffered yet.
    fn find_start(&mut self, src: &mut BytesMut) -> Result<bool, MllpError> {
        let start = src.iter().position(|&b| b == MLLP_START);
        let skipped = start.unwrap_or(src.len());
        self.garbage_bytes = self.garbage_bytes.saturating_add(skipped);
        if self.garbage_bytes > GARBAGE_BYTES_MAX {
            src.clear();
            self.garbage_bytes = 0;
            return Err(MllpError::Garbage);
        }
        match start {
            None => {
                src.clear();
                Ok(false)
            }
            Some(i) => {
                src.advance(i + 1);
                self.garbage_bytes = 0;
                self.in_frame = true;
                self.scanned_bytes = 0;
                Ok(true)
            }
        }
    }
}

impl Decoder for MllpCodec {
    type Item = Bytes;
    type Error = MllpError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, MllpError> {
        if !self.in_frame && !self.find_start(src)? {
            return Ok(None);
        }
        let from = self.scanned_bytes.min(src.len());
        let found = src
            .get(from..)
            .unwrap_or_default()
            .iter()
            .position(|&b| b == MLLP_END[0] || b == MLLP_START)
            .map(|p| p + from);
        let Some(at) = found else {
            if src.len() > self.max_frame_bytes {
                return Err(self.too_large(src));
            }
            self.scanned_bytes = src.len();
            return Ok(None);
        };
        if src.get(at) == Some(&MLLP_START) {
            // Drop the unfinished frame; the new start byte stays for the next call.
            src.advance(at);
            self.reset();
            return Err(MllpError::UnexpectedStart);
        }
        if at > self.max_frame_bytes {
            return Err(self.too_large(src));
        }
        match src.get(at + 1) {
            None => {
                self.scanned_bytes = at;
                Ok(None)
            }
            Some(&b) if b == MLLP_END[1] => {
                let payload = src.split_to(at).freeze();
                src.advance(MLLP_END.len());
                self.reset();
                Ok(Some(payload))
            }
            Some(_) => {
                src.advance(at + 1);
                self.reset();
                Err(MllpError::BadEnd)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, MllpError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if self.in_frame => {
                src.clear();
                self.reset();
                Err(MllpError::Truncated)
            }
            None => Ok(None),
        }
    }
}

impl<'a> Encoder<&'a [u8]> for MllpCodec {
    type Error = MllpError;

    fn encode(&mut self, item: &'a [u8], dst: &mut BytesMut) -> Result<(), MllpError> {
        if item.len() > self.max_frame_bytes {
            return Err(MllpError::FrameTooLarge {
                max: self.max_frame_bytes,
            });
        }
        if item.iter().any(|&b| b == MLLP_START || b == MLLP_END[0]) {
            return Err(MllpError::DelimiterInPayload);
        }
        dst.reserve(item.len() + MLLP_ENVELOPE_BYTES);
        dst.put_u8(MLLP_START);
        dst.extend_from_slice(item);
        dst.extend_from_slice(&MLLP_END);
        Ok(())
    }
}

impl Encoder<Bytes> for MllpCodec {
    type Error = MllpError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), MllpError> {
        <Self as Encoder<&[u8]>>::encode(self, &item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, ReadBuf};
    use tokio_util::codec::FramedRead;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![MLLP_START];
        out.extend_from_slice(payload);
        out.extend_from_slice(&MLLP_END);
        out
    }

    /// A reader that hands out at most `chunk` bytes per read.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let end = (self.pos + self.chunk)
                .min(self.data.len())
                .min(self.pos + buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.data[start..end]);
            self.pos = end;
            Poll::Ready(Ok(()))
        }
    }

    async fn read_all(data: Vec<u8>, chunk: usize, max: usize) -> Vec<Result<Bytes, MllpError>> {
        let reader = Trickle {
            data,
            pos: 0,
            chunk,
        };
        FramedRead::new(reader, MllpCodec::new(max)).collect().await
    }

    #[tokio::test]
    async fn two_frames_in_one_buffer() {
        let mut data = frame(b"MSH|first\r");
        data.extend(frame(b"MSH|second\r"));
        let frames = FramedRead::new(&data[..], MllpCodec::default())
            .collect::<Vec<_>>()
            .await;
        let frames: Vec<Bytes> = frames.into_iter().map(|f| f.expect("frame")).collect();
        assert_eq!(
            frames,
            [
                Bytes::from_static(b"MSH|first\r"),
                Bytes::from_static(b"MSH|second\r")
            ]
        );
    }

    #[tokio::test]
    async fn frames_split_across_many_small_reads() {
        let payload = crate::samples::REF_I12.as_bytes();
        let mut data = frame(payload);
        data.extend(frame(b"x"));
        for chunk in [1, 2, 3, 7] {
            let frames = read_all(data.clone(), chunk, MLLP_FRAME_BYTES_DEFAULT_MAX).await;
            assert_eq!(frames.len(), 2, "chunk {chunk}");
            assert_eq!(frames[0].as_ref().expect("first"), payload);
            assert_eq!(frames[1].as_ref().expect("second"), &b"x"[..]);
        }
    }

    #[test]
    fn byte_at_a_time_decode() {
        let mut codec = MllpCodec::new(64);
        let mut buf = BytesMut::new();
        let data = frame(b"abc\rdef");
        let mut got = Vec::new();
        for &b in &data {
            buf.put_u8(b);
            if let Some(f) = codec.decode(&mut buf).expect("no error") {
                got.push(f);
            }
        }
        assert_eq!(got, [Bytes::from_static(b"abc\rdef")]);
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn garbage_before_a_frame_is_skipped() {
        let mut data = vec![b'\n'; GARBAGE_BYTES_MAX];
        data.extend(frame(b"ok"));
        data.extend_from_slice(b"\r\n");
        data.extend(frame(b"again"));
        data.extend_from_slice(b"\n");
        let frames = read_all(data, 5, 1024).await;
        let frames: Vec<Bytes> = frames.into_iter().map(|f| f.expect("frame")).collect();
        assert_eq!(
            frames,
            [Bytes::from_static(b"ok"), Bytes::from_static(b"again")]
        );
    }

    #[test]
    fn too_much_garbage_is_an_error() {
        let mut codec = MllpCodec::default();
        let mut buf = BytesMut::from(&vec![0u8; GARBAGE_BYTES_MAX][..]);
        assert!(codec.decode(&mut buf).expect("at the limit").is_none());
        assert!(buf.is_empty(), "garbage is not buffered");
        buf.put_u8(b'x');
        assert!(matches!(codec.decode(&mut buf), Err(MllpError::Garbage)));

        // Also when the start byte arrives in the same buffer after too much garbage.
        let mut codec = MllpCodec::default();
        let mut data = vec![b'g'; GARBAGE_BYTES_MAX + 1];
        data.extend(frame(b"late"));
        let mut buf = BytesMut::from(&data[..]);
        assert!(matches!(codec.decode(&mut buf), Err(MllpError::Garbage)));
    }

    #[test]
    fn oversized_frame_is_refused_before_it_ends() {
        let max = 100;
        let mut codec = MllpCodec::new(max);
        let mut buf = BytesMut::new();
        buf.put_u8(MLLP_START);
        buf.extend_from_slice(&vec![b'a'; max]);
        assert!(codec.decode(&mut buf).expect("at the limit").is_none());
        buf.put_u8(b'a');
        assert!(matches!(
            codec.decode(&mut buf),
            Err(MllpError::FrameTooLarge { max: 100 })
        ));
        assert!(buf.is_empty(), "the oversized frame is dropped");

        // A payload of exactly max bytes is accepted.
        let mut codec = MllpCodec::new(max);
        let mut buf = BytesMut::from(&frame(&vec![b'a'; max])[..]);
        let got = codec.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!(got.len(), max);

        // The end byte arriving past the limit is refused too.
        let mut codec = MllpCodec::new(max);
        let mut buf = BytesMut::from(&frame(&vec![b'a'; max + 1])[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(MllpError::FrameTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn oversized_frame_through_framed_read() {
        let frames = read_all(frame(&[b'z'; 5000]), 512, 1000).await;
        assert_eq!(frames.len(), 1);
        assert!(matches!(
            frames[0],
            Err(MllpError::FrameTooLarge { max: 1000 })
        ));
    }

    #[tokio::test]
    async fn truncated_frame_at_eof() {
        let mut data = frame(b"whole");
        data.push(MLLP_START);
        data.extend_from_slice(b"MSH|partial");
        let frames = read_all(data.clone(), 4, 1024).await;
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].as_ref().expect("first"), &b"whole"[..]);
        assert!(matches!(frames[1], Err(MllpError::Truncated)));

        // A frame cut between its two end bytes is truncated as well.
        data.push(MLLP_END[0]);
        let frames = read_all(data, 4, 1024).await;
        assert!(matches!(frames[1], Err(MllpError::Truncated)));
    }

    #[tokio::test]
    async fn eof_after_garbage_only_is_clean() {
        let mut data = frame(b"one");
        data.extend_from_slice(b"\r\n");
        let frames = read_all(data, 3, 1024).await;
        assert_eq!(frames.len(), 1);
        assert!(frames[0].is_ok());
    }

    #[test]
    fn nested_start_byte_is_an_error() {
        let mut codec = MllpCodec::default();
        let mut data = vec![MLLP_START];
        data.extend_from_slice(b"MSH|a");
        data.extend(frame(b"MSH|b"));
        let mut buf = BytesMut::from(&data[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(MllpError::UnexpectedStart)
        ));
        // The codec stops at the new start byte, so a caller that chooses to continue
        // reads the following frame intact.
        let next = codec.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!(next, Bytes::from_static(b"MSH|b"));
    }

    #[test]
    fn end_byte_without_carriage_return_is_an_error() {
        let mut codec = MllpCodec::default();
        let mut buf = BytesMut::from(&[MLLP_START, b'a', MLLP_END[0], b'b'][..]);
        assert!(matches!(codec.decode(&mut buf), Err(MllpError::BadEnd)));
    }

    #[tokio::test]
    async fn empty_frame_yields_empty_payload() {
        let mut data = frame(b"");
        data.extend(frame(b"next"));
        let frames = read_all(data, 1, 1024).await;
        let frames: Vec<Bytes> = frames.into_iter().map(|f| f.expect("frame")).collect();
        assert_eq!(frames, [Bytes::new(), Bytes::from_static(b"next")]);
    }

    #[test]
    fn encode_wraps_and_round_trips() {
        let mut codec = MllpCodec::new(64);
        let mut buf = BytesMut::new();
        codec
            .encode(&b"MSH|x\r"[..], &mut buf)
            .expect("encode slice");
        codec
            .encode(Bytes::from_static(b"MSH|y\r"), &mut buf)
            .expect("encode bytes");
        let mut expected = frame(b"MSH|x\r");
        expected.extend(frame(b"MSH|y\r"));
        assert_eq!(&buf[..], &expected[..]);
        let first = codec.decode(&mut buf).expect("ok").expect("frame");
        let second = codec.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!(first, Bytes::from_static(b"MSH|x\r"));
        assert_eq!(second, Bytes::from_static(b"MSH|y\r"));
        assert!(codec.decode(&mut buf).expect("ok").is_none());
    }

    #[test]
    fn encode_refuses_what_cannot_be_framed() {
        let mut codec = MllpCodec::new(4);
        let mut buf = BytesMut::new();
        assert!(matches!(
            codec.encode(&b"12345"[..], &mut buf),
            Err(MllpError::FrameTooLarge { max: 4 })
        ));
        assert!(matches!(
            codec.encode(&[b'a', MLLP_END[0]][..], &mut buf),
            Err(MllpError::DelimiterInPayload)
        ));
        assert!(matches!(
            codec.encode(&[MLLP_START][..], &mut buf),
            Err(MllpError::DelimiterInPayload)
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn io_errors_convert() {
        let e: MllpError = std::io::Error::other("boom").into();
        assert!(matches!(e, MllpError::Io(_)));
    }
}
