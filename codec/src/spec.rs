//! Dialects: a wire profile described as data, checked once when it is loaded.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::DialectError;
use crate::{FIELD_NUMBER_MAX, MESSAGE_LEN_DEFAULT_MAX_BYTES, MESSAGE_LEN_LIMIT_BYTES};

/// How characters or digits are written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// One ASCII byte a character or digit.
    Ascii,
    /// Two decimal digits a byte (packed BCD); only for digits (`n`, `z`, lengths, MTI).
    Bcd,
    /// One EBCDIC (code page 037) byte a character.
    Ebcdic,
    /// Raw bytes (`b` elements) or, for length prefixes, a big-endian unsigned integer.
    Binary,
}

/// What an element may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentClass {
    /// Decimal digits.
    N,
    /// Letters, digits and spaces.
    An,
    /// Printable ASCII (0x20..=0x7E).
    Ans,
    /// Raw bytes.
    B,
    /// Track-2 data: digits, `=` and `D` as separator.
    Z,
}

/// Fixed length, or variable with a 2- or 3-digit length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LengthKind {
    Fixed,
    Llvar,
    Lllvar,
}

/// How the 8-byte bitmaps are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BitmapEncoding {
    /// 8 raw bytes a bitmap.
    Binary,
    /// 16 ASCII hexadecimal characters a bitmap.
    Hex,
}

/// Where the MAC goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacPlacement {
    /// DE128 when the secondary bitmap is present, DE64 otherwise (the merchant contract).
    Auto,
    De64,
    De128,
    /// The dialect carries no MAC.
    None,
}

/// One data element's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub number: u8,
    #[serde(default)]
    pub name: String,
    pub class: ContentClass,
    pub length: LengthKind,
    /// Fixed length, or the largest variable length: digits for `n`/`z`, bytes otherwise.
    pub max_len: u16,
    /// Encoding of the content.
    #[serde(default = "default_ascii")]
    pub encoding: Encoding,
    /// Encoding of the length prefix (variable elements only).
    #[serde(default = "default_ascii")]
    pub prefix: Encoding,
}

fn default_ascii() -> Encoding {
    Encoding::Ascii
}

impl FieldSpec {
    /// Bytes the content takes on the wire for a logical length.
    #[inline]
    pub fn wire_len(&self, logical_len: usize) -> usize {
        match self.encoding {
            Encoding::Bcd => logical_len.div_ceil(2),
            _ => logical_len,
        }
    }

    /// Bytes of the length prefix (0 for fixed elements).
    #[inline]
    pub fn prefix_len(&self) -> usize {
        let digits = match self.length {
            LengthKind::Fixed => return 0,
            LengthKind::Llvar => 2,
            LengthKind::Lllvar => 3,
        };
        match self.prefix {
            Encoding::Ascii | Encoding::Ebcdic => digits,
            Encoding::Bcd => digits.div_ceil(2),
            Encoding::Binary => digits - 1,
        }
    }
}

/// How messages are delimited on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Framing {
    /// Width of the length prefix in bytes (binary: 2 or 4; ascii: 4; bcd: 2).
    pub length_bytes: u8,
    /// Encoding of the length prefix.
    pub length_encoding: Encoding,
    /// A fixed header after the length and before the message (e.g. 5 for a TPDU).
    #[serde(default)]
    pub header_len: u8,
}

/// Limit on a fixed header; TPDUs are 5 bytes, no profile we know uses more than 16.
pub const FRAME_HEADER_MAX_BYTES: u8 = 16;

/// How a length prefix is written (the decoder's flattened view of a [`FieldSpec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefix {
    Fixed,
    Ascii,
    Ebcdic,
    Bcd,
    Binary,
}

/// How an element's content is checked, chosen once from its class and encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    None,
    /// ASCII `n`, checked a word at a time.
    AsciiDigits,
    /// ASCII `ans`, checked a word at a time.
    AsciiAns,
    /// Other ASCII classes, checked a byte at a time.
    Ascii,
    Ebcdic,
    Bcd,
}

/// What the decoder needs of one element, flattened once at load so that the per-element
/// work on the hot path is one small read instead of several matches on the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FieldLayout {
    pub(crate) defined: bool,
    pub(crate) prefix: Prefix,
    pub(crate) prefix_len: u8,
    pub(crate) prefix_digits: u8,
    pub(crate) encoding: Encoding,
    pub(crate) class: ContentClass,
    pub(crate) check: Check,
    pub(crate) max_len: u16,
}

