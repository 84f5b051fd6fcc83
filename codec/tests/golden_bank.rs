// Proves the two bank dialects put every byte where a hand derivation from their dialect
// files says (BCD/EBCDIC MTI, bitmaps, prefixes, padding, TPDU and ASCII framing), both
// ways, and that their framings reassemble split frames and refuse bad lengths early.

use bytes::{Bytes, BytesMut};
use codec::spec::builtin::{BANK_BCD_V1, BANK_EBCDIC_V1};
use codec::{Dialect, FrameCodec, FrameError, MessageBuilder, Mti, OwnedMessage, builtin};
use tokio_util::codec::{Decoder, Encoder};

/// Hex written in pieces with spaces and comments between them.
fn h(pieces: &[&str]) -> Vec<u8> {
    let joined: String = pieces.concat().split_whitespace().collect();
    hex::decode(joined).expect("test hex")
}

fn dialect(name: &str) -> &'static Dialect {
    builtin::get(name).expect("built in")
}

/// Encodes the elements, compares with the expected message bytes, decodes them back,
/// and frames them, comparing with the expected frame.
fn check(d: &'static Dialect, mti: &str, elements: &[(u8, &str)], message: &[u8], frame: &[u8]) {
    let mti = Mti::parse(mti).unwrap();
    let mut b = MessageBuilder::new(d, mti);
    for (n, v) in elements {
        b.set_str(*n, v);
    }
    let encoded = b.encode().unwrap();
    assert_eq!(
        hex::encode_upper(&encoded),
        hex::encode_upper(message),
        "{} {mti} encode",
        d.name
    );
    let decoded = d.decode(Bytes::copy_from_slice(message)).unwrap();
    let mut expected = OwnedMessage::new(mti);
    for (n, v) in elements {
        expected.fields.insert(*n, v.as_bytes().to_vec());
    }
    assert_eq!(
        OwnedMessage::from(&decoded),
        expected,
        "{} {mti} decode",
        d.name
    );

    let mut codec = FrameCodec::new(d.framing, d.max_message_len);
    let header = &frame[usize::from(d.framing.length_bytes)..][..usize::from(d.framing.header_len)];
    let mut out = BytesMut::new();
    codec.encode_parts(header, message, &mut out).unwrap();
    assert_eq!(
        hex::encode_upper(&out),
        hex::encode_upper(frame),
        "{} {mti} frame",
        d.name
    );
    let got = codec.decode(&mut out).unwrap().expect("whole frame");
    assert_eq!(&got.header[..], header);
    assert_eq!(&got.message[..], message);
    assert!(out.is_empty());
}

/// TPDU of the bank link: protocol id 0x60, destination 0001, source 0000.
const TPDU: &str = "6000010000";

#[test]
fn bcd_purchase_0200() {
    let message = h(&[
        "0200",                                // MTI, packed BCD
        "7224040120C18000", // bitmap: 2 3 4 7 | 11 14 | 22 | 32 | 35 | 41 42 48 | 49
        "16 4111111111111111", // DE2: BCD LL 16, 16 digits
        "000000",           // DE3 n6
        "000000001000",     // DE4 n12
        "1126065301",       // DE7 n10
        "000003",           // DE11 n6
        "3012",             // DE14 n4
        "0051",             // DE22 n3 "051": odd, so one leading 0 nibble
        "05 012345",        // DE32 LL 05 "12345": odd, leading 0 nibble
        "21 4111111111111111D2512F", // DE35 z LL 21: '=' is nibble D, odd so trailing F
        "5445524D30303031", // DE41 ans8 ASCII "TERM0001"
        "4D45524348414E54303030303030 31", // DE42 ans15 ASCII "MERCHANT0000001"
        "000F 4F523031304F524445522D31303031", // DE48: binary LLL 15, "OR010ORDER-1001"
        "0840",             // DE49 n3 "840": leading 0 nibble
    ]);
    assert_eq!(message.len(), 98);
    let frame = [h(&["0067", TPDU]), message.clone()].concat(); // 5 + 98 = 103 = 0x67
    check(
        dialect(BANK_BCD_V1),
        "0200",
        &[
            (2, "4111111111111111"),
            (3, "000000"),
            (4, "000000001000"),
            (7, "1126065301"),
            (11, "000003"),
            (14, "3012"),
            (22, "051"),
            (32, "12345"),
            (35, "4111111111111111=2512"),
            (41, "TERM0001"),
            (42, "MERCHANT0000001"),
            (48, "OR010ORDER-1001"),
            (49, "840"),
        ],
        &message,
        &frame,
    );
}

