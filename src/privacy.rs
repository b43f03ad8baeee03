//! What a stored click may say about the visitor.
//!
//! The address serves only the ad platforms' conversion APIs (they match on it), so an
//! owner who wants no personal data kept can store the visitor's network instead:
//! `[privacy] anonymize_ip` keeps the /24 of an IPv4 address and the /48 of an IPv6 one,
//! before the click is built, so the full address is never written anywhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::PrivacyConfig;

/// The visitor address as a click stores it.
pub(crate) fn stored_ip(privacy: &PrivacyConfig, ip: IpAddr) -> IpAddr {
    if privacy.anonymize_ip {
        anonymize(ip)
    } else {
        ip
    }
}

/// The address with its host part zeroed: /24 for IPv4, /48 for IPv6. An IPv4 address
/// mapped into IPv6 (a dual-stack listener) is treated as the IPv4 address it is.
pub(crate) fn anonymize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(anonymize_v4(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(anonymize_v4(v4)),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
            }
        },
    }
}

fn anonymize_v4(ip: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, _] = ip.octets();
    Ipv4Addr::new(a, b, c, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_keep_only_their_network() {
        assert_eq!(anonymize(ip("203.0.113.77")), ip("203.0.113.0"));
        assert_eq!(anonymize(ip("2001:db8:abcd:12:34::1")), ip("2001:db8:abcd::"));
        assert_eq!(anonymize(ip("::ffff:198.51.100.9")), ip("198.51.100.0"));
    }

    #[test]
    fn anonymizing_is_off_unless_asked() {
        let off = PrivacyConfig::default();
        let on = PrivacyConfig { anonymize_ip: true };
        assert_eq!(stored_ip(&off, ip("203.0.113.77")), ip("203.0.113.77"));
        assert_eq!(stored_ip(&on, ip("203.0.113.77")), ip("203.0.113.0"));
    }
}