impl FieldLayout {
    const UNDEFINED: FieldLayout = FieldLayout {
        defined: false,
        prefix: Prefix::Fixed,
        prefix_len: 0,
        prefix_digits: 0,
        encoding: Encoding::Binary,
        class: ContentClass::B,
        check: Check::None,
        max_len: 0,
    };

    fn of(spec: &FieldSpec) -> FieldLayout {
        let (prefix, prefix_digits) = match (spec.length, spec.prefix) {
            (LengthKind::Fixed, _) => (Prefix::Fixed, 0),
            (l, p) => (
                match p {
                    Encoding::Ascii => Prefix::Ascii,
                    Encoding::Ebcdic => Prefix::Ebcdic,
                    Encoding::Bcd => Prefix::Bcd,
                    Encoding::Binary => Prefix::Binary,
                },
                if l == LengthKind::Llvar { 2 } else { 3 },
            ),
        };
        FieldLayout {
            defined: true,
            prefix,
            // At most 3: checked by the length kinds there are.
            prefix_len: spec.prefix_len() as u8,
            prefix_digits,
            encoding: spec.encoding,
            class: spec.class,
            check: match (spec.encoding, spec.class) {
                (Encoding::Binary, _) | (_, ContentClass::B) => Check::None,
                (Encoding::Ascii, ContentClass::N) => Check::AsciiDigits,
                (Encoding::Ascii, ContentClass::Ans) => Check::AsciiAns,
                (Encoding::Ascii, _) => Check::Ascii,
                (Encoding::Ebcdic, _) => Check::Ebcdic,
                (Encoding::Bcd, _) => Check::Bcd,
            },
            max_len: spec.max_len,
        }
    }

    /// Bytes the content takes on the wire for a logical length.
    #[inline]
    pub(crate) fn wire_len(&self, logical_len: usize) -> usize {
        if self.encoding == Encoding::Bcd {
            logical_len.div_ceil(2)
        } else {
            logical_len
        }
    }
}

/// A wire profile, loaded once and shared for the life of the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialectFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub mti_encoding: Encoding,
    pub bitmap_encoding: BitmapEncoding,
    pub mac: MacPlacement,
    #[serde(default = "default_max_message")]
    pub max_message_len: usize,
    pub framing: Framing,
    #[serde(rename = "field")]
    pub fields: Vec<FieldSpec>,
}

fn default_max_message() -> usize {
    MESSAGE_LEN_DEFAULT_MAX_BYTES
}

/// A checked dialect with its elements indexed by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialect {
    pub name: String,
    pub description: String,
    pub mti_encoding: Encoding,
    pub bitmap_encoding: BitmapEncoding,
    pub mac: MacPlacement,
    pub max_message_len: usize,
    pub framing: Framing,
    fields: Vec<Option<FieldSpec>>,
    layout: Vec<FieldLayout>,
}

impl Dialect {
    /// Parses and checks a dialect written in TOML (see docs/dialects.md).
    pub fn from_toml(text: &str) -> Result<Dialect, DialectError> {
        let file: DialectFile =
            toml::from_str(text).map_err(|e| DialectError::Syntax(e.to_string()))?;
        Dialect::from_file(file)
    }

    /// Parses and checks a dialect written in JSON (same shape as the TOML form).
    pub fn from_json(text: &str) -> Result<Dialect, DialectError> {
        let file: DialectFile =
            serde_json::from_str(text).map_err(|e| DialectError::Syntax(e.to_string()))?;
        Dialect::from_file(file)
    }

    /// Reads a dialect file: JSON when the name ends in `.json`, TOML otherwise.
    pub fn from_path(path: &std::path::Path) -> Result<Dialect, DialectError> {
        let text = std::fs::read_to_string(path).map_err(|e| DialectError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            Dialect::from_json(&text)
        } else {
            Dialect::from_toml(&text)
        }
    }

