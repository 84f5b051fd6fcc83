//! One-pass, zero-copy decoding: a [`Message`] is an index over the received bytes.
//!
//! Decoding walks the bitmap once, checks every length and every element's content
//! against its class, and records where each element lies. Nothing is allocated per
//! element; [`Message::get`] reads an element on demand and borrows it when the
//! dialect writes it in ASCII or binary (the merchant contract does both).

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

use crate::ebcdic;
use crate::error::{DecodeError, DecodeErrorKind as K};
use crate::mac::{MacCheck, MacKey};
use crate::mti::Mti;
use crate::spec::{
    BitmapEncoding, Check, ContentClass, Dialect, Encoding, FieldLayout, FieldSpec, Prefix,
};

/// Where an element's content lies: byte offset and logical length (digits for
/// `n`/`z`, characters or bytes otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u16,
    len: u16,
}

/// Spans held inline; a message with more elements keeps the rest on the heap. The
/// contract's largest message has 16 elements and the bank protocol's fewer, and a
/// 129-entry table would cost a zero-fill and a 0.5 KiB copy on every decode.
pub const SPANS_INLINE: usize = 32;

/// The spans of the present elements in ascending element order, so that an element's
/// span is found by counting the present elements before it.
#[derive(Debug, Clone)]
struct Spans {
    inline: [Span; SPANS_INLINE],
    overflow: Vec<Span>,
    len: usize,
}

impl Spans {
    #[inline]
    fn new() -> Self {
        Spans {
            inline: [Span::default(); SPANS_INLINE],
            overflow: Vec::new(),
            len: 0,
        }
    }

    #[inline]
    fn push(&mut self, s: Span) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = s,
            None => self.overflow.push(s),
        }
        self.len += 1;
    }

    #[inline]
    fn get(&self, rank: usize) -> Span {
        match self.inline.get(rank) {
            Some(s) => *s,
            None => self.overflow[rank - SPANS_INLINE],
        }
    }
}

/// A decoded message.
#[derive(Clone)]
pub struct Message {
    dialect: &'static Dialect,
    buf: Bytes,
    mti: Mti,
    /// Bit n-1 from the top of the two words is element n, as on the wire; only elements
    /// whose content was read and checked are set (element 1 marks the secondary bitmap).
    present: [u64; 2],
    has_secondary: bool,
    spans: Spans,
}

/// The outcome of parsing a buffer that may hold only part of a message.
// Boxing the message would cost an allocation on every decode.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Parse {
    Complete(Message),
    /// The buffer ends inside the message; at least this many bytes in all are needed.
    Incomplete {
        needed: usize,
    },
}

enum Stop {
    /// The buffer ends early: at least `needed` bytes in all, and the element being read
    /// when it ran out (None inside the MTI or a bitmap).
    Incomplete {
        needed: usize,
        field: Option<u8>,
    },
    Error(DecodeError),
}

#[inline]
pub(crate) fn bit(n: u8) -> (usize, u64) {
    let i = usize::from(n - 1);
    (i / 64, 1u64 << (63 - (i % 64)))
}

impl Dialect {
    /// Parses a buffer that holds a message or the start of one.
    pub fn parse(&'static self, buf: Bytes) -> Result<Parse, DecodeError> {
        let mut msg = Message::unread(self, buf);
        match index_into(&mut msg) {
            Ok(()) => Ok(Parse::Complete(msg)),
            Err(Stop::Incomplete { needed, .. }) => Ok(Parse::Incomplete { needed }),
            Err(Stop::Error(e)) => Err(e),
        }
    }

    /// Decodes exactly one message whose boundary is known (a frame): running out of
    /// bytes is [`K::Truncated`].
    pub fn decode(&'static self, buf: Bytes) -> Result<Message, DecodeError> {
        let len = buf.len();
        // Built where it is returned: the index is too big to move around for free.
        let mut msg = Message::unread(self, buf);
        match index_into(&mut msg) {
            Ok(()) => Ok(msg),
            Err(Stop::Incomplete { field, .. }) => Err(DecodeError {
                field,
                offset: len,
                kind: K::Truncated,
            }),
            Err(Stop::Error(e)) => Err(e),
        }
    }

