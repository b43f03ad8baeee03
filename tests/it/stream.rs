//! A stream of traffic kept flowing through an outage, a failover or the stop of a
//! process: clients clicking on `/go/cake/demo` through one or several processes in
//! turn, with a postback for every third click or with none, until stopped. What each
//! request got is kept for the test to check.
//!
//! A postback goes to the process that answered its click. Sent to another process at
//! once, during an outage, it could overtake the click waiting in the first process's
//! spool; a network's postback comes minutes after the click, not milliseconds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{click_id_in, CHROME, POSTBACK_KEY};

/// A postback the stream sent, and the `status` it was answered with.
#[derive(Clone, Debug)]
pub struct Postback {
    pub click: String,
    pub tid: String,
    pub status: String,
}

/// What the clients do.
#[derive(Clone, Copy)]
enum Plan {
    /// Click, and post back every third click; a failure is noted and the client goes
    /// on. A postback answered `200` is expected with one of these statuses.
    ClickAndPostBack(&'static [&'static str]),
    /// Only click, until a click fails: the process is gone.
    ClickUntilGone,
}

/// What the stream saw.
#[derive(Default)]
pub struct Seen {
    /// Clicks sent, answered or not.
    pub attempts: usize,
    /// Click ids whose `302` arrived.
    pub clicks: Vec<String>,
    /// Postbacks answered `200` with one of the statuses the test allows, or `202 queued`.
    pub postbacks: Vec<Postback>,
    /// Anything else: a click not answered `302`, a postback answered otherwise, a
    /// request that failed.
    pub unexpected: Vec<String>,
}

/// The running stream.
pub struct Stream {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    bound: Duration,
}

impl Stream {
    /// Starts `clients` clients on the processes at `bases`. A postback answered `200` is
    /// expected with a status among `ok_statuses`; `202 queued` is always expected.
    /// [`Stream::until`] fails the test after waiting `bound`.
    pub fn start(bases: Vec<String>, clients: usize, ok_statuses: &'static [&'static str], bound: Duration) -> Stream {
        Stream::spawn(bases, clients, Plan::ClickAndPostBack(ok_statuses), bound)
    }

    /// Starts `clients` clients clicking on the process at `base` until it is gone (a
    /// click fails), or until [`Stream::finish`]; no postbacks.
    pub fn until_gone(base: &str, clients: usize, bound: Duration) -> Stream {
        Stream::spawn(vec![base.to_owned()], clients, Plan::ClickUntilGone, bound)
    }

    fn spawn(bases: Vec<String>, clients: usize, plan: Plan, bound: Duration) -> Stream {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| {
                let (client, bases, seen, stop) = (crate::helpers::client(), bases.clone(), seen.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let base = &bases[(c + n) % bases.len()];
                        seen.lock().expect("lock").attempts += 1;
                        let id = match (click(&client, base).await, plan) {
                            (Ok(id), _) => id,
                            (Err(_), Plan::ClickUntilGone) => return,
                            (Err(e), Plan::ClickAndPostBack(_)) => {
                                seen.lock().expect("lock").unexpected.push(e);
                                continue;
                            }
                        };
                        seen.lock().expect("lock").clicks.push(id.clone());
                        let Plan::ClickAndPostBack(ok_statuses) = plan else { continue };
                        if n % 3 != 0 {
                            continue;
                        }
                        let tid = format!("T{c}-{n}");
                        let outcome = postback(&client, base, &id, &tid, ok_statuses).await;
                        let mut seen = seen.lock().expect("lock");
                        match outcome {
                            Ok(status) => seen.postbacks.push(Postback { click: id, tid, status }),
                            Err(e) => seen.unexpected.push(e),
                        }
                    }
                })
            })
            .collect();
        Stream { seen, stop, tasks, bound }
    }

    /// Clicks answered so far.
    pub fn clicks(&self) -> usize {
        self.counts().0
    }

    /// Clicks answered and postbacks queued so far.
    fn counts(&self) -> (usize, usize) {
        let seen = self.seen.lock().expect("lock");
        (seen.clicks.len(), seen.postbacks.iter().filter(|p| p.status == "queued").count())
    }

    /// Waits (bounded) until `more_clicks` more clicks and `queued` more queued postbacks
    /// were seen.
    pub async fn until(&self, more_clicks: usize, queued: usize) {
        let (start_clicks, start_queued) = self.counts();
        let deadline = Instant::now() + self.bound;
        loop {
            let (clicks, q) = self.counts();
            if clicks >= start_clicks + more_clicks && q >= start_queued + queued {
                return;
            }
            assert!(Instant::now() < deadline, "the stream stalled at {clicks} clicks, {q} queued");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients and hands over what they saw.
    pub async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("client task");
        }
        Arc::try_unwrap(self.seen).ok().expect("tasks ended").into_inner().expect("lock")
    }
}

/// One click as a person on `/go/cake/demo`; the click id when the `302` arrived.
pub async fn click(client: &reqwest::Client, base: &str) -> Result<String, String> {
    let res = client
        .get(format!("{base}/go/cake/demo"))
        .header("user-agent", CHROME)
        .send()
        .await
        .map_err(|e| format!("click through {base} failed: {e}"))?;
    match res.status() {
        StatusCode::FOUND => Ok(click_id_in(&res, "s2")),
        other => Err(format!("click through {base} answered {other}")),
    }
}

async fn postback(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    tid: &str,
    ok_statuses: &[&str],
) -> Result<String, String> {
    let url = format!("{base}/collect/cake/{POSTBACK_KEY}?s2={id}&tid={tid}&price=2.50");
    let res = client.get(url).send().await.map_err(|e| format!("postback {tid} failed: {e}"))?;
    let http = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    match (http, body["status"].as_str()) {
        (StatusCode::OK, Some(s)) if ok_statuses.contains(&s) => Ok(s.to_owned()),
        (StatusCode::ACCEPTED, Some(s @ "queued")) => Ok(s.to_owned()),
        _ => Err(format!("postback {tid} through {base} answered {http} {body}")),
    }
}
