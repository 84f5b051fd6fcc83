//! An owned, comparable form of a message, and its JSON shape
//! (`{"t": "0200", "2": "4111...", "64": "0D95..."}`, as in the contract's vectors).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::builder::MessageBuilder;
use crate::error::EncodeError;
use crate::mac::MacKey;
use crate::message::{Message, hex_upper};
use crate::mti::Mti;
use crate::spec::{ContentClass, Dialect};

// Card numbers are the card module's; the old path stays for callers.
pub use crate::card::mask_pan;

/// A message as MTI and logical element values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMessage {
    pub mti: Mti,
    pub fields: BTreeMap<u8, Vec<u8>>,
}

/// Why JSON could not become a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JsonError {
    #[error("expected a JSON object")]
    NotAnObject,
    #[error("missing or bad \"t\" (the MTI)")]
    BadMti,
    #[error("key {0:?} is not an element number 2..=128")]
    BadKey(String),
    #[error("element {0}: value must be a string")]
    NotAString(u8),
    #[error("element {0}: not defined by the dialect")]
    Undefined(u8),
    #[error("element {0}: binary value is not hexadecimal")]
    BadHex(u8),
}

impl From<&Message> for OwnedMessage {
    fn from(m: &Message) -> Self {
        OwnedMessage {
            mti: m.mti(),
            fields: m
                .fields()
                .map(|n| (n, m.get(n).unwrap_or_default().into_owned()))
                .collect(),
        }
    }
}

impl OwnedMessage {
    pub fn new(mti: Mti) -> Self {
        OwnedMessage {
            mti,
            fields: BTreeMap::new(),
        }
    }

    pub fn builder<'a>(&'a self, dialect: &'a Dialect) -> MessageBuilder<'a> {
        let mut b = MessageBuilder::new(dialect, self.mti);
        for (n, v) in &self.fields {
            b.set(*n, v);
        }
        b
    }

    /// Encodes as is; a MAC element present in `fields` is written as given.
    pub fn encode(&self, dialect: &Dialect) -> Result<Bytes, EncodeError> {
        self.builder(dialect).encode()
    }

    /// Encodes with a freshly computed MAC.
    pub fn encode_with_mac(&self, dialect: &Dialect, key: &MacKey) -> Result<Bytes, EncodeError> {
        self.builder(dialect).encode_with_mac(key)
    }

    /// JSON with `b` elements in upper-case hex and, unless `show_pan`, DE2/DE35 masked.
    pub fn to_json(&self, dialect: &Dialect, show_pan: bool) -> Value {
        let mut map = Map::new();
        map.insert("t".into(), Value::String(self.mti.as_str().into()));
        for (n, v) in &self.fields {
            let binary = dialect
                .field(*n)
                .is_some_and(|s| s.class == ContentClass::B);
            let text = if binary {
                hex_upper(v)
            } else {
                String::from_utf8_lossy(v).into_owned()
            };
            let text = if !show_pan && matches!(n, 2 | 35) {
                mask_pan(&text)
            } else {
                text
            };
            map.insert(n.to_string(), Value::String(text));
        }
        Value::Object(map)
    }

    /// Reads the JSON shape back; `b` elements are hex.
    pub fn from_json(dialect: &Dialect, v: &Value) -> Result<Self, JsonError> {
        let obj = v.as_object().ok_or(JsonError::NotAnObject)?;
        let mti = obj
            .get("t")
            .and_then(Value::as_str)
            .and_then(Mti::parse)
            .ok_or(JsonError::BadMti)?;
        let mut msg = OwnedMessage::new(mti);
        for (k, v) in obj {
            if k == "t" {
                continue;
            }
            let n: u8 = k
                .parse()
                .ok()
                .filter(|n| (2..=128).contains(n))
                .ok_or_else(|| JsonError::BadKey(k.clone()))?;
            let s = v.as_str().ok_or(JsonError::NotAString(n))?;
            let spec = dialect.field(n).ok_or(JsonError::Undefined(n))?;
            let value = if spec.class == ContentClass::B {
                decode_hex(s).ok_or(JsonError::BadHex(n))?
            } else {
                s.as_bytes().to_vec()
            };
            msg.fields.insert(n, value);
        }
        Ok(msg)
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect()
}
