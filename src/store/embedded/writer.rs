//! The embedded store's writer: the one thread that applies every write.
//!
//! It stays a thread, not a task: fjall's batch commit and its reads for "insert unless
//! present" block, and a thread that owns them keeps that blocking off the runtime's
//! workers while draining the queue as fast as requests arrive (group commit).
//!
//! A batch is applied in two steps: its clicks are appended to the click log (one
//! `write` per segment touched, see `clicklog`), then everything else, with the length
//! each segment reached, is committed to fjall as one atomic batch. Only then are the
//! clicks readable and the requests answered; a failed commit cuts the appends off again.
//!
//! A batch of nothing but plain clicks (logged, forwarded nowhere, no new interned value)
//! has nothing fjall must hold before its answer: the log has the clicks, and a recount
//! on open rebuilds their counters from it. So its counters wait in memory and go with
//! the next commit: the next batch with anything else in it, a read of the counters, the
//! fsync timer, or [`DEFER_MAX_CLICKS`] clicks, whichever comes first. A busy redirect
//! then pays for one fjall commit per several batches instead of one per batch.
//!
//! The thread runs under `SCHED_BATCH` ([`defer_to_waker`](super::pace::defer_to_waker)): a request wakes it but does
//! not preempt the runtime thread that sent it. On a core the two share, that thread
//! goes on reading and routing the other connections' requests, and the writer runs
//! when it next waits, taking them all as one batch: one pair of thread switches per
//! batch, where before each click could cost its own pair. It waits for requests with a
//! [`Waiter`](super::pace::Waiter), which yields the core rather than spin when it
//! catches the runtime's thread half-way through waking it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot};

use super::caps::BatchCaps;
use super::clicklog::{LogWriter, Place, Segment};
use super::pace::Waiter;
use super::tables::{click_conversion_key, conversion_key};
use super::{outbox_key, status_key, unavailable, NewClick, Op, Tables, MAX_BATCH};
use crate::clock::{now_ms, now_secs};
use crate::model::{Counters, Delivery, DeliveryStatus, Recorded, Reversed, UnixHour};
use crate::store::record::InternKey;
use crate::store::schema::{self, decode, encode, encode_reversed_at, ConversionPlan, ReversalPlan};
use crate::store::{Requeue, StoreError, StoreLimits, StoreResult};

/// The one thread that writes.
pub(super) struct Writer {
    pub(super) t: Tables,
    pub(super) limits: StoreLimits,
    /// Sequence number of the newest and the oldest event kept.
    last_event: u64,
    first_event: u64,
    /// Interned values known to be stored, so each is written once, not once per click.
    /// Cleared when it grows large; rewriting an interned value is harmless.
    known: HashSet<InternKey, foldhash::fast::FixedState>,
    /// The click log's open segments and this batch's appends to them.
    pub(super) log: LogWriter,
    /// Counters of logged clicks not committed to fjall yet, the segment lengths they
    /// cover, and how many clicks they count.
    pending: Deltas,
    pending_covered: HashMap<(UnixHour, u32), (Arc<Segment>, u64)>,
    pending_clicks: usize,
}

/// Interned keys remembered by the writer before it starts over.
const KNOWN_INTERNS_MAX: usize = 1 << 20;
/// Most logged clicks whose counters wait for the next commit (what a crash leaves to
/// count again on open).
const DEFER_MAX_CLICKS: usize = 16_384;
/// `meta` key: creation time (unix seconds) below which clicks have no personal data.
pub(super) const PERSONAL_DROPPED_UNTIL: &[u8] = b"personal_dropped_until";

/// Counter increments (or, for reversals, what is taken back) of one batch, by hour and
/// link (or `link/offer`).
pub(super) type Deltas = HashMap<(UnixHour, String), Counters, foldhash::fast::FixedState>;

