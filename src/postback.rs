//! Postbacks: the network's server-to-server call that reports a conversion.
//!
//! [`Fields`] reads a postback from a query string, a form body or a JSON body (names
//! matched case-insensitively, empty/`null`/unreplaced tokens taken as absent), and
//! [`process`] turns it into an answer: resolve the click id, decide the event,
//! de-duplicate, record, log. Nothing here knows HTTP beyond the status code it suggests.

use crate::clickid::{ClickIdError, Keyring};
use crate::links::LinkCatalog;
use crate::model::{Conversion, Event, EventStatus, QueuedPostback, Recorded, Reversed, UnixMillis, LEAD, PURCHASE};
use crate::money::Money;
use crate::networks::{is_absent, Network};
use crate::store::spool::SpooledStore;
use crate::store::{ClickStore, ConversionStore, EventLog, StoreError, StoreResult};
use crate::text::valid_percent_encoding;

/// Field names whose values are credentials and never reach the event log.
const REDACTED: &[&str] = &["key", "postback_key", "token", "access_token", "api_key", "password", "secret"];

/// Why a postback's text could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldsError {
    #[error("invalid percent-encoding in {0:?}")]
    PercentEncoding(String),
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("JSON body must be an object of fields")]
    JsonShape,
    #[error("text is not valid UTF-8")]
    Utf8,
}

/// A postback's fields: names lower-cased, first occurrence wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    /// Fields that carry a value.
    present: Vec<(String, String)>,
    /// Fields that arrived empty, `null` or as an unreplaced token, with what arrived.
    absent: Vec<(String, String)>,
}

impl Fields {
    /// Reads `a=1&b=2` (a query string or a form body).
    pub fn from_query(text: &str) -> Result<Fields, FieldsError> {
        if !valid_percent_encoding(text) {
            return Err(FieldsError::PercentEncoding(text.chars().take(80).collect()));
        }
        // Escapes must decode to UTF-8; a U+FFFD sent as such (`%EF%BF%BD`) is text like
        // any other, as it is in a JSON body.
        if percent_encoding::percent_decode_str(text).decode_utf8().is_err() {
            return Err(FieldsError::Utf8);
        }
        let mut fields = Fields::default();
        for (name, value) in form_urlencoded::parse(text.as_bytes()) {
            fields.push(&name, &value);
        }
        Ok(fields)
    }

    /// Reads a JSON object; numbers keep their exact text, `null` is absent.
    pub fn from_json(body: &[u8]) -> Result<Fields, FieldsError> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| FieldsError::Json(e.to_string()))?;
        let serde_json::Value::Object(map) = value else {
            return Err(FieldsError::JsonShape);
        };
        let mut fields = Fields::default();
        for (name, value) in map {
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::new(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => other.to_string(),
            };
            fields.push(&name, &text);
        }
        Ok(fields)
    }

    /// Adds the fields of `other` that this one lacks (a `POST` body plus its query).
    pub fn merge(&mut self, other: Fields) {
        for (name, value) in other.present.into_iter().chain(other.absent) {
            self.push(&name, &value);
        }
    }

    fn push(&mut self, name: &str, value: &str) {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || self.present.iter().chain(&self.absent).any(|(n, _)| *n == name) {
            return;
        }
        if is_absent(value) {
            self.absent.push((name, value.to_owned()));
        } else {
            self.present.push((name, value.trim().to_owned()));
        }
    }

    /// The value of `name`, if it carries one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.present.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// What arrived for `name` when it carried no value (`""`, `null`, `#s2#`).
    pub fn absent_value(&self, name: &str) -> Option<&str> {
        self.absent.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Fields with a value, for the conversion record.
    pub fn present(&self) -> &[(String, String)] {
        &self.present
    }

    /// The postback as kept in the outage spool while the store is down.
    pub fn to_queued(&self, network: &str, received_at: UnixMillis) -> QueuedPostback {
        QueuedPostback {
            received_at,
            network: network.to_owned(),
            present: self.present.clone(),
            absent: self.absent.clone(),
        }
    }

    /// The fields of a postback kept in the outage spool.
    pub fn from_queued(queued: &QueuedPostback) -> Fields {
        Fields { present: queued.present.clone(), absent: queued.absent.clone() }
    }

    /// All fields as received, credentials redacted, for the event log.
    pub fn to_log_query(&self) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (name, value) in self.present.iter().chain(&self.absent) {
            let shown = if REDACTED.contains(&name.as_str()) { "[redacted]" } else { value.as_str() };
            out.append_pair(name, shown);
        }
        out.finish()
    }
}