    /// Checks every rule a dialect must follow, so that decoding need not.
    pub fn from_file(file: DialectFile) -> Result<Dialect, DialectError> {
        let invalid = |what: String| {
            Err(DialectError::Invalid {
                dialect: file.name.clone(),
                what,
            })
        };
        if file.name.is_empty() {
            return invalid("name is empty".into());
        }
        if file.max_message_len == 0 || file.max_message_len > MESSAGE_LEN_LIMIT_BYTES {
            return invalid(format!(
                "max_message_len must be 1..={MESSAGE_LEN_LIMIT_BYTES}"
            ));
        }
        if matches!(file.mti_encoding, Encoding::Binary) {
            return invalid("mti_encoding must be ascii, bcd or ebcdic".into());
        }
        let f = file.framing;
        let framing_ok = match f.length_encoding {
            Encoding::Binary => matches!(f.length_bytes, 2 | 4),
            Encoding::Ascii | Encoding::Ebcdic => f.length_bytes == 4,
            Encoding::Bcd => f.length_bytes == 2,
        };
        if !framing_ok {
            return invalid(format!(
                "framing: {} length bytes cannot be {:?}",
                f.length_bytes, f.length_encoding
            ));
        }
        if f.header_len > FRAME_HEADER_MAX_BYTES {
            return invalid(format!("framing: header_len over {FRAME_HEADER_MAX_BYTES}"));
        }
        let mut fields: Vec<Option<FieldSpec>> = vec![None; usize::from(FIELD_NUMBER_MAX) + 1];
        let mut seen = BTreeSet::new();
        for spec in &file.fields {
            let n = spec.number;
            if !(2..=FIELD_NUMBER_MAX).contains(&n) || n == 65 {
                return invalid(format!(
                    "field {n}: number must be 2..=128 and not 65 (bitmaps are implied)"
                ));
            }
            if !seen.insert(n) {
                return invalid(format!("field {n}: defined twice"));
            }
            if spec.max_len == 0 {
                return invalid(format!("field {n}: max_len is 0"));
            }
            let var_max = match spec.length {
                LengthKind::Fixed => u16::MAX,
                LengthKind::Llvar => 99,
                LengthKind::Lllvar => 999,
            };
            if spec.max_len > var_max {
                return invalid(format!(
                    "field {n}: max_len {} does not fit its length prefix",
                    spec.max_len
                ));
            }
            let enc_ok = match spec.class {
                ContentClass::B => spec.encoding == Encoding::Binary,
                ContentClass::N | ContentClass::Z => spec.encoding != Encoding::Binary,
                ContentClass::An | ContentClass::Ans => {
                    matches!(spec.encoding, Encoding::Ascii | Encoding::Ebcdic)
                }
            };
            if !enc_ok {
                return invalid(format!(
                    "field {n}: class {:?} cannot be encoded as {:?}",
                    spec.class, spec.encoding
                ));
            }
            if spec.wire_len(usize::from(spec.max_len)) + spec.prefix_len() > file.max_message_len {
                return invalid(format!("field {n}: larger than max_message_len"));
            }
            fields[usize::from(n)] = Some(spec.clone());
        }
        let mac_ok = |n: usize| matches!(&fields[n], Some(s) if s.class == ContentClass::B && s.length == LengthKind::Fixed && s.max_len == 8);
        let mac_fields_ok = match file.mac {
            MacPlacement::Auto => mac_ok(64) && mac_ok(128),
            MacPlacement::De64 => mac_ok(64),
            MacPlacement::De128 => mac_ok(128),
            MacPlacement::None => true,
        };
        if !mac_fields_ok {
            return invalid("mac: the MAC element(s) must be defined as fixed b, 8 bytes".into());
        }
        let layout = fields
            .iter()
            .map(|f| f.as_ref().map_or(FieldLayout::UNDEFINED, FieldLayout::of))
            .collect();
        Ok(Dialect {
            layout,
            name: file.name,
            description: file.description,
            mti_encoding: file.mti_encoding,
            bitmap_encoding: file.bitmap_encoding,
            mac: file.mac,
            max_message_len: file.max_message_len,
            framing: file.framing,
            fields,
        })
    }

    /// Back to the file form (for `switchyard iso8583 dialect`).
    pub fn to_file(&self) -> DialectFile {
        DialectFile {
            name: self.name.clone(),
            description: self.description.clone(),
            mti_encoding: self.mti_encoding,
            bitmap_encoding: self.bitmap_encoding,
            mac: self.mac,
            max_message_len: self.max_message_len,
            framing: self.framing,
            fields: self.fields.iter().flatten().cloned().collect(),
        }
    }

