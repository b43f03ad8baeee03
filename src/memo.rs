//! A per-thread memo for pure functions of a byte string that the redirect path calls
//! with the same few inputs again and again (a campaign's user agents and parameters):
//! one hash-map lookup instead of a cryptographic hash or a pattern search. Each thread
//! keeps its own, so there is no lock; each forgets everything when it grows past its
//! bound, so memory stays small whatever the traffic.

use std::cell::RefCell;
use std::collections::HashMap;

/// Entries one memo keeps before it starts over.
const MAX_ENTRIES: usize = 4096;

/// Remembered results of one function; use it from a `thread_local!`.
pub(crate) struct Memo<V: Clone> {
    map: RefCell<HashMap<Box<[u8]>, V, foldhash::fast::FixedState>>,
}

impl<V: Clone> Default for Memo<V> {
    fn default() -> Memo<V> {
        Memo { map: RefCell::default() }
    }
}

impl<V: Clone> Memo<V> {
    /// The remembered result for `input`, or `compute()`'s, remembered.
    pub(crate) fn get_or(&self, input: &[u8], compute: impl FnOnce() -> V) -> V {
        if let Some(v) = self.map.borrow().get(input) {
            return v.clone();
        }
        let v = compute();
        let mut map = self.map.borrow_mut();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(input.into(), v.clone());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_once_per_input_and_stays_bounded() {
        let memo = Memo::default();
        let mut calls = 0;
        for input in ["a", "b", "a", "a"] {
            let v = memo.get_or(input.as_bytes(), || {
                calls += 1;
                input.len()
            });
            assert_eq!(v, 1);
        }
        assert_eq!(calls, 2);
        for i in 0..(MAX_ENTRIES * 2) {
            memo.get_or(i.to_string().as_bytes(), || 0);
        }
        assert!(memo.map.borrow().len() <= MAX_ENTRIES);
    }
}