/// Picks the event name: the postback's own event field wins, then the link's `event`
/// (CPL offers pay for leads), then the payout: more than zero is a `Purchase`.
pub fn decide_event(postback_event: Option<&str>, link_event: Option<&str>, value: Option<Money>) -> String {
    if let Some(e) = postback_event {
        return e.to_owned();
    }
    if let Some(e) = link_event {
        return e.to_owned();
    }
    match value {
        Some(v) if !v.is_zero() => PURCHASE.to_owned(),
        _ => LEAD.to_owned(),
    }
}

/// What a postback came to; the route turns it into an HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: EventStatus,
    pub reason: String,
    /// HTTP status code to answer with.
    pub http: u16,
    pub click_id: Option<String>,
    pub conversion_id: Option<String>,
}

impl Answer {
    fn new(status: EventStatus, http: u16, reason: impl Into<String>) -> Answer {
        Answer { status, reason: reason.into(), http, click_id: None, conversion_id: None }
    }

    /// A postback refused before its fields were looked at (bad key, unreadable body).
    pub fn rejected(http: u16, reason: impl Into<String>) -> Answer {
        Answer::new(EventStatus::Rejected, http, reason)
    }

    pub fn no_match(reason: impl Into<String>) -> Answer {
        Answer::new(EventStatus::NoMatch, 200, reason)
    }

    /// The event-log entry recording this answer.
    pub fn to_event(&self, network: &str, fields: &Fields, received_at: UnixMillis) -> Event {
        Event {
            received_at,
            network: network.to_owned(),
            status: self.status,
            reason: self.reason.clone(),
            click_id: self.click_id.clone(),
            conversion_id: self.conversion_id.clone(),
            query: fields.to_log_query(),
        }
    }
}

/// What processing a postback needs.
pub struct Context<'a> {
    pub clicks: &'a dyn ClickStore,
    pub conversions: &'a dyn ConversionStore,
    pub events: &'a dyn EventLog,
    pub links: &'a LinkCatalog,
    pub keyring: &'a Keyring,
    /// Where a postback waits while the store is down; `None` when resolving one that
    /// waited (it must not be queued again).
    pub spool: Option<&'a SpooledStore>,
    /// Whether the conversion comes from reconciling the network's report rather than
    /// from the network's postback: its event-log reason says so (`reconciled`).
    pub reconciled: bool,
}

/// Resolves, de-duplicates and records one authenticated postback. While the store is
/// down, a postback whose click id verifies is kept in the outage spool and answered
/// `202 queued`; with the spool full it is `503`, so that the network retries.
pub async fn process(ctx: &Context<'_>, network: &Network, fields: &Fields, now: UnixMillis) -> Answer {
    let (value, base) = match check(ctx, network, fields, now) {
        Ok(checked) => checked,
        Err(answer) => return answer,
    };
    let spooling = ctx.spool.is_some_and(SpooledStore::is_spooling);
    let failure = if spooling {
        None
    } else {
        match record(ctx, network, fields, value, &base, now).await {
            Ok(answer) => return answer,
            Err(e) => Some(e),
        }
    };
    // Only an unreachable store is worth waiting for; a corrupt record stays corrupt.
    let outage = failure.as_ref().is_none_or(StoreError::is_outage);
    let (Some(spool), true) = (ctx.spool, outage) else {
        tracing::error!(error = ?failure, "store failed while resolving a postback");
        return Answer { status: EventStatus::Rejected, http: 503, reason: "store_unavailable".into(), ..base };
    };
    if let Some(e) = &failure {
        tracing::warn!(error = %e, "store failed while resolving a postback; queueing it");
    }
    match spool.queue_postback(fields.to_queued(&network.name, now)).await {
        Ok(()) => queued(base),
        Err(e) => {
            tracing::error!(error = %e, "postback could not be queued");
            Answer { status: EventStatus::Rejected, http: 503, reason: "store_unavailable: retry later".into(), ..base }
        }
    }
}

