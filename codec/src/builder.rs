//! Writing messages: set elements in any order, encode in one pass, MAC optional.

use bytes::{BufMut, Bytes, BytesMut};

use crate::ebcdic;
use crate::error::{EncodeError, EncodeErrorKind as K};
use crate::mac::MacKey;
use crate::message::{bit, class_allows};
use crate::mti::Mti;
use crate::spec::{BitmapEncoding, ContentClass, Dialect, Encoding, FieldSpec, LengthKind};

/// Typical elements in one message; the builder grows past it if asked to.
const BUILDER_ELEMENTS_TYPICAL: usize = 16;

/// A message under construction. Values are logical: ASCII digits for `n`, text for
/// `an`/`ans`, raw bytes for `b`. Fixed `n` values shorter than the element are padded
/// with leading zeros, fixed `an`/`ans` with trailing spaces.
#[derive(Debug, Clone)]
pub struct MessageBuilder<'a> {
    dialect: &'a Dialect,
    mti: Mti,
    /// Sorted by element number, each number once.
    fields: Vec<(u8, &'a [u8])>,
}

impl<'a> MessageBuilder<'a> {
    pub fn new(dialect: &'a Dialect, mti: Mti) -> Self {
        MessageBuilder {
            dialect,
            mti,
            fields: Vec::with_capacity(BUILDER_ELEMENTS_TYPICAL),
        }
    }

    pub fn mti(&self) -> Mti {
        self.mti
    }

    /// Sets (or replaces) element `n`.
    pub fn set(&mut self, n: u8, value: &'a [u8]) -> &mut Self {
        match self.fields.binary_search_by_key(&n, |(k, _)| *k) {
            Ok(i) => self.fields[i].1 = value,
            Err(i) => self.fields.insert(i, (n, value)),
        }
        self
    }

    /// Sets element `n` from text.
    pub fn set_str(&mut self, n: u8, value: &'a str) -> &mut Self {
        self.set(n, value.as_bytes())
    }

    /// Sets element `n` if a value is given.
    pub fn set_opt(&mut self, n: u8, value: Option<&'a [u8]>) -> &mut Self {
        if let Some(v) = value {
            self.set(n, v);
        }
        self
    }

    /// Removes element `n`.
    pub fn remove(&mut self, n: u8) -> &mut Self {
        self.fields.retain(|(k, _)| *k != n);
        self
    }

    /// Encodes without a MAC.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::with_capacity(256);
        self.encode_into(&mut out, None)?;
        Ok(out.freeze())
    }

    /// Encodes with a MAC in the element the dialect names for this message.
    pub fn encode_with_mac(&self, key: &MacKey) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::with_capacity(256);
        self.encode_into(&mut out, Some(key))?;
        Ok(out.freeze())
    }

    /// Appends the encoded message to `out`; on error `out` is left as it was.
    pub fn encode_into(&self, out: &mut BytesMut, key: Option<&MacKey>) -> Result<(), EncodeError> {
        let start = out.len();
        let res = self.write(out, start, key);
        if res.is_err() {
            out.truncate(start);
        }
        res
    }

    fn write(
        &self,
        out: &mut BytesMut,
        start: usize,
        key: Option<&MacKey>,
    ) -> Result<(), EncodeError> {
        let d = self.dialect;
        let is_mac_element = |n: u8| key.is_some() && (n == 64 || n == 128);
        let mut bitmap = [0u64; 2];
        for &(n, _) in &self.fields {
            if n < 2 || n == 65 || n > crate::FIELD_NUMBER_MAX {
                return Err(EncodeError {
                    field: Some(n),
                    kind: K::UndefinedElement,
                });
            }
            if !is_mac_element(n) {
                let (i, m) = bit(n);
                bitmap[i] |= m;
            }
        }
        let mac_field = match key {
            Some(_) => {
                let f = d.mac_field(bitmap[1] != 0).ok_or(EncodeError {
                    field: None,
                    kind: K::NoMacElement,
                })?;
                let (i, m) = bit(f);
                bitmap[i] |= m;
                Some(f)
            }
            None => None,
        };
        if bitmap[1] != 0 {
            bitmap[0] |= 1 << 63;
        }

        write_mti(d.mti_encoding, self.mti, out);
        write_bitmap(d.bitmap_encoding, bitmap[0], out);
        if bitmap[1] != 0 {
            write_bitmap(d.bitmap_encoding, bitmap[1], out);
        }
        for &(n, value) in &self.fields {
            if is_mac_element(n) {
                continue;
            }
            let spec = d.field(n).ok_or(EncodeError {
                field: Some(n),
                kind: K::UndefinedElement,
            })?;
            write_field(spec, value, out).map_err(|kind| EncodeError {
                field: Some(n),
                kind,
            })?;
        }
        if let (Some(key), Some(_)) = (key, mac_field) {
            let mac = key.compute(&out[start..]);
            out.put_slice(&mac);
        }
        let len = out.len() - start;
        if len > d.max_message_len {
            return Err(EncodeError {
                field: None,
                kind: K::MessageTooLong {
                    len,
                    max: d.max_message_len,
                },
            });
        }
        Ok(())
    }
}

