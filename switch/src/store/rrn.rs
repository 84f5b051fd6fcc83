//! The RRN is the transaction's id (a CHECK in the migrations: `rrn = lpad(id, 12,
//! '0')`), so a lookup by RRN is a lookup by id.

/// RRNs are 12 digits: the transaction id modulo 10^12, unique until a trillion
/// transactions have been made.
pub const RRN_MODULUS: i64 = 1_000_000_000_000;

/// The RRN (DE37) of a transaction: its id in 12 digits. Ids stay below
/// [`RRN_MODULUS`] (a CHECK in migrations/V7), so RRNs are as unique as ids.
pub fn rrn_of(id: i64) -> String {
    format!("{:012}", id.rem_euclid(RRN_MODULUS))
}

/// The transaction id an RRN names: the inverse of [`rrn_of`]; -1 (no transaction) for a
/// value that is not 12 digits.
pub fn id_of_rrn(rrn: &str) -> i64 {
    if rrn.len() != 12 || !rrn.bytes().all(|b| b.is_ascii_digit()) {
        return -1;
    }
    rrn.parse().unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves id_of_rrn inverts rrn_of and refuses what is not a 12-digit RRN.
    #[test]
    fn rrn_round_trip() {
        for id in [0, 7, 1_000, 123_456_789_012, RRN_MODULUS - 1] {
            assert_eq!(id_of_rrn(&rrn_of(id)), id);
        }
        for bad in [
            "",
            "12345678901",
            "1234567890123",
            "12345678901x",
            "-12345678901",
        ] {
            assert_eq!(id_of_rrn(bad), -1, "{bad}");
        }
    }
}
