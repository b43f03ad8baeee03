//! A network's conversion report: any bytes end in rows or an error naming the line or
//! the columns, never a panic; each time and price read is a real one.
#![no_main]

use cakelink::money::Money;
use cakelink::networks::ReportColumns;
use cakelink::reconcile::input::{parse_time, read_csv, InputError};
use libfuzzer_sys::fuzz_target;
use time::UtcOffset;

fuzz_target!(|data: &[u8]| {
    let offset = UtcOffset::from_hms(-5, 0, 0).expect("offset");
    match read_csv(data, &ReportColumns::cake(), offset) {
        Ok(rows) => {
            for row in rows {
                assert!(row.line >= 2, "data rows come after the header");
                let shown = row.price.to_string();
                assert_eq!(Money::parse(&shown).ok(), Some(row.price), "{shown} reads back");
            }
        }
        Err(InputError::MissingColumns(list)) => assert!(!list.is_empty()),
        Err(InputError::BadValue { line, .. }) => assert!(line >= 2),
        Err(InputError::Csv(reason)) => assert!(!reason.is_empty()),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_time(text, offset);
    }
});
