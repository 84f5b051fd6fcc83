//! ISO 4217 numeric currency codes and their minor-unit exponents.

/// (numeric code, alphabetic code, exponent) for the currencies the switch knows.
/// Amounts on the wire are integers in minor units; the exponent says how many of
/// those make one major unit (JPY 0, USD 2, KWD 3).
pub const CURRENCIES: &[(u16, &str, u8)] = &[
    (36, "AUD", 2),
    (48, "BHD", 3),
    (124, "CAD", 2),
    (152, "CLP", 0),
    (156, "CNY", 2),
    (203, "CZK", 2),
    (208, "DKK", 2),
    (344, "HKD", 2),
    (348, "HUF", 2),
    (352, "ISK", 0),
    (356, "INR", 2),
    (360, "IDR", 2),
    (368, "IQD", 3),
    (376, "ILS", 2),
    (392, "JPY", 0),
    (400, "JOD", 3),
    (410, "KRW", 0),
    (414, "KWD", 3),
    (434, "LYD", 3),
    (458, "MYR", 2),
    (484, "MXN", 2),
    (512, "OMR", 3),
    (554, "NZD", 2),
    (578, "NOK", 2),
    (608, "PHP", 2),
    (634, "QAR", 2),
    (643, "RUB", 2),
    (682, "SAR", 2),
    (702, "SGD", 2),
    (704, "VND", 0),
    (710, "ZAR", 2),
    (752, "SEK", 2),
    (756, "CHF", 2),
    (764, "THB", 2),
    (784, "AED", 2),
    (788, "TND", 3),
    (826, "GBP", 2),
    (840, "USD", 2),
    (901, "TWD", 2),
    (949, "TRY", 2),
    (953, "XPF", 0),
    (978, "EUR", 2),
    (985, "PLN", 2),
    (986, "BRL", 2),
];

/// The minor-unit exponent of a numeric currency code, if the currency is known.
pub fn exponent(numeric: u16) -> Option<u8> {
    CURRENCIES
        .binary_search_by_key(&numeric, |c| c.0)
        .ok()
        .map(|i| CURRENCIES[i].2)
}

/// The alphabetic code of a numeric currency code.
pub fn alpha(numeric: u16) -> Option<&'static str> {
    CURRENCIES
        .binary_search_by_key(&numeric, |c| c.0)
        .ok()
        .map(|i| CURRENCIES[i].1)
}

/// The numeric code of an alphabetic code.
pub fn numeric(alpha: &str) -> Option<u16> {
    CURRENCIES
        .iter()
        .find(|c| c.1.eq_ignore_ascii_case(alpha))
        .map(|c| c.0)
}

/// Formats minor units as a decimal amount in major units ("12.34"), without floats.
pub fn format_minor(amount_minor: u64, exponent: u8) -> String {
    if exponent == 0 {
        return amount_minor.to_string();
    }
    let scale = 10u64.pow(u32::from(exponent));
    format!(
        "{}.{:0width$}",
        amount_minor / scale,
        amount_minor % scale,
        width = usize::from(exponent)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the table is sorted (binary search relies on it) and exponents read right.
    #[test]
    fn table_sorted_and_exponents() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(exponent(840), Some(2));
        assert_eq!(exponent(392), Some(0));
        assert_eq!(exponent(414), Some(3));
        assert_eq!(exponent(999), None);
        assert_eq!(numeric("eur"), Some(978));
        assert_eq!(format_minor(1234, 2), "12.34");
        assert_eq!(format_minor(5, 3), "0.005");
        assert_eq!(format_minor(700, 0), "700");
    }
}
