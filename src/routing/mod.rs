//! Traffic rules: which of a link's offers a visitor is sent to.
//!
//! A link may carry several offers, each with a weight, an optional daily cap and a
//! status, and rules that pick the eligible offers by country, device, OS, language or
//! query parameter. The owner's definition is in [`definition`]; [`Router`] is its
//! compiled form, built once per link and consulted per click without allocating:
//!
//! 1. The first rule that matches chooses the eligible offers; with none, all are.
//! 2. Paused offers drop out, and so do offers this process already knows are full today.
//! 3. One offer is drawn at random in proportion to its weight (the visitor's sticky
//!    offer first, while it is eligible). Should it have a cap, more are drawn from the
//!    rest, in the same way, until one without a cap: the store takes the first of these
//!    *candidates* that still has room, atomically with the click's own write, so a cap
//!    is exact across threads and processes. Drawing the next candidate from the rest by
//!    weight is what drawing again without the full offer would do.
//!
//! Knowing nothing of HTTP, the router reads the visitor from [`Visitor`], which the
//! redirect fills from the request ([`device`] and [`geo`] help it).

pub mod definition;
pub mod device;
pub mod geo;
mod rules;

use std::sync::atomic::{AtomicU32, Ordering};

pub use definition::{Device, Offer, OfferStatus, Os, Rule, MAX_OFFERS};
pub use rules::{primary_language, Visitor};

use rules::CompiledRule;

/// Why no offer took a click: it goes to the link's fallback, or gets a `404`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoOffer {
    /// Every eligible offer is paused (or the matching rule names none that is active).
    Paused,
    /// Every eligible offer reached its daily cap.
    Capped,
}

impl NoOffer {
    pub fn as_str(self) -> &'static str {
        match self {
            NoOffer::Paused => "paused",
            NoOffer::Capped => "capped",
        }
    }
}

/// The offers a click may take, in the order the store should try them (indexes into
/// the link's offers). Only the last may be uncapped; all before it have caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidates {
    order: [u8; MAX_OFFERS],
    len: u8,
}

impl Candidates {
    const EMPTY: Candidates = Candidates { order: [0; MAX_OFFERS], len: 0 };

    fn push(&mut self, offer: usize) {
        self.order[self.len as usize] = offer as u8;
        self.len += 1;
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.order[..self.len as usize]
    }

    pub fn first(&self) -> Option<usize> {
        self.as_slice().first().map(|&i| i as usize)
    }
}

/// What the router decided for one click.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// Index of the rule that matched, if one did.
    pub rule: Option<u32>,
    /// Offers to try in order; empty when none is eligible.
    pub candidates: Candidates,
    /// Why `candidates` is empty.
    pub no_offer: Option<NoOffer>,
}

/// A link's offers and rules, compiled.
#[derive(Debug)]
pub struct Router {
    ids: Vec<String>,
    weights: Vec<u32>,
    caps: Vec<Option<u32>>,
    /// Offers that take traffic, as bits.
    active: u64,
    /// Offers with a daily cap, as bits.
    capped: u64,
    rules: Vec<CompiledRule>,
    /// Seconds east of UTC at which a cap's day turns.
    cap_offset: i32,
    /// Whether some rule names countries: only then is the visitor's looked up.
    uses_country: bool,
    /// Per offer: one more than the cap day on which the store reported it full (0:
    /// never). Only spares the store a candidate it would refuse; never decisive.
    full_on: Vec<AtomicU32>,
}

