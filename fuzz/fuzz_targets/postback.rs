//! The postback parser: a query string, a form body or a JSON body from a network,
//! then the fields the conversion is read from and the event decision.
#![no_main]

use cakelink::money::Money;
use cakelink::postback::{decide_event, Fields};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let parsed = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => Fields::from_query(text),
            Err(_) => return,
        }
    } else {
        Fields::from_json(rest)
    };
    let Ok(mut fields) = parsed else { return };
    // What the postback handler reads from every accepted postback.
    let value = fields.get("amount").and_then(|v| Money::parse(v).ok());
    let _ = fields.absent_value("s2");
    let event = decide_event(fields.get("event"), Some("Lead").filter(|_| mode & 2 == 2), value);
    assert!(!event.is_empty() || fields.get("event") == Some(""));
    // The event log shows every field that carried a value, once, whatever its name.
    let logged = fields.to_log_query();
    let shown: Vec<String> = url::form_urlencoded::parse(logged.as_bytes()).map(|(n, _)| n.into_owned()).collect();
    for (name, _) in fields.present() {
        assert_eq!(shown.iter().filter(|n| *n == name).count(), 1, "{name:?} in the log form {logged:?}");
    }
    let copy = fields.clone();
    fields.merge(copy);
});