    /// Whatever could be read of a message that failed to decode: the MTI if it was
    /// readable and every element before the first structural error whose content was
    /// valid. Used to answer a malformed request with its own MTI, STAN and terminal.
    pub fn salvage(&'static self, buf: Bytes) -> Option<Message> {
        let mut msg = Message::unread(self, buf);
        let _ = index_into(&mut msg);
        (msg.mti != Mti::UNREADABLE).then_some(msg)
    }
}

impl Message {
    /// A message with nothing read yet.
    #[inline]
    fn unread(dialect: &'static Dialect, buf: Bytes) -> Message {
        Message {
            dialect,
            buf,
            mti: Mti::UNREADABLE,
            present: [0; 2],
            has_secondary: false,
            spans: Spans::new(),
        }
    }
}

/// Running out of bytes: incomplete if more could still arrive, otherwise (the message
/// would be longer than the dialect allows) an error, so that a stream parser never
/// waits for bytes it would refuse.
#[inline]
fn need(d: &Dialect, needed: usize, field: Option<u8>, offset: usize) -> Stop {
    if needed > d.max_message_len {
        err(
            field,
            offset,
            K::MessageTooLong {
                len: needed,
                max: d.max_message_len,
            },
        )
    } else {
        Stop::Incomplete { needed, field }
    }
}

fn err(field: Option<u8>, offset: usize, kind: K) -> Stop {
    Stop::Error(DecodeError {
        field,
        offset,
        kind,
    })
}

fn index_into(msg: &mut Message) -> Result<(), Stop> {
    let d = msg.dialect;
    let buf: &[u8] = &msg.buf;
    if buf.len() > d.max_message_len {
        return Err(err(
            None,
            d.max_message_len,
            K::MessageTooLong {
                len: buf.len(),
                max: d.max_message_len,
            },
        ));
    }
    let mut pos = 0usize;

    let mti_len = d.mti_len();
    let Some(mti_bytes) = buf.get(..mti_len) else {
        return Err(need(d, mti_len, None, 0));
    };
    msg.mti = read_mti(d.mti_encoding, mti_bytes).ok_or_else(|| err(None, 0, K::BadMti))?;
    pos += mti_len;

    let bitmap_len = d.bitmap_len();
    let mut bitmap = [0u64; 2];
    bitmap[0] = read_bitmap(d, buf, pos)?;
    pos += bitmap_len;
    if bitmap[0] & (1 << 63) != 0 {
        bitmap[1] = read_bitmap(d, buf, pos)?;
        pos += bitmap_len;
        msg.has_secondary = true;
        msg.present[0] |= 1 << 63;
    }

    let mut first_content_error: Option<DecodeError> = None;
    for (word, base) in [(0usize, 0u8), (1, 64)] {
        // Bit 1 (secondary bitmap) is not an element; bit 65 (tertiary) is undefined.
        let mut bits = if word == 0 {
            bitmap[0] & !(1 << 63)
        } else {
            bitmap[1]
        };
        while bits != 0 {
            let lz = bits.leading_zeros();
            let mask = 1u64 << (63 - lz);
            bits ^= mask;
            let n = base + lz as u8 + 1;
            let layout = d.layout(n);
            if !layout.defined {
                return Err(err(Some(n), pos, K::UndefinedElement));
            }
            let (len, prefix_len) = read_length(d, layout, n, buf, pos)?;
            let start = pos + prefix_len;
            let end = start + layout.wire_len(len);
            if end > buf.len() {
                return Err(need(d, end, Some(n), pos));
            }
            match check_content(layout, len, &buf[start..end]) {
                Ok(()) => {
                    // Offsets fit in u16: max_message_len is at most u16::MAX.
                    msg.spans.push(Span {
                        start: start as u16,
                        len: len as u16,
                    });
                    msg.present[word] |= mask;
                }
                Err((kind, at)) => {
                    if first_content_error.is_none() {
                        first_content_error = Some(DecodeError {
                            field: Some(n),
                            offset: start + at,
                            kind,
                        });
                    }
                }
            }
            pos = end;
        }
    }
    if let Some(e) = first_content_error {
        return Err(Stop::Error(e));
    }
    if pos != buf.len() {
        return Err(err(
            None,
            pos,
            K::TrailingBytes {
                count: buf.len() - pos,
            },
        ));
    }
    Ok(())
}

