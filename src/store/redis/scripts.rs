//! The Lua scripts and the calls that run them.
//!
//! Each script lives in `scripts/<name>.lua` and opens with a comment listing its KEYS and
//! its arguments by name, in order. Each function here builds one script's call and adds
//! keys and arguments in exactly that order, so the two are read side by side.
//!
//! Scripts are sent as `EVALSHA` and loaded on `NOSCRIPT` (e.g. after a restart of
//! Redis); Redis runs each without interleaving other commands, which is what makes a
//! write and its counters, index entries and deliveries one atomic step.

use std::time::Duration;

use redis::{Cmd, Script, ScriptInvocation};

use super::batcher::{BatchKey, BatchParts, KeyList, PendingClick};
use super::keys::{
    bucket_expiry, cap_counter_key, click_bucket_key, click_conversions_key, conversion_key, conversion_times_key,
    counter_days_key, counter_field, counters_key, day_of_hour, delivery_key, delivery_status_key, intern_key,
    lease_owners_key, outbox_key, reversals_key, shard, EVENT_LOG_KEY, EVENT_SEQ_KEY,
};
use crate::model::{Counters, Delivery, DeliveryStatus, UnixHour, UnixMillis};
use crate::store::record::EncodedClick;
use crate::store::schema::{encode, settled_cutoff, CapPlan, ReversalPlan, CAP_KEEP_SECS};

/// Every script, loaded once per store.
pub(super) struct Scripts {
    pub record_clicks: Script,
    pub record_conversion: Script,
    pub reverse_conversion: Script,
    pub record_forwarded_click: Script,
    pub record_capped_click: Script,
    pub claim_cap: Script,
    pub claim_deliveries: Script,
    pub finish_delivery: Script,
    pub requeue_delivery: Script,
    pub log_event: Script,
}

/// A script file with the shared prelude (`scripts/prelude.lua`: argument cursors and two recording steps) in front of it.
macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("scripts/prelude.lua"), include_str!(concat!("scripts/", $file))))
    };
}

impl Scripts {
    pub(super) fn load() -> Scripts {
        Scripts {
            record_clicks: script!("record_clicks.lua"),
            record_conversion: script!("record_conversion.lua"),
            reverse_conversion: script!("reverse_conversion.lua"),
            record_forwarded_click: script!("record_forwarded_click.lua"),
            record_capped_click: script!("record_capped_click.lua"),
            claim_cap: script!("claim_cap.lua"),
            claim_deliveries: script!("claim_deliveries.lua"),
            finish_delivery: script!("finish_delivery.lua"),
            requeue_delivery: script!("requeue_delivery.lua"),
            log_event: script!("log_event.lua"),
        }
    }
}

/// A script call built as its `EVALSHA` command, each argument written once, straight
/// into the command's buffer; Redis is asked to load the script again on `NOSCRIPT`.
///
/// A [`ScriptInvocation`] holds each argument in a `Vec` of its own and copies them all
/// into a command when sent: for a batch of clicks, with six arguments a click, those
/// allocations and copies were some 6% of what cakelink spent per redirect on Redis.
pub(super) struct ScriptCall<'s> {
    pub script: &'s Script,
    pub cmd: Cmd,
}