    /// The definition of element `n`, if the dialect has one.
    #[inline]
    pub fn field(&self, n: u8) -> Option<&FieldSpec> {
        self.fields.get(usize::from(n)).and_then(Option::as_ref)
    }

    /// The decoder's view of element `n` (1..=128).
    #[inline]
    pub(crate) fn layout(&self, n: u8) -> &FieldLayout {
        &self.layout[usize::from(n)]
    }

    /// Every defined element, in ascending order.
    pub fn fields(&self) -> impl Iterator<Item = &FieldSpec> {
        self.fields.iter().flatten()
    }

    /// The element that carries the MAC for a message with or without a secondary bitmap.
    #[inline]
    pub fn mac_field(&self, has_secondary: bool) -> Option<u8> {
        match self.mac {
            MacPlacement::Auto => Some(if has_secondary { 128 } else { 64 }),
            MacPlacement::De64 => Some(64),
            MacPlacement::De128 => Some(128),
            MacPlacement::None => None,
        }
    }

    /// Bytes of the MTI on the wire.
    #[inline]
    pub fn mti_len(&self) -> usize {
        if self.mti_encoding == Encoding::Bcd {
            2
        } else {
            4
        }
    }

    /// Bytes of one bitmap on the wire.
    #[inline]
    pub fn bitmap_len(&self) -> usize {
        match self.bitmap_encoding {
            BitmapEncoding::Binary => 8,
            BitmapEncoding::Hex => 16,
        }
    }
}

/// The dialects that ship with Switchyard, as data in `codec/dialects/`.
pub mod builtin {
    use super::*;

    /// The merchant host-to-host contract, version 1.
    pub const MERCHANT_H2H_V1: &str = "merchant-h2h-v1";
    /// A bank profile: BCD numerics and lengths, 2-byte binary length and a 5-byte TPDU.
    pub const BANK_BCD_V1: &str = "bank-bcd-v1";
    /// A mainframe-style bank profile: EBCDIC text, hex bitmaps, ASCII 4-digit framing.
    pub const BANK_EBCDIC_V1: &str = "bank-ebcdic-v1";

    const SOURCES: [(&str, &str); 3] = [
        (
            MERCHANT_H2H_V1,
            include_str!("../dialects/merchant-h2h-v1.toml"),
        ),
        (BANK_BCD_V1, include_str!("../dialects/bank-bcd-v1.toml")),
        (
            BANK_EBCDIC_V1,
            include_str!("../dialects/bank-ebcdic-v1.toml"),
        ),
    ];

    fn all() -> &'static [Dialect] {
        static ALL: OnceLock<Vec<Dialect>> = OnceLock::new();
        ALL.get_or_init(|| {
            SOURCES
                .iter()
                .map(|(name, src)| {
                    let d = Dialect::from_toml(src)
                        .unwrap_or_else(|e| panic!("built-in dialect {name}: {e}"));
                    assert_eq!(
                        d.name, *name,
                        "built-in dialect file names itself differently"
                    );
                    d
                })
                .collect()
        })
    }

    /// A built-in dialect by name.
    pub fn get(name: &str) -> Option<&'static Dialect> {
        all().iter().find(|d| d.name == name)
    }

    /// The names of all built-in dialects.
    pub fn names() -> impl Iterator<Item = &'static str> {
        SOURCES.iter().map(|(n, _)| *n)
    }

    /// The merchant contract's dialect.
    pub fn merchant() -> &'static Dialect {
        get(MERCHANT_H2H_V1).expect("merchant dialect is built in")
    }

    /// The BCD bank dialect.
    pub fn bank_bcd() -> &'static Dialect {
        get(BANK_BCD_V1).expect("bank dialect is built in")
    }

    /// The EBCDIC bank dialect.
    pub fn bank_ebcdic() -> &'static Dialect {
        get(BANK_EBCDIC_V1).expect("bank dialect is built in")
    }
}

/// Makes a dialect loaded at run time live as long as the built-in ones.
///
/// Dialects are loaded a handful of times at start-up and read on every message; a
/// `'static` reference keeps `Message` free of lifetimes and reference counts.
pub fn leak(dialect: Dialect) -> &'static Dialect {
    Box::leak(Box::new(dialect))
}
