//! Code page 037 (EBCDIC, US/Canada) for the printable ASCII range.
//!
//! Only printable characters are mapped: every EBCDIC element we define has class `n`,
//! `an`, `ans` or `z`, and those classes allow nothing else.

/// EBCDIC byte for each ASCII byte 0x20..=0x7E; other entries are 0 (unmapped).
pub const ASCII_TO_EBCDIC: [u8; 128] = {
    let mut t = [0u8; 128];
    let pairs: [(u8, u8); 33] = [
        (b' ', 0x40),
        (b'.', 0x4B),
        (b'<', 0x4C),
        (b'(', 0x4D),
        (b'+', 0x4E),
        (b'|', 0x4F),
        (b'&', 0x50),
        (b'!', 0x5A),
        (b'$', 0x5B),
        (b'*', 0x5C),
        (b')', 0x5D),
        (b';', 0x5E),
        (b'-', 0x60),
        (b'/', 0x61),
        (b',', 0x6B),
        (b'%', 0x6C),
        (b'_', 0x6D),
        (b'>', 0x6E),
        (b'?', 0x6F),
        (b'`', 0x79),
        (b':', 0x7A),
        (b'#', 0x7B),
        (b'@', 0x7C),
        (b'\'', 0x7D),
        (b'=', 0x7E),
        (b'"', 0x7F),
        (b'~', 0xA1),
        (b'^', 0xB0),
        (b'[', 0xBA),
        (b']', 0xBB),
        (b'{', 0xC0),
        (b'}', 0xD0),
        (b'\\', 0xE0),
    ];
    let mut i = 0;
    while i < pairs.len() {
        t[pairs[i].0 as usize] = pairs[i].1;
        i += 1;
    }
    let mut d = 0;
    while d < 10 {
        t[(b'0' + d) as usize] = 0xF0 + d;
        d += 1;
    }
    // Letters come in three runs of 9, 9 and 8 in EBCDIC.
    let mut c = 0u8;
    while c < 26 {
        let off = if c < 9 {
            c + 1
        } else if c < 18 {
            c - 9 + 0x11
        } else {
            c - 18 + 0x22
        };
        t[(b'A' + c) as usize] = 0xC0 + off;
        t[(b'a' + c) as usize] = 0x80 + off;
        c += 1;
    }
    t
};

/// ASCII byte for each EBCDIC byte; 0 where the EBCDIC byte is not a printable mapping.
pub const EBCDIC_TO_ASCII: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut a = 0x20;
    while a < 0x7F {
        t[ASCII_TO_EBCDIC[a] as usize] = a as u8;
        a += 1;
    }
    t
};

/// ASCII to EBCDIC; None for a byte outside printable ASCII.
#[inline]
pub fn to_ebcdic(ascii: u8) -> Option<u8> {
    match ascii {
        0x20..=0x7E => Some(ASCII_TO_EBCDIC[usize::from(ascii)]),
        _ => None,
    }
}

/// EBCDIC to ASCII; None for a byte that maps to nothing printable.
#[inline]
pub fn to_ascii(ebcdic: u8) -> Option<u8> {
    match EBCDIC_TO_ASCII[usize::from(ebcdic)] {
        0 => None,
        a => Some(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the table is a bijection on printable ASCII with the well-known anchors.
    #[test]
    fn round_trips_printable_ascii() {
        for a in 0x20u8..0x7F {
            let e = to_ebcdic(a).unwrap();
            assert_ne!(e, 0, "{a} unmapped");
            assert_eq!(to_ascii(e), Some(a));
        }
        assert_eq!(to_ebcdic(b'A'), Some(0xC1));
        assert_eq!(to_ebcdic(b'J'), Some(0xD1));
        assert_eq!(to_ebcdic(b'S'), Some(0xE2));
        assert_eq!(to_ebcdic(b'z'), Some(0xA9));
        assert_eq!(to_ebcdic(b'5'), Some(0xF5));
    }
}