/// `record_clicks.lua` for one batch of clicks.
pub(super) fn record_clicks<'s>(
    script: &'s Script,
    clicks: &[PendingClick],
    parts: &BatchParts<'_>,
    click_ttl_secs: u64,
    intern_ttl_secs: u64,
) -> ScriptCall<'s> {
    // KEYS come first in the command, so every key is numbered (in the order the
    // arguments name them) before any argument is written.
    let mut keys = KeyList::default();
    let named: Vec<u64> = parts.named.iter().map(|(shard, key)| keys.index(BatchKey::Intern(*shard, *key))).collect();
    let per_click: Vec<(u64, u64)> = clicks
        .iter()
        .map(|c| {
            (
                keys.index(BatchKey::Bucket(c.shard, c.bucket_hour)),
                keys.index(BatchKey::Counters(c.shard, c.counter_day)),
            )
        })
        .collect();
    let sent: Vec<u64> = parts.sent.iter().map(|(shard, key, _)| keys.index(BatchKey::Intern(*shard, *key))).collect();
    let buckets: Vec<u64> =
        parts.buckets.iter().map(|(shard, hour)| keys.index(BatchKey::Bucket(*shard, *hour))).collect();
    let days: Vec<u64> = parts.days.iter().map(|(shard, _)| keys.index(BatchKey::CounterDays(*shard))).collect();

    let arg_count =
        3 + keys.keys.len() + 5 + named.len() + 6 * clicks.len() + 3 * sent.len() + 2 * (buckets.len() + days.len());
    let bytes = keys.keys.iter().map(Vec::len).sum::<usize>()
        + clicks.iter().map(|c| c.id.len() + c.encoded.record.len() + c.counter_field.len() + 40).sum::<usize>()
        + parts.sent.iter().map(|(_, _, value)| value.len() + 24).sum::<usize>()
        + 24 * (named.len() + buckets.len() + days.len() + 8);
    let mut cmd = Cmd::with_capacity(arg_count, bytes);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys.keys.len());
    for key in &keys.keys {
        cmd.arg(key.as_slice());
    }
    cmd.arg(named.len());
    for index in named {
        cmd.arg(index);
    }
    cmd.arg(clicks.len());
    for (c, (bucket, counters)) in clicks.iter().zip(per_click) {
        cmd.arg(bucket)
            .arg(&c.id)
            .arg(c.encoded.record.as_slice())
            .arg(counters)
            .arg(&c.counter_field)
            .arg(c.offer_counter_field.as_deref().unwrap_or_default());
    }
    cmd.arg(sent.len());
    for (index, (_, _, value)) in sent.into_iter().zip(&parts.sent) {
        cmd.arg(index).arg(*value).arg(intern_ttl_secs);
    }
    cmd.arg(buckets.len());
    for (index, (_, hour)) in buckets.into_iter().zip(&parts.buckets) {
        cmd.arg(index).arg(bucket_expiry(*hour, click_ttl_secs));
    }
    cmd.arg(days.len());
    for (index, (_, day)) in days.into_iter().zip(&parts.days) {
        cmd.arg(index).arg(*day);
    }
    ScriptCall { script, cmd }
}

/// What a conversion writes, for `record_conversion.lua`.
pub(super) struct ConversionWrite<'a> {
    pub shard: u8,
    pub id: &'a str,
    pub click_id: &'a str,
    pub bytes: Vec<u8>,
    pub at: UnixMillis,
    pub hour: UnixHour,
    pub link: &'a str,
    /// `network/slug/offer` of the click's offer, whose counters move too.
    pub offer_link: Option<&'a str>,
    pub counters: &'a Counters,
    pub deliveries: &'a [Delivery],
}

/// `record_conversion.lua` for one conversion.
pub(super) fn record_conversion<'s>(script: &'s Script, w: &ConversionWrite<'_>) -> ScriptInvocation<'s> {
    let n = w.shard;
    let day = day_of_hour(w.hour);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(conversion_key(n, w.id))
        .key(conversion_times_key(n))
        .key(click_conversions_key(n, w.click_id))
        .key(counters_key(n, day))
        .key(counter_days_key(n))
        .key(delivery_status_key(n, DeliveryStatus::Pending))
        .arg(w.bytes.as_slice())
        .arg(w.at)
        .arg(w.id)
        .arg(day);
    add_deliveries(&mut invocation, n, w.deliveries);
    add_counters(&mut invocation, w.hour, &[Some(w.link), w.offer_link], w.counters);
    invocation
}

/// `reverse_conversion.lua` for the reversal of a conversion of click `click_id`.
pub(super) fn reverse_conversion<'s>(script: &'s Script, click_id: &str, plan: &ReversalPlan) -> ScriptInvocation<'s> {
    let n = shard(click_id);
    let day = day_of_hour(plan.hour);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(conversion_key(n, &plan.id))
        .key(reversals_key(n))
        .key(counters_key(n, day))
        .key(counter_days_key(n))
        .key(delivery_status_key(n, DeliveryStatus::Pending))
        .arg(&plan.id)
        .arg(plan.at)
        .arg(day);
    add_deliveries(&mut invocation, n, &plan.deliveries);
    let links = [Some(plan.link.as_str()), plan.offer_link.as_deref()];
    counter_deltas(&mut invocation, plan.hour, &links, &plan.counters, -1);
    invocation
}

