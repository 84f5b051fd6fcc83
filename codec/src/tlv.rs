//! DE48-style sub-elements: a run of `TAG(2 letters) LEN(3 ASCII digits) VALUE`.

use thiserror::Error;

/// Why a sub-element run could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TlvError {
    #[error("sub-element at byte {0}: tag is not two ASCII letters")]
    BadTag(usize),
    #[error("sub-element at byte {0}: length is not three ASCII digits")]
    BadLength(usize),
    #[error("sub-element at byte {0}: value runs past the end")]
    Truncated(usize),
}

/// Iterates the sub-elements of a DE48 value.
pub fn iter(data: &[u8]) -> TlvIter<'_> {
    TlvIter {
        data,
        pos: 0,
        failed: false,
    }
}

#[derive(Debug, Clone)]
pub struct TlvIter<'a> {
    data: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Result<([u8; 2], &'a [u8]), TlvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let p = self.pos;
        let res = (|| {
            let head = self.data.get(p..p + 5).ok_or(TlvError::Truncated(p))?;
            if !head[..2].iter().all(u8::is_ascii_alphabetic) {
                return Err(TlvError::BadTag(p));
            }
            if !head[2..5].iter().all(u8::is_ascii_digit) {
                return Err(TlvError::BadLength(p));
            }
            let len = head[2..5]
                .iter()
                .fold(0usize, |v, c| v * 10 + usize::from(c - b'0'));
            let value = self
                .data
                .get(p + 5..p + 5 + len)
                .ok_or(TlvError::Truncated(p))?;
            self.pos = p + 5 + len;
            Ok(([head[0], head[1]], value))
        })();
        self.failed = res.is_err();
        Some(res)
    }
}

/// Checks a whole run and returns the value of `tag` (first occurrence).
pub fn find<'a>(data: &'a [u8], tag: &[u8; 2]) -> Result<Option<&'a [u8]>, TlvError> {
    let mut found = None;
    for item in iter(data) {
        let (t, v) = item?;
        if &t == tag && found.is_none() {
            found = Some(v);
        }
    }
    Ok(found)
}

/// Appends one sub-element; values over 999 bytes are refused.
pub fn push(out: &mut Vec<u8>, tag: &[u8; 2], value: &[u8]) -> Result<(), TlvError> {
    if value.len() > 999 {
        return Err(TlvError::BadLength(out.len()));
    }
    out.extend_from_slice(tag);
    out.extend_from_slice(format!("{:03}", value.len()).as_bytes());
    out.extend_from_slice(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the contract's notification DE48 splits into its three tags and rebuilds.
    #[test]
    fn reads_and_writes_contract_example() {
        let v = b"EV014REFUND_SETTLEDOR010ORDER-1002ST018PARTIALLY_REFUNDED";
        let items: Vec<_> = iter(v).collect::<Result<_, _>>().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(find(v, b"OR").unwrap(), Some(&b"ORDER-1002"[..]));
        let mut out = Vec::new();
        for (t, val) in items {
            push(&mut out, &t, val).unwrap();
        }
        assert_eq!(out, v);
        assert_eq!(find(b"OR0", b"OR"), Err(TlvError::Truncated(0)));
        assert_eq!(find(b"O1005ABCDE", b"OR"), Err(TlvError::BadTag(0)));
        assert_eq!(find(b"ORx05ABCDE", b"OR"), Err(TlvError::BadLength(0)));
        assert_eq!(find(b"OR010ABC", b"OR"), Err(TlvError::Truncated(0)));
    }
}