/// The answer to a postback kept in the outage spool.
fn queued(base: Answer) -> Answer {
    Answer {
        status: EventStatus::Queued,
        http: 202,
        reason: "store_unavailable: kept, and resolved when the store is back".into(),
        conversion_id: None,
        ..base
    }
}

/// Resolves a postback that waited in the outage spool, as if it arrived at its
/// `received_at` (the conversion's time). Its event-log entries are written now, in
/// order: `queued` as it was answered, then what it came to. A store error leaves it
/// queued.
pub async fn resolve_queued(
    ctx: &Context<'_>,
    network: &Network,
    queued_postback: &QueuedPostback,
) -> StoreResult<Answer> {
    let fields = Fields::from_queued(queued_postback);
    let now = queued_postback.received_at;
    let answer = match check(ctx, network, &fields, now) {
        Ok((value, base)) => {
            let answer = match record(ctx, network, &fields, value, &base, now).await {
                Ok(answer) => answer,
                // Retrying cannot mend a corrupt record, and would hold up the replay.
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::error!(error = %e, "stored record is corrupt; the queued postback is rejected");
                    Answer {
                        status: EventStatus::Rejected,
                        http: 500,
                        reason: "stored_record_corrupt".into(),
                        ..base.clone()
                    }
                }
                Err(e) => return Err(e),
            };
            // Written after the outcome is known, so that a store failing again in
            // between does not log the `queued` entry twice.
            ctx.events.log_event(&queued(base).to_event(&network.name, &fields, now)).await?;
            answer
        }
        Err(answer) => answer,
    };
    ctx.events.log_event(&answer.to_event(&network.name, &fields, now)).await?;
    tracing::info!(network = %network.name, status = answer.status.as_str(), reason = %answer.reason, "queued postback resolved");
    Ok(answer)
}

/// Checks what needs no store: the value and the click id's tag and age. The value and
/// a `no_match` answer carrying the verified click id, or the final answer.
fn check(
    ctx: &Context<'_>,
    network: &Network,
    fields: &Fields,
    now: UnixMillis,
) -> Result<(Option<Money>, Answer), Answer> {
    // A bad value is the network's mistake and worth a 400; everything else answers 200
    // so that networks do not disable the postback URL.
    let value = match fields.get(&network.value_field).map(Money::parse) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => return Err(Answer::rejected(400, format!("{}: {e}", network.value_field))),
    };

    let Some(raw_id) = fields.get(&network.click_id_field) else {
        return Err(Answer::no_match(match fields.absent_value(&network.click_id_field) {
            Some(v) if !v.trim().is_empty() && !v.eq_ignore_ascii_case("null") => {
                format!(
                    "unreplaced_click_id_token: {} arrived as {v:?}, so the network had no click id",
                    network.click_id_field
                )
            }
            _ => format!("missing_click_id: no {} field", network.click_id_field),
        }));
    };
    let now_secs = (now / 1000).max(0) as u64;
    let click_id = match ctx.keyring.verify(raw_id, now_secs) {
        Ok(id) => id,
        Err(e) => {
            let mut a = Answer::no_match(match e {
                ClickIdError::Malformed => format!("{}: not a cakelink click id", e.reason()),
                ClickIdError::Forged => {
                    format!("{}: the id's tag does not verify under any configured secret", e.reason())
                }
                ClickIdError::Expired => format!("{}: older than attribution_days + postback_grace_days", e.reason()),
            });
            a.click_id = Some(raw_id.chars().take(64).collect());
            return Err(a);
        }
    };
    let mut base = Answer::no_match("");
    base.click_id = Some(click_id.to_string());
    Ok((value, base))
}

