//! The compact binary form of a stored click, shared by both backends.
//!
//! Clicks are by far the most numerous records, so their size is the store's size. Most of
//! a click repeats across thousands of others: the link, the referer, the UTM parameters and
//! sub-ids of one ad, and the visitor's user agent. Those parts are *interned*: stored once
//! under an 8-byte content hash, and the click keeps only the hash. What remains per click is
//! its time, its bot reason, its ad-platform click ids and, apart, the personal data.
//!
//! A record is `core ‖ personal`:
//!
//! - core: version byte, time (varint ms), bot reason (string), context hash (8 bytes),
//!   ad-platform click ids (varint count, then name/value strings);
//! - personal: IP address (tag byte: 0 none, 4 and 6 raw address bytes, 1 string) and the
//!   user agent's hash (tag byte 0 or 1, then 8 bytes).
//!
//! Version 2 records (a click sent to one of a link's offers, or to its fallback) put the
//! route right after the version byte: the offer id (string, empty for none), the rule
//! index plus one (varint, 0 for none) and the fallback reason (string, empty for none);
//! the rest is as in version 1, which is still written for clicks without a route, so
//! every record written before reads as it did.
//!
//! The personal part comes last so that dropping it after seven days (it serves only the
//! conversion APIs) is a truncation: [`strip_personal`]. Strings are a varint length and
//! UTF-8 bytes. Interned values are the context, encoded the same way, and the user
//! agent's raw bytes.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;

use super::{StoreError, StoreResult};
use crate::memo::Memo;
use crate::model::{Click, ClickIp, ClickView};

/// A record without a route.
const VERSION: u8 = 1;
/// A record with a route after the version byte.
const VERSION_ROUTED: u8 = 2;

/// Content hash naming an interned value.
pub(super) type InternKey = [u8; 8];

/// A click ready to store: its record and the interned values it refers to.
pub(super) struct EncodedClick {
    pub record: Vec<u8>,
    /// (hash, value) of the context and, when the click has one, the user agent: shared
    /// with the memo that found the hash, not copied per click.
    pub interns: Vec<(InternKey, Arc<[u8]>)>,
}

/// The parts of a click that many clicks share, encoded: link, referer (tag byte 0 or 1,
/// then the string), UTM parameters and sub-ids (each a varint count, then name/value
/// strings).
fn encode_context(out: &mut Vec<u8>, click: &ClickView<'_>) {
    put_str(out, click.link);
    match click.referer {
        None => out.push(0),
        Some(referer) => {
            out.push(1);
            put_str(out, referer);
        }
    }
    for pairs in [click.utm, click.subids] {
        put_varint(out, pairs.len() as u64);
        for (name, value) in pairs.iter() {
            put_str(out, name);
            put_str(out, value);
        }
    }
}

/// The context's parts: link, referer, UTM parameters, sub-ids.
type Context = (String, Option<String>, Vec<(String, String)>, Vec<(String, String)>);

fn decode_context(bytes: &[u8]) -> StoreResult<Context> {
    let mut r = Reader { bytes, pos: 0 };
    let link = r.string()?;
    let referer = match r.byte()? {
        0 => None,
        1 => Some(r.string()?),
        _ => return Err(corrupt("context: referer tag")),
    };
    let mut pairs = || -> StoreResult<Vec<(String, String)>> {
        let n = r.varint()?;
        let mut out = Vec::new();
        for _ in 0..n {
            out.push((r.string()?, r.string()?));
        }
        Ok(out)
    };
    let (utm, subids) = (pairs()?, pairs()?);
    if !r.at_end() {
        return Err(corrupt("context: trailing bytes"));
    }
    Ok((link, referer, utm, subids))
}

/// An interned value and its key.
type Interned = (InternKey, Arc<[u8]>);