fn read_mti(enc: Encoding, b: &[u8]) -> Option<Mti> {
    let mut digits = [0u8; 4];
    match enc {
        Encoding::Ascii => digits.copy_from_slice(b),
        Encoding::Ebcdic => {
            for (d, e) in digits.iter_mut().zip(b) {
                *d = ebcdic::to_ascii(*e)?;
            }
        }
        Encoding::Bcd => {
            for (i, d) in digits.iter_mut().enumerate() {
                let nib = if i % 2 == 0 {
                    b[i / 2] >> 4
                } else {
                    b[i / 2] & 0x0F
                };
                if nib > 9 {
                    return None;
                }
                *d = b'0' + nib;
            }
        }
        Encoding::Binary => return None,
    }
    Mti::from_digits(digits)
}

fn read_bitmap(d: &Dialect, buf: &[u8], pos: usize) -> Result<u64, Stop> {
    match d.bitmap_encoding {
        BitmapEncoding::Binary => {
            let b = buf
                .get(pos..pos + 8)
                .ok_or_else(|| need(d, pos + 8, None, pos))?;
            Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
        }
        BitmapEncoding::Hex => {
            let b = buf
                .get(pos..pos + 16)
                .ok_or_else(|| need(d, pos + 16, None, pos))?;
            let mut v = 0u64;
            for (i, c) in b.iter().enumerate() {
                let nib = (*c as char)
                    .to_digit(16)
                    .ok_or_else(|| err(None, pos + i, K::BadBitmap))?;
                v = (v << 4) | u64::from(nib);
            }
            Ok(v)
        }
    }
}

/// Reads an element's length prefix: (logical length, prefix bytes).
#[inline]
fn read_length(
    d: &Dialect,
    layout: &FieldLayout,
    n: u8,
    buf: &[u8],
    pos: usize,
) -> Result<(usize, usize), Stop> {
    let max = usize::from(layout.max_len);
    if layout.prefix == Prefix::Fixed {
        return Ok((max, 0));
    }
    let digits = usize::from(layout.prefix_digits);
    let plen = usize::from(layout.prefix_len);
    let p = buf
        .get(pos..pos + plen)
        .ok_or_else(|| need(d, pos + plen, Some(n), pos))?;
    let bad = || err(Some(n), pos, K::BadLengthDigit);
    let len = match layout.prefix {
        Prefix::Fixed => 0,
        Prefix::Ascii => parse_decimal(p).ok_or_else(bad)?,
        Prefix::Ebcdic => {
            let mut v = 0usize;
            for &e in p {
                if !(0xF0..=0xF9).contains(&e) {
                    return Err(bad());
                }
                v = v * 10 + usize::from(e - 0xF0);
            }
            v
        }
        Prefix::Bcd => {
            let mut v = 0usize;
            // An odd digit count is padded with one leading zero nibble.
            let skip = plen * 2 - digits;
            for i in 0..plen * 2 {
                let nib = if i % 2 == 0 {
                    p[i / 2] >> 4
                } else {
                    p[i / 2] & 0x0F
                };
                if nib > 9 || (i < skip && nib != 0) {
                    return Err(bad());
                }
                v = v * 10 + usize::from(nib);
            }
            v
        }
        Prefix::Binary => p.iter().fold(0usize, |v, b| (v << 8) | usize::from(*b)),
    };
    if len > max {
        return Err(err(Some(n), pos, K::OverMaxLength { len, max }));
    }
    Ok((len, plen))
}

#[inline]
fn parse_decimal(p: &[u8]) -> Option<usize> {
    let mut v = 0usize;
    for &c in p {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + usize::from(c - b'0');
    }
    Some(v)
}

/// Content classes in the order of [`ContentClass`]'s variants, for table look-ups.
const CLASS_COUNT: usize = 5;

const fn class_allows_const(class: usize, c: u8) -> bool {
    match class {
        0 => c.is_ascii_digit(),
        1 => c.is_ascii_alphanumeric() || c == b' ',
        2 => c >= 0x20 && c <= 0x7E,
        3 => true,
        _ => c.is_ascii_digit() || c == b'=' || c == b'D',
    }
}

