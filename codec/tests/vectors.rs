//! Proves the merchant dialect matches the contract's independently encoded vectors:
//! each decodes to the listed elements, verifies its MAC (the last must fail), and
//! encoding the elements gives the same bytes.

use bytes::Bytes;
use codec::{MacCheck, MacKey, OwnedMessage, builtin};
use serde_json::Value;

fn vectors() -> (MacKey, Vec<Value>) {
    let v: Value = serde_json::from_str(include_str!("data/merchant-h2h-v1.json")).unwrap();
    let key = MacKey::from_hex(v["mac_key_hex"].as_str().unwrap()).unwrap();
    (key, v["vectors"].as_array().unwrap().clone())
}

#[test]
fn contract_vectors_decode_verify_and_reencode() {
    let d = builtin::merchant();
    let (key, vectors) = vectors();
    assert_eq!(vectors.len(), 12);
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let bytes = Bytes::from(hex::decode(v["hex"].as_str().unwrap()).unwrap());
        let msg = d
            .decode(bytes.clone())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let valid = v.get("mac_valid").and_then(Value::as_bool).unwrap_or(true);
        let expected = if valid {
            MacCheck::Valid
        } else {
            MacCheck::Invalid
        };
        assert_eq!(msg.check_mac(&key), expected, "{name}");
        let Some(elements) = v.get("elements") else {
            continue;
        };
        let owned = OwnedMessage::from(&msg);
        assert_eq!(owned.to_json(d, true), *elements, "{name}");
        let from_json = OwnedMessage::from_json(d, elements).unwrap();
        assert_eq!(
            from_json.encode(d).unwrap(),
            bytes,
            "{name}: re-encode as given"
        );
        let mut without_mac = from_json.clone();
        without_mac.fields.remove(&64);
        without_mac.fields.remove(&128);
        assert_eq!(
            without_mac.encode_with_mac(d, &key).unwrap(),
            bytes,
            "{name}: encode with fresh MAC"
        );
    }
}
