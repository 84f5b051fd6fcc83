//! Wall-clock fields (DE7, DE12, DE13) from Unix time, without a date library.

/// (year, month, day, hour, minute, second) in UTC for Unix seconds.
pub fn civil_from_unix(secs: u64) -> (u32, u32, u32, u32, u32, u32) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm, shifted so the era starts in March.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y as u32,
        m as u32,
        d as u32,
        (rem / 3600) as u32,
        ((rem / 60) % 60) as u32,
        (rem % 60) as u32,
    )
}

fn put2(out: &mut [u8], v: u32) {
    out[0] = b'0' + (v / 10 % 10) as u8;
    out[1] = b'0' + (v % 10) as u8;
}

/// DE7, transmission date and time: MMDDhhmmss in UTC.
pub fn transmission(secs: u64) -> [u8; 10] {
    let (_, mo, d, h, mi, s) = civil_from_unix(secs);
    let mut out = [0u8; 10];
    for (i, v) in [mo, d, h, mi, s].into_iter().enumerate() {
        put2(&mut out[i * 2..], v);
    }
    out
}

/// DE12 (hhmmss) and DE13 (MMDD).
pub fn local_time_date(secs: u64) -> ([u8; 6], [u8; 4]) {
    let (_, mo, d, h, mi, s) = civil_from_unix(secs);
    let (mut t, mut dt) = ([0u8; 6], [0u8; 4]);
    put2(&mut t[0..], h);
    put2(&mut t[2..], mi);
    put2(&mut t[4..], s);
    put2(&mut dt[0..], mo);
    put2(&mut dt[2..], d);
    (t, dt)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the civil conversion on known instants, including a leap day.
    #[test]
    fn known_dates() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(&transmission(1_795_675_980), b"1126065300"); // 2026-11-26 06:53:00
    }
}
