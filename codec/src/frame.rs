//! Framing for tokio-util: a length prefix (binary, ASCII or BCD), an optional fixed
//! header (such as a TPDU), then the message. The size limit is checked on the length
//! prefix, before anything is buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::FrameError;
use crate::spec::{Encoding, Framing};

/// One frame: the fixed header (empty when the framing has none) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Bytes,
    pub message: Bytes,
}

/// A framing with its size limit (bytes after the length prefix, header included).
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    framing: Framing,
    max_frame_len: usize,
}

impl FrameCodec {
    /// `max_message_len` bounds the message; the frame adds the fixed header.
    pub fn new(framing: Framing, max_message_len: usize) -> Self {
        FrameCodec {
            framing,
            max_frame_len: max_message_len + usize::from(framing.header_len),
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    fn prefix_len(&self) -> usize {
        usize::from(self.framing.length_bytes)
    }

    fn read_len(&self, p: &[u8]) -> Result<usize, FrameError> {
        match self.framing.length_encoding {
            Encoding::Binary => Ok(p.iter().fold(0usize, |v, b| (v << 8) | usize::from(*b))),
            Encoding::Ascii => {
                p.iter().try_fold(0usize, |v, c| {
                    c.is_ascii_digit().then(|| v * 10 + usize::from(c - b'0'))
                })
            }
            .ok_or(FrameError::BadLength),
            Encoding::Ebcdic => p
                .iter()
                .try_fold(0usize, |v, c| {
                    (0xF0..=0xF9)
                        .contains(c)
                        .then(|| v * 10 + usize::from(c - 0xF0))
                })
                .ok_or(FrameError::BadLength),
            Encoding::Bcd => p
                .iter()
                .try_fold(0usize, |v, b| {
                    let (hi, lo) = (b >> 4, b & 0xF);
                    (hi <= 9 && lo <= 9).then(|| v * 100 + usize::from(hi * 10 + lo))
                })
                .ok_or(FrameError::BadLength),
        }
    }

    fn write_len(&self, len: usize, dst: &mut BytesMut) {
        let w = self.prefix_len();
        match self.framing.length_encoding {
            Encoding::Binary => {
                for i in (0..w).rev() {
                    dst.put_u8((len >> (i * 8)) as u8);
                }
            }
            Encoding::Ascii | Encoding::Ebcdic => {
                let zero = if self.framing.length_encoding == Encoding::Ascii {
                    b'0'
                } else {
                    0xF0
                };
                for i in (0..w as u32).rev() {
                    dst.put_u8(zero + ((len / 10usize.pow(i)) % 10) as u8);
                }
            }
            Encoding::Bcd => {
                for i in (0..w as u32).rev() {
                    let two = (len / 100usize.pow(i)) % 100;
                    dst.put_u8((((two / 10) as u8) << 4) | (two % 10) as u8);
                }
            }
        }
    }

    /// The largest length the prefix itself can express.
    fn prefix_capacity(&self) -> usize {
        let w = self.prefix_len() as u32;
        match self.framing.length_encoding {
            Encoding::Binary => (1usize << (8 * w)) - 1,
            Encoding::Ascii | Encoding::Ebcdic => 10usize.pow(w) - 1,
            Encoding::Bcd => 100usize.pow(w) - 1,
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let plen = self.prefix_len();
        if src.len() < plen {
            return Ok(None);
        }
        let len = self.read_len(&src[..plen])?;
        if len == 0 {
            return Err(FrameError::ZeroLength);
        }
        if len > self.max_frame_len {
            return Err(FrameError::TooLong {
                len,
                max: self.max_frame_len,
            });
        }
        let header_len = usize::from(self.framing.header_len);
        if len < header_len {
            return Err(FrameError::ShorterThanHeader { len, header_len });
        }
        if src.len() < plen + len {
            src.reserve(plen + len - src.len());
            return Ok(None);
        }
        src.advance(plen);
        let mut body = src.split_to(len).freeze();
        let message = body.split_off(header_len);
        Ok(Some(Frame {
            header: body,
            message,
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_parts(&frame.header, &frame.message, dst)
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    /// A message with a zeroed header (for framings that have one).
    fn encode(&mut self, message: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        let header = [0u8; crate::spec::FRAME_HEADER_MAX_BYTES as usize];
        self.encode_parts(
            &header[..usize::from(self.framing.header_len)],
            &message,
            dst,
        )
    }
}

impl FrameCodec {
    /// Writes one frame; the header must be exactly the framing's header length.
    pub fn encode_parts(
        &self,
        header: &[u8],
        message: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let header_len = usize::from(self.framing.header_len);
        if header.len() != header_len {
            return Err(FrameError::ShorterThanHeader {
                len: header.len(),
                header_len,
            });
        }
        let len = header_len + message.len();
        if message.is_empty() {
            return Err(FrameError::ZeroLength);
        }
        let max = self.max_frame_len.min(self.prefix_capacity());
        if len > max {
            return Err(FrameError::TooLong { len, max });
        }
        dst.reserve(self.prefix_len() + len);
        self.write_len(len, dst);
        dst.put_slice(header);
        dst.put_slice(message);
        Ok(())
    }
}
