//! Bot and prefetch classification.
//!
//! Link previews, crawlers and prefetches get the same redirect as people, with a stored
//! click id, but count as bot hits. A prefetch may be the only request a real visitor's
//! browser makes, so a conversion on a flagged click still resolves. In-app browsers
//! (`FBAN`/`FBAV`, `Instagram`, `TikTok`) are people and none of the patterns match them.

use std::fmt;
use std::sync::LazyLock;

use aho_corasick::AhoCorasick;

use crate::memo::Memo;

/// Known crawler and link-preview user-agent fragments, matched case-insensitively.
const CRAWLERS: &[&str] = &[
    "facebookexternalhit",
    "facebookcatalog",
    "meta-externalagent",
    "meta-externalfetcher",
    "Slackbot",
    "Twitterbot",
    "LinkedInBot",
    "TelegramBot",
    "WhatsApp",
    "Discordbot",
    "Googlebot",
    "AdsBot-Google",
    "Mediapartners-Google",
    "Google-InspectionTool",
    "GoogleOther",
    "APIs-Google",
    "bingbot",
    "BingPreview",
    "msnbot",
    "adidxbot",
    "Applebot",
    "Pinterestbot",
    "redditbot",
    "Embedly",
    "SkypeUriPreview",
    "Iframely",
    "Snap URL Preview",
    "vkShare",
    "YandexBot",
    "Baiduspider",
    "DuckDuckBot",
    "Bytespider",
    "AhrefsBot",
    "SemrushBot",
    "MJ12bot",
    "DotBot",
    "PetalBot",
    "GPTBot",
    "ChatGPT-User",
    "ClaudeBot",
    "PerplexityBot",
    "CCBot",
    "HeadlessChrome",
    "PhantomJS",
    "python-requests",
    "python-urllib",
    "Go-http-client",
    "curl/",
    "Wget/",
    "libwww-perl",
    "Apache-HttpClient",
    "crawler",
    "spider",
];

static MATCHER: LazyLock<Option<AhoCorasick>> =
    LazyLock::new(|| AhoCorasick::builder().ascii_case_insensitive(true).build(CRAWLERS).ok());

/// Why a request counts as a bot hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BotReason {
    /// `HEAD` fetches headers only; X/Twitter and link checkers do it.
    Head,
    /// `Sec-Purpose: prefetch` or `Purpose: prefetch`.
    Prefetch,
    EmptyUserAgent,
    /// A known crawler or link-preview agent.
    Crawler(&'static str),
}

impl fmt::Display for BotReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BotReason::Head => f.write_str("head_request"),
            BotReason::Prefetch => f.write_str("prefetch"),
            BotReason::EmptyUserAgent => f.write_str("empty_user_agent"),
            BotReason::Crawler(name) => write!(f, "crawler:{name}"),
        }
    }
}

/// What of a request the classification reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestTraits<'a> {
    pub is_head: bool,
    /// The `Sec-Purpose` or `Purpose` header.
    pub purpose: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

thread_local! {
    /// The crawler each user agent seen lately names, if any: the pattern search reads the
    /// whole user agent, the memo one hash of it.
    static CRAWLER_OF: Memo<Option<&'static str>> = Memo::default();
}

/// Classifies a request; `None` is a person.
pub fn classify(req: RequestTraits<'_>) -> Option<BotReason> {
    if req.is_head {
        return Some(BotReason::Head);
    }
    if req.purpose.is_some_and(|p| p.to_ascii_lowercase().contains("prefetch")) {
        return Some(BotReason::Prefetch);
    }
    let ua = req.user_agent.map(str::trim).unwrap_or_default();
    if ua.is_empty() {
        return Some(BotReason::EmptyUserAgent);
    }
    let crawler = CRAWLER_OF.with(|m| {
        m.get_or(ua.as_bytes(), || MATCHER.as_ref()?.find(ua).map(|found| CRAWLERS[found.pattern().as_usize()]))
    });
    crawler.map(BotReason::Crawler)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ua(s: &str) -> Option<BotReason> {
        classify(RequestTraits { user_agent: Some(s), ..Default::default() })
    }

    #[test]
    fn people_are_people() {
        let browsers = [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/470.0.0.43.109;FBBV/634111826;FBDV/iPhone15,2]",
            "Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/130.0.6723.107 Mobile Safari/537.36 Instagram 355.0.0.37.103 Android",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 musical_ly_34.5.0 JsSdk/2.0 NetType/WIFI Channel/App Store ByteLocale/en Region/US ByteFullLocale/en isDarkMode/0 WKWebView/1 BytedanceWebview/d8a21c6 TikTok",
            "Mozilla/5.0 (Linux; Android 13; Cubot KingKong) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36",
        ];
        for b in browsers {
            assert_eq!(ua(b), None, "{b}");
        }
    }

    #[test]
    fn crawlers_and_previews_are_bots() {
        assert_eq!(
            ua("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"),
            Some(BotReason::Crawler("facebookexternalhit"))
        );
        assert_eq!(
            ua("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"),
            Some(BotReason::Crawler("Slackbot"))
        );
        assert_eq!(
            ua("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
            Some(BotReason::Crawler("Googlebot"))
        );
        assert_eq!(ua("AdsBot-Google (+http://www.google.com/adsbot.html)"), Some(BotReason::Crawler("AdsBot-Google")));
        assert_eq!(ua("WhatsApp/2.23.20.0"), Some(BotReason::Crawler("WhatsApp")));
        assert_eq!(ua("   "), Some(BotReason::EmptyUserAgent));
        assert_eq!(classify(RequestTraits::default()), Some(BotReason::EmptyUserAgent));
    }

    #[test]
    fn head_and_prefetch_win_over_a_browser_agent() {
        let chrome = Some("Mozilla/5.0 Chrome/131.0");
        assert_eq!(classify(RequestTraits { is_head: true, purpose: None, user_agent: chrome }), Some(BotReason::Head));
        assert_eq!(
            classify(RequestTraits { is_head: false, purpose: Some("prefetch;prerender"), user_agent: chrome }),
            Some(BotReason::Prefetch)
        );
        assert_eq!(BotReason::Crawler("Twitterbot").to_string(), "crawler:Twitterbot");
    }
}