thread_local! {
    /// The contexts and user agents this thread encoded lately, with their keys: the same
    /// ones come back request after request, and a map lookup costs a tenth of hashing
    /// them. A click shares the memo's copy of each value instead of making its own.
    static CONTEXTS: Memo<Interned> = Memo::default();
    static USER_AGENTS: Memo<Interned> = Memo::default();
    /// Where this thread encodes a click's context to look it up.
    static CONTEXT_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The memo's entry for `value`, made when it has none.
fn interned(memo: &'static std::thread::LocalKey<Memo<Interned>>, kind: u8, value: &[u8]) -> Interned {
    memo.with(|m| m.get_or(value, || (intern_key(kind, value), Arc::from(value))))
}

fn intern_key(kind: u8, value: &[u8]) -> InternKey {
    let mut h = blake3::Hasher::new();
    h.update(&[kind]);
    h.update(value);
    let mut key = [0u8; 8];
    key.copy_from_slice(&h.finalize().as_bytes()[..8]);
    key
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Encodes `click` (its id is the key, not part of the record).
pub(super) fn encode(click: &ClickView<'_>) -> EncodedClick {
    let (context_key, context) = CONTEXT_SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        encode_context(scratch, click);
        interned(&CONTEXTS, b'c', scratch)
    });
    let mut interns = Vec::with_capacity(2);
    interns.push((context_key, context));

    let mut out = Vec::with_capacity(64);
    if click.offer.is_some() || click.rule.is_some() || click.fallback.is_some() {
        out.push(VERSION_ROUTED);
        put_route(&mut out, click.offer, click.rule, click.fallback);
    } else {
        out.push(VERSION);
    }
    put_varint(&mut out, click.at.max(0) as u64);
    put_str(&mut out, click.bot.unwrap_or_default());
    out.extend_from_slice(&context_key);
    put_varint(&mut out, click.ad_click_ids.len() as u64);
    for (name, value) in click.ad_click_ids.iter() {
        put_str(&mut out, name);
        put_str(&mut out, value);
    }
    // Raw bytes only for an address in canonical form, so it reads back as written (an
    // IPv4 address that parses is canonical: the parser takes no other form).
    let canonical = |ip: &str, a: &IpAddr| a.is_ipv4() || a.to_string() == ip;
    let ip = match click.ip {
        None => None,
        Some(ClickIp::Addr(addr)) => Some(Ok(addr)),
        Some(ClickIp::Text(text)) => Some(text.parse::<IpAddr>().ok().filter(|a| canonical(text, a)).ok_or(text)),
    };
    match ip {
        None => out.push(0),
        Some(Ok(IpAddr::V4(v4))) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        Some(Ok(IpAddr::V6(v6))) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
        Some(Err(text)) => {
            out.push(1);
            put_str(&mut out, text);
        }
    }
    match click.user_agent {
        None => out.push(0),
        Some(ua) => {
            let (key, value) = interned(&USER_AGENTS, b'u', ua.as_bytes());
            out.push(1);
            out.extend_from_slice(&key);
            interns.push((key, value));
        }
    }
    EncodedClick { record: out, interns }
}

/// A version 1 `record` with a route added (a version 2 record): what a store writes once
/// it has decided which offer, if any, took the click.
pub(super) fn with_route(record: &[u8], offer: Option<&str>, rule: Option<u32>, fallback: Option<&str>) -> Vec<u8> {
    // A record that has a route already (the click's rule, say) gets this one instead.
    let mut r = Reader { bytes: record, pos: 1 };
    if record.first() == Some(&VERSION_ROUTED) && r.string().and(r.varint()).and(r.string()).is_err() {
        r.pos = 1;
    }
    let body = record.get(r.pos..).unwrap_or_default();
    let mut out = Vec::with_capacity(record.len() + 24);
    out.push(VERSION_ROUTED);
    put_route(&mut out, offer, rule, fallback);
    out.extend_from_slice(body);
    out
}

