//! Device kind and operating system from a user agent: a small table of the tokens that
//! tell them apart, checked in order. In-app browsers (Facebook, Instagram, TikTok…) run
//! on phones and count as mobile whatever else their user agent says.
//!
//! The answer is memoised per thread: a campaign's visitors share a handful of user
//! agents, and a lookup costs less than the searches.

use super::definition::{Device, Os};
use crate::memo::Memo;

/// Tokens only in-app browsers send.
const IN_APP: [&str; 9] =
    ["FBAN/", "FBAV/", "FB_IAB", "Instagram", "musical_ly", "BytedanceWebview", "TikTok", "Snapchat", "Line/"];

/// Tokens of tablets, checked before the phone tokens (an iPad is not a phone).
const TABLET: [&str; 5] = ["iPad", "Tablet", "Kindle", "Silk/", "PlayBook"];

/// Tokens of phones.
const MOBILE: [&str; 6] = ["Mobile", "iPhone", "iPod", "Windows Phone", "Opera Mini", "IEMobile"];

thread_local! {
    static SEEN: Memo<(Device, Option<Os>)> = Memo::default();
}

/// The device kind and OS of `user_agent`; a missing user agent reads as a desktop
/// with no known OS.
pub fn classify(user_agent: Option<&str>) -> (Device, Option<Os>) {
    let Some(ua) = user_agent else { return (Device::Desktop, None) };
    SEEN.with(|m| m.get_or(ua.as_bytes(), || (device_of(ua), os_of(ua))))
}

fn device_of(ua: &str) -> Device {
    let has = |token: &&str| ua.contains(*token);
    if IN_APP.iter().any(has) {
        return Device::Mobile;
    }
    if TABLET.iter().any(has) {
        return Device::Tablet;
    }
    // Android phones say "Mobile"; Android without it is a tablet.
    if ua.contains("Android") {
        return if ua.contains("Mobile") { Device::Mobile } else { Device::Tablet };
    }
    if MOBILE.iter().any(has) {
        return Device::Mobile;
    }
    Device::Desktop
}

fn os_of(ua: &str) -> Option<Os> {
    // Order matters: iOS user agents say "like Mac OS X", Android ones say "Linux".
    if ua.contains("iPhone") || ua.contains("iPad") || ua.contains("iPod") {
        Some(Os::Ios)
    } else if ua.contains("Android") {
        Some(Os::Android)
    } else if ua.contains("Windows") {
        Some(Os::Windows)
    } else if ua.contains("Macintosh") || ua.contains("Mac OS X") {
        Some(Os::Macos)
    } else if ua.contains("Linux") || ua.contains("X11") {
        Some(Os::Linux)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_tells_devices_and_systems_apart() {
        let cases: [(&str, Device, Option<Os>); 10] = [
            ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1", Device::Mobile, Some(Os::Ios)),
            ("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1", Device::Tablet, Some(Os::Ios)),
            ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36", Device::Mobile, Some(Os::Android)),
            ("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36", Device::Tablet, Some(Os::Android)),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36", Device::Desktop, Some(Os::Windows)),
            ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15", Device::Desktop, Some(Os::Macos)),
            ("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0", Device::Desktop, Some(Os::Linux)),
            // Facebook's in-app browser on an iPad is still a phone app.
            ("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/470.0]", Device::Mobile, Some(Os::Ios)),
            ("Mozilla/5.0 (Linux; Android 14; SM-S918B; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/131.0 Safari/537.36 musical_ly_2023", Device::Mobile, Some(Os::Android)),
            ("curl/8.5.0", Device::Desktop, None),
        ];
        for (ua, device, os) in cases {
            assert_eq!(classify(Some(ua)), (device, os), "{ua}");
            assert_eq!(classify(Some(ua)), (device, os), "memoised: {ua}");
        }
        assert_eq!(classify(None), (Device::Desktop, None));
    }
}