impl Router {
    /// Compiles validated `offers` and `rules`; `cap_offset` is the link's `cap_tz` in
    /// seconds east of UTC.
    pub fn new(offers: &[Offer], rules: &[Rule], cap_offset: i32) -> Router {
        let offers = &offers[..offers.len().min(MAX_OFFERS)];
        let bits = |keep: &dyn Fn(&Offer) -> bool| {
            offers.iter().enumerate().filter(|(_, o)| keep(o)).fold(0u64, |acc, (i, _)| acc | 1 << i)
        };
        Router {
            ids: offers.iter().map(|o| o.id.clone()).collect(),
            weights: offers.iter().map(|o| o.weight.max(1)).collect(),
            caps: offers.iter().map(|o| o.daily_cap).collect(),
            active: bits(&|o| o.status == OfferStatus::Active),
            capped: bits(&|o| o.daily_cap.is_some()),
            rules: rules.iter().map(|r| CompiledRule::new(r, offers)).collect(),
            cap_offset,
            uses_country: rules.iter().any(Rule::uses_country),
            full_on: offers.iter().map(|_| AtomicU32::new(0)).collect(),
        }
    }

    pub fn id(&self, offer: usize) -> &str {
        &self.ids[offer]
    }

    pub fn position(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|x| x == id)
    }

    pub fn cap(&self, offer: usize) -> Option<u32> {
        self.caps[offer]
    }

    /// Whether some rule names countries, so the visitor's country is worth looking up.
    pub fn uses_country(&self) -> bool {
        self.uses_country
    }

    /// Whether any offer has a daily cap.
    pub fn has_caps(&self) -> bool {
        self.capped != 0
    }

    /// The cap day (days since the epoch in the link's `cap_tz`) of a time in ms.
    pub fn cap_day(&self, at_ms: i64) -> u32 {
        (at_ms.div_euclid(1000) + i64::from(self.cap_offset)).div_euclid(86_400).max(0) as u32
    }

    /// Remembers that the store found `offer` full on `day`.
    pub fn mark_full(&self, offer: usize, day: u32) {
        if let Some(slot) = self.full_on.get(offer) {
            slot.store(day + 1, Ordering::Relaxed);
        }
    }

    fn known_full(&self, day: u32) -> u64 {
        let mut bits = 0;
        let mut capped = self.capped;
        while capped != 0 {
            let i = capped.trailing_zeros() as usize;
            capped &= capped - 1;
            if self.full_on[i].load(Ordering::Relaxed) == day + 1 {
                bits |= 1 << i;
            }
        }
        bits
    }

    /// Picks the candidates for one click on cap day `day`. `count_caps` is false for
    /// bots, which are sent to an offer but never use a cap up: their one candidate is
    /// drawn among the offers not known to be full.
    pub fn pick(&self, visitor: &Visitor<'_>, day: u32, count_caps: bool, rng: &mut impl rand::Rng) -> Pick {
        let all = if self.ids.len() == 64 { u64::MAX } else { (1u64 << self.ids.len()) - 1 };
        let rule = self.rules.iter().position(|r| r.matches(visitor));
        let eligible = rule.map_or(all, |i| self.rules[i].offers) & self.active;
        let rule = rule.map(|i| i as u32);
        if eligible == 0 {
            return Pick { rule, candidates: Candidates::EMPTY, no_offer: Some(NoOffer::Paused) };
        }
        let mut open = eligible & !self.known_full(day);
        if open == 0 {
            return Pick { rule, candidates: Candidates::EMPTY, no_offer: Some(NoOffer::Capped) };
        }
        let mut candidates = Candidates::EMPTY;
        let sticky = visitor.sticky.and_then(|id| self.position(id)).filter(|&i| open & (1 << i) != 0);
        let mut next = sticky;
        loop {
            let offer = match next.take() {
                Some(i) => i,
                None => self.draw(open, rng),
            };
            candidates.push(offer);
            open &= !(1 << offer);
            if !count_caps || self.capped & (1 << offer) == 0 || open == 0 {
                break;
            }
        }
        Pick { rule, candidates, no_offer: None }
    }

    /// One offer of the non-empty set `open`, drawn in proportion to its weight.
    fn draw(&self, open: u64, rng: &mut impl rand::Rng) -> usize {
        let mut total = 0u64;
        let mut bits = open;
        while bits != 0 {
            total += u64::from(self.weights[bits.trailing_zeros() as usize]);
            bits &= bits - 1;
        }
        let mut r = rng.random_range(0..total);
        let mut bits = open;
        loop {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let w = u64::from(self.weights[i]);
            if r < w || bits == 0 {
                return i;
            }
            r -= w;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn offer(id: &str, weight: u32, cap: Option<u32>) -> Offer {
        Offer {
            id: id.into(),
            url: "https://o.example.com/".into(),
            weight,
            daily_cap: cap,
            status: OfferStatus::Active,
        }
    }

    #[test]
    fn weights_share_the_traffic() {
        let router = Router::new(&[offer("a", 70, None), offer("b", 30, None)], &[], 0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut a = 0;
        for _ in 0..10_000 {
            let pick = router.pick(&Visitor::default(), 0, true, &mut rng);
            assert_eq!(pick.candidates.as_slice().len(), 1);
            a += (pick.candidates.first() == Some(0)) as u32;
        }
        assert!((6_800..7_200).contains(&a), "{a}");
    }

    #[test]
    fn capped_offers_bring_the_next_candidates_and_full_ones_drop_out() {
        let offers = [offer("a", 1, Some(5)), offer("b", 1, Some(5)), offer("c", 1, None)];
        let router = Router::new(&offers, &[], 0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let pick = router.pick(&Visitor::default(), 3, true, &mut rng);
            let list = pick.candidates.as_slice();
            assert_eq!(*list.last().unwrap(), 2, "the first uncapped offer ends the list: {list:?}");
            let bot = router.pick(&Visitor::default(), 3, false, &mut rng);
            assert_eq!(bot.candidates.as_slice().len(), 1);
        }
        router.mark_full(0, 3);
        router.mark_full(1, 3);
        for _ in 0..20 {
            assert_eq!(router.pick(&Visitor::default(), 3, true, &mut rng).candidates.as_slice(), [2]);
        }
        // A new day forgets what was full.
        let next = router.pick(&Visitor::default(), 4, true, &mut rng);
        assert_eq!(next.candidates.first().map(|i| i < 2), Some(true), "a capped offer is drawn again on a new day");
        let only_capped = Router::new(&offers[..1], &[], 0);
        only_capped.mark_full(0, 3);
        assert_eq!(only_capped.pick(&Visitor::default(), 3, true, &mut rng).no_offer, Some(NoOffer::Capped));
    }

    #[test]
    fn rules_stickiness_and_pauses() {
        let mut offers = vec![offer("a", 1, None), offer("b", 1, None), offer("c", 1, None)];
        let rule = Rule { device: vec![Device::Mobile], offers: vec!["b".into()], ..Rule::default() };
        let router = Router::new(&offers, std::slice::from_ref(&rule), 0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mobile = Visitor { device: Some(Device::Mobile), ..Visitor::default() };
        let pick = router.pick(&mobile, 0, true, &mut rng);
        assert_eq!((pick.rule, pick.candidates.first()), (Some(0), Some(1)));
        let sticky = Visitor { sticky: Some("c"), ..Visitor::default() };
        for _ in 0..20 {
            assert_eq!(router.pick(&sticky, 0, true, &mut rng).candidates.first(), Some(2));
        }
        // A sticky offer the rule does not allow is not taken.
        assert_eq!(
            router.pick(&Visitor { sticky: Some("c"), ..mobile }, 0, true, &mut rng).candidates.first(),
            Some(1)
        );
        offers[1].status = OfferStatus::Paused;
        let router = Router::new(&offers, &[rule], 0);
        assert_eq!(router.pick(&mobile, 0, true, &mut rng).no_offer, Some(NoOffer::Paused));
    }

    #[test]
    fn cap_days_follow_the_offset() {
        let utc = Router::new(&[], &[], 0);
        let est = Router::new(&[], &[], -5 * 3600);
        let at = 86_400_000 * 20_000 + 3 * 3_600_000; // 03:00 UTC on day 20000
        assert_eq!(utc.cap_day(at), 20_000);
        assert_eq!(est.cap_day(at), 19_999);
    }
}