/// Finds the click, decides the event, records the conversion once. A store error is
/// returned for the caller to queue the postback or answer `503`.
async fn record(
    ctx: &Context<'_>,
    network: &Network,
    fields: &Fields,
    value: Option<Money>,
    base: &Answer,
    now: UnixMillis,
) -> StoreResult<Answer> {
    let click_id = base.click_id.clone().unwrap_or_default();
    let transaction_id = fields.get(&network.transaction_field).map(str::to_owned);
    if let Some(disposition) = network.disposition_field.as_deref().and_then(|f| fields.get(f)) {
        if network.reverses(disposition) {
            let what = if ctx.reconciled { "reconciled: disposition" } else { "disposition" };
            return reverse(
                ctx.conversions,
                &click_id,
                transaction_id.as_deref(),
                now,
                &format!("{what} {disposition}"),
            )
            .await
            .map(|reversal| reversal.answer(base.clone()));
        }
    }
    let Some(click) = ctx.clicks.find_click(&click_id).await? else {
        return Ok(Answer { reason: "unknown_click_id: genuine but not in the store".into(), ..base.clone() });
    };

    let link_event = match click.link.split_once('/') {
        Some((net, slug)) => ctx.links.find(net, slug).await.ok().flatten().and_then(|l| l.link.event.clone()),
        None => None,
    };
    let postback_event = network.event_field.as_deref().and_then(|f| fields.get(f)).or_else(|| fields.get("event"));
    let event = decide_event(postback_event, link_event.as_deref(), value);
    let id = Conversion::derive_id(&click_id, transaction_id.as_deref(), fields.present(), &event);
    let conversion = Conversion {
        id: id.clone(),
        at: now,
        network: network.name.clone(),
        event: event.clone(),
        value: value.unwrap_or(Money::ZERO),
        currency: network.currency.clone(),
        transaction_id,
        item_id: fields.get(&network.item_field).map(str::to_owned),
        fields: fields.present().to_vec(),
        click,
        reversed_at: None,
    };
    let recorded = ctx.conversions.record_conversion(&conversion).await?;
    let base = base.clone();
    Ok(match recorded {
        Recorded::New => Answer {
            status: EventStatus::Ok,
            http: 200,
            reason: if ctx.reconciled { "reconciled".to_owned() } else { format!("{event} recorded") },
            conversion_id: Some(id),
            ..base
        },
        Recorded::Duplicate => Answer {
            status: EventStatus::Duplicate,
            http: 200,
            reason: format!("{event} already recorded"),
            conversion_id: Some(id),
            ..base
        },
    })
}

/// What reversing a click's conversion came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reversal {
    /// The conversion reversed (or found reversed before), if one matched.
    pub conversion: Option<Conversion>,
    pub outcome: Reversed,
    /// Why, for the event log: the disposition that reversed it.
    pub why: String,
}

impl Reversal {
    /// The postback's answer: `reversed`, `duplicate` for a second reversal, `no_match`
    /// when no conversion of the click matches.
    pub(crate) fn answer(self, base: Answer) -> Answer {
        let conversion_id = self.conversion.as_ref().map(|c| c.id.clone());
        let (status, reason) = match self.outcome {
            Reversed::Done => (EventStatus::Reversed, self.why),
            Reversed::Already => (EventStatus::Duplicate, format!("already reversed ({})", self.why)),
            Reversed::NotFound => (
                EventStatus::NoMatch,
                format!(
                    "no_conversion_to_reverse: no recorded conversion of this click has that transaction id ({})",
                    self.why
                ),
            ),
        };
        Answer { status, http: 200, reason, conversion_id, ..base }
    }
}

