//! `/api/deliveries`, their requeue, and `/api/events` with each event's deliveries.

use std::collections::HashMap;

use hyper::{Response, StatusCode};
use serde::Serialize;

use super::{store_error, MAX_EVENTS};
use crate::clock::now_ms;
use crate::model::{Delivery, DeliveryStatus, Event, EventStatus, Subject};
use crate::reports::rfc3339;
use crate::routes::{error, json, Body};
use crate::state::AppState;
use crate::store::Requeue;

#[derive(Serialize)]
struct EventView<'a> {
    received_at: String,
    network: &'a str,
    status: &'a str,
    reason: &'a str,
    click_id: Option<&'a str>,
    conversion_id: Option<&'a str>,
    query: &'a str,
    /// Where the conversion stands with each destination (empty when nothing forwards it).
    deliveries: Vec<DeliveryView<'a>>,
}

#[derive(Serialize)]
struct Events<'a> {
    events: Vec<EventView<'a>>,
}

/// One delivery as the API shows it: what was sent and what came back.
#[derive(Serialize)]
struct DeliveryView<'a> {
    id: &'a str,
    destination: &'a str,
    event_id: &'a str,
    event: &'a str,
    /// What is forwarded: `conversion`, `click`, or `reversal` (of the conversion
    /// `event_id`, which the network reversed).
    kind: &'static str,
    click_id: &'a str,
    /// Any of [`DeliveryStatus::ALL`], `skipped` included.
    status: &'static str,
    attempts: u32,
    created_at: String,
    updated_at: String,
    /// When the next attempt is due, while pending.
    next_attempt_at: Option<String>,
    last_status: Option<u16>,
    last_error: Option<&'a str>,
    /// This event's part of the last request built.
    request: Option<serde_json::Value>,
}

impl<'a> DeliveryView<'a> {
    fn new(d: &'a Delivery) -> DeliveryView<'a> {
        DeliveryView {
            id: &d.id,
            destination: &d.destination,
            event_id: d.subject.event_id(),
            event: d.subject.event_name(),
            kind: match d.subject {
                Subject::Conversion(_) => "conversion",
                Subject::Click(_) => "click",
                Subject::Reversal(..) => "reversal",
            },
            click_id: &d.subject.click().id,
            status: d.status.as_str(),
            attempts: d.attempts,
            created_at: rfc3339(d.created_at),
            updated_at: rfc3339(d.updated_at),
            next_attempt_at: (d.status == DeliveryStatus::Pending).then(|| rfc3339(d.next_at)),
            last_status: d.last_status,
            last_error: d.last_error.as_deref(),
            request: d.request.as_deref().and_then(|r| serde_json::from_str(r).ok()),
        }
    }
}

#[derive(Serialize)]
struct Deliveries<'a> {
    deliveries: Vec<DeliveryView<'a>>,
}

pub(super) async fn deliveries(state: &AppState, query: &HashMap<String, String>) -> Response<Body> {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_EVENTS).contains(&n) => n,
        Some(_) => return error(StatusCode::BAD_REQUEST, &format!("limit must be a number from 1 to {MAX_EVENTS}")),
    };
    let status = match query.get("status").map(|s| (s, DeliveryStatus::parse(s))) {
        None => None,
        Some((_, Some(s))) => Some(s),
        Some((s, None)) => {
            let known: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
            return error(StatusCode::BAD_REQUEST, &format!("status={s:?}: use one of {}", known.join(", ")));
        }
    };
    let destination = query.get("destination").map(String::as_str);
    if let Some(name) = destination {
        if !state.config.forward.destinations.iter().any(|d| d.name == name) {
            return error(StatusCode::BAD_REQUEST, &format!("destination={name:?} is not a configured destination"));
        }
    }
    match state.store.outbox().deliveries(status, destination, limit).await {
        Ok(list) => json(StatusCode::OK, &Deliveries { deliveries: list.iter().map(DeliveryView::new).collect() }),
        Err(e) => store_error(e),
    }
}

/// Why a delivery in `status` was not re-queued.
pub(crate) fn requeue_refused(status: DeliveryStatus) -> String {
    format!("the delivery is {}; only failed or expired deliveries can be re-queued", status.as_str())
}

pub(super) async fn requeue(state: &AppState, id: &str) -> Response<Body> {
    match state.store.outbox().requeue_delivery(id, now_ms()).await {
        Ok(Requeue::Done(d)) => json(StatusCode::OK, &DeliveryView::new(&d)),
        Ok(Requeue::NotFound) => error(StatusCode::NOT_FOUND, "no such delivery"),
        Ok(Requeue::NotDeadLettered(s)) => error(StatusCode::CONFLICT, &requeue_refused(s)),
        Err(e) => store_error(e),
    }
}

pub(super) async fn events(state: &AppState, query: &HashMap<String, String>) -> Response<Body> {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_EVENTS).contains(&n) => n,
        Some(_) => return error(StatusCode::BAD_REQUEST, &format!("limit must be a number from 1 to {MAX_EVENTS}")),
    };
    let status = match query.get("status").map(|s| (s, EventStatus::parse(s))) {
        None => None,
        Some((_, Some(status))) => Some(status),
        Some((s, None)) => {
            let known: Vec<&str> = EventStatus::ALL.iter().map(|s| s.as_str()).collect();
            return error(StatusCode::BAD_REQUEST, &format!("status={s:?}: use one of {}", known.join(", ")));
        }
    };
    let list = match state.store.events().events(status, limit).await {
        Ok(list) => list,
        Err(e) => return store_error(e),
    };
    let mut outcomes: Vec<Vec<Delivery>> = Vec::with_capacity(list.len());
    for e in &list {
        let found = match (&e.click_id, &e.conversion_id) {
            (Some(click), Some(conversion)) if !state.config.forward.destinations.is_empty() => {
                match state.store.outbox().deliveries_of(click, conversion).await {
                    Ok(found) => found,
                    Err(err) => return store_error(err),
                }
            }
            _ => Vec::new(),
        };
        outcomes.push(found);
    }
    let events = list.iter().zip(&outcomes).map(|(e, d)| event_view(e, d)).collect();
    json(StatusCode::OK, &Events { events })
}

fn event_view<'a>(e: &'a Event, deliveries: &'a [Delivery]) -> EventView<'a> {
    EventView {
        deliveries: deliveries.iter().map(DeliveryView::new).collect(),
        received_at: rfc3339(e.received_at),
        network: &e.network,
        status: e.status.as_str(),
        reason: &e.reason,
        click_id: e.click_id.as_deref(),
        conversion_id: e.conversion_id.as_deref(),
        query: &e.query,
    }
}
