//! Small text helpers shared by the routes and the forwarding code.

/// At most `max_bytes` of `text`, cut at a character boundary (never inside one).
pub(crate) fn clip(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary() {
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(clip("abc", 2), "ab");
        assert_eq!(clip("aé", 2), "a", "é is two bytes and is not split");
        assert_eq!(clip("", 0), "");
    }
}
