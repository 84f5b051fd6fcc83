//! Named errors: every decode error says which element, at which byte, and why.

use std::fmt;

use thiserror::Error;

/// Why a message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The MTI is not four decimal digits.
    BadMti,
    /// A hex bitmap holds a character that is not a hexadecimal digit.
    BadBitmap,
    /// A length prefix holds something that is not a decimal digit.
    BadLengthDigit,
    /// A length prefix names more than the element's maximum.
    OverMaxLength { len: usize, max: usize },
    /// An `n` element holds something that is not a decimal digit.
    NonNumeric,
    /// An `an`, `ans` or `z` element holds a character its class does not allow.
    BadCharacter,
    /// The bitmap names an element the dialect does not define.
    UndefinedElement,
    /// The buffer ends inside the message (where the frame boundary is known).
    Truncated,
    /// Bytes remain after the last element the bitmap names.
    TrailingBytes { count: usize },
    /// The message is larger than the dialect's `max_message_len`.
    MessageTooLong { len: usize, max: usize },
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMti => f.write_str("MTI is not four decimal digits"),
            Self::BadBitmap => f.write_str("bitmap is not hexadecimal"),
            Self::BadLengthDigit => f.write_str("bad length digit"),
            Self::OverMaxLength { len, max } => write!(f, "length {len} over max length {max}"),
            Self::NonNumeric => f.write_str("non-numeric content in an n element"),
            Self::BadCharacter => f.write_str("character not allowed by the element's class"),
            Self::UndefinedElement => {
                f.write_str("bitmap names an element the dialect does not define")
            }
            Self::Truncated => f.write_str("truncated"),
            Self::TrailingBytes { count } => write!(f, "{count} trailing bytes"),
            Self::MessageTooLong { len, max } => write!(f, "message of {len} bytes over max {max}"),
        }
    }
}

/// A decode error: the element (None for the MTI, bitmaps and whole-message checks),
/// the byte offset from the start of the message, and the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub struct DecodeError {
    pub field: Option<u8>,
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(n) => write!(f, "DE{n} at byte {}: {}", self.offset, self.kind),
            None => write!(f, "at byte {}: {}", self.offset, self.kind),
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeErrorKind {
    /// The dialect does not define the element.
    UndefinedElement,
    /// The value is longer than the element allows.
    TooLong { len: usize, max: usize },
    /// A fixed `b` element must be given at its exact length.
    WrongLength { len: usize, expected: usize },
    /// The value holds a character the element's class does not allow.
    BadCharacter,
    /// The MTI is not four decimal digits.
    BadMti,
    /// The encoded message would exceed the dialect's `max_message_len`.
    MessageTooLong { len: usize, max: usize },
    /// A MAC was asked for but the dialect has no MAC element.
    NoMacElement,
    /// More elements were set than a message can hold.
    TooManyElements,
}

/// An encode error with the element it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("encoding {}: {kind:?}", field.map(|n| format!("DE{n}")).unwrap_or_else(|| "message".into()))]
pub struct EncodeError {
    pub field: Option<u8>,
    pub kind: EncodeErrorKind,
}

/// A dialect file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DialectError {
    #[error("dialect file syntax: {0}")]
    Syntax(String),
    #[error("dialect {dialect}: {what}")]
    Invalid { dialect: String, what: String },
    #[error("dialect file {path}: {message}")]
    Read { path: String, message: String },
}

/// A framing error: the stream cannot be resynchronised and the caller must drop the
/// connection (after answering what it already accepted).
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame length 0")]
    ZeroLength,
    #[error("frame length {len} over limit {max}")]
    TooLong { len: usize, max: usize },
    #[error("frame length prefix is not a number")]
    BadLength,
    #[error("frame of {len} bytes is shorter than its {header_len}-byte header")]
    ShorterThanHeader { len: usize, header_len: usize },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
