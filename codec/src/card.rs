//! Card numbers: the Luhn check digit (ISO/IEC 7812).

/// The Luhn sum of `digits` as if a check digit followed them (`trailing_check`) or as
/// the whole number (`!trailing_check`).
fn luhn_sum(digits: &[u8], trailing_check: bool) -> u32 {
    let doubled = usize::from(trailing_check);
    digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = u32::from(c - b'0');
            if i % 2 == doubled % 2 {
                d
            } else {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            }
        })
        .sum()
}

/// Whether a card number passes the Luhn check (all digits, non-empty).
pub fn luhn_valid(pan: &[u8]) -> bool {
    !pan.is_empty() && pan.iter().all(u8::is_ascii_digit) && luhn_sum(pan, false).is_multiple_of(10)
}

/// `digits` followed by the check digit that makes the whole number pass.
pub fn luhn_complete(digits: &str) -> String {
    let check = (10 - luhn_sum(digits.as_bytes(), true) % 10) % 10;
    format!("{digits}{check}")
}

/// Masks a card number: first six and last four digits shown, the rest `*`
/// (fewer shown for short numbers, never more than half).
pub fn mask_pan(pan: &str) -> String {
    let len = pan.chars().count();
    let (head, tail) = if len >= 16 {
        (6, 4)
    } else if len >= 10 {
        (4, 4)
    } else {
        (0, len / 3)
    };
    pan.chars()
        .enumerate()
        .map(|(i, c)| if i < head || i >= len - tail { c } else { '*' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the check on the contract's test cards and that completion produces them.
    #[test]
    fn check_and_complete() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(luhn_valid(b"5500000000000004"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(!luhn_valid(b""));
        assert!(!luhn_valid(b"41a1"));
        assert_eq!(luhn_complete("411111111111111"), "4111111111111111");
        assert_eq!(luhn_complete("550000000000000"), "5500000000000004");
        for prefix in ["4", "40000000000000", "123456789012345678"] {
            assert!(luhn_valid(luhn_complete(prefix).as_bytes()), "{prefix}");
        }
    }

    // Proves masking never reveals more than BIN and last four.
    #[test]
    fn masks() {
        assert_eq!(mask_pan("4111111111111111"), "411111******1111");
        assert_eq!(mask_pan("1234567890"), "1234**7890");
        assert_eq!(mask_pan("123"), "**3");
    }
}
