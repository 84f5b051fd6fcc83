// Proves every DecodeErrorKind comes from the input that should cause it, naming the
// element and the byte offset of the fault, for ASCII, BCD and EBCDIC dialects alike.

use bytes::Bytes;
use codec::{DecodeError, DecodeErrorKind as K, Dialect, MessageBuilder, Mti, Parse, builtin};

fn merchant_234() -> Vec<u8> {
    // MTI 0..4, bitmap 4..12, DE2 prefix 12..14 and digits 14..30, DE3 30..36, DE4 36..48.
    let mut b = MessageBuilder::new(builtin::merchant(), Mti::FINANCIAL_REQUEST);
    b.set(2, b"4111111111111111")
        .set(3, b"000000")
        .set(4, b"000000001000");
    let v = b.encode().unwrap().to_vec();
    assert_eq!(v.len(), 48);
    v
}

fn decode(d: &'static Dialect, bytes: Vec<u8>) -> DecodeError {
    d.decode(Bytes::from(bytes)).unwrap_err()
}

fn expect(e: DecodeError, field: Option<u8>, offset: usize, kind: K) {
    assert_eq!(
        e,
        DecodeError {
            field,
            offset,
            kind
        },
        "{e}"
    );
}

#[test]
fn bad_mti() {
    let mut m = merchant_234();
    m[2] = b'X';
    expect(decode(builtin::merchant(), m), None, 0, K::BadMti);
    // Nothing readable to answer with.
    let mut m = merchant_234();
    m[0] = b'?';
    assert!(builtin::merchant().salvage(Bytes::from(m)).is_none());
}

#[test]
fn bad_length_digit() {
    let mut m = merchant_234();
    m[13] = b'A';
    let e = decode(builtin::merchant(), m);
    expect(e, Some(2), 12, K::BadLengthDigit);
    assert_eq!(e.to_string(), "DE2 at byte 12: bad length digit");
}

#[test]
fn over_max_length() {
    let mut m = merchant_234();
    m[12..14].copy_from_slice(b"20");
    expect(
        decode(builtin::merchant(), m),
        Some(2),
        12,
        K::OverMaxLength { len: 20, max: 19 },
    );
}

#[test]
fn non_numeric_in_n_points_at_the_byte() {
    let mut m = merchant_234();
    m[32] = b'A';
    expect(
        decode(builtin::merchant(), m.clone()),
        Some(3),
        32,
        K::NonNumeric,
    );
    // Salvage keeps the clean elements on both sides of the bad one.
    let s = builtin::merchant().salvage(Bytes::from(m)).unwrap();
    assert_eq!(s.fields().collect::<Vec<_>>(), [2, 4]);
    assert_eq!(s.get_u64(4), Some(1000));
}

#[test]
fn bad_character_in_an_and_ans() {
    let d = builtin::merchant();
    let mut b = MessageBuilder::new(d, Mti::FINANCIAL_RESPONSE);
    b.set(39, b"00").set(41, b"TERM0001");
    // DE39 an2 at 12..14, DE41 ans8 at 14..22.
    let good = b.encode().unwrap().to_vec();
    let mut m = good.clone();
    m[13] = b'!';
    expect(decode(d, m), Some(39), 13, K::BadCharacter);
    let mut m = good;
    m[17] = 0x7F;
    expect(decode(d, m), Some(41), 17, K::BadCharacter);
}

#[test]
fn truncated_names_the_element_it_ran_out_in() {
    let m = merchant_234();
    expect(
        decode(builtin::merchant(), m[..40].to_vec()),
        Some(4),
        40,
        K::Truncated,
    );
    expect(
        decode(builtin::merchant(), m[..13].to_vec()),
        Some(2),
        13,
        K::Truncated,
    );
    expect(
        decode(builtin::merchant(), m[..7].to_vec()),
        None,
        7,
        K::Truncated,
    );
    assert_eq!(
        builtin::merchant().parse(Bytes::from(m[..40].to_vec())),
        Ok(Parse::Incomplete { needed: 48 })
    );
}

#[test]
fn undefined_element() {
    let mut m = merchant_234();
    m[4] |= 0x08; // bit 5: not in the merchant contract
    expect(
        decode(builtin::merchant(), m),
        Some(5),
        48,
        K::UndefinedElement,
    );
}

#[test]
fn trailing_bytes() {
    let mut m = merchant_234();
    m.extend_from_slice(b"XY");
    expect(
        decode(builtin::merchant(), m),
        None,
        48,
        K::TrailingBytes { count: 2 },
    );
}

#[test]
fn message_too_long() {
    let d = builtin::merchant();
    let mut m = merchant_234();
    m.resize(d.max_message_len + 1, b'0');
    expect(
        decode(d, m),
        None,
        4096,
        K::MessageTooLong {
            len: 4097,
            max: 4096,
        },
    );
}

