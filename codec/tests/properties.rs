// Proves, for every built-in dialect, that random valid messages survive encode/decode
// unchanged, that every strict prefix of one is reported incomplete (never a panic), and
// that random or corrupted bytes never panic the parser, the decoder, salvage or framing.

use bytes::{Bytes, BytesMut};
use codec::spec::{ContentClass, Encoding, FieldSpec, LengthKind};
use codec::{Dialect, FrameCodec, Mti, OwnedMessage, Parse, builtin};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use tokio_util::codec::Decoder;

/// Longest variable element content generated; keeps cases small and quick to shrink.
const VAR_LEN_TEST_MAX: usize = 140;
/// Longest random input fed to the parsers.
const RANDOM_INPUT_MAX_BYTES: usize = 600;

fn dialects() -> Vec<&'static Dialect> {
    builtin::names().map(|n| builtin::get(n).unwrap()).collect()
}

fn alphabet(spec: &FieldSpec) -> Vec<u8> {
    match spec.class {
        ContentClass::N => (b'0'..=b'9').collect(),
        ContentClass::An => (b'0'..=b'9')
            .chain(b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .chain([b' '])
            .collect(),
        ContentClass::Ans => (0x20..=0x7E).collect(),
        ContentClass::B => (0..=255).collect(),
        // BCD writes `D` and `=` as the same nibble and reads it back as `=`.
        ContentClass::Z if spec.encoding == Encoding::Bcd => (b'0'..=b'9').chain([b'=']).collect(),
        ContentClass::Z => (b'0'..=b'9').chain([b'=', b'D']).collect(),
    }
}

fn value(spec: &FieldSpec) -> BoxedStrategy<(u8, Vec<u8>)> {
    let n = spec.number;
    let max = usize::from(spec.max_len);
    let len = match spec.length {
        LengthKind::Fixed => Just(max).boxed(),
        _ => (0..=max.min(VAR_LEN_TEST_MAX)).boxed(),
    };
    let chars = alphabet(spec);
    len.prop_flat_map(move |l| proptest::collection::vec(select(chars.clone()), l))
        .prop_map(move |v| (n, v))
        .boxed()
}

fn mti() -> impl Strategy<Value = Mti> {
    proptest::array::uniform4(b'0'..=b'9').prop_map(|d| Mti::from_digits(d).unwrap())
}

fn message(d: &'static Dialect) -> impl Strategy<Value = OwnedMessage> {
    let specs: Vec<FieldSpec> = d.fields().cloned().collect();
    let count = specs.len();
    (mti(), subsequence(specs, 0..=count))
        .prop_flat_map(|(mti, chosen)| {
            let values: Vec<_> = chosen.iter().map(value).collect();
            (Just(mti), values)
        })
        .prop_map(|(mti, values)| OwnedMessage {
            mti,
            fields: values.into_iter().collect(),
        })
}

fn dialect_and_message() -> impl Strategy<Value = (&'static Dialect, OwnedMessage)> {
    select(dialects()).prop_flat_map(|d| (Just(d), message(d)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_is_identity((d, m) in dialect_and_message()) {
        let wire = m.encode(d).unwrap();
        let decoded = d.decode(wire.clone()).unwrap();
        prop_assert_eq!(OwnedMessage::from(&decoded), m.clone());
        // And again from the decoded form, byte for byte.
        prop_assert_eq!(OwnedMessage::from(&decoded).encode(d).unwrap(), wire.clone());
        let salvaged = d.salvage(wire).unwrap();
        prop_assert_eq!(OwnedMessage::from(&salvaged), m);
    }

    #[test]
    fn every_strict_prefix_is_incomplete((d, m) in dialect_and_message()) {
        let wire = m.encode(d).unwrap();
        for cut in 0..wire.len() {
            match d.parse(wire.slice(..cut)) {
                Ok(Parse::Incomplete { needed }) => {
                    prop_assert!(needed > cut && needed <= wire.len(), "cut {cut} needed {needed}");
                }
                other => prop_assert!(false, "cut {}: {:?}", cut, other),
            }
            prop_assert!(d.decode(wire.slice(..cut)).is_err());
        }
    }

    #[test]
    fn corrupted_messages_never_panic(
        (d, m) in dialect_and_message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut wire = m.encode(d).unwrap().to_vec();
        for (at, byte) in flips {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        let wire = Bytes::from(wire);
        let _ = d.parse(wire.clone());
        let decoded = d.decode(wire.clone());
        if let Some(s) = d.salvage(wire) {
            // Whatever was salvaged reads back without panicking.
            let _ = OwnedMessage::from(&s).to_json(d, false);
        }
        if let Ok(m) = decoded {
            let _ = format!("{m:?}");
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..RANDOM_INPUT_MAX_BYTES)) {
        let bytes = Bytes::from(bytes);
        for d in dialects() {
            let _ = d.parse(bytes.clone());
            let _ = d.decode(bytes.clone());
            if let Some(m) = d.salvage(bytes.clone()) {
                let _ = OwnedMessage::from(&m);
            }
        }
    }

    #[test]
    fn frame_decoder_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..RANDOM_INPUT_MAX_BYTES),
        piece in 1usize..64,
    ) {
        for d in dialects() {
            let mut codec = FrameCodec::new(d.framing, d.max_message_len);
            let mut buf = BytesMut::new();
            'feed: for chunk in bytes.chunks(piece) {
                buf.extend_from_slice(chunk);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(f)) => {
                            let _ = d.parse(f.message);
                        }
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
            let _ = codec.decode_eof(&mut buf);
        }
    }
}
