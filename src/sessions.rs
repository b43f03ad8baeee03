//! Sign-in state: signed session cookies, CSRF tokens bound to them, and the limit on
//! failed sign-ins.
//!
//! A session is a cookie `cakelink_session=<expiry>.<nonce>.<mac>`: the expiry in Unix
//! seconds, 16 random bytes, and an HMAC-SHA256 over both. The MAC key is derived from
//! `security.secret` and the admin token, so rotating either signs everyone out, and no
//! session table is kept: any process sharing the config accepts the cookie. Signing
//! out remembers the nonce in this process until the cookie would have expired anyway.
//!
//! The CSRF token of a session is an HMAC of its nonce under the same key: a form
//! carries it, and a `POST` whose token does not match its cookie's is refused.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::clock::now_secs;

type HmacSha256 = Hmac<Sha256>;

/// The cookie's name.
pub(crate) const COOKIE: &str = "cakelink_session";

/// Failed sign-ins from one address allowed within [`FAILURE_WINDOW`]; more get `429`.
pub(crate) const MAX_FAILURES: usize = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; past it, addresses whose failures are all older than the
/// window are forgotten, so a spray from many addresses cannot grow the map forever.
const MAX_TRACKED: usize = 10_000;

/// A valid session, as read from its cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    nonce: [u8; 16],
    expires: u64,
    /// The token this session's forms carry.
    pub(crate) csrf: String,
}

/// Sessions and sign-in failures of one server.
pub(crate) struct Sessions {
    key: [u8; 32],
    lifetime: Duration,
    /// Nonces signed out, with their cookie's expiry.
    revoked: Mutex<HashMap<[u8; 16], u64>>,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl Sessions {
    /// A server's sessions and sign-in failures, keyed by its secret and admin token.
    pub(crate) fn for_config(config: &crate::config::Config) -> Sessions {
        let security = &config.security;
        Sessions::new(security.secret.expose(), security.admin_token.expose(), config.dashboard.session)
    }

    pub(crate) fn new(secret: &str, admin_token: &str, lifetime: Duration) -> Sessions {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(b"cakelink dashboard session\0");
        mac.update(&Sha256::digest(admin_token.as_bytes()));
        let key = mac.finalize().into_bytes().into();
        Sessions { key, lifetime, revoked: Mutex::new(HashMap::new()), failures: Mutex::new(HashMap::new()) }
    }

    /// How long a new session lasts.
    pub(crate) fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for p in parts {
            mac.update(&(p.len() as u32).to_be_bytes());
            mac.update(p);
        }
        mac
    }

    fn csrf_for(&self, nonce: &[u8; 16]) -> String {
        hex::encode(self.mac(&[b"csrf", nonce]).finalize().into_bytes())
    }

    /// Starts a session; returns the cookie value.
    pub(crate) fn start(&self) -> String {
        let nonce: [u8; 16] = rand::random();
        let expires = now_secs() + self.lifetime.as_secs();
        let mac = self.mac(&[b"session", &expires.to_be_bytes(), &nonce]).finalize().into_bytes();
        format!("{expires}.{}.{}", hex::encode(nonce), hex::encode(mac))
    }

    /// The session a cookie value stands for, if it is genuine, unexpired and not signed out.
    pub(crate) fn verify(&self, value: &str) -> Option<Session> {
        let mut parts = value.split('.');
        let (expires, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let expires: u64 = expires.parse().ok()?;
        let nonce: [u8; 16] = hex::decode(nonce).ok()?.try_into().ok()?;
        let mac = hex::decode(mac).ok()?;
        self.mac(&[b"session", &expires.to_be_bytes(), &nonce]).verify_slice(&mac).ok()?;
        if expires <= now_secs() || self.revoked.lock().ok()?.contains_key(&nonce) {
            return None;
        }
        Some(Session { nonce, expires, csrf: self.csrf_for(&nonce) })
    }

    /// Whether `token` is this session's CSRF token (compared in constant time).
    pub(crate) fn csrf_ok(&self, session: &Session, token: &str) -> bool {
        crate::secret::secret_matches(token.as_bytes(), session.csrf.as_bytes())
    }

    /// Signs a session out in this process.
    pub(crate) fn end(&self, session: &Session) {
        if let Ok(mut revoked) = self.revoked.lock() {
            let now = now_secs();
            revoked.retain(|_, expires| *expires > now);
            revoked.insert(session.nonce, session.expires);
        }
    }

    /// Whether `ip` has used up its failed sign-ins for now.
    pub(crate) fn locked_out(&self, ip: IpAddr) -> bool {
        let Ok(mut failures) = self.failures.lock() else { return true };
        let now = Instant::now();
        match failures.get_mut(&ip) {
            Some(list) => {
                prune(list, now);
                list.len() >= MAX_FAILURES
            }
            None => false,
        }
    }

    /// Counts a failed sign-in from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr) {
        let Ok(mut failures) = self.failures.lock() else { return };
        let now = Instant::now();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&ip) {
            failures.retain(|_, list| {
                prune(list, now);
                !list.is_empty()
            });
        }
        let list = failures.entry(ip).or_default();
        prune(list, now);
        list.push_back(now);
    }
}

fn prune(list: &mut VecDeque<Instant>, now: Instant) {
    while list.front().is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW) {
        list.pop_front();
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub(crate) fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|pair| pair.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new("secret", "token", Duration::from_secs(3600))
    }

    #[test]
    fn a_cookie_verifies_until_it_is_tampered_with_or_ended() {
        let s = sessions();
        let cookie = s.start();
        let session = s.verify(&cookie).expect("valid");
        assert!(s.csrf_ok(&session, &session.csrf));
        assert!(!s.csrf_ok(&session, "00"));
        // Another nonce, expiry or key: refused.
        let (exp, rest) = cookie.split_once('.').unwrap();
        let later = format!("{}.{rest}", exp.parse::<u64>().unwrap() + 1);
        assert!(s.verify(&later).is_none());
        assert!(Sessions::new("secret", "other token", Duration::from_secs(60)).verify(&cookie).is_none());
        assert!(Sessions::new("other", "token", Duration::from_secs(60)).verify(&cookie).is_none());
        for junk in ["", "1.2", "a.b.c", "1.00.00", &format!("{cookie}.x")] {
            assert!(s.verify(junk).is_none(), "{junk}");
        }
        // The CSRF token is bound to the session.
        let other = s.verify(&s.start()).expect("valid");
        assert_ne!(other.csrf, session.csrf);
        s.end(&session);
        assert!(s.verify(&cookie).is_none());
        assert!(s.verify(&s.start()).is_some());
    }

    #[test]
    fn an_expired_cookie_is_refused() {
        let s = sessions();
        let nonce = [7u8; 16];
        let expires = now_secs() - 1;
        let mac = s.mac(&[b"session", &expires.to_be_bytes(), &nonce]).finalize().into_bytes();
        assert!(s.verify(&format!("{expires}.{}.{}", hex::encode(nonce), hex::encode(mac))).is_none());
    }

    #[test]
    fn ten_failures_lock_an_address_out() {
        let s = sessions();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(!s.locked_out(ip));
            s.failed(ip);
        }
        assert!(s.locked_out(ip));
        assert!(!s.locked_out("192.0.2.2".parse().unwrap()));
    }

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(cookie_value("a=1; cakelink_session=x.y.z; b=2", COOKIE), Some("x.y.z"));
        assert_eq!(cookie_value("a=1", COOKIE), None);
    }
}
