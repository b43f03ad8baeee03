//! Config parsing: any file text ends in a config or a list of errors naming keys.
#![no_main]

use cakelink::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = Config::parse(text, |_| None) {
        assert!(!errors.0.is_empty(), "a refused config says why");
        assert!(errors.0.iter().all(|e| !e.key.is_empty() && !e.message.is_empty()));
    }
});
