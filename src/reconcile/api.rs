//! The network's conversion report from its affiliate API: CAKE's
//! `affiliates/api/4/reports.asmx/Conversions`, called the way its web services take
//! JSON (a `POST` of the parameters, the answer wrapped in `d`), page by page with
//! `start_at_row` and `row_limit` until `row_count` rows have come.

use std::time::Duration;

use serde_json::{json, Value};

use super::input::{read_records, InputError, NetworkRow};
use crate::networks::{NetworkApi, ReportColumns};
use crate::reports::Period;

/// The conversions report's path under the network's domain.
pub const CONVERSIONS_PATH: &str = "/affiliates/api/4/reports.asmx/Conversions";
/// Most pages read: a guard against an API that never says it is done.
const MAX_PAGES: usize = 10_000;
const TIMEOUT: Duration = Duration::from_secs(60);

/// Why the API's report could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the network's API could not be reached: {0}")]
    Request(#[from] reqwest::Error),
    #[error("the network's API answered {status}: {text}")]
    Status { status: u16, text: String },
    #[error("the network's API refused the request: {0}")]
    Refused(String),
    #[error("the network's API answer is not the conversions report: {0}")]
    Shape(String),
    #[error(transparent)]
    Input(#[from] InputError),
}

/// Every conversion of `period` (dates as the network's time zone counts them).
pub async fn fetch(
    http: &reqwest::Client,
    api: &NetworkApi,
    columns: &ReportColumns,
    period: &Period,
) -> Result<Vec<NetworkRow>, ApiError> {
    let url = format!("{}{CONVERSIONS_PATH}", api.base_url);
    // The API's end date is exclusive.
    let end = period.to.next_day().unwrap_or(period.to);
    let mut rows = Vec::new();
    let mut read = 0usize;
    for _ in 0..MAX_PAGES {
        let body = json!({
            "api_key": api.api_key.expose(),
            "affiliate_id": api.affiliate_id,
            "start_date": period.from.to_string(),
            "end_date": end.to_string(),
            "offer_id": 0,
            "start_at_row": read + 1,
            "row_limit": api.page_size,
        });
        let res = http.post(&url).timeout(TIMEOUT).json(&body).send().await?;
        let status = res.status();
        let text = res.text().await?;
        if !status.is_success() {
            return Err(ApiError::Status { status: status.as_u16(), text: text.chars().take(300).collect() });
        }
        let page = Page::parse(&text)?;
        let n = page.records.len();
        rows.extend(read_records(&page.records, read + 1, columns, period.offset)?);
        read += n;
        if n == 0 || page.row_count.is_some_and(|total| read >= total) {
            return Ok(rows);
        }
    }
    Err(ApiError::Shape(format!("still more rows after {MAX_PAGES} pages")))
}

/// One page of the report.
struct Page {
    /// The report's rows in all, when the API says.
    row_count: Option<usize>,
    records: Vec<Vec<(String, String)>>,
}

impl Page {
    fn parse(text: &str) -> Result<Page, ApiError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ApiError::Shape(e.to_string()))?;
        let body = value.get("d").unwrap_or(&value);
        if body.get("success").and_then(Value::as_bool) == Some(false) {
            let message = body.get("message").and_then(Value::as_str).unwrap_or("no reason given");
            return Err(ApiError::Refused(message.chars().take(300).collect()));
        }
        let Some(list) = body.get("conversions").and_then(Value::as_array) else {
            return Err(ApiError::Shape("no \"conversions\" list".into()));
        };
        let row_count = body.get("row_count").and_then(Value::as_u64).map(|n| n as usize);
        let records = list
            .iter()
            .map(|item| match item {
                Value::Object(fields) => Ok(fields.iter().map(|(k, v)| (k.clone(), text_of(v))).collect()),
                _ => Err(ApiError::Shape("a conversion is not an object".into())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Page { row_count, records })
    }
}

/// A field's value as text: strings as they are, numbers in their exact digits, `null`
/// empty, anything nested as its JSON.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_read_with_or_without_the_d_wrapper() {
        let wrapped = r#"{"d":{"success":true,"row_count":3,"conversions":[{"subid_2":"a","price":7.25,"conversion_date":"/Date(1763989507000)/","transaction_id":null}]}}"#;
        let page = Page::parse(wrapped).unwrap();
        assert_eq!(page.row_count, Some(3));
        assert_eq!(page.records[0][1], ("price".to_owned(), "7.25".to_owned()));
        assert_eq!(page.records[0][3].1, "");
        let bare = r#"{"conversions":[]}"#;
        assert_eq!(Page::parse(bare).unwrap().records.len(), 0);
        let refused = r#"{"d":{"success":false,"message":"Invalid API Key"}}"#;
        assert!(matches!(Page::parse(refused), Err(ApiError::Refused(m)) if m == "Invalid API Key"));
        assert!(matches!(Page::parse("<xml/>"), Err(ApiError::Shape(_))));
    }
}