/// Reverses the conversion of `click_id` whose transaction id is `transaction_id` (with
/// none, the click's latest conversion without one) at `at`. A conversion reversed
/// before is `Already`; none matching is `NotFound`.
pub async fn reverse(
    conversions: &dyn ConversionStore,
    click_id: &str,
    transaction_id: Option<&str>,
    at: UnixMillis,
    why: &str,
) -> StoreResult<Reversal> {
    let of_click = conversions.conversions_of_click(click_id).await?;
    let matching = of_click.into_iter().filter(|c| c.transaction_id.as_deref() == transaction_id);
    // The live conversion first: a click may have had one reversed and one recorded
    // again under the same transaction id with another event.
    let target = matching.rev().min_by_key(|c| c.reversed_at.is_some());
    let Some(conversion) = target else {
        return Ok(Reversal { conversion: None, outcome: Reversed::NotFound, why: why.to_owned() });
    };
    let outcome = if conversion.reversed_at.is_some() {
        Reversed::Already
    } else {
        conversions.reverse_conversion(&conversion, at).await?
    };
    Ok(Reversal { conversion: Some(conversion), outcome, why: why.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_case_insensitive_and_absent_values_dropped() {
        let f = Fields::from_query("S2=abc&Price=7.00&s3=%23s3%23&s4=null&s5=&tid=#tid#&TID=second").unwrap();
        assert_eq!(f.get("s2"), Some("abc"));
        assert_eq!(f.get("price"), Some("7.00"));
        for absent in ["s3", "s4", "s5", "tid"] {
            assert_eq!(f.get(absent), None, "{absent}");
        }
        assert_eq!(f.absent_value("s3"), Some("#s3#"));
    }

    #[test]
    fn json_numbers_keep_their_exact_text() {
        let f = Fields::from_json(br#"{"s2":"x","price":12.345678901234567,"s3":null,"n":1}"#).unwrap();
        assert_eq!(f.get("price"), Some("12.345678901234567"));
        assert_eq!(f.get("s3"), None);
        assert_eq!(Fields::from_json(b"[1]"), Err(FieldsError::JsonShape));
        assert!(matches!(Fields::from_json(b"{"), Err(FieldsError::Json(_))));
    }

    #[test]
    fn percent_encoding_is_checked() {
        assert!(valid_percent_encoding("a=%41%2f&b=c"));
        for bad in ["a=%", "a=%4", "a=%zz", "%g1=1"] {
            assert!(!valid_percent_encoding(bad), "{bad}");
            assert!(Fields::from_query(bad).is_err());
        }
        assert_eq!(Fields::from_query("a=%FF"), Err(FieldsError::Utf8));
        assert_eq!(Fields::from_query("a%C3=%A9"), Err(FieldsError::Utf8));
    }

    /// Found by the `postback` fuzz target: a JSON body could carry U+FFFD but the same
    /// text percent-encoded in a query was refused as invalid UTF-8.
    #[test]
    fn a_replacement_character_is_text_in_a_query_as_in_json() {
        let query = Fields::from_query("event=%EF%BF%BD&s2=x").unwrap();
        let json = Fields::from_json("{\"event\":\"\u{FFFD}\",\"s2\":\"x\"}".as_bytes()).unwrap();
        assert_eq!(query, json);
        assert_eq!(query.get("event"), Some("\u{FFFD}"));
    }

    #[test]
    fn event_precedence() {
        let seven = Some(Money::from_micros(7_000_000));
        assert_eq!(decide_event(Some("Signup"), Some("Lead"), seven), "Signup");
        assert_eq!(decide_event(None, Some("Lead"), seven), "Lead");
        assert_eq!(decide_event(None, None, seven), "Purchase");
        assert_eq!(decide_event(None, None, Some(Money::ZERO)), "Lead");
        assert_eq!(decide_event(None, None, None), "Lead");
    }

    #[test]
    fn credentials_are_redacted_in_the_log() {
        let f = Fields::from_query("s2=a&key=hunter2").unwrap();
        assert_eq!(f.to_log_query(), "s2=a&key=%5Bredacted%5D");
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in ".{0,200}") {
            let _ = Fields::from_query(&text);
            let _ = Fields::from_json(text.as_bytes());
        }
    }
}