#[test]
fn bcd_network_response_0810() {
    let message = h(&[
        "0810",
        "8220000102000000", // bit 1 (secondary) 7 | 11 | - | 32 | 39
        "0400000000000000", // secondary: 70
        "1126065300",       // DE7
        "000001",           // DE11
        "11 012345678901",  // DE32 LL 11 "12345678901": odd, leading 0 nibble
        "3030",             // DE39 an2 ASCII "00"
        "0001",             // DE70 n3 "001"
    ]);
    assert_eq!(message.len(), 37);
    let frame = [h(&["002A", TPDU]), message.clone()].concat(); // 5 + 37 = 42
    check(
        dialect(BANK_BCD_V1),
        "0810",
        &[
            (7, "1126065300"),
            (11, "000001"),
            (32, "12345678901"),
            (39, "00"),
            (70, "001"),
        ],
        &message,
        &frame,
    );
}

#[test]
fn bcd_reversal_0400_with_de90() {
    let message = h(&[
        "0400",
        "9220000100008000", // bit 1, 4, 7 | 11 | - | 32 | - | - | 49
        "0000004000000000", // secondary: 90
        "000000001000",     // DE4
        "1126065302",       // DE7
        "000004",           // DE11
        "05 012345",        // DE32
        "0840",             // DE49
        // DE90 n42: original MTI 0200, STAN 000003, DE7 1126065301, 22 zeros; even.
        "0200 000003 1126065301 0000000000000000000000",
    ]);
    assert_eq!(message.len(), 59);
    let frame = [h(&["0040", TPDU]), message.clone()].concat(); // 5 + 59 = 64
    check(
        dialect(BANK_BCD_V1),
        "0400",
        &[
            (4, "000000001000"),
            (7, "1126065302"),
            (11, "000004"),
            (32, "12345"),
            (49, "840"),
            (90, "020000000311260653010000000000000000000000"),
        ],
        &message,
        &frame,
    );
}

#[test]
fn ebcdic_purchase_0200() {
    let message = h(&[
        "F0F2F0F0", // MTI "0200" in EBCDIC
        // bitmap "7224040020C18000" as 16 ASCII hex characters
        "37323234303430303230433138303030",
        "F1F6 F4F1F1F1F1F1F1F1F1F1F1F1F1F1F1F1", // DE2: EBCDIC LL "16", digits
        "F0F0F0F0F0F0",                          // DE3
        "F0F0F0F0F0F0F0F0F1F0F0F0",              // DE4
        "F1F1F2F6F0F6F5F3F0F1",                  // DE7
        "F0F0F0F0F0F3",                          // DE11
        "F3F0F1F2",                              // DE14
        "F0F5F1",                                // DE22
        // DE35 z: LL "21", 'D' separator is EBCDIC C4
        "F2F1 F4F1F1F1F1F1F1F1F1F1F1F1F1F1F1F1 C4 F2F5F1F2",
        "E3C5D9D4F0F0F0F1",                      // DE41 "TERM0001"
        "D4C5D9C3C8C1D5E3F0F0F0F0F0F0F1",        // DE42 "MERCHANT0000001"
        "F0F1F5 D6D9F0F1F0D6D9C4C5D960F1F0F0F1", // DE48 LLL "015" "OR010ORDER-1001"
        "F8F4F0",                                // DE49
    ]);
    assert_eq!(message.len(), 146);
    let frame = [b"0146".to_vec(), message.clone()].concat(); // ASCII 4-digit length
    check(
        dialect(BANK_EBCDIC_V1),
        "0200",
        &[
            (2, "4111111111111111"),
            (3, "000000"),
            (4, "000000001000"),
            (7, "1126065301"),
            (11, "000003"),
            (14, "3012"),
            (22, "051"),
            (35, "4111111111111111D2512"),
            (41, "TERM0001"),
            (42, "MERCHANT0000001"),
            (48, "OR010ORDER-1001"),
            (49, "840"),
        ],
        &message,
        &frame,
    );
}

#[test]
fn ebcdic_network_response_0810() {
    let message = h(&[
        "F0F8F1F0",
        "38323230303030303032303030303030", // "8220000002000000": 1 7 | 11 | 39
        "30343030303030303030303030303030", // "0400000000000000": 70
        "F1F1F2F6F0F6F5F3F0F0",             // DE7
        "F0F0F0F0F0F1",                     // DE11
        "F0F0",                             // DE39 "00"
        "F0F0F1",                           // DE70 "001"
    ]);
    assert_eq!(message.len(), 57);
    let frame = [b"0057".to_vec(), message.clone()].concat();
    check(
        dialect(BANK_EBCDIC_V1),
        "0810",
        &[(7, "1126065300"), (11, "000001"), (39, "00"), (70, "001")],
        &message,
        &frame,
    );
}

