//! The offer-URL builder: any offer URL the config or the API accepts, with any
//! passed-through sub-ids, yields a redirect target that is a URL carrying the click id.
#![no_main]

use cakelink::links::CompiledLink;
use cakelink::model::{Link, LinkSource, LinkStatus};
use cakelink::networks::Network;
use libfuzzer_sys::fuzz_target;

const CLICK_ID: &str = "0123456789abcdefghijklmnopqrstuv";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // offer \n name=value \n name=value ...
    let mut lines = text.split('\n');
    let offer = lines.next().unwrap_or_default().to_owned();
    let network = Network::cake();
    // As the redirect does: only the network's pass-through names, spelled its way.
    let pairs: Vec<(&str, &str)> = lines
        .map(|l| l.split_once('=').unwrap_or((l, "")))
        .filter_map(|(name, value)| {
            network.passthrough.iter().find(|p| p.eq_ignore_ascii_case(name)).map(|p| (p.as_str(), value))
        })
        .collect();
    let link = Link {
        network: "cake".into(),
        slug: "fuzz".into(),
        offer,
        redirect: 302,
        status: LinkStatus::Active,
        fallback: None,
        event: None,
        source: LinkSource::Config,
        offers: Vec::new(),
        rules: Vec::new(),
        sticky_hours: 0,
        cap_tz: None,
    };
    let Ok(compiled) = CompiledLink::compile(link, &network) else { return };
    let location = compiled.url(None).location(&network, &pairs, CLICK_ID);
    let url = url::Url::parse(&location).unwrap_or_else(|e| panic!("{location:?} is not a URL: {e}"));
    let ids: Vec<String> = url.query_pairs().filter(|(k, _)| k == "s2").map(|(_, v)| v.into_owned()).collect();
    assert_eq!(ids, [CLICK_ID], "the click id is the only s2 in {location:?}");
});
