// Proves operators can load dialects from TOML and JSON files, that the built-ins survive
// a round trip through both forms, and that a broken file is refused with a message that
// names the dialect, the element and the rule.

use std::path::PathBuf;

use bytes::Bytes;
use codec::spec::{DialectFile, leak};
use codec::{Dialect, DialectError, MessageBuilder, Mti, builtin};

/// A scratch file under the system temp folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, text: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("codec-dialect-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const PARTNER_TOML: &str = r#"
name = "partner-v1"
description = "a partner's profile"
mti_encoding = "ascii"
bitmap_encoding = "hex"
mac = "de64"
max_message_len = 2048

[framing]
length_bytes = 4
length_encoding = "ascii"

[[field]]
number = 2
class = "n"
length = "llvar"
max_len = 19
encoding = "bcd"
prefix = "binary"

[[field]]
number = 11
class = "n"
length = "fixed"
max_len = 6

[[field]]
number = 64
class = "b"
length = "fixed"
max_len = 8
encoding = "binary"

[[field]]
number = 70
class = "n"
length = "fixed"
max_len = 3
"#;

const PARTNER_JSON: &str = r#"{
  "name": "partner-v1",
  "description": "a partner's profile",
  "mti_encoding": "ascii",
  "bitmap_encoding": "hex",
  "mac": "de64",
  "max_message_len": 2048,
  "framing": { "length_bytes": 4, "length_encoding": "ascii" },
  "field": [
    { "number": 2, "class": "n", "length": "llvar", "max_len": 19, "encoding": "bcd", "prefix": "binary" },
    { "number": 11, "class": "n", "length": "fixed", "max_len": 6 },
    { "number": 64, "class": "b", "length": "fixed", "max_len": 8, "encoding": "binary" },
    { "number": 70, "class": "n", "length": "fixed", "max_len": 3 }
  ]
}"#;

#[test]
fn loads_toml_and_json_files_alike() {
    let toml_file = Scratch::new("partner.toml", PARTNER_TOML);
    let json_file = Scratch::new("partner.json", PARTNER_JSON);
    let from_toml = Dialect::from_path(&toml_file.0).unwrap();
    let from_json = Dialect::from_path(&json_file.0).unwrap();
    assert_eq!(from_toml, from_json);
    assert_eq!(from_toml.name, "partner-v1");
    assert_eq!(from_toml.framing.header_len, 0);

    // A loaded dialect works: encode and decode a message through it.
    let d = leak(from_toml);
    let mut b = MessageBuilder::new(d, Mti::NETWORK_REQUEST);
    b.set(2, b"411111111111111")
        .set(11, b"000001")
        .set(70, b"301");
    let key = codec::MacKey::new(&[7; codec::mac::MAC_KEY_LEN_BYTES]);
    let wire = b.encode_with_mac(&key).unwrap();
    let m = d.decode(wire).unwrap();
    assert_eq!(m.get_str(2).as_deref(), Some("411111111111111"));
    assert_eq!(m.check_mac(&key), codec::MacCheck::Valid);
}

#[test]
fn builtins_round_trip_through_toml_and_json() {
    for name in builtin::names() {
        let d = builtin::get(name).unwrap();
        let file: DialectFile = d.to_file();
        let t = Scratch::new(&format!("{name}.toml"), &toml::to_string(&file).unwrap());
        let j = Scratch::new(
            &format!("{name}.json"),
            &serde_json::to_string(&file).unwrap(),
        );
        assert_eq!(&Dialect::from_path(&t.0).unwrap(), d, "{name} via TOML");
        assert_eq!(&Dialect::from_path(&j.0).unwrap(), d, "{name} via JSON");
    }
}

#[test]
fn a_mac_in_de64_ahead_of_secondary_elements_is_placed_and_checked() {
    // With `mac = "de64"` a message with secondary elements still carries its MAC in DE64,
    // which is then not the last element; it covers the bytes before it.
    let d = leak(Dialect::from_toml(PARTNER_TOML).unwrap());
    let key = codec::MacKey::new(&[9; codec::mac::MAC_KEY_LEN_BYTES]);
    let mut b = MessageBuilder::new(d, Mti::NETWORK_REQUEST);
    b.set(11, b"000002").set(70, b"001");
    let wire = b.encode_with_mac(&key).unwrap();
    let m = d.decode(wire.clone()).unwrap();
    assert_eq!(m.fields().collect::<Vec<_>>(), [11, 64, 70]);
    assert_eq!(m.get(70).as_deref(), Some(&b"001"[..]));
    assert_eq!(m.check_mac(&key), codec::MacCheck::Valid);
    let mut tampered = wire.to_vec();
    *tampered.last_mut().unwrap() = b'2'; // DE70 is not covered by the MAC
    let m = d.decode(Bytes::from(tampered)).unwrap();
    assert_eq!(m.check_mac(&key), codec::MacCheck::Valid);
}

