//! ISO 8583 messages and their framing, driven by dialects that are data.
//!
//! Sans-IO: nothing here owns a socket, a task or a clock.
//!
//! - [`spec`]: a dialect (wire profile) as data: MTI and bitmap encodings, every data
//!   element's type, content class, encodings and limits, the framing and the MAC place.
//!   Built-in dialects live in `codec/dialects/*.toml`; operators load more from files.
//! - [`message`]: one-pass, zero-copy decoding into an index over the received `Bytes`,
//!   with typed accessors that read elements on demand.
//! - [`builder`]: writing messages, with optional MAC.
//! - [`owned`]: an owned, comparable form of a message (JSON, tests, tools).
//! - [`frame`]: tokio-util `Decoder`/`Encoder` for every framing a dialect can declare.
//! - [`mac`]: the merchant contract's HMAC-SHA256 truncated MAC.
//! - [`tlv`]: DE48-style `TAG LEN VALUE` sub-elements.
//! - [`currency`]: ISO 4217 minor-unit exponents.
//! - [`mti`]: message type indicators and their relations (response, repeat, original).
//! - [`ebcdic`]: the code page 037 table for EBCDIC elements.
//! - [`card`]: the Luhn check digit of card numbers.
//! - [`clock`]: DE7/DE12/DE13 from Unix time.
//! - [`error`]: the named errors of all of the above.

pub mod builder;
pub mod card;
pub mod clock;
pub mod currency;
pub mod ebcdic;
pub mod error;
pub mod frame;
pub mod mac;
pub mod message;
pub mod mti;
pub mod owned;
pub mod spec;
pub mod tlv;

pub use builder::MessageBuilder;
pub use error::{
    DecodeError, DecodeErrorKind, DialectError, EncodeError, EncodeErrorKind, FrameError,
};
pub use frame::{Frame, FrameCodec};
pub use mac::{MacCheck, MacKey};
pub use message::{Message, Parse};
pub use mti::Mti;
pub use owned::OwnedMessage;
pub use spec::{Dialect, FieldSpec, builtin};

/// The highest data element number (DE128, the end of the secondary bitmap).
pub const FIELD_NUMBER_MAX: u8 = 128;
/// Messages are indexed with 16-bit offsets; no framing we support can carry more.
pub const MESSAGE_LEN_LIMIT_BYTES: usize = u16::MAX as usize;
/// Default largest message, as in the merchant contract.
pub const MESSAGE_LEN_DEFAULT_MAX_BYTES: usize = 4096;
