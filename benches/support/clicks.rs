//! Clicks the benches store straight through the store, as many at a time as a busy
//! server has in flight: a browser's click with a UTM source on one of the campaign links.

use cakelink::clickid::Keyring;
use cakelink::model::Click;
use cakelink::store::{ClickOrigin, ClickStore, Storage};

/// Writes in flight at once while seeding.
pub(crate) const IN_FLIGHT: u64 = 2048;

/// Click `n`, made at `at_secs`, on `cake/campaign-{n % links}`.
pub(crate) fn click(keyring: &Keyring, n: u64, at_secs: i64, links: u64, bot: Option<String>) -> Click {
    Click {
        id: keyring.mint(at_secs as u64).to_string(),
        link: format!("cake/campaign-{}", n % links),
        at: at_secs * 1000,
        bot,
        ip: Some("198.51.100.7".into()),
        user_agent: Some("Mozilla/5.0 (bench)".into()),
        referer: None,
        utm: vec![("source".into(), "facebook".into())],
        ad_click_ids: vec![],
        subids: vec![],
        offer: None,
        rule: None,
        fallback: None,
    }
}

/// Records `batch`, all at once.
pub(crate) async fn record(store: &Storage, batch: &[Click]) {
    let writes = batch.iter().map(|c| store.clicks().record_click(c, ClickOrigin::Replayed));
    for done in futures_util::future::join_all(writes).await {
        done.expect("record click");
    }
}
