//! Every built-in dialect's parse, decode and salvage, and its frame decoder, on arbitrary
//! bytes: none may panic, and whatever decodes must re-encode to the same bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use codec::{FrameCodec, OwnedMessage, builtin};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// Bytes fed to the frame decoder at a time, so that frames arrive split across reads.
const FRAME_READ_BYTES: usize = 7;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    for name in builtin::names() {
        let d = builtin::get(name).expect("built in");
        let _ = d.parse(bytes.clone());
        if let Ok(m) = d.decode(bytes.clone()) {
            let owned = OwnedMessage::from(&m);
            let _ = owned.to_json(d, false);
            // A decoded message is canonical unless a BCD z element used `D` for `=`,
            // which decodes as `=`; so compare decoded forms, not bytes.
            let again = owned.encode(d).expect("a decoded message re-encodes");
            let back = d.decode(again).expect("a re-encoded message decodes");
            assert_eq!(OwnedMessage::from(&back), owned);
        }
        if let Some(m) = d.salvage(bytes.clone()) {
            let _ = format!("{m:?}");
        }

        let mut codec = FrameCodec::new(d.framing, d.max_message_len);
        let mut buf = BytesMut::new();
        'feed: for chunk in data.chunks(FRAME_READ_BYTES) {
            buf.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let _ = d.parse(frame.message);
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
        let _ = codec.decode_eof(&mut buf);
    }
});