#[test]
fn element_that_cannot_fit_is_too_long_not_incomplete() {
    // A dialect whose DE48 fits alone but not after the MTI and bitmap at full length: a
    // stream parser must refuse at once rather than wait for bytes it would refuse.
    let d = codec::spec::leak(
        Dialect::from_toml(
            r#"
            name = "tiny"
            mti_encoding = "ascii"
            bitmap_encoding = "binary"
            mac = "none"
            max_message_len = 64
            [framing]
            length_bytes = 2
            length_encoding = "binary"
            [[field]]
            number = 48
            class = "ans"
            length = "lllvar"
            max_len = 60
            "#,
        )
        .unwrap(),
    );
    let mut m = b"0200".to_vec();
    m.extend_from_slice(&[0, 0, 0, 0, 0, 0x01, 0, 0]); // bit 48
    m.extend_from_slice(b"060");
    assert_eq!(
        d.parse(Bytes::from(m)),
        Err(DecodeError {
            field: Some(48),
            offset: 12,
            kind: K::MessageTooLong { len: 75, max: 64 }
        })
    );
}

#[test]
fn bad_bitmap_in_hex_dialect() {
    let d = builtin::get(builtin::BANK_EBCDIC_V1).unwrap();
    let mut b = MessageBuilder::new(d, Mti::NETWORK_REQUEST);
    b.set(11, b"000001");
    let mut m = b.encode().unwrap().to_vec();
    m[4 + 2] = b'G';
    expect(decode(d, m), None, 6, K::BadBitmap);
}

#[test]
fn ebcdic_content_and_length_errors() {
    let d = builtin::get(builtin::BANK_EBCDIC_V1).unwrap();
    let mut b = MessageBuilder::new(d, Mti::FINANCIAL_REQUEST);
    b.set(2, b"4111111111111111").set(3, b"000000");
    // MTI 0..4, hex bitmap 4..20, DE2 prefix 20..22, digits 22..38, DE3 38..44.
    let good = b.encode().unwrap().to_vec();
    let mut m = good.clone();
    m[21] = b'6'; // ASCII, not EBCDIC
    expect(decode(d, m), Some(2), 20, K::BadLengthDigit);
    let mut m = good;
    m[40] = 0xC1; // EBCDIC 'A'
    expect(decode(d, m), Some(3), 40, K::NonNumeric);
}

#[test]
fn bcd_content_and_length_errors() {
    let d = builtin::bank_bcd();
    let mut b = MessageBuilder::new(d, Mti::FINANCIAL_REQUEST);
    b.set(2, b"4111111111111111")
        .set(3, b"000000")
        .set(22, b"051")
        .set(35, b"4111111111111111=2512");
    // MTI 0..2, bitmap 2..10, DE2 prefix 10 and digits 11..19, DE3 19..22, DE22 22..24,
    // DE35 prefix 24 and content 25..36.
    let good = b.encode().unwrap().to_vec();
    assert_eq!(good.len(), 36);
    let mut m = good.clone();
    m[10] = 0x1A;
    expect(decode(d, m), Some(2), 10, K::BadLengthDigit);
    let mut m = good.clone();
    m[10] = 0x20;
    expect(
        decode(d, m),
        Some(2),
        10,
        K::OverMaxLength { len: 20, max: 19 },
    );
    let mut m = good.clone();
    m[20] = 0x0A;
    expect(decode(d, m), Some(3), 20, K::NonNumeric);
    // The pad nibble of an odd n element must be 0.
    let mut m = good.clone();
    m[22] = 0x10;
    expect(decode(d, m), Some(22), 22, K::NonNumeric);
    // Track 2 allows D but not other letters, and its odd pad nibble must be F.
    let mut m = good.clone();
    m[30] = 0xB0;
    expect(decode(d, m), Some(35), 30, K::BadCharacter);
    let mut m = good;
    m[35] = 0x20;
    expect(decode(d, m), Some(35), 35, K::BadCharacter);
}

// Proves the builder's size prediction matches what it writes, so encode allocates once.
#[test]
fn encoded_len_is_exact() {
    let key = codec::MacKey::new(&[1; codec::mac::MAC_KEY_LEN_BYTES]);
    for name in builtin::names() {
        let d = builtin::get(name).unwrap();
        let mut b = MessageBuilder::new(d, Mti::FINANCIAL_REQUEST);
        b.set(2, b"41111111111")
            .set(4, b"1000")
            .set(11, b"000001")
            .set(41, b"T1");
        assert_eq!(b.encoded_len(false), b.encode().unwrap().len(), "{name}");
        b.set(90, b"0200");
        assert_eq!(b.encoded_len(false), b.encode().unwrap().len(), "{name}");
        if d.mac != codec::spec::MacPlacement::None {
            assert_eq!(
                b.encoded_len(true),
                b.encode_with_mac(&key).unwrap().len(),
                "{name}"
            );
        }
    }
}
