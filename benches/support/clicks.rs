//! What the benches share: their server's config, and clicks stored straight through the
//! store, as many at a time as a busy
//! server has in flight: a browser's click with a UTM source on one of the campaign links.

use cakelink::clickid::Keyring;
use cakelink::config::Config;
use cakelink::model::Click;
use cakelink::store::{ClickOrigin, ClickStore, Storage};

/// Writes in flight at once while seeding.
pub(crate) const IN_FLIGHT: u64 = 2048;

/// The config of a bench's server: 127.0.0.1 on a free port, the embedded store in
/// `dir`, and `links` links `cake/campaign-0`, `cake/campaign-1`, ….
pub(crate) fn config(dir: &std::path::Path, secret: &str, admin_token: &str, links: u64) -> Config {
    let links: String = (0..links)
        .map(|i| format!("[[links]]\nslug = \"campaign-{i}\"\noffer = \"https://offers.example.com/?a=200&c={i}\"\n"))
        .collect();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = {:?}\n[security]\nsecret = \"{secret}\"\nadmin_token = \"{admin_token}\"\npostback_key = \"bench-postback-key-0123456789\"\n{links}",
        dir.join("db").display().to_string()
    );
    Config::parse(&text, |_| None).unwrap_or_else(|e| panic!("bench config: {e}"))
}

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
    let writes = batch.iter().map(|c| store.clicks().record_click(c.view(), ClickOrigin::Replayed));
    for done in futures_util::future::join_all(writes).await {
        done.expect("record click");
    }
}