/// What a forwarded click writes, for `record_forwarded_click.lua`.
pub(super) struct ForwardedClickWrite<'a> {
    pub shard: u8,
    pub id: &'a str,
    pub bucket: UnixHour,
    pub bucket_expiry: u64,
    pub hour: UnixHour,
    pub link: &'a str,
    /// `network/slug/offer` of the click's offer, whose counters move too.
    pub offer_link: Option<&'a str>,
    pub counters: &'a Counters,
    pub encoded: &'a EncodedClick,
    pub intern_ttl_secs: u64,
    pub deliveries: &'a [Delivery],
}

/// `record_forwarded_click.lua` for one click and its deliveries.
pub(super) fn record_forwarded_click<'s>(script: &'s Script, w: &ForwardedClickWrite<'_>) -> ScriptInvocation<'s> {
    let n = w.shard;
    let day = day_of_hour(w.hour);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(click_bucket_key(n, w.bucket))
        .key(counters_key(n, day))
        .key(counter_days_key(n))
        .key(delivery_status_key(n, DeliveryStatus::Pending))
        .arg(w.id)
        .arg(w.encoded.record.as_slice())
        .arg(w.bucket_expiry)
        .arg(day);
    add_interns(&mut invocation, n, w.encoded, w.intern_ttl_secs);
    add_deliveries(&mut invocation, n, w.deliveries);
    add_counters(&mut invocation, w.hour, &[Some(w.link), w.offer_link], w.counters);
    invocation
}

/// A single click's interned values, as the prelude's `store_interns` reads them.
fn add_interns(invocation: &mut ScriptInvocation<'_>, n: u8, encoded: &EncodedClick, ttl_secs: u64) {
    invocation.arg(encoded.interns.len());
    for (key, value) in &encoded.interns {
        invocation.key(intern_key(n, key)).arg(&value[..]).arg(ttl_secs);
    }
}

/// What a capped click writes, for `record_capped_click.lua`.
pub(super) struct CappedClickWrite<'a> {
    pub shard: u8,
    pub id: &'a str,
    pub bucket: UnixHour,
    pub bucket_expiry: u64,
    pub hour: UnixHour,
    pub link: &'a str,
    pub encoded: &'a EncodedClick,
    pub intern_ttl_secs: u64,
    pub deliveries: &'a [Delivery],
    pub caps: &'a CapPlan,
}

/// `record_capped_click.lua` for one person's click and its choices.
pub(super) fn record_capped_click<'s>(script: &'s Script, w: &CappedClickWrite<'_>) -> ScriptInvocation<'s> {
    let n = w.shard;
    let day = day_of_hour(w.hour);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(click_bucket_key(n, w.bucket))
        .key(counters_key(n, day))
        .key(counter_days_key(n))
        .key(delivery_status_key(n, DeliveryStatus::Pending))
        .arg(w.id)
        .arg(w.bucket_expiry)
        .arg(day)
        .arg(w.caps.fallback_record.as_slice())
        .arg(counter_field(w.hour, "clicks", w.link))
        .arg(CAP_KEEP_SECS);
    add_interns(&mut invocation, n, w.encoded, w.intern_ttl_secs);
    add_deliveries(&mut invocation, n, w.deliveries);
    invocation.arg(w.caps.choices.len());
    for choice in &w.caps.choices {
        invocation
            .key(cap_counter_key(w.link, &choice.cap_key))
            .arg(choice.cap.unwrap_or(0))
            .arg(choice.record.as_slice())
            .arg(counter_field(w.hour, "clicks", &choice.offer_link));
    }
    invocation
}

/// `claim_cap.lua` for the choices of one capped click of `link` (on a cluster).
pub(super) fn claim_cap<'s>(script: &'s Script, link: &str, caps: &CapPlan) -> ScriptInvocation<'s> {
    let mut invocation = script.prepare_invoke();
    invocation.arg(CAP_KEEP_SECS);
    for choice in &caps.choices {
        invocation.key(cap_counter_key(link, &choice.cap_key)).arg(choice.cap.unwrap_or(0));
    }
    invocation
}

/// The `delivery_count` section of a recording script: per new delivery, its key and
/// its destination's outbox, and its id, bytes and due time.
fn add_deliveries(invocation: &mut ScriptInvocation<'_>, shard: u8, deliveries: &[Delivery]) {
    invocation.arg(deliveries.len());
    for d in deliveries {
        invocation
            .key(delivery_key(shard, &d.id))
            .key(outbox_key(shard, &d.destination))
            .arg(&d.id)
            .arg(encode(d))
            .arg(d.next_at);
    }
}

