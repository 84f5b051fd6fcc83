//! Message type indicators: four decimal digits (version, class, function, origin).

use std::fmt;

/// An MTI, always four ASCII decimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mti([u8; 4]);

impl Mti {
    pub const AUTHORISATION_REQUEST: Mti = Mti(*b"0100");
    pub const AUTHORISATION_RESPONSE: Mti = Mti(*b"0110");
    pub const FINANCIAL_REQUEST: Mti = Mti(*b"0200");
    pub const FINANCIAL_REPEAT: Mti = Mti(*b"0201");
    pub const FINANCIAL_RESPONSE: Mti = Mti(*b"0210");
    pub const COMPLETION_ADVICE: Mti = Mti(*b"0220");
    pub const COMPLETION_REPEAT: Mti = Mti(*b"0221");
    pub const COMPLETION_RESPONSE: Mti = Mti(*b"0230");
    pub const REVERSAL_REQUEST: Mti = Mti(*b"0400");
    pub const REVERSAL_REPEAT: Mti = Mti(*b"0401");
    pub const REVERSAL_RESPONSE: Mti = Mti(*b"0410");
    pub const STATUS_REQUEST: Mti = Mti(*b"0600");
    pub const STATUS_RESPONSE: Mti = Mti(*b"0610");
    pub const NOTIFICATION_ADVICE: Mti = Mti(*b"0620");
    pub const NOTIFICATION_REPEAT: Mti = Mti(*b"0621");
    pub const NOTIFICATION_RESPONSE: Mti = Mti(*b"0630");
    pub const NETWORK_REQUEST: Mti = Mti(*b"0800");
    pub const NETWORK_RESPONSE: Mti = Mti(*b"0810");
    /// Placeholder for "no MTI could be read"; never valid on the wire.
    pub(crate) const UNREADABLE: Mti = Mti(*b"----");

    /// An MTI from four ASCII digits.
    pub fn from_digits(d: [u8; 4]) -> Option<Mti> {
        d.iter().all(u8::is_ascii_digit).then_some(Mti(d))
    }

    /// An MTI from text such as `"0200"`.
    pub fn parse(s: &str) -> Option<Mti> {
        Mti::from_digits(s.as_bytes().try_into().ok()?)
    }

    pub fn as_bytes(&self) -> &[u8; 4] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("----")
    }

    /// The message class digit (1 authorisation, 2 financial, 4 reversal, 6 administrative,
    /// 8 network management).
    pub fn class(&self) -> u8 {
        self.0[1] - b'0'
    }

    /// The function digit (0 request, 1 response, 2 advice, 3 advice response).
    pub fn function(&self) -> u8 {
        self.0[2] - b'0'
    }

    /// Whether this is a request or advice (function 0 or 2), not a response.
    pub fn is_request(&self) -> bool {
        self.function().is_multiple_of(2)
    }

    /// Whether this is a repeat (origin digit 1): 0201, 0221, 0401.
    pub fn is_repeat(&self) -> bool {
        self.0[3] == b'1'
    }

    /// The original a repeat stands for (0201 -> 0200); itself otherwise.
    pub fn original(&self) -> Mti {
        let mut d = self.0;
        if d[3] == b'1' {
            d[3] = b'0';
        }
        Mti(d)
    }

    /// The repeat of an original (0200 -> 0201).
    pub fn repeat(&self) -> Mti {
        let mut d = self.0;
        d[3] = b'1';
        Mti(d)
    }

    /// The response to a request or advice (0200 and 0201 -> 0210, 0220 -> 0230).
    pub fn response(&self) -> Mti {
        let mut d = self.original().0;
        if d[2].is_multiple_of(2) {
            d[2] += 1;
        }
        Mti(d)
    }
}

impl fmt::Debug for Mti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Mti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves repeats map to their originals and responses as the contract says.
    #[test]
    fn relations() {
        assert_eq!(Mti::FINANCIAL_REPEAT.original(), Mti::FINANCIAL_REQUEST);
        assert_eq!(Mti::FINANCIAL_REPEAT.response(), Mti::FINANCIAL_RESPONSE);
        assert_eq!(Mti::COMPLETION_ADVICE.response(), Mti::COMPLETION_RESPONSE);
        assert_eq!(Mti::REVERSAL_REPEAT.response(), Mti::REVERSAL_RESPONSE);
        assert_eq!(Mti::NETWORK_REQUEST.response(), Mti::NETWORK_RESPONSE);
        assert!(Mti::REVERSAL_REPEAT.is_repeat());
        assert!(!Mti::FINANCIAL_RESPONSE.is_request());
        assert_eq!(Mti::parse("02x0"), None);
    }
}