/// Per class, whether each ASCII byte is allowed: one load a byte on the hot path
/// instead of a range test per class.
static ASCII_ALLOWED: [[bool; 256]; CLASS_COUNT] = {
    let mut t = [[false; 256]; CLASS_COUNT];
    let mut class = 0;
    while class < CLASS_COUNT {
        let mut c = 0;
        while c < 256 {
            t[class][c] = class_allows_const(class, c as u8);
            c += 1;
        }
        class += 1;
    }
    t
};

/// Per class, whether each EBCDIC byte maps to an allowed character.
static EBCDIC_ALLOWED: [[bool; 256]; CLASS_COUNT] = {
    let mut t = [[false; 256]; CLASS_COUNT];
    let mut class = 0;
    while class < CLASS_COUNT {
        let mut e = 0;
        while e < 256 {
            let a = ebcdic::EBCDIC_TO_ASCII[e];
            t[class][e] = a != 0 && class_allows_const(class, a);
            e += 1;
        }
        class += 1;
    }
    t
};

/// Whether all eight bytes of a word are allowed by `n` (`digits`) or else by `ans`.
#[inline]
fn word_allowed(digits: bool, x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    if digits {
        // Every byte 0x3_, and adding 6 leaves it there (so the low nibble is 0..=9).
        x & (0xF0 * ONES) == 0x30 * ONES
            && x.wrapping_add(0x06 * ONES) & (0xF0 * ONES) == 0x30 * ONES
    } else {
        // No byte below 0x20 and none above 0x7E (the classic has-less/has-more tests);
        // adding 0x7F - 0x7E sets the high bit of a byte above 0x7E.
        let below = x.wrapping_sub(0x20 * ONES) & !x & HIGH;
        let above = (x.wrapping_add(ONES) | x) & HIGH;
        below | above == 0
    }
}

/// Whether every byte of `s` is allowed by `n` (`digits`) or else by `ans`, a word at a
/// time with no per-byte loop: most elements are one or two words long.
#[inline]
fn all_allowed_by_words(digits: bool, s: &[u8]) -> bool {
    let n = s.len();
    let word = if n >= 8 {
        let at = |i: usize| u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
        let mut i = 0;
        while i + 8 < n {
            if !word_allowed(digits, at(i)) {
                return false;
            }
            i += 8;
        }
        // The last word overlaps the one before it when the length is not a multiple of 8.
        at(n - 8)
    } else if n >= 4 {
        let at = |i: usize| u32::from_le_bytes(s[i..i + 4].try_into().expect("4 bytes"));
        u64::from(at(0)) | (u64::from(at(n - 4)) << 32)
    } else {
        // '0' is allowed by both classes, so it can fill the rest of the word.
        let mut w = [b'0'; 8];
        for (d, c) in w.iter_mut().zip(s) {
            *d = *c;
        }
        u64::from_le_bytes(w)
    };
    word_allowed(digits, word)
}

/// The index of the first byte of `s` the class does not allow.
#[inline]
pub(crate) fn first_disallowed(class: ContentClass, s: &[u8]) -> Option<usize> {
    match class {
        ContentClass::B => return None,
        ContentClass::N | ContentClass::Ans => {
            if all_allowed_by_words(class == ContentClass::N, s) {
                return None;
            }
        }
        ContentClass::An | ContentClass::Z => {}
    }
    let table = &ASCII_ALLOWED[class as usize];
    s.iter().position(|&c| !table[usize::from(c)])
}

fn class_error(class: ContentClass) -> K {
    if class == ContentClass::N {
        K::NonNumeric
    } else {
        K::BadCharacter
    }
}