/// The `counter_count` section of a recording script: a `field, delta` pair per counter
/// that moves, of each of `links` (the link, and its offer's when there is one); only
/// non-zero counters, so a hash holds no field that never moved.
fn add_counters(invocation: &mut ScriptInvocation<'_>, hour: UnixHour, links: &[Option<&str>], delta: &Counters) {
    counter_deltas(invocation, hour, links, delta, 1);
}

/// The `counter_count` section: `counters` times `sign` (1 to add them, -1 to take them
/// back), as `field, delta` pairs of the non-zero counters of each of `links`.
fn counter_deltas(
    invocation: &mut ScriptInvocation<'_>,
    hour: UnixHour,
    links: &[Option<&str>],
    counters: &Counters,
    sign: i64,
) {
    let fields = counters.fields();
    let links: Vec<&str> = links.iter().flatten().copied().collect();
    invocation.arg(fields.iter().filter(|(_, value)| *value != 0).count() * links.len());
    for link in links {
        for (name, value) in fields {
            if value != 0 {
                invocation.arg(counter_field(hour, name, link)).arg(value.saturating_mul(sign));
            }
        }
    }
}

/// `claim_deliveries.lua` for one shard's outbox of one destination.
pub(super) fn claim_deliveries<'s>(
    script: &'s Script,
    shard: u8,
    destination: &str,
    owner: &str,
    now: UnixMillis,
    until: UnixMillis,
    limit: usize,
) -> ScriptInvocation<'s> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(outbox_key(shard, destination))
        .key(lease_owners_key(shard))
        .arg(now)
        .arg(until)
        .arg(limit)
        .arg(owner);
    invocation
}

/// `finish_delivery.lua` for one attempt's outcome.
pub(super) fn finish_delivery<'s>(
    script: &'s Script,
    shard: u8,
    owner: &str,
    delivery: &Delivery,
    keep_settled: Option<Duration>,
) -> ScriptInvocation<'s> {
    let pending = delivery.status == DeliveryStatus::Pending;
    let keep_ms = keep_settled.map_or(0, |k| k.as_millis() as u64);
    let drop_before = keep_settled.map_or(0, |k| settled_cutoff(delivery.updated_at, k));
    let mut invocation = script.prepare_invoke();
    invocation
        .key(outbox_key(shard, &delivery.destination))
        .key(lease_owners_key(shard))
        .key(delivery_key(shard, &delivery.id))
        .key(delivery_status_key(shard, DeliveryStatus::Pending))
        .key(delivery_status_key(shard, delivery.status))
        .arg(owner)
        .arg(&delivery.id)
        .arg(encode(delivery))
        .arg(if pending { "1" } else { "0" })
        .arg(delivery.next_at)
        .arg(delivery.updated_at)
        .arg(keep_ms)
        .arg(drop_before);
    invocation
}

/// `requeue_delivery.lua`: delivery `id`, `old` (stored as `old_bytes`), becomes `new`.
pub(super) fn requeue_delivery<'s>(
    script: &'s Script,
    shard: u8,
    id: &str,
    old: &Delivery,
    old_bytes: &[u8],
    new: &Delivery,
    now: UnixMillis,
) -> ScriptInvocation<'s> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(delivery_key(shard, id))
        .key(outbox_key(shard, &old.destination))
        .key(delivery_status_key(shard, old.status))
        .key(delivery_status_key(shard, DeliveryStatus::Pending))
        .arg(old_bytes)
        .arg(encode(new))
        .arg(id)
        .arg(now);
    invocation
}