fn write_mti(enc: Encoding, mti: Mti, out: &mut BytesMut) {
    let d = mti.as_bytes();
    match enc {
        Encoding::Bcd => {
            out.put_u8(((d[0] - b'0') << 4) | (d[1] - b'0'));
            out.put_u8(((d[2] - b'0') << 4) | (d[3] - b'0'));
        }
        Encoding::Ebcdic => out.extend(d.iter().map(|&c| 0xF0 + (c - b'0'))),
        Encoding::Ascii | Encoding::Binary => out.put_slice(d),
    }
}

fn write_bitmap(enc: BitmapEncoding, v: u64, out: &mut BytesMut) {
    match enc {
        BitmapEncoding::Binary => out.put_u64(v),
        BitmapEncoding::Hex => {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            for i in (0..16).rev() {
                out.put_u8(HEX[((v >> (i * 4)) & 0xF) as usize]);
            }
        }
    }
}

fn write_field(spec: &FieldSpec, value: &[u8], out: &mut BytesMut) -> Result<(), K> {
    let max = usize::from(spec.max_len);
    if value.len() > max {
        return Err(K::TooLong {
            len: value.len(),
            max,
        });
    }
    if !value.iter().all(|&c| class_allows(spec.class, c)) {
        return Err(K::BadCharacter);
    }
    // Logical length on the wire, and padding for fixed elements.
    let (len, pad) = match spec.length {
        LengthKind::Fixed => {
            if spec.class == ContentClass::B && value.len() != max {
                return Err(K::WrongLength {
                    len: value.len(),
                    expected: max,
                });
            }
            (max, max - value.len())
        }
        LengthKind::Llvar | LengthKind::Lllvar => {
            write_prefix(spec, value.len(), out);
            (value.len(), 0)
        }
    };
    let pad_left = matches!(spec.class, ContentClass::N);
    let pad_char = if pad_left { b'0' } else { b' ' };
    match spec.encoding {
        Encoding::Ascii | Encoding::Binary => {
            if pad_left {
                out.put_bytes(pad_char, pad);
                out.put_slice(value);
            } else {
                out.put_slice(value);
                out.put_bytes(pad_char, pad);
            }
        }
        Encoding::Ebcdic => {
            let e = |c: u8| ebcdic::to_ebcdic(c).unwrap_or(0x40);
            if pad_left {
                out.put_bytes(e(pad_char), pad);
            }
            out.extend(value.iter().map(|&c| e(c)));
            if !pad_left {
                out.put_bytes(e(pad_char), pad);
            }
        }
        Encoding::Bcd => write_bcd(spec.class, len, pad, value, out),
    }
    Ok(())
}

fn write_prefix(spec: &FieldSpec, len: usize, out: &mut BytesMut) {
    let digits = if spec.length == LengthKind::Llvar {
        2
    } else {
        3
    };
    match spec.prefix {
        Encoding::Ascii => put_decimal(len, digits, out, b'0'),
        Encoding::Ebcdic => put_decimal(len, digits, out, 0xF0),
        Encoding::Bcd => {
            // LL in one byte, LLL in two with a leading zero nibble.
            if digits == 2 {
                out.put_u8((((len / 10) as u8) << 4) | (len % 10) as u8);
            } else {
                out.put_u8((len / 100) as u8);
                out.put_u8(((((len / 10) % 10) as u8) << 4) | (len % 10) as u8);
            }
        }
        Encoding::Binary => {
            if digits == 2 {
                out.put_u8(len as u8);
            } else {
                out.put_u16(len as u16);
            }
        }
    }
}

fn put_decimal(v: usize, digits: u32, out: &mut BytesMut, zero: u8) {
    for i in (0..digits).rev() {
        out.put_u8(zero + ((v / 10usize.pow(i)) % 10) as u8);
    }
}

/// Packs digits two to a byte: `n` padded on the left (zeros first, then one pad
/// nibble 0 for odd lengths), `z` padded on the right with nibble F; `=` and `D` are D.
fn write_bcd(class: ContentClass, len: usize, zero_pad: usize, value: &[u8], out: &mut BytesMut) {
    let nibble = |c: u8| {
        if c == b'=' || c == b'D' {
            0x0D
        } else {
            c - b'0'
        }
    };
    let odd = len % 2 == 1;
    let mut nibbles = Vec::with_capacity(len + 1);
    if odd && class != ContentClass::Z {
        nibbles.push(0);
    }
    nibbles.extend(std::iter::repeat_n(0u8, zero_pad));
    nibbles.extend(value.iter().map(|&c| nibble(c)));
    if odd && class == ContentClass::Z {
        nibbles.push(0x0F);
    }
    for pair in nibbles.chunks(2) {
        out.put_u8((pair[0] << 4) | pair.get(1).copied().unwrap_or(0));
    }
}
