//! Who may send a postback: the per-network `postback_allowlist`, checked against the
//! address the postback came from.
//!
//! That address is the TCP peer, unless the peer is one of `[server] trusted_proxies`:
//! then it is the right-most `X-Forwarded-For` hop that is not itself a trusted proxy,
//! the one our own proxy appended. Hops further left were written by the client and
//! prove nothing, so they are never read.

use std::net::IpAddr;

use ipnet::IpNet;

/// The address a postback is judged by. `forwarded_for` holds every `X-Forwarded-For`
/// header value, in the order received.
pub(crate) fn postback_source<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted_proxies: &[IpNet],
) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let peer = canonical(peer);
    if !trusted(&peer) {
        return peer;
    }
    let mut source = peer;
    for hop in forwarded_for.rev().flat_map(|value| value.rsplit(',')) {
        // A hop we cannot read ends the walk: whoever wrote it is not to be believed.
        let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
        source = canonical(ip);
        if !trusted(&source) {
            break;
        }
    }
    source
}

/// IPv4 addresses seen through a dual-stack socket arrive mapped into IPv6.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_source() {
        let source = postback_source(ip("198.51.100.1"), ["203.0.113.9"].into_iter(), &[]);
        assert_eq!(source, ip("198.51.100.1"));
    }

    #[test]
    fn a_header_from_an_untrusted_peer_is_ignored() {
        let source = postback_source(ip("198.51.100.1"), ["203.0.113.9"].into_iter(), &nets(&["10.0.0.0/8"]));
        assert_eq!(source, ip("198.51.100.1"));
    }

    #[test]
    fn the_hop_the_trusted_proxy_appended_is_the_source() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client claimed 203.0.113.9; our proxy saw 198.51.100.7.
        let headers = ["203.0.113.9, 198.51.100.7"];
        assert_eq!(postback_source(ip("10.1.2.3"), headers.into_iter(), &trusted), ip("198.51.100.7"));
        // Two trusted proxies in a row, headers split over two lines.
        let headers = ["203.0.113.9", "198.51.100.7, 10.9.9.9"];
        assert_eq!(postback_source(ip("10.1.2.3"), headers.into_iter(), &trusted), ip("198.51.100.7"));
        // No header, or an unreadable last hop: the proxy itself.
        assert_eq!(postback_source(ip("10.1.2.3"), [].into_iter(), &trusted), ip("10.1.2.3"));
        assert_eq!(postback_source(ip("10.1.2.3"), ["203.0.113.9, junk"].into_iter(), &trusted), ip("10.1.2.3"));
        assert_eq!(postback_source(ip("::ffff:10.1.2.3"), ["198.51.100.7"].into_iter(), &trusted), ip("198.51.100.7"));
    }
}
