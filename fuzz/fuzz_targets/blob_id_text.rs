//! Any text given as a blob id (CLI arguments, configs): parsing never panics, and what parses
//! prints back as the same hex.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::BlobId;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = text.parse::<BlobId>() {
            assert!(id.to_string().eq_ignore_ascii_case(text));
        }
    }
});
