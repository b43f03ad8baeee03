//! Records as version 1 wrote them, before clicks carried their offer and links their
//! offers and rules, so that a store or spool written then still reads.
//!
//! Postcard records name no fields: a record of a type that gained fields cannot be told
//! from a new one by its content. So records of those types are now written after a
//! marker byte ([`MARKER`]) that no version 1 record starts with (each began with the
//! length of a short string, or an enum index, below 0x80), and what lacks the marker is
//! read with the version 1 shapes below.

use serde::Deserialize;

use crate::model::{Click, Conversion, Delivery, DeliveryStatus, Link, LinkSource, LinkStatus, Subject, UnixMillis};
use crate::money::Money;

/// First byte of a record written in the current shape.
pub(crate) const MARKER: u8 = 0xC2;

#[derive(Deserialize)]
pub(crate) struct ClickV1 {
    id: String,
    link: String,
    at: UnixMillis,
    bot: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    referer: Option<String>,
    utm: Vec<(String, String)>,
    ad_click_ids: Vec<(String, String)>,
    subids: Vec<(String, String)>,
}

impl From<ClickV1> for Click {
    fn from(c: ClickV1) -> Click {
        Click {
            id: c.id,
            link: c.link,
            at: c.at,
            bot: c.bot,
            ip: c.ip,
            user_agent: c.user_agent,
            referer: c.referer,
            utm: c.utm,
            ad_click_ids: c.ad_click_ids,
            subids: c.subids,
            offer: None,
            rule: None,
            fallback: None,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct ConversionV1 {
    id: String,
    at: UnixMillis,
    network: String,
    event: String,
    value: Money,
    currency: String,
    transaction_id: Option<String>,
    item_id: Option<String>,
    fields: Vec<(String, String)>,
    click: ClickV1,
}

impl From<ConversionV1> for Conversion {
    fn from(c: ConversionV1) -> Conversion {
        Conversion {
            id: c.id,
            at: c.at,
            network: c.network,
            event: c.event,
            value: c.value,
            currency: c.currency,
            transaction_id: c.transaction_id,
            item_id: c.item_id,
            fields: c.fields,
            click: c.click.into(),
            reversed_at: None,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct LinkV1 {
    network: String,
    slug: String,
    offer: String,
    redirect: u16,
    status: LinkStatus,
    fallback: Option<String>,
    event: Option<String>,
    source: LinkSource,
}

impl From<LinkV1> for Link {
    fn from(l: LinkV1) -> Link {
        Link {
            network: l.network,
            slug: l.slug,
            offer: l.offer,
            redirect: l.redirect,
            status: l.status,
            fallback: l.fallback,
            event: l.event,
            source: l.source,
            offers: Vec::new(),
            rules: Vec::new(),
            sticky_hours: 0,
            cap_tz: None,
        }
    }
}

#[derive(Deserialize)]
enum SubjectV1 {
    Conversion(Box<ConversionV1>),
    Click(Box<ClickV1>),
}

#[derive(Deserialize)]
pub(crate) struct DeliveryV1 {
    id: String,
    destination: String,
    subject: SubjectV1,
    status: DeliveryStatus,
    attempts: u32,
    created_at: UnixMillis,
    updated_at: UnixMillis,
    next_at: UnixMillis,
    last_status: Option<u16>,
    last_error: Option<String>,
    request: Option<String>,
}

impl From<DeliveryV1> for Delivery {
    fn from(d: DeliveryV1) -> Delivery {
        Delivery {
            id: d.id,
            destination: d.destination,
            subject: match d.subject {
                SubjectV1::Conversion(c) => Subject::Conversion(Box::new((*c).into())),
                SubjectV1::Click(c) => Subject::Click(Box::new((*c).into())),
            },
            status: d.status,
            attempts: d.attempts,
            created_at: d.created_at,
            updated_at: d.updated_at,
            next_at: d.next_at,
            last_status: d.last_status,
            last_error: d.last_error,
            request: d.request,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::store::schema::{decode, encode};

    /// The version 1 shape of a link, written as version 1 wrote it.
    #[derive(Serialize)]
    struct OldLink<'a> {
        network: &'a str,
        slug: &'a str,
        offer: &'a str,
        redirect: u16,
        status: LinkStatus,
        fallback: Option<&'a str>,
        event: Option<&'a str>,
        source: LinkSource,
    }

    #[test]
    fn links_written_by_version_1_still_read_and_new_ones_round_trip() {
        let old = OldLink {
            network: "cake",
            slug: "demo",
            offer: "https://o.example.com/",
            redirect: 302,
            status: LinkStatus::Active,
            fallback: None,
            event: Some("Lead"),
            source: LinkSource::Api,
        };
        let bytes = postcard::to_stdvec(&old).unwrap();
        assert!(bytes[0] < 0x80, "version 1 records start below the marker");
        let link: Link = decode(&bytes).unwrap();
        assert_eq!((link.slug.as_str(), link.event.as_deref(), link.offers.len()), ("demo", Some("Lead"), 0));
        let again: Link = decode(&encode(&link)).unwrap();
        assert_eq!(again, link);
        assert_eq!(encode(&link)[0], MARKER);
    }
}