/// A version 2 record's route, after its version byte.
fn put_route(out: &mut Vec<u8>, offer: Option<&str>, rule: Option<u32>, fallback: Option<&str>) {
    put_str(out, offer.unwrap_or_default());
    put_varint(out, rule.map_or(0, |r| u64::from(r) + 1));
    put_str(out, fallback.unwrap_or_default());
}

/// A decoded record whose interned parts are still to be looked up.
pub(super) struct ParsedClick {
    route: Route,
    at: i64,
    bot: Option<String>,
    ad_click_ids: Vec<(String, String)>,
    ip: Option<String>,
    pub context: InternKey,
    pub user_agent: Option<InternKey>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::corrupt(format!("click record: {what}"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> StoreResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| corrupt("truncated"))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn byte(&mut self) -> StoreResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> StoreResult<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err(corrupt("varint too long"))
    }

    fn string(&mut self) -> StoreResult<String> {
        let len = usize::try_from(self.varint()?).map_err(|_| corrupt("length"))?;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| corrupt("invalid UTF-8"))
    }

    fn key(&mut self) -> StoreResult<InternKey> {
        let mut key = [0u8; 8];
        key.copy_from_slice(self.take(8)?);
        Ok(key)
    }

    fn at_end(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

/// Where a click was sent, as a version 2 record keeps it.
#[derive(Default)]
struct Route {
    offer: Option<String>,
    rule: Option<u32>,
    fallback: Option<String>,
}

/// The part of a record every click keeps.
struct Core {
    route: Route,
    at: i64,
    bot: Option<String>,
    context: InternKey,
    ad_click_ids: Vec<(String, String)>,
}

/// Reads the core, leaving `r` where the personal part starts.
fn parse_core(r: &mut Reader<'_>) -> StoreResult<Core> {
    let route = match r.byte()? {
        VERSION => Route::default(),
        VERSION_ROUTED => Route {
            offer: Some(r.string()?).filter(|o| !o.is_empty()),
            rule: match r.varint()? {
                0 => None,
                n => Some(u32::try_from(n - 1).map_err(|_| corrupt("rule"))?),
            },
            fallback: Some(r.string()?).filter(|f| !f.is_empty()),
        },
        _ => return Err(corrupt("unknown version")),
    };
    let at = i64::try_from(r.varint()?).map_err(|_| corrupt("time"))?;
    let bot = Some(r.string()?).filter(|b| !b.is_empty());
    let context = r.key()?;
    let n = r.varint()?;
    let mut ad_click_ids = Vec::new();
    for _ in 0..n {
        ad_click_ids.push((r.string()?, r.string()?));
    }
    Ok(Core { route, at, bot, context, ad_click_ids })
}

/// Decodes a record; the context and user agent are then looked up by their keys.
pub(super) fn parse(bytes: &[u8]) -> StoreResult<ParsedClick> {
    let mut r = Reader { bytes, pos: 0 };
    let Core { route, at, bot, context, ad_click_ids } = parse_core(&mut r)?;
    let (mut ip, mut user_agent) = (None, None);
    if !r.at_end() {
        ip = match r.byte()? {
            0 => None,
            4 => {
                let b: [u8; 4] = r.take(4)?.try_into().map_err(|_| corrupt("IPv4"))?;
                Some(IpAddr::from(b).to_string())
            }
            6 => {
                let b: [u8; 16] = r.take(16)?.try_into().map_err(|_| corrupt("IPv6"))?;
                Some(IpAddr::from(b).to_string())
            }
            1 => Some(r.string()?),
            _ => return Err(corrupt("IP tag")),
        };
        user_agent = match r.byte()? {
            0 => None,
            1 => Some(r.key()?),
            _ => return Err(corrupt("user-agent tag")),
        };
    }
    if !r.at_end() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(ParsedClick { route, at, bot, ad_click_ids, ip, context, user_agent })
}

/// The record without its personal part, or `None` when it has none left to drop.
pub(super) fn strip_personal(bytes: &[u8]) -> StoreResult<Option<Vec<u8>>> {
    let mut r = Reader { bytes, pos: 0 };
    parse_core(&mut r)?;
    Ok((!r.at_end()).then(|| bytes[..r.pos].to_vec()))
}

impl ParsedClick {
    /// The whole click, given the interned values its keys name. A missing user agent
    /// (interned values outlive their clicks, so only damage loses one) reads as none.
    pub(super) fn into_click(self, id: String, context: &[u8], user_agent: Option<&[u8]>) -> StoreResult<Click> {
        let (link, referer, utm, subids) = decode_context(context)?;
        Ok(Click {
            id,
            link,
            at: self.at,
            bot: self.bot,
            ip: self.ip,
            user_agent: user_agent.map(|ua| String::from_utf8_lossy(ua).into_owned()),
            referer,
            utm,
            ad_click_ids: self.ad_click_ids,
            subids,
            offer: self.route.offer,
            rule: self.route.rule,
            fallback: self.route.fallback,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Pair, Pairs};
    use proptest::prelude::*;

    fn click() -> Click {
        Click {
            id: "0000000000000000000000000000000a".into(),
            link: "cake/demo".into(),
            at: 1_795_000_000_123,
            bot: None,
            ip: Some("203.0.113.7".into()),
            user_agent: Some("Mozilla/5.0 (iPhone)".into()),
            referer: Some("https://m.facebook.com/".into()),
            utm: vec![("source".into(), "facebook".into()), ("campaign".into(), "bf".into())],
            ad_click_ids: vec![("fbclid".into(), "IwAR123".into())],
            subids: vec![("s3".into(), "creative".into())],
            offer: None,
            rule: None,
            fallback: None,
        }
    }

    fn enc(c: &Click) -> EncodedClick {
        encode(&c.view())
    }

    fn round_trip(c: &Click) -> Click {
        let enc = enc(c);
        let parsed = parse(&enc.record).unwrap();
        let ctx = enc.interns.iter().find(|(k, _)| *k == parsed.context).unwrap().1.clone();
        let ua = parsed.user_agent.map(|key| enc.interns.iter().find(|(k, _)| *k == key).unwrap().1.clone());
        parsed.into_click(c.id.clone(), &ctx, ua.as_deref()).unwrap()
    }

    #[test]
    fn a_click_survives_the_round_trip_and_is_small() {
        let c = click();
        assert_eq!(round_trip(&c), c);
        for ip in ["001.2.3.4", "1.2.3.04", "0::1", "::ffff:1.2.3.4", "2001:db8::1", "not an address"] {
            let odd = Click { ip: Some(ip.into()), ..click() };
            assert_eq!(round_trip(&odd), odd, "{ip}");
        }
        let without_fbclid = Click { ad_click_ids: vec![], ..click() };
        // version, time, bot, context hash, no ad ids, IPv4, user-agent hash.
        assert_eq!(enc(&without_fbclid).record.len(), 1 + 6 + 1 + 8 + 1 + 5 + 9);
    }

    #[test]
    fn a_view_from_the_request_encodes_as_its_click_does() {
        use std::borrow::Cow;
        use std::net::IpAddr;
        let c = Click { subids: vec![("s3".into(), "a b".into())], ..click() };
        let utm: Vec<Pair> = c.utm.iter().map(|(k, v)| (Cow::from(k.as_str()), Cow::from(v.clone()))).collect();
        let ids: Vec<Pair> =
            c.ad_click_ids.iter().map(|(k, v)| (Cow::from(k.as_str()), Cow::from(v.as_str()))).collect();
        let subids = [(Cow::from("s3"), Cow::from(String::from("a b")))];
        for ip in ["203.0.113.7", "2001:db8::1", "::ffff:1.2.3.4"] {
            let c = Click { ip: Some(ip.into()), ..c.clone() };
            let addr: IpAddr = ip.parse().unwrap();
            let view = ClickView {
                ip: Some(ClickIp::Addr(addr)),
                utm: Pairs::Borrowed(&utm),
                ad_click_ids: Pairs::Borrowed(&ids),
                subids: Pairs::Borrowed(&subids),
                ..c.view()
            };
            let (a, b) = (encode(&view), enc(&c));
            assert_eq!((a.record, a.interns), (b.record, b.interns), "{ip}");
            assert_eq!(view.to_click(), c);
        }
    }

    #[test]
    fn routes_are_kept_and_records_before_them_still_read() {
        // A version 1 record as written before routes existed: it reads with no route.
        let v1 = enc(&click()).record;
        assert_eq!(v1[0], 1);
        let routed = Click { offer: Some("b".into()), rule: Some(3), ..click() };
        assert_eq!(round_trip(&routed), routed);
        let fallback = Click { fallback: Some("capped".into()), rule: Some(0), ..click() };
        assert_eq!(round_trip(&fallback), fallback);
        // A store adds the route it decided to a version 1 record.
        let added = with_route(&v1, Some("b"), Some(3), None);
        assert_eq!(added, enc(&routed).record);
        // A record with a route already gets the new one in its place.
        let ruled = enc(&Click { rule: Some(3), ..click() }).record;
        assert_eq!(with_route(&ruled, Some("b"), Some(3), None), added);
        let stripped = strip_personal(&added).unwrap().unwrap();
        assert_eq!(stripped[0], 2);
        assert!(parse(&stripped).unwrap().user_agent.is_none());
    }

    #[test]
    fn remembered_keys_are_the_hashes() {
        for ua in ["a", "Mozilla/5.0", "a"] {
            let (key, value) = interned(&USER_AGENTS, b'u', ua.as_bytes());
            assert_eq!((key, &value[..]), (intern_key(b'u', ua.as_bytes()), ua.as_bytes()));
        }
        assert_ne!(intern_key(b'u', b"x"), intern_key(b'c', b"x"), "kinds never share a key");
    }

    #[test]
    fn shared_parts_share_keys() {
        let a = enc(&click());
        let b = enc(&Click { at: 5, ip: Some("2001:db8::1".into()), ..click() });
        assert_eq!(a.interns, b.interns);
        assert_ne!(a.record, b.record);
    }

    #[test]
    fn stripping_drops_ip_and_user_agent_only() {
        let c = Click { bot: Some("crawler:Googlebot".into()), ..click() };
        let enc = enc(&c);
        let stripped = strip_personal(&enc.record).unwrap().unwrap();
        assert!(strip_personal(&stripped).unwrap().is_none());
        let parsed = parse(&stripped).unwrap();
        assert!(parsed.user_agent.is_none());
        let ctx = &enc.interns[0].1;
        let back = parsed.into_click(c.id.clone(), ctx, None).unwrap();
        assert_eq!(back, Click { ip: None, user_agent: None, ..c });
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let rec = enc(&click()).record;
        for cut in 0..rec.len() {
            let _ = parse(&rec[..cut]);
        }
        assert!(parse(&rec[..3]).is_err());
        assert!(parse(&[2]).is_err());
        let mut extra = rec.clone();
        extra.push(0);
        assert!(parse(&extra).is_err());
    }

    proptest! {
        #[test]
        fn any_click_round_trips(
            at in 0i64..i64::MAX, ip in proptest::option::of("[0-9a-f:.]{0,40}"),
            ua in proptest::option::of(".{0,60}"), referer in proptest::option::of(".{0,30}"),
            bot in proptest::option::of("[a-z:]{1,20}"),
            pairs in proptest::collection::vec(("[a-z]{1,8}", ".{0,12}"), 0..4),
        ) {
            let c = Click {
                id: "x".into(), link: "cake/a".into(), at, bot, ip, user_agent: ua, referer,
                utm: pairs.clone(), ad_click_ids: pairs.clone(), subids: pairs,
                offer: None, rule: None, fallback: None,
            };
            prop_assert_eq!(round_trip(&c), c);
        }
    }
}