fn invalid(text: &str) -> String {
    match Dialect::from_toml(text) {
        Err(DialectError::Invalid { dialect, what }) => {
            assert_eq!(dialect, "partner-v1");
            what
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn invalid_files_say_what_is_wrong() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "number = 11",
            "number = 65",
            "field 65: number must be 2..=128",
        ),
        ("number = 11", "number = 2", "field 2: defined twice"),
        (
            "max_len = 19",
            "max_len = 100",
            "field 2: max_len 100 does not fit its length prefix",
        ),
        ("max_len = 6", "max_len = 0", "field 11: max_len is 0"),
        (
            "class = \"b\"",
            "class = \"ans\"",
            "field 64: class Ans cannot be encoded as Binary",
        ),
        (
            "max_message_len = 2048",
            "max_message_len = 0",
            "max_message_len must be 1..=65535",
        ),
        (
            "max_message_len = 2048",
            "max_message_len = 70000",
            "max_message_len must be 1..=65535",
        ),
        (
            "max_message_len = 2048",
            "max_message_len = 10",
            "larger than max_message_len",
        ),
        (
            "length_bytes = 4",
            "length_bytes = 2",
            "framing: 2 length bytes cannot be Ascii",
        ),
        (
            "length_encoding = \"ascii\"",
            "length_encoding = \"ascii\"\nheader_len = 17",
            "framing: header_len over 16",
        ),
        (
            "mac = \"de64\"",
            "mac = \"auto\"",
            "mac: the MAC element(s) must be defined",
        ),
        (
            "mac = \"de64\"",
            "mac = \"de128\"",
            "mac: the MAC element(s) must be defined",
        ),
        (
            "mti_encoding = \"ascii\"",
            "mti_encoding = \"binary\"",
            "mti_encoding must be ascii, bcd or ebcdic",
        ),
    ];
    for (from, to, says) in cases {
        assert!(PARTNER_TOML.contains(from), "{from}");
        let what = invalid(&PARTNER_TOML.replacen(from, to, 1));
        assert!(what.contains(says), "{to}: {what}");
    }
    match Dialect::from_toml(&PARTNER_TOML.replace("name = \"partner-v1\"", "name = \"\"")) {
        Err(DialectError::Invalid { what, .. }) => assert_eq!(what, "name is empty"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn syntax_and_read_errors_are_told_apart() {
    let unknown_key = PARTNER_TOML.replace("max_len = 6", "max_len = 6\nmaxlen = 6");
    assert!(matches!(
        Dialect::from_toml(&unknown_key),
        Err(DialectError::Syntax(m)) if m.contains("maxlen")
    ));
    assert!(matches!(
        Dialect::from_json("{"),
        Err(DialectError::Syntax(_))
    ));
    let bad = Scratch::new("bad.json", &PARTNER_JSON.replace("\"de64\"", "\"de63\""));
    assert!(matches!(
        Dialect::from_path(&bad.0),
        Err(DialectError::Syntax(m)) if m.contains("de63")
    ));
    let missing = std::env::temp_dir().join("codec-dialect-test-missing.toml");
    let e = Dialect::from_path(&missing).unwrap_err();
    assert!(matches!(e, DialectError::Read { .. }));
    assert!(e.to_string().contains("codec-dialect-test-missing.toml"));
}

#[test]
fn fixed_track2_and_binary_must_be_given_whole() {
    let d = leak(
        Dialect::from_toml(
            &PARTNER_TOML.replace("number = 70\nclass = \"n\"", "number = 70\nclass = \"z\""),
        )
        .unwrap(),
    );
    let mut b = MessageBuilder::new(d, Mti::NETWORK_REQUEST);
    b.set(70, b"1=");
    let e = b.encode().unwrap_err();
    assert_eq!(e.field, Some(70));
    assert_eq!(
        e.kind,
        codec::EncodeErrorKind::WrongLength {
            len: 2,
            expected: 3
        }
    );
}