/// Replies owed once a batch is committed.
enum Reply {
    Unit(oneshot::Sender<StoreResult<()>>),
    Recorded(oneshot::Sender<StoreResult<Recorded>>, Recorded),
    Bool(oneshot::Sender<StoreResult<bool>>, bool),
    Requeue(oneshot::Sender<StoreResult<Requeue>>, Requeue),
    Taken(oneshot::Sender<StoreResult<Option<usize>>>, Option<usize>),
    Reversed(oneshot::Sender<StoreResult<Reversed>>, Reversed),
}

impl Reply {
    fn send(self, failure: Option<&str>) {
        let err =
            || StoreError::unavailable("the embedded store's batch failed", failure.unwrap_or_default().to_owned());
        // A requester that gave up (its connection closed) no longer listens; that is fine.
        match self {
            Reply::Unit(tx) => {
                let _ = tx.send(failure.map_or(Ok(()), |_| Err(err())));
            }
            Reply::Recorded(tx, r) => {
                let _ = tx.send(failure.map_or(Ok(r), |_| Err(err())));
            }
            Reply::Bool(tx, b) => {
                let _ = tx.send(failure.map_or(Ok(b), |_| Err(err())));
            }
            Reply::Requeue(tx, r) => {
                let _ = tx.send(failure.map_or(Ok(r), |_| Err(err())));
            }
            Reply::Taken(tx, t) => {
                let _ = tx.send(failure.map_or(Ok(t), |_| Err(err())));
            }
            Reply::Reversed(tx, r) => {
                let _ = tx.send(failure.map_or(Ok(r), |_| Err(err())));
            }
        }
    }
}

