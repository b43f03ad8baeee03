//! [`ClickView`]: a click as the stores take it, borrowed from a stored [`Click`] or, on
//! the redirect, straight from the request, the link and the config.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use super::{Click, UnixMillis};

impl Click {
    /// The click as the stores take it, borrowed.
    pub fn view(&self) -> ClickView<'_> {
        ClickView {
            id: &self.id,
            link: &self.link,
            at: self.at,
            bot: self.bot.as_deref(),
            ip: self.ip.as_deref().map(ClickIp::Text),
            user_agent: self.user_agent.as_deref(),
            referer: self.referer.as_deref(),
            utm: Pairs::Owned(&self.utm),
            ad_click_ids: Pairs::Owned(&self.ad_click_ids),
            subids: Pairs::Owned(&self.subids),
            offer: self.offer.as_deref(),
            rule: self.rule,
            fallback: self.fallback.as_deref(),
        }
    }
}

/// A click as the stores take it: every part borrowed, from a [`Click`] or, on the
/// redirect, straight from the request, the link and the config. The redirect records
/// one per request, and a `Click` of owned strings would cost it some twenty allocations
/// that the store's encoding then copies again. Fields as in [`Click`].
#[derive(Clone, Copy, Debug)]
pub struct ClickView<'a> {
    pub id: &'a str,
    pub link: &'a str,
    pub at: UnixMillis,
    pub bot: Option<&'a str>,
    pub ip: Option<ClickIp<'a>>,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub utm: Pairs<'a>,
    pub ad_click_ids: Pairs<'a>,
    pub subids: Pairs<'a>,
    pub offer: Option<&'a str>,
    pub rule: Option<u32>,
    pub fallback: Option<&'a str>,
}

impl ClickView<'_> {
    pub fn is_bot(&self) -> bool {
        self.bot.is_some()
    }

    /// The click, owned: for the rare paths that keep it (the outage spool, a delivery,
    /// a log line).
    pub fn to_click(&self) -> Click {
        Click {
            id: self.id.to_owned(),
            link: self.link.to_owned(),
            at: self.at,
            bot: self.bot.map(str::to_owned),
            ip: self.ip.map(|ip| ip.to_string()),
            user_agent: self.user_agent.map(str::to_owned),
            referer: self.referer.map(str::to_owned),
            utm: self.utm.to_vec(),
            ad_click_ids: self.ad_click_ids.to_vec(),
            subids: self.subids.to_vec(),
            offer: self.offer.map(str::to_owned),
            rule: self.rule,
            fallback: self.fallback.map(str::to_owned),
        }
    }
}

/// The visitor's address in a [`ClickView`]: the address itself (a new click), or the
/// text a stored click keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClickIp<'a> {
    Addr(IpAddr),
    Text(&'a str),
}

impl fmt::Display for ClickIp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClickIp::Addr(addr) => addr.fmt(f),
            ClickIp::Text(text) => f.write_str(text),
        }
    }
}

/// The name/value pairs of a [`ClickView`] (UTM parameters, ad-platform click ids,
/// sub-ids): a stored click's own, or those the redirect read from the query, borrowed
/// unless they needed decoding.
#[derive(Clone, Copy, Debug)]
pub enum Pairs<'a> {
    Owned(&'a [(String, String)]),
    Borrowed(&'a [Pair<'a>]),
}

/// A name/value pair read from a request: borrowed from it unless it needed decoding.
pub type Pair<'a> = (Cow<'a, str>, Cow<'a, str>);

impl<'a> Pairs<'a> {
    pub fn len(&self) -> usize {
        match self {
            Pairs::Owned(pairs) => pairs.len(),
            Pairs::Borrowed(pairs) => pairs.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let (owned, borrowed): (&[(String, String)], &[Pair]) = match *self {
            Pairs::Owned(pairs) => (pairs, &[]),
            Pairs::Borrowed(pairs) => (&[], pairs),
        };
        let owned = owned.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        owned.chain(borrowed.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
    }

    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }
}
