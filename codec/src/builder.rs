//! Writing messages: set elements in any order, encode in one pass, MAC optional.

use bytes::{BufMut, Bytes, BytesMut};

use crate::ebcdic;
use crate::error::{DecodeError, EncodeError, EncodeErrorKind as K};
use crate::mac::{MAC_LEN_BYTES, MacKey};
use crate::message::{bit, first_disallowed};
use crate::mti::Mti;
use crate::spec::{BitmapEncoding, ContentClass, Dialect, Encoding, FieldSpec, LengthKind, Prefix};

/// Elements a builder holds without allocating; it moves to the heap past that. Every
/// message in the merchant contract and the bank protocol has fewer.
pub const BUILDER_ELEMENTS_INLINE: usize = 24;

/// Elements sorted by number, each number once: inline while few, so that building a
/// message allocates nothing but its output.
// The inline variant is the point: a builder lives on the stack for one message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Elements<'a> {
    Inline {
        len: usize,
        items: [(u8, &'a [u8]); BUILDER_ELEMENTS_INLINE],
    },
    Heap(Vec<(u8, &'a [u8])>),
}

impl<'a> Elements<'a> {
    fn as_slice(&self) -> &[(u8, &'a [u8])] {
        match self {
            Elements::Inline { len, items } => &items[..*len],
            Elements::Heap(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [(u8, &'a [u8])] {
        match self {
            Elements::Inline { len, items } => &mut items[..*len],
            Elements::Heap(v) => v,
        }
    }

    fn push(&mut self, item: (u8, &'a [u8])) {
        match self {
            Elements::Inline { len, items } if *len < BUILDER_ELEMENTS_INLINE => {
                items[*len] = item;
                *len += 1;
            }
            _ => {
                let end = self.as_slice().len();
                self.insert(end, item);
            }
        }
    }

    fn insert(&mut self, i: usize, item: (u8, &'a [u8])) {
        match self {
            Elements::Inline { len, items } if *len < BUILDER_ELEMENTS_INLINE => {
                items.copy_within(i..*len, i + 1);
                items[i] = item;
                *len += 1;
            }
            Elements::Inline { len, items } => {
                let mut v = Vec::with_capacity(*len * 2);
                v.extend_from_slice(&items[..*len]);
                v.insert(i, item);
                *self = Elements::Heap(v);
            }
            Elements::Heap(v) => v.insert(i, item),
        }
    }

    fn remove(&mut self, i: usize) {
        match self {
            Elements::Inline { len, items } => {
                items.copy_within(i + 1..*len, i);
                *len -= 1;
            }
            Elements::Heap(v) => {
                v.remove(i);
            }
        }
    }
}

/// A message under construction. Values are logical: ASCII digits for `n`, text for
/// `an`/`ans`, raw bytes for `b`. Fixed `n` values shorter than the element are padded
/// with leading zeros, fixed `an`/`ans` with trailing spaces.
#[derive(Debug, Clone)]
pub struct MessageBuilder<'a> {
    dialect: &'a Dialect,
    mti: Mti,
    fields: Elements<'a>,
}

impl<'a> MessageBuilder<'a> {
    pub fn new(dialect: &'a Dialect, mti: Mti) -> Self {
        MessageBuilder {
            dialect,
            mti,
            fields: Elements::Inline {
                len: 0,
                items: [(0, &[]); BUILDER_ELEMENTS_INLINE],
            },
        }
    }

    pub fn mti(&self) -> Mti {
        self.mti
    }

    /// Sets (or replaces) element `n`.
    pub fn set(&mut self, n: u8, value: &'a [u8]) -> &mut Self {
        let slice = self.fields.as_slice();
        // Callers mostly set elements in ascending order: append without searching.
        if slice.last().is_none_or(|(k, _)| *k < n) {
            self.fields.push((n, value));
            return self;
        }
        match slice.binary_search_by_key(&n, |(k, _)| *k) {
            Ok(i) => self.fields.as_mut_slice()[i].1 = value,
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
        if let Ok(i) = self.fields.as_slice().binary_search_by_key(&n, |(k, _)| *k) {
            self.fields.remove(i);
        }
        self
    }

    /// Whether element `n` is set.
    pub fn has(&self, n: u8) -> bool {
        self.fields
            .as_slice()
            .binary_search_by_key(&n, |(k, _)| *k)
            .is_ok()
    }

    /// The elements set so far, ascending, as given.
    pub fn elements(&self) -> impl Iterator<Item = (u8, &'a [u8])> + '_ {
        self.fields.as_slice().iter().copied()
    }

    /// The bytes the encoded message takes (for a message that encodes; a guess
    /// otherwise), with or without a MAC.
    pub fn encoded_len(&self, with_mac: bool) -> usize {
        let d = self.dialect;
        let mut secondary = false;
        let mut len = d.mti_len();
        for &(n, value) in self.fields.as_slice() {
            if with_mac && (n == 64 || n == 128) {
                continue;
            }
            let layout = d.layout(n.min(crate::FIELD_NUMBER_MAX));
            if !layout.defined {
                continue;
            }
            secondary |= n > 64;
            let logical = match layout.prefix {
                Prefix::Fixed => usize::from(layout.max_len),
                _ => value.len(),
            };
            len += usize::from(layout.prefix_len) + layout.wire_len(logical);
        }
        if with_mac && let Some(f) = d.mac_field(secondary) {
            len += MAC_LEN_BYTES;
            secondary |= f > 64;
        }
        len + d.bitmap_len() * (1 + usize::from(secondary))
    }

    /// A buffer of exactly the message's size: freezing a full buffer hands it over as
    /// is, where a part-full one costs a second allocation for its shared header.
    fn buffer(&self, with_mac: bool) -> BytesMut {
        BytesMut::with_capacity(self.encoded_len(with_mac))
    }

    /// Encodes without a MAC.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        let mut out = self.buffer(false);
        self.encode_into(&mut out, None)?;
        Ok(out.freeze())
    }

    /// Encodes with a MAC in the element the dialect names for this message.
    pub fn encode_with_mac(&self, key: &MacKey) -> Result<Bytes, EncodeError> {
        let mut out = self.buffer(true);
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
        let fields = self.fields.as_slice();
        for &(n, _) in fields {
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
        // The MAC covers everything before its own element, which is not always the last:
        // a DE64 MAC in a message with a secondary bitmap has elements after it.
        let mut mac_pending = key.zip(mac_field);
        for &(n, value) in fields {
            if is_mac_element(n) {
                continue;
            }
            if let Some((key, f)) = mac_pending
                && n > f
            {
                let mac = key.compute(&out[start..]);
                out.put_slice(&mac);
                mac_pending = None;
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
        if let Some((key, _)) = mac_pending {
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
            let mut text = [0u8; 16];
            for (i, c) in text.iter_mut().enumerate() {
                *c = HEX[((v >> ((15 - i) * 4)) & 0xF) as usize];
            }
            out.put_slice(&text);
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
    if first_disallowed(spec.class, value).is_some() {
        return Err(K::BadCharacter);
    }
    // Logical length on the wire, and padding for fixed elements.
    let (len, pad) = match spec.length {
        LengthKind::Fixed => {
            // Neither raw bytes nor track data have a padding that reads back the same.
            if matches!(spec.class, ContentClass::B | ContentClass::Z) && value.len() != max {
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
            // Most values come at their full length; skip the padding calls then.
            if pad == 0 {
                out.put_slice(value);
            } else if pad_left {
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

/// Writes the 2 or 3 low decimal digits of `v`, each as `zero` plus the digit.
fn put_decimal(v: usize, digits: usize, out: &mut BytesMut, zero: u8) {
    let d = [
        zero + (v / 100 % 10) as u8,
        zero + (v / 10 % 10) as u8,
        zero + (v % 10) as u8,
    ];
    out.put_slice(&d[3 - digits..]);
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
    let lead = if odd && class != ContentClass::Z {
        1 + zero_pad
    } else {
        zero_pad
    };
    let trail_f = odd && class == ContentClass::Z;
    // The nibble stream is `lead` zeros, the value, then an F for odd z; pair it up
    // without building it.
    let total = lead + value.len() + usize::from(trail_f);
    let nib_at = |i: usize| -> u8 {
        if i < lead {
            0
        } else if i - lead < value.len() {
            nibble(value[i - lead])
        } else {
            0x0F
        }
    };
    let mut i = 0;
    while i < total {
        let lo = if i + 1 < total { nib_at(i + 1) } else { 0 };
        out.put_u8((nib_at(i) << 4) | lo);
        i += 2;
    }
}

/// Signs a message already encoded without a MAC (or with one, which is replaced): the
/// same elements, re-encoded with the MAC where `dialect` puts it.
///
/// Errors: the bytes do not decode in `dialect`, the dialect has no MAC element, or the
/// message with its MAC is longer than the dialect allows.
pub fn sign_encoded(
    dialect: &'static Dialect,
    encoded: Bytes,
    key: &MacKey,
) -> Result<Bytes, SignError> {
    let message = dialect.decode(encoded).map_err(SignError::Decode)?;
    let values: Vec<(u8, std::borrow::Cow<'_, [u8]>)> = message
        .fields()
        .filter(|&n| n != 64 && n != 128)
        .filter_map(|n| message.get(n).map(|v| (n, v)))
        .collect();
    let mut b = MessageBuilder::new(dialect, message.mti());
    for (n, v) in &values {
        b.set(*n, v);
    }
    b.encode_with_mac(key).map_err(SignError::Encode)
}

/// Why [`sign_encoded`] could not sign.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignError {
    #[error("cannot sign: {0}")]
    Decode(DecodeError),
    #[error("cannot sign: {0}")]
    Encode(EncodeError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::{MAC_KEY_LEN_BYTES, MacCheck};

    // Proves a message encoded without a MAC is signed in both bank dialects, the MAC
    // verifies, and a changed element makes it fail.
    #[test]
    fn sign_encoded_in_bank_dialects() {
        let keys = [
            MacKey::x9_19(&[7u8; 16]),
            MacKey::new(&[9u8; MAC_KEY_LEN_BYTES]),
        ];
        for d in [crate::builtin::bank_bcd(), crate::builtin::bank_ebcdic()] {
            for key in &keys {
                let mut b = MessageBuilder::new(d, crate::Mti::NETWORK_REQUEST);
                b.set(7, b"1201010101").set(11, b"000123").set(70, b"301");
                let signed = sign_encoded(d, b.encode().unwrap(), key).unwrap();
                let m = d.decode(signed.clone()).unwrap();
                assert_eq!(m.check_mac(key), MacCheck::Valid, "{}", d.name);
                let mut tampered = signed.to_vec();
                let at = tampered.len() - MAC_LEN_BYTES - 1;
                tampered[at] ^= 0x01;
                let m = d.decode(Bytes::from(tampered)).unwrap();
                assert_eq!(m.check_mac(key), MacCheck::Invalid, "{}", d.name);
            }
        }
    }
}
