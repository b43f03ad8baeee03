//! Click-id decoding: any text a postback carries is verified without panicking, and a
//! minted id always verifies.
#![no_main]

use cakelink::clickid::Keyring;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_790_000_000;

fuzz_target!(|data: &[u8]| {
    let keyring = Keyring::new("fuzz-secret-0123456789", &["fuzz-old-secret-0123456789".to_owned()], 37 * 86_400);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = keyring.verify(text, NOW) {
            assert_eq!(id.as_str(), text, "an accepted id reads back as sent");
        }
    }
    if let Some(bytes) = data.get(..8) {
        let secs = u64::from_le_bytes(bytes.try_into().expect("8 bytes")) % (NOW * 2);
        let minted = keyring.mint(secs);
        assert!(keyring.verify(minted.as_str(), secs).is_ok(), "a fresh id verifies");
    }
});
