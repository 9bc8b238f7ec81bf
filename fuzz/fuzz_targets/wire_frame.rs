//! Any bytes from a peer: decoding never panics, and a frame that decodes re-encodes to exactly
//! the bytes it came from (one canonical encoding per message).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::wire::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((message, used))) = Message::decode_frame(data) {
        let encoded = message.encode().expect("a decoded message is within limits");
        assert_eq!(encoded, &data[..used]);
    }
});