/// Checks an element's content against its class; on failure, the kind and the index of
/// the first offending byte.
#[inline]
fn check_content(layout: &FieldLayout, len: usize, wire: &[u8]) -> Result<(), (K, usize)> {
    let class = layout.class;
    let bad = |at: usize| Err((class_error(class), at));
    let ascii = || match first_disallowed(class, wire) {
        None => Ok(()),
        Some(at) => bad(at),
    };
    match layout.check {
        Check::None => Ok(()),
        Check::AsciiDigits if all_allowed_by_words(true, wire) => Ok(()),
        Check::AsciiAns if all_allowed_by_words(false, wire) => Ok(()),
        Check::AsciiDigits | Check::AsciiAns | Check::Ascii => ascii(),
        Check::Ebcdic => {
            let table = &EBCDIC_ALLOWED[class as usize];
            match wire.iter().position(|&e| !table[usize::from(e)]) {
                None => Ok(()),
                Some(at) => bad(at),
            }
        }
        Check::Bcd => {
            let z = class == ContentClass::Z;
            let odd = len % 2 == 1;
            let last = wire.len().wrapping_sub(1);
            for (i, &b) in wire.iter().enumerate() {
                let (hi, lo) = (b >> 4, b & 0x0F);
                // n is padded with one leading 0 nibble, z with one trailing F.
                let hi_ok = if odd && !z && i == 0 {
                    hi == 0
                } else {
                    hi <= 9 || (z && hi == 0x0D)
                };
                let lo_ok = if odd && z && i == last {
                    lo == 0x0F
                } else {
                    lo <= 9 || (z && lo == 0x0D)
                };
                if !(hi_ok && lo_ok) {
                    return bad(i);
                }
            }
            Ok(())
        }
    }
}

/// Unpacks BCD digits (n: padded left; z: padded right, nibble D is `=`).
pub(crate) fn unpack_bcd(class: ContentClass, len: usize, wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let skip = if len % 2 == 1 && class != ContentClass::Z {
        1
    } else {
        0
    };
    for i in skip..skip + len {
        let b = wire[i / 2];
        let nib = if i % 2 == 0 { b >> 4 } else { b & 0x0F };
        out.push(if nib == 0x0D { b'=' } else { b'0' + nib });
    }
    out
}

impl Message {
    /// The dialect the message was decoded with.
    pub fn dialect(&self) -> &'static Dialect {
        self.dialect
    }

    /// The message type indicator.
    #[inline]
    pub fn mti(&self) -> Mti {
        self.mti
    }

    /// The whole message as received (without any frame header).
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    /// Whether the secondary bitmap was present.
    pub fn has_secondary_bitmap(&self) -> bool {
        self.has_secondary
    }

    /// Whether element `n` is present (and, for a salvaged message, was read cleanly).
    #[inline]
    pub fn has(&self, n: u8) -> bool {
        if n == 0 || n > crate::FIELD_NUMBER_MAX {
            return false;
        }
        let (i, m) = bit(n);
        n != 1 && self.present[i] & m != 0
    }

    /// Numbers of the elements present, ascending.
    pub fn fields(&self) -> impl Iterator<Item = u8> + '_ {
        (2..=crate::FIELD_NUMBER_MAX).filter(|&n| self.has(n))
    }

    /// How many present elements come before element `n` (2..=128).
    #[inline]
    fn rank(&self, n: u8) -> usize {
        let (i, m) = bit(n);
        let above = |w: u64| (w & !(m | (m - 1))).count_ones() as usize;
        let primary = self.present[0] & !(1 << 63);
        if i == 0 {
            above(primary)
        } else {
            primary.count_ones() as usize + above(self.present[1])
        }
    }

    #[inline]
    fn spec_span(&self, n: u8) -> Option<(&'static FieldSpec, Span)> {
        if !self.has(n) {
            return None;
        }
        let spec = self.dialect.field(n)?;
        Some((spec, self.spans.get(self.rank(n))))
    }

    /// The element's bytes as they are on the wire (after its length prefix).
    #[inline]
    pub fn raw(&self, n: u8) -> Option<&[u8]> {
        let (spec, s) = self.spec_span(n)?;
        let start = usize::from(s.start);
        Some(&self.buf[start..start + spec.wire_len(usize::from(s.len))])
    }

    /// The element's logical value: ASCII digits or text, or raw bytes for `b`.
    /// Borrowed when the wire form already is that; unpacked for BCD and EBCDIC.
    #[inline]
    pub fn get(&self, n: u8) -> Option<Cow<'_, [u8]>> {
        let (spec, s) = self.spec_span(n)?;
        let start = usize::from(s.start);
        let len = usize::from(s.len);
        let wire = &self.buf[start..start + spec.wire_len(len)];
        Some(match spec.encoding {
            Encoding::Ascii | Encoding::Binary => Cow::Borrowed(wire),
            Encoding::Bcd => Cow::Owned(unpack_bcd(spec.class, len, wire)),
            Encoding::Ebcdic => Cow::Owned(
                wire.iter()
                    .map(|&e| ebcdic::to_ascii(e).unwrap_or(b'?'))
                    .collect(),
            ),
        })
    }

    /// The element as text (every class but `b` is checked to be printable ASCII).
    #[inline]
    pub fn get_str(&self, n: u8) -> Option<Cow<'_, str>> {
        if self.dialect.field(n)?.class == ContentClass::B {
            return None;
        }
        Some(match self.get(n)? {
            Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).ok()?),
            Cow::Owned(v) => Cow::Owned(String::from_utf8(v).ok()?),
        })
    }

    /// A numeric (`n`) element as an integer; None if absent or longer than 19 digits.
    #[inline]
    pub fn get_u64(&self, n: u8) -> Option<u64> {
        let v = self.get(n)?;
        if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(v.iter().fold(0u64, |acc, c| acc * 10 + u64::from(c - b'0')))
    }

    /// The element as a zero-copy slice of the received buffer, when the wire form is
    /// the logical form (ASCII or binary).
    pub fn get_bytes(&self, n: u8) -> Option<Bytes> {
        let (spec, s) = self.spec_span(n)?;
        if !matches!(spec.encoding, Encoding::Ascii | Encoding::Binary) {
            return None;
        }
        let start = usize::from(s.start);
        Some(
            self.buf
                .slice(start..start + spec.wire_len(usize::from(s.len))),
        )
    }

    /// The bytes a MAC in element `mac_field` covers: from the MTI up to the element.
    pub fn mac_input(&self, mac_field: u8) -> Option<(&[u8], &[u8])> {
        let (spec, s) = self.spec_span(mac_field)?;
        let start = usize::from(s.start);
        Some((
            &self.buf[..start],
            &self.buf[start..start + spec.wire_len(usize::from(s.len))],
        ))
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.dialect.name == other.dialect.name
            && self.mti == other.mti
            && self.present == other.present
            && self.fields().all(|n| self.get(n) == other.get(n))
    }
}