#[test]
fn ebcdic_reversal_0400_with_de90() {
    let message = h(&[
        "F0F4F0F0",
        "39323230303030303030303038303030", // "9220000000008000": 1 4 7 | 11 | 49
        "30303030303034303030303030303030", // "0000004000000000": 90
        "F0F0F0F0F0F0F0F0F1F0F0F0",         // DE4
        "F1F1F2F6F0F6F5F3F0F2",             // DE7
        "F0F0F0F0F0F4",                     // DE11
        "F8F4F0",                           // DE49
        // DE90: "0200" "000003" "1126065301" and 22 zeros, one EBCDIC digit a byte
        "F0F2F0F0 F0F0F0F0F0F3 F1F1F2F6F0F6F5F3F0F1",
        "F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0",
    ]);
    assert_eq!(message.len(), 109);
    let frame = [b"0109".to_vec(), message.clone()].concat();
    check(
        dialect(BANK_EBCDIC_V1),
        "0400",
        &[
            (4, "000000001000"),
            (7, "1126065302"),
            (11, "000004"),
            (49, "840"),
            (90, "020000000311260653010000000000000000000000"),
        ],
        &message,
        &frame,
    );
}

/// Feeds `stream` to a fresh decoder in pieces of `piece` bytes; the frames it returns.
fn feed(codec: &mut FrameCodec, stream: &[u8], piece: usize) -> Vec<codec::Frame> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    frames
}

#[test]
fn frames_reassemble_across_reads_for_every_framing() {
    for name in builtin::names() {
        let d = dialect(name);
        let mut codec = FrameCodec::new(d.framing, d.max_message_len);
        let messages: Vec<Bytes> = (0..3u8)
            .map(|i| {
                let mut b = MessageBuilder::new(d, Mti::NETWORK_REQUEST);
                let stan = format!("00000{i}");
                b.set(7, b"1126065300")
                    .set(11, stan.as_bytes())
                    .set(70, b"301");
                Bytes::from(b.encode().unwrap().to_vec())
            })
            .collect();
        let mut stream = BytesMut::new();
        for m in &messages {
            Encoder::<Bytes>::encode(&mut codec, m.clone(), &mut stream).unwrap();
        }
        for piece in [1, 2, 3, 7, stream.len()] {
            let frames = feed(&mut codec, &stream, piece);
            let got: Vec<Bytes> = frames.iter().map(|f| f.message.clone()).collect();
            assert_eq!(got, messages, "{name} in pieces of {piece}");
            for f in &frames {
                assert_eq!(f.header.len(), usize::from(d.framing.header_len));
                d.decode(f.message.clone()).unwrap();
            }
        }
    }
}

#[test]
fn zero_and_oversize_lengths_fail_before_buffering() {
    for name in builtin::names() {
        let d = dialect(name);
        let mut codec = FrameCodec::new(d.framing, d.max_message_len);
        let encoded_len = |len: usize| {
            // Writes the length prefix alone by framing a message and keeping the prefix.
            let mut out = BytesMut::new();
            let header = vec![0u8; usize::from(d.framing.header_len)];
            let msg = vec![b'0'; len - header.len()];
            FrameCodec::new(d.framing, len)
                .encode_parts(&header, &msg, &mut out)
                .unwrap();
            out.truncate(usize::from(d.framing.length_bytes));
            out
        };
        let zero = match d.framing.length_encoding {
            codec::spec::Encoding::Ascii => BytesMut::from(&b"0000"[..]),
            _ => BytesMut::from(&vec![0u8; usize::from(d.framing.length_bytes)][..]),
        };
        let mut buf = zero;
        assert!(
            matches!(codec.decode(&mut buf), Err(FrameError::ZeroLength)),
            "{name}"
        );

        let over = d.max_message_len + usize::from(d.framing.header_len) + 1;
        let mut buf = encoded_len(over);
        let cap = buf.capacity();
        match codec.decode(&mut buf) {
            Err(FrameError::TooLong { len, .. }) => assert_eq!(len, over, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(
            buf.capacity(),
            cap,
            "{name}: nothing reserved for a refused frame"
        );

        // A frame shorter than its header cannot be a message either.
        if d.framing.header_len > 0 {
            assert_eq!(d.framing.length_encoding, codec::spec::Encoding::Binary);
            let mut buf = BytesMut::from(&[0u8, 1][..]);
            assert!(matches!(
                codec.decode(&mut buf),
                Err(FrameError::ShorterThanHeader { .. })
            ));
        }
    }
}