impl Writer {
    pub(super) fn new(t: Tables, limits: StoreLimits, log: LogWriter) -> anyhow::Result<Writer> {
        let seq = |kv: Option<fjall::Guard>| -> anyhow::Result<Option<u64>> {
            Ok(match kv {
                Some(g) => {
                    let k = g.key()?;
                    Some(u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])))
                }
                None => None,
            })
        };
        let last = seq(t.events.last_key_value())?;
        let first = seq(t.events.first_key_value())?;
        Ok(Writer {
            last_event: last.unwrap_or(0),
            first_event: first.unwrap_or(1),
            t,
            limits,
            known: HashSet::default(),
            log,
            pending: Deltas::default(),
            pending_covered: HashMap::new(),
            pending_clicks: 0,
        })
    }

    pub(super) fn run(&mut self, mut rx: mpsc::Receiver<Op>) {
        let mut ops = Vec::with_capacity(MAX_BATCH);
        let waiter = Waiter::new();
        while let Some(op) = waiter.wait(|cx| rx.poll_recv(cx)) {
            ops.push(op);
            while ops.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.apply(&mut ops);
        }
        if self.pending_clicks > 0 {
            self.apply(&mut vec![Op::Commit(None)]);
        }
        if let Err(e) = self.persist() {
            tracing::error!(error = %e, "final fsync of the store failed");
        }
    }

    /// Fsyncs the click log, then the journal: the journal never covers more of a segment
    /// than is on disk.
    fn persist(&self) -> StoreResult<()> {
        self.log.log().sync().map_err(unavailable)?;
        self.t.db.persist(PersistMode::SyncAll).map_err(unavailable)
    }

    /// Applies a burst of requests as one atomic batch, then answers them all.
    fn apply(&mut self, ops: &mut Vec<Op>) {
        let mut batch = self.t.db.batch();
        let mut replies = Vec::with_capacity(ops.len());
        let mut flushes = Vec::new();
        let mut deltas: Deltas = HashMap::default();
        let mut taken: Deltas = HashMap::default();
        let mut new_ids: HashSet<String> = HashSet::new();
        // Conversions recorded and reversed in this batch, not yet readable from fjall.
        let mut new_conversions: HashSet<String> = HashSet::new();
        let mut new_reversals: HashSet<String> = HashSet::new();
        let mut failure: Option<String> = None;
        let mut new_interns: Vec<InternKey> = Vec::new();
        let event_mark = (self.first_event, self.last_event);
        let mut caps = BatchCaps::new();
        let mut sweeps = Vec::new();
        // Whether the batch holds nothing but plain clicks, and how many.
        let mut plain = true;
        let mut clicks = 0;

        for op in ops.drain(..) {
            plain &= matches!(&op, Op::Click(c, _) if c.place.is_some() && c.plan.deliveries.is_empty())
                || matches!(op, Op::Sweep(_));
            match op {
                Op::Click(click, tx) => {
                    clicks += 1;
                    let NewClick { plan, fresh, place } = *click;
                    let stored = if fresh { Ok(false) } else { self.is_stored(&plan.id, place.as_ref()) };
                    match stored {
                        Ok(false) if fresh || new_ids.insert(plan.id.clone()) => {
                            let put = self.put_click(&mut batch, &mut deltas, &mut new_interns, plan, place, None);
                            if let Err(e) = put {
                                failure = Some(e.to_string());
                            }
                        }
                        Ok(_) => {}
                        Err(e) => failure = Some(e.to_string()),
                    }
                    replies.push(Reply::Unit(tx));
                }
                Op::CappedClick(click, tx) => {
                    let choices = click.plan.caps.as_ref().map(|c| c.choices.as_slice()).unwrap_or_default();
                    let taken = match caps.admit(&self.t.caps, choices) {
                        Ok(taken) => taken,
                        Err(e) => {
                            failure = Some(e.to_string());
                            None
                        }
                    };
                    let NewClick { plan, place, .. } = *click;
                    if let Err(e) = self.put_click(&mut batch, &mut deltas, &mut new_interns, plan, place, Some(taken))
                    {
                        failure = Some(e.to_string());
                    }
                    replies.push(Reply::Taken(tx, taken));
                }
                Op::Conversion(conv, tx) => {
                    let outcome = match self.t.conversion_ids.contains_key(conv.id.as_bytes()) {
                        Ok(false) if new_conversions.insert(conv.id.clone()) => {
                            let at = (conv.at.max(0) as u64).to_be_bytes();
                            let key = conversion_key(conv.at, &conv.id);
                            let index = click_conversion_key(&conv.click.id, conv.at, &conv.id);
                            let plan = ConversionPlan::of(&conv, &self.limits.outbox, now_ms());
                            deltas.entry((plan.hour, conv.click.link.clone())).or_default().add(&plan.counters);
                            if let Some(offer_link) = plan.offer_link {
                                deltas.entry((plan.hour, offer_link)).or_default().add(&plan.counters);
                            }
                            batch.insert(&self.t.conversions, key, encode(&*conv));
                            batch.insert(&self.t.conversion_ids, conv.id.as_bytes(), at.to_vec());
                            batch.insert(&self.t.click_conversions, index, Vec::<u8>::new());
                            self.enqueue(&mut batch, plan.deliveries);
                            Recorded::New
                        }
                        Ok(_) => Recorded::Duplicate,
                        Err(e) => {
                            failure = Some(e.to_string());
                            Recorded::Duplicate
                        }
                    };
                    replies.push(Reply::Recorded(tx, outcome));
                }
                Op::Reverse(plan, tx) => {
                    let outcome = match self.reversal_refused(&plan.id, &new_conversions, &new_reversals) {
                        Ok(None) => {
                            new_reversals.insert(plan.id.clone());
                            self.put_reversal(&mut batch, &mut taken, *plan);
                            Reversed::Done
                        }
                        Ok(Some(refused)) => refused,
                        Err(e) => {
                            failure = Some(e.to_string());
                            Reversed::NotFound
                        }
                    };
                    replies.push(Reply::Reversed(tx, outcome));
                }
                Op::Event(event, tx) => {
                    self.last_event += 1;
                    batch.insert(&self.t.events, self.last_event.to_be_bytes(), encode(&event));
                    while self.last_event + 1 - self.first_event > self.limits.event_log_max.max(1) as u64 {
                        batch.remove(&self.t.events, self.first_event.to_be_bytes());
                        self.first_event += 1;
                    }
                    replies.push(Reply::Unit(tx));
                }
                Op::PutLink(link, tx) => {
                    batch.insert(&self.t.links, link.key().as_bytes(), encode(&link));
                    replies.push(Reply::Unit(tx));
                }
                Op::DeleteLink(key, tx) => {
                    let existed = match self.t.links.contains_key(key.as_bytes()) {
                        Ok(existed) => existed,
                        Err(e) => {
                            failure = Some(e.to_string());
                            false
                        }
                    };
                    batch.remove(&self.t.links, key.as_bytes());
                    replies.push(Reply::Bool(tx, existed));
                }
                Op::FinishDelivery(delivery, tx) => {
                    let stored = self
                        .t
                        .deliveries
                        .get(delivery.id.as_bytes())
                        .map_err(unavailable)
                        .and_then(|v| v.map(|b| decode::<Delivery>(&b)).transpose());
                    let applied = match stored {
                        Ok(Some(old)) if old.status == DeliveryStatus::Pending => {
                            self.put_delivery(&mut batch, &delivery, Some(&old));
                            true
                        }
                        Ok(_) => false,
                        Err(e) => {
                            failure = Some(e.to_string());
                            false
                        }
                    };
                    replies.push(Reply::Bool(tx, applied));
                }
                Op::Requeue(id, now, tx) => {
                    let stored = self
                        .t
                        .deliveries
                        .get(id.as_bytes())
                        .map_err(unavailable)
                        .and_then(|v| v.map(|b| decode::<Delivery>(&b)).transpose());
                    let outcome = match stored {
                        Ok(Some(old)) => match schema::requeued(&old, now) {
                            Ok(d) => {
                                self.put_delivery(&mut batch, &d, Some(&old));
                                Requeue::Done(Box::new(d))
                            }
                            Err(refused) => refused,
                        },
                        Ok(None) => Requeue::NotFound,
                        Err(e) => {
                            failure = Some(e.to_string());
                            Requeue::NotFound
                        }
                    };
                    replies.push(Reply::Requeue(tx, outcome));
                }
                // After the batch: a sweep closes segments, which must not have appends
                // pending in it.
                Op::Sweep(done) => sweeps.push(done),
                Op::Flush(tx) => flushes.push(tx),
                Op::Commit(tx) => {
                    if let Some(tx) = tx {
                        replies.push(Reply::Unit(tx));
                    }
                }
            }
        }

        if plain && new_interns.is_empty() && self.pending_clicks + clicks <= DEFER_MAX_CLICKS {
            self.defer(deltas, clicks, failure, replies);
            self.after(flushes, sweeps);
            return;
        }
        // What earlier batches logged but left uncounted goes with this one.
        for (row, counted) in &self.pending {
            deltas.entry(row.clone()).or_default().add(counted);
        }
        caps.write(&mut batch, &self.t.caps);
        // Each row is read and written once: what the batch adds, then what its
        // reversals take back (a conversion reversed in the batch that recorded it is
        // added before it is taken back).
        for (row, added) in deltas {
            let back = taken.remove(&row);
            if let Err(e) = self.move_counters(&mut batch, row, &added, back.as_ref()) {
                failure = Some(e.to_string());
            }
        }
        for (row, back) in taken {
            if let Err(e) = self.move_counters(&mut batch, row, &Counters::default(), Some(&back)) {
                failure = Some(e.to_string());
            }
        }

        // The clicks first, then what counts them, with how far each segment is covered.
        if failure.is_none() {
            match self.log.write() {
                Ok(covered) => {
                    let mut all = self.pending_covered.clone();
                    all.extend(covered.into_iter().map(|(seg, len)| (seg.id(), (seg, len))));
                    for (seg, len) in all.values() {
                        batch.insert(&self.t.meta, seg.meta_key(), len.to_be_bytes());
                    }
                }
                Err(e) => failure = Some(e.to_string()),
            }
        }
        if failure.is_none() {
            if let Err(e) = batch.commit() {
                failure = Some(e.to_string());
            }
        }
        self.log.finish(failure.is_none());
        if failure.is_none() {
            self.pending.clear();
            self.pending_covered.clear();
            self.pending_clicks = 0;
        }
        if let Some(f) = &failure {
            tracing::error!(error = %f, "store batch failed; its requests are answered with an error");
            (self.first_event, self.last_event) = event_mark;
            for key in new_interns {
                self.known.remove(&key);
            }
        }
        for reply in replies {
            reply.send(failure.as_deref());
        }
        self.after(flushes, sweeps);
    }

    /// Ends a batch of plain clicks: appended to the log and answered, their counters
    /// kept for the next commit.
    fn defer(&mut self, deltas: Deltas, clicks: usize, mut failure: Option<String>, replies: Vec<Reply>) {
        if failure.is_none() {
            match self.log.write() {
                Ok(covered) => {
                    self.pending_covered.extend(covered.into_iter().map(|(seg, len)| (seg.id(), (seg, len))));
                    for (row, counted) in deltas {
                        self.pending.entry(row).or_default().add(&counted);
                    }
                    self.pending_clicks += clicks;
                }
                Err(e) => failure = Some(e.to_string()),
            }
        }
        self.log.finish(failure.is_none());
        if let Some(f) = &failure {
            tracing::error!(error = %f, "store batch failed; its requests are answered with an error");
        }
        for reply in replies {
            reply.send(failure.as_deref());
        }
    }

    /// What waits for the end of a batch: fsyncs asked for, then sweeps.
    fn after(&mut self, flushes: Vec<oneshot::Sender<StoreResult<()>>>, sweeps: Vec<Option<oneshot::Sender<()>>>) {
        for tx in flushes {
            let _ = tx.send(self.persist());
        }
        // Retention deletes and rewrites segments: the counters of every click in them are
        // committed first, so that a crash never has to count a rewritten file again.
        if !sweeps.is_empty() && self.pending_clicks > 0 {
            self.apply(&mut vec![Op::Commit(None)]);
        }
        for done in sweeps {
            self.sweep();
            self.sweep_deliveries();
            let now = now_secs();
            let click_cutoff = now.saturating_sub(self.limits.click_ttl.as_secs());
            let personal_cutoff = schema::personal_cutoff_secs(now, self.limits.personal_ttl);
            self.log.sweep(now, click_cutoff, personal_cutoff, done);
        }
    }

    /// Whether click `id` is stored: in the click log, or (written before it) in the
    /// `clicks` keyspace.
    fn is_stored(&self, id: &str, place: Option<&Place>) -> StoreResult<bool> {
        if let Some(place) = place {
            if self.log.log().find(id, place).map_err(unavailable)?.is_some() {
                return Ok(true);
            }
        }
        self.t.clicks.contains_key(id.as_bytes()).map_err(unavailable)
    }

    /// Writes the counters of one row (`hour`, `link`) moved by `added` and `taken` back.
    pub(super) fn move_counters(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        (hour, link): (UnixHour, String),
        added: &Counters,
        taken: Option<&Counters>,
    ) -> Result<(), fjall::Error> {
        let mut key = hour.to_be_bytes().to_vec();
        key.extend_from_slice(link.as_bytes());
        let mut total = match self.t.counters.get(&key)? {
            Some(v) => decode::<Counters>(&v).unwrap_or_default(),
            None => Counters::default(),
        };
        total.add(added);
        if let Some(taken) = taken {
            total.subtract(taken);
        }
        batch.insert(&self.t.counters, key, encode(&total));
        Ok(())
    }

    /// Why conversion `id` cannot be reversed now (`None`: it can): it is not stored,
    /// or it was reversed before. `recorded` and `reversed` are this batch's, which fjall
    /// does not show yet.
    fn reversal_refused(
        &self,
        id: &str,
        recorded: &HashSet<String>,
        reversed: &HashSet<String>,
    ) -> Result<Option<Reversed>, fjall::Error> {
        if !recorded.contains(id) && !self.t.conversion_ids.contains_key(id.as_bytes())? {
            return Ok(Some(Reversed::NotFound));
        }
        if reversed.contains(id) || self.t.reversals.contains_key(id.as_bytes())? {
            return Ok(Some(Reversed::Already));
        }
        Ok(None)
    }

    /// Adds a conversion's reversal to `batch`: its reversal time, what its counters
    /// take back, and its deliveries.
    fn put_reversal(&self, batch: &mut fjall::OwnedWriteBatch, taken: &mut Deltas, plan: ReversalPlan) {
        let ReversalPlan { id, at, hour, link, offer_link, counters, deliveries } = plan;
        batch.insert(&self.t.reversals, id.as_bytes(), encode_reversed_at(at));
        for row in std::iter::once(link).chain(offer_link) {
            taken.entry((hour, row)).or_default().add(&counters);
        }
        self.enqueue(batch, deliveries);
    }

    /// Adds a new click to the batch: its record (to the click log at `place`, or for
    /// an id that is not a click id to the `clicks` keyspace), the interned values not
    /// yet stored, its counters (and its offer's), its deliveries. `taken` is what the
    /// caps admitted, for a capped click: which choice's record, offer and cap counter
    /// apply (`None`: the fallback's).
    fn put_click(
        &mut self,
        batch: &mut fjall::OwnedWriteBatch,
        deltas: &mut Deltas,
        new_interns: &mut Vec<InternKey>,
        plan: schema::ClickPlan,
        place: Option<Place>,
        taken: Option<Option<usize>>,
    ) -> std::io::Result<()> {
        let schema::ClickPlan { id, hour, link, mut offer_link, counters, encoded, deliveries, caps } = plan;
        let mut record = encoded.record;
        let mut cap_key = None;
        if let (Some(taken), Some(caps)) = (taken, caps) {
            match taken.and_then(|i| caps.choices.into_iter().nth(i)) {
                Some(choice) => {
                    (record, offer_link) = (choice.record, Some(choice.offer_link));
                    cap_key = choice.cap.map(|_| choice.cap_key);
                }
                None => record = caps.fallback_record,
            }
        }
        if let Some(offer_link) = offer_link {
            deltas.entry((hour, offer_link)).or_default().add(&counters);
        }
        deltas.entry((hour, link)).or_default().add(&counters);
        for (key, value) in encoded.interns {
            if self.known.len() >= KNOWN_INTERNS_MAX {
                self.known.clear();
            }
            if self.known.insert(key) {
                new_interns.push(key);
                // In the log too, beside the click: a recount after a crash finds it there.
                if let Some(place) = &place {
                    self.log.add_intern(place.hour, &key, &value)?;
                }
                batch.insert(&self.t.interns, key, value);
            }
        }
        match &place {
            Some(place) => self.log.add_click(place, &id, cap_key.as_deref(), &record)?,
            None => batch.insert(&self.t.clicks, id.as_bytes(), record),
        }
        if !deliveries.is_empty() {
            self.enqueue(batch, deliveries);
        }
        Ok(())
    }

    /// Adds new outbox entries to `batch`.
    pub(super) fn enqueue(&self, batch: &mut fjall::OwnedWriteBatch, deliveries: Vec<Delivery>) {
        for d in &deliveries {
            self.put_delivery(batch, d, None);
        }
    }

    /// Writes a delivery, its status-index entry and, while it is pending, its place in
    /// the outbox, replacing those of `old`.
    fn put_delivery(&self, batch: &mut fjall::OwnedWriteBatch, d: &Delivery, old: Option<&Delivery>) {
        if let Some(old) = old {
            if old.status == DeliveryStatus::Pending {
                batch.remove(&self.t.outbox, outbox_key(&old.destination, old.next_at, &old.id));
            }
            batch.remove(&self.t.delivery_status, status_key(old.status, old.updated_at, &old.id));
        }
        batch.insert(&self.t.deliveries, d.id.as_bytes(), encode(d));
        batch.insert(&self.t.delivery_status, status_key(d.status, d.updated_at, &d.id), Vec::<u8>::new());
        if d.status == DeliveryStatus::Pending {
            batch.insert(&self.t.outbox, outbox_key(&d.destination, d.next_at, &d.id), Vec::<u8>::new());
        }
    }
}