/// `log_event.lua` for one encoded event.
pub(super) fn log_event(script: &Script, event: Vec<u8>, cap: usize) -> ScriptInvocation<'_> {
    let mut invocation = script.prepare_invoke();
    invocation.key(EVENT_LOG_KEY).key(EVENT_SEQ_KEY).arg(event).arg(cap);
    invocation
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::*;

    /// The bulk strings of a packed command, in order.
    fn bulk_strings(packed: &[u8]) -> Vec<Vec<u8>> {
        let line = |at: usize| {
            let end = at + packed[at..].windows(2).position(|w| w == b"\r\n").expect("a line");
            (std::str::from_utf8(&packed[at + 1..end]).expect("digits").parse::<usize>().expect("a length"), end + 2)
        };
        let (count, mut at) = line(0);
        (0..count)
            .map(|_| {
                let (len, start) = line(at);
                at = start + len + 2;
                packed[start..start + len].to_vec()
            })
            .collect()
    }

    fn pending(shard: u8, id: &str, hour: UnixHour, offer: Option<&str>, intern: u8) -> PendingClick {
        let (reply, _) = oneshot::channel();
        PendingClick {
            shard,
            id: id.to_owned(),
            bucket_hour: hour,
            counter_day: day_of_hour(hour),
            counter_field: counter_field(hour, "clicks", "cake/demo"),
            offer_counter_field: offer.map(|o| counter_field(hour, "clicks", o)),
            encoded: EncodedClick {
                record: vec![intern, 0, 7, 255],
                interns: vec![([intern; 8], Arc::from(&b"ctx"[..]))],
            },
            reply,
        }
    }

    /// Reads a command's arguments in order, as the script does.
    struct Argv {
        strings: std::vec::IntoIter<Vec<u8>>,
        keys: Vec<String>,
    }

    impl Argv {
        fn bytes(&mut self) -> Vec<u8> {
            self.strings.next().expect("another argument")
        }
        fn text(&mut self) -> String {
            String::from_utf8(self.bytes()).expect("text")
        }
        fn number(&mut self) -> usize {
            self.text().parse().expect("a number")
        }
        /// The key an argument names by its index in KEYS (from 1).
        fn key(&mut self) -> String {
            let index = self.number();
            self.keys[index - 1].clone()
        }
    }

    /// The command reads back the way `record_clicks.lua` reads it: every key once, and
    /// each argument naming the key it means.
    #[test]
    fn a_batch_call_reads_back_as_the_script_reads_it() {
        let script = Script::new("return 0");
        let clicks =
            vec![pending(3, "click-a", 500_000, None, 1), pending(9, "click-b", 500_001, Some("cake/demo/x"), 2)];
        let parts = BatchParts {
            named: vec![(3, [1; 8])],
            sent: vec![(9, [2; 8], &b"ctx"[..])],
            buckets: vec![(3, 500_000), (9, 500_001)],
            days: vec![(3, day_of_hour(500_000))],
        };
        let call = record_clicks(&script, &clicks, &parts, 3_600, 7_200);
        let mut argv = Argv { strings: bulk_strings(&call.cmd.get_packed_command()).into_iter(), keys: Vec::new() };
        assert_eq!(argv.text(), "EVALSHA");
        assert_eq!(argv.text(), script.get_hash());
        let key_count = argv.number();
        argv.keys = (0..key_count).map(|_| argv.text()).collect();
        let mut unique = argv.keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), key_count, "each key once: {:?}", argv.keys);

        assert_eq!(argv.number(), 1);
        assert_eq!(argv.key().into_bytes(), intern_key(3, &[1; 8]));
        assert_eq!(argv.number(), 2);
        for c in &clicks {
            assert_eq!(argv.key(), click_bucket_key(c.shard, c.bucket_hour));
            assert_eq!(argv.text(), c.id);
            assert_eq!(argv.bytes(), c.encoded.record);
            assert_eq!(argv.key(), counters_key(c.shard, c.counter_day));
            assert_eq!(argv.text(), c.counter_field);
            assert_eq!(argv.text(), c.offer_counter_field.clone().unwrap_or_default());
        }
        assert_eq!(argv.number(), 1);
        assert_eq!(argv.key().into_bytes(), intern_key(9, &[2; 8]));
        assert_eq!(argv.bytes(), b"ctx");
        assert_eq!(argv.number(), 7_200);
        assert_eq!(argv.number(), 2);
        for (shard, hour) in [(3, 500_000), (9, 500_001)] {
            assert_eq!(argv.key(), click_bucket_key(shard, hour));
            assert_eq!(argv.number() as u64, bucket_expiry(hour, 3_600));
        }
        assert_eq!(argv.number(), 1);
        assert_eq!(argv.key(), counter_days_key(3));
        assert_eq!(argv.number() as u32, day_of_hour(500_000));
        assert_eq!(argv.strings.next(), None, "nothing after the last day");
    }
}
