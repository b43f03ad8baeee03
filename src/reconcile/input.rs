//! A network's conversion report, read into rows: columns found by their headers (case,
//! spaces, `_` and `-` ignored), prices exact, times in the report's time zone.
//!
//! The same reader takes a CSV file exported from the network's portal and the records
//! of its affiliate API, which names the same fields.

use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

use crate::model::UnixMillis;
use crate::money::Money;
use crate::networks::{header_key, ReportColumns};

/// One conversion as the network reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRow {
    /// Where it stands in the input (the CSV line, or the API record's number), for messages.
    pub line: usize,
    pub click_id: Option<String>,
    pub transaction_id: Option<String>,
    pub price: Money,
    pub converted_at: UnixMillis,
    pub offer: Option<String>,
    pub disposition: Option<String>,
}

/// Why a report could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Columns the rows cannot do without, each with the headers looked for.
    #[error("the report lacks {}", missing_columns(.0))]
    MissingColumns(Vec<(&'static str, Vec<String>)>),
    #[error("line {line}: {column} {value:?} {why}")]
    BadValue { line: usize, column: &'static str, value: String, why: String },
    #[error("the report is not readable CSV: {0}")]
    Csv(String),
}

fn missing_columns(list: &[(&'static str, Vec<String>)]) -> String {
    let each: Vec<String> =
        list.iter().map(|(what, names)| format!("a {what} column (looked for: {})", names.join(", "))).collect();
    each.join("; ")
}

/// Where each column is in a record.
struct Layout {
    click_id: usize,
    transaction_id: Option<usize>,
    price: usize,
    converted_at: usize,
    offer: Option<usize>,
    disposition: Option<usize>,
}

impl Layout {
    /// Finds the columns among `headers`; every missing needed column is reported at once.
    fn find(headers: &[String], columns: &ReportColumns) -> Result<Layout, InputError> {
        let keys: Vec<String> = headers.iter().map(|h| header_key(h)).collect();
        let find = |names: &[String]| names.iter().find_map(|n| keys.iter().position(|k| *k == header_key(n)));
        let mut missing = Vec::new();
        let mut need = |what: &'static str, names: &[String]| {
            let at = find(names);
            if at.is_none() {
                missing.push((what, names.to_vec()));
            }
            at.unwrap_or(0)
        };
        let click_id = need("click id", &columns.click_id);
        let price = need("price", &columns.price);
        let converted_at = need("conversion date", &columns.converted_at);
        if !missing.is_empty() {
            return Err(InputError::MissingColumns(missing));
        }
        Ok(Layout {
            click_id,
            price,
            converted_at,
            transaction_id: find(&columns.transaction_id),
            offer: find(&columns.offer),
            disposition: find(&columns.disposition),
        })
    }

    /// One record as a row; `None` for a row that is no conversion (a totals line).
    fn row(&self, line: usize, record: &[&str], offset: UtcOffset) -> Result<Option<NetworkRow>, InputError> {
        let cell = |i: usize| record.get(i).map(|v| v.trim()).filter(|v| !v.is_empty());
        let optional = |i: Option<usize>| i.and_then(cell).map(str::to_owned);
        let (click_id, transaction_id) = (cell(self.click_id), optional(self.transaction_id));
        let Some(when) = cell(self.converted_at) else {
            if click_id.is_none() && transaction_id.is_none() {
                return Ok(None);
            }
            return Err(bad(line, "conversion date", "", "is empty"));
        };
        let converted_at = parse_time(when, offset).map_err(|why| bad(line, "conversion date", when, &why))?;
        let price_text = cell(self.price).unwrap_or("0");
        let price = parse_price(price_text).map_err(|why| bad(line, "price", price_text, &why))?;
        Ok(Some(NetworkRow {
            line,
            click_id: click_id.map(str::to_owned),
            transaction_id,
            price,
            converted_at,
            offer: optional(self.offer),
            disposition: optional(self.disposition),
        }))
    }
}

fn bad(line: usize, column: &'static str, value: &str, why: &str) -> InputError {
    InputError::BadValue { line, column, value: value.chars().take(80).collect(), why: why.to_owned() }
}

/// Reads a CSV report. Times without an offset are taken in `offset` (the network's
/// time zone, `--tz`).
pub fn read_csv(text: &[u8], columns: &ReportColumns, offset: UtcOffset) -> Result<Vec<NetworkRow>, InputError> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(text);
    let headers: Vec<String> =
        reader.headers().map_err(|e| InputError::Csv(e.to_string()))?.iter().map(str::to_owned).collect();
    let layout = Layout::find(&headers, columns)?;
    let mut rows = Vec::new();
    let mut lines = LineCounter::default();
    for record in reader.records() {
        let record = record.map_err(|e| InputError::Csv(e.to_string()))?;
        let line = lines.line_at(text, record.position().map_or(0, |p| p.byte() as usize));
        let cells: Vec<&str> = record.iter().collect();
        if let Some(row) = layout.row(line, &cells, offset)? {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The line a record starts on, counted from the bytes (the reader's own count is one
/// short after a `\r\n` line end, and counts no lone `\r`), moving forward only.
#[derive(Default)]
struct LineCounter {
    at: usize,
    newlines: usize,
}

impl LineCounter {
    fn line_at(&mut self, text: &[u8], byte: usize) -> usize {
        let mut start = byte.min(text.len());
        while start < text.len() && matches!(text[start], b'\r' | b'\n') {
            start += 1;
        }
        if start > self.at {
            // `\r\n`, `\n` and a lone `\r` each end a line, as the reader takes them.
            let span = &text[self.at..start];
            self.newlines += span
                .iter()
                .enumerate()
                .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && text.get(self.at + i + 1) != Some(&b'\n')))
                .count();
            self.at = start;
        }
        self.newlines + 1
    }
}

/// Reads records that name their fields (a network API's answer), numbered from `first`.
pub fn read_records(
    records: &[Vec<(String, String)>],
    first: usize,
    columns: &ReportColumns,
    offset: UtcOffset,
) -> Result<Vec<NetworkRow>, InputError> {
    let mut rows = Vec::with_capacity(records.len());
    for (n, record) in records.iter().enumerate() {
        let headers: Vec<String> = record.iter().map(|(k, _)| k.clone()).collect();
        let layout = Layout::find(&headers, columns)?;
        let cells: Vec<&str> = record.iter().map(|(_, v)| v.as_str()).collect();
        if let Some(row) = layout.row(first + n, &cells, offset)? {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// A price as networks write it: `7.00`, `$1,250.50`, `USD 7`. Exact.
pub fn parse_price(text: &str) -> Result<Money, String> {
    let cleaned: String = text
        .trim()
        .trim_start_matches(|c: char| c.is_alphabetic() || matches!(c, '$' | '€' | '£' | ' '))
        .chars()
        .filter(|c| *c != ',')
        .collect();
    Money::parse(cleaned.trim()).map_err(|e| format!("is not a price: {e}"))
}

/// A conversion time as networks write it, in milliseconds:
/// - `2026-11-24 13:05:00` or `2026-11-24T13:05:00` (seconds and fraction optional),
///   with `Z` or `±HH:MM` when the report gives one, else in `offset`;
/// - `11/24/2026 1:05:00 PM` or `11/24/2026 13:05` (month first, as CAKE's portal writes);
/// - a date alone (midnight);
/// - `/Date(1764000000000)/`, as .NET JSON services write it.
pub fn parse_time(text: &str, offset: UtcOffset) -> Result<UnixMillis, String> {
    let text = text.trim();
    if let Some(ms) = text.strip_prefix("/Date(").and_then(|t| t.strip_suffix(")/")) {
        let digits = ms.split(['+', '-']).find(|p| !p.is_empty()).unwrap_or("");
        let value: i64 = digits.parse().map_err(|_| "is not a /Date(milliseconds)/ value".to_owned())?;
        return Ok(if ms.starts_with('-') { -value } else { value });
    }
    let unreadable = || "is not a date and time like 2026-11-24 13:05:00 or 11/24/2026 1:05:00 PM".to_owned();
    let (date_part, rest) = match text.find([' ', 'T']) {
        Some(i) => (&text[..i], text[i + 1..].trim()),
        None => (text, ""),
    };
    let date = parse_date(date_part).ok_or_else(unreadable)?;
    let (time_part, zone) = split_zone(rest);
    let time = parse_clock(time_part).ok_or_else(unreadable)?;
    let zone = match zone {
        Some(z) => z.ok_or_else(unreadable)?,
        None => offset,
    };
    let at = PrimitiveDateTime::new(date, time).assume_offset(zone);
    Ok((at.unix_timestamp_nanos() / 1_000_000) as UnixMillis)
}

/// `YYYY-MM-DD` or `MM/DD/YYYY`.
fn parse_date(text: &str) -> Option<Date> {
    let (y, m, d) = if let Some((m, rest)) = text.split_once('/') {
        let (d, y) = rest.split_once('/')?;
        (y, m, d)
    } else {
        let mut parts = text.splitn(3, '-');
        (parts.next()?, parts.next()?, parts.next()?)
    };
    let month = Month::try_from(m.parse::<u8>().ok()?).ok()?;
    Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()
}

/// Splits a trailing `Z` or `±HH:MM` from the clock; `Some(None)` for an unreadable one.
fn split_zone(text: &str) -> (&str, Option<Option<UtcOffset>>) {
    if let Some(clock) = text.strip_suffix('Z') {
        return (clock.trim(), Some(Some(UtcOffset::UTC)));
    }
    if let Some(i) = text.rfind(['+', '-']) {
        let (clock, zone) = (&text[..i], &text[i..]);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let digits: String = zone[1..].chars().filter(char::is_ascii_digit).collect();
        let parsed = match digits.len() {
            2 | 4 => digits[..2].parse::<i8>().ok().zip(digits.get(2..).map_or(Some(0), |m| m.parse::<i8>().ok())),
            _ => None,
        };
        let offset = parsed.and_then(|(h, m)| UtcOffset::from_hms(sign * h, sign * m, 0).ok());
        return (clock.trim(), Some(offset));
    }
    (text, None)
}

/// `13:05`, `13:05:07`, `13:05:07.250`, `1:05:07 PM`; empty is midnight.
fn parse_clock(text: &str) -> Option<Time> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Time::MIDNIGHT);
    }
    let upper = text.to_ascii_uppercase();
    let (clock, pm) = match (upper.strip_suffix("PM"), upper.strip_suffix("AM")) {
        (Some(c), _) => (c.trim().to_owned(), Some(true)),
        (_, Some(c)) => (c.trim().to_owned(), Some(false)),
        _ => (upper.clone(), None),
    };
    let mut parts = clock.split(':');
    let mut hour: u8 = parts.next()?.parse().ok()?;
    let minute: u8 = parts.next()?.parse().ok()?;
    let (second, milli) = match parts.next() {
        None => (0, 0),
        Some(s) => {
            let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
            let frac: String = frac.chars().chain("000".chars()).take(3).collect();
            (whole.parse().ok()?, frac.parse::<u16>().ok()?)
        }
    };
    if parts.next().is_some() {
        return None;
    }
    match pm {
        Some(_) if !(1..=12).contains(&hour) => return None,
        Some(true) if hour != 12 => hour += 12,
        Some(false) if hour == 12 => hour = 0,
        _ => {}
    }
    Time::from_hms_milli(hour, minute, second, milli).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UTC: UtcOffset = UtcOffset::UTC;

    fn ms(text: &str) -> UnixMillis {
        parse_time(text, UTC).unwrap()
    }

    #[test]
    fn times_in_the_forms_networks_write() {
        let base = ms("2026-11-24 13:05:07");
        assert_eq!(base, 1_795_525_507_000);
        assert_eq!(ms("2026-11-24T13:05:07"), base);
        assert_eq!(ms("2026-11-24T13:05:07Z"), base);
        assert_eq!(ms("2026-11-24T15:05:07+02:00"), base);
        assert_eq!(ms("2026-11-24 08:05:07 -05:00"), base);
        assert_eq!(ms("11/24/2026 1:05:07 PM"), base);
        assert_eq!(ms("11/24/2026 13:05:07"), base);
        assert_eq!(ms("2026-11-24 13:05:07.250"), base + 250);
        assert_eq!(ms("/Date(1795525507000)/"), base);
        assert_eq!(ms("/Date(1795525507000-0500)/"), base);
        assert_eq!(ms("11/24/2026 12:00:00 AM"), ms("2026-11-24"));
        assert_eq!(ms("11/24/2026 12:30 PM"), ms("2026-11-24 12:30"));
        let east = UtcOffset::from_hms(-5, 0, 0).unwrap();
        assert_eq!(parse_time("2026-11-24 08:05:07", east).unwrap(), base);
        for bad in ["", "yesterday", "2026-13-01", "24.11.2026", "11/24/2026 13:05 PM", "2026-11-24 25:00"] {
            assert!(parse_time(bad, UTC).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prices_are_exact_whatever_their_dress() {
        assert_eq!(parse_price("7.00").unwrap(), Money::parse("7").unwrap());
        assert_eq!(parse_price("$1,250.50").unwrap(), Money::parse("1250.5").unwrap());
        assert_eq!(parse_price("USD 0.10").unwrap(), Money::parse("0.1").unwrap());
        assert!(parse_price("seven").is_err());
    }

    #[test]
    fn columns_are_found_by_header_and_every_missing_one_named() {
        let csv = "Conversion Date,Offer ID,SUB ID 2,Transaction_ID,price\n2026-11-24 13:05:07,12,abc,t1,$7.00\n";
        let rows = read_csv(csv.as_bytes(), &ReportColumns::cake(), UTC).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.click_id.as_deref(), r.transaction_id.as_deref(), r.offer.as_deref()),
            (Some("abc"), Some("t1"), Some("12"))
        );
        assert_eq!(r.price, Money::parse("7").unwrap());
        assert_eq!(r.line, 2);

        let err = read_csv(b"Offer ID,Amount\n1,2\n", &ReportColumns::cake(), UTC).unwrap_err();
        let text = err.to_string();
        for expected in ["click id", "Sub ID 2", "subid_2", "price", "conversion date", "Conversion Date"] {
            assert!(text.contains(expected), "{text}");
        }
    }

    #[test]
    fn totals_lines_are_skipped_and_bad_values_named_with_their_line() {
        let csv = "s2,price,conversion_date\nabc,7,2026-11-24\n,14,\n";
        assert_eq!(read_csv(csv.as_bytes(), &ReportColumns::cake(), UTC).unwrap().len(), 1);
        let csv = "s2,price,conversion_date\nabc,7,2026-11-24\nxyz,7,someday\n";
        let err = read_csv(csv.as_bytes(), &ReportColumns::cake(), UTC).unwrap_err();
        assert!(err.to_string().starts_with("line 3: conversion date \"someday\""), "{err}");
        // Windows line ends, and a quoted cell across two lines.
        let csv = "s2,price,conversion_date\r\nabc,7,2026-11-24\r\n\"x\r\ny\",7,2026-11-24\r\nxyz,7,someday\r\n";
        let err = read_csv(csv.as_bytes(), &ReportColumns::cake(), UTC).unwrap_err();
        assert!(err.to_string().starts_with("line 5: conversion date"), "{err}");
        let rows =
            read_csv(b"s2,price,conversion_date\r\na,1,2026-11-24\r\nb,2,2026-11-24", &ReportColumns::cake(), UTC);
        assert_eq!(rows.unwrap().iter().map(|r| r.line).collect::<Vec<_>>(), [2, 3]);
        let rows = read_csv(b"s2,price,conversion_date\ra,1,2026-11-24\rb,2,2026-11-24\r", &ReportColumns::cake(), UTC);
        assert_eq!(rows.unwrap().iter().map(|r| r.line).collect::<Vec<_>>(), [2, 3]);
    }
}