/// Debug output never shows a card number: DE2 and DE35 are masked.
impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        m.entry(&"mti", &self.mti.as_str());
        for n in self.fields() {
            let v = self.get(n).unwrap_or_default();
            let shown = match n {
                2 | 35 => crate::card::mask_pan(&String::from_utf8_lossy(&v)),
                _ if self
                    .dialect
                    .field(n)
                    .is_some_and(|s| s.class == ContentClass::B) =>
                {
                    hex_upper(&v)
                }
                _ => String::from_utf8_lossy(&v).into_owned(),
            };
            m.entry(&n, &shown);
        }
        m.finish()
    }
}

pub(crate) fn hex_upper(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(HEX[usize::from(x >> 4)] as char);
        s.push(HEX[usize::from(x & 0xF)] as char);
    }
    s
}

impl Message {
    /// Checks the MAC where the dialect says it must be for this message.
    pub fn check_mac(&self, key: &MacKey) -> MacCheck {
        let Some(expected) = self.dialect().mac_field(self.has_secondary_bitmap()) else {
            return MacCheck::Missing;
        };
        let other = if expected == 64 { 128 } else { 64 };
        if self.has(other) && self.dialect().field(other).is_some() && other != expected {
            return MacCheck::Misplaced;
        }
        match self.mac_input(expected) {
            None => MacCheck::Missing,
            Some((covered, mac)) if key.verify(covered, mac) => MacCheck::Valid,
            Some(_) => MacCheck::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the word-at-a-time checks agree with the per-byte tables on every byte value
    // in every position, including the carries between neighbouring bytes.
    #[test]
    fn word_checks_agree_with_tables() {
        for class in [ContentClass::N, ContentClass::Ans] {
            let table = &ASCII_ALLOWED[class as usize];
            for len in 0..20 {
                for fill in [b'0', b'9', b' ', b'~', b'A'] {
                    for pos in 0..len {
                        for v in 0..=255u8 {
                            let mut s = vec![fill; len];
                            s[pos] = v;
                            let expected = s.iter().position(|&c| !table[usize::from(c)]);
                            assert_eq!(first_disallowed(class, &s), expected, "{class:?} {s:?}");
                        }
                    }
                }
            }
        }
    }
}
