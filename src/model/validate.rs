//! Checks on caller-supplied values, done before anything is written.

use crate::error::InvalidInput;
use crate::model::limits::{MAX_AMOUNT_CREDITS, MAX_ID_BYTES, MAX_MESSAGE_BYTES};

/// An id: 1 to [`MAX_ID_BYTES`] bytes of UTF-8, no control characters.
pub(crate) fn id(field: &'static str, value: &str) -> Result<(), InvalidInput> {
    text(field, value, MAX_ID_BYTES, false)
}

/// Printable text of at most `max` bytes; `allow_empty` says whether "" is fine.
pub(crate) fn text(
    field: &'static str,
    value: &str,
    max: usize,
    allow_empty: bool,
) -> Result<(), InvalidInput> {
    if value.is_empty() && !allow_empty {
        return Err(InvalidInput::Empty { field, max });
    }
    if value.len() > max {
        return Err(InvalidInput::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidInput::ControlCharacter { field });
    }
    Ok(())
}

/// A positive amount within [`MAX_AMOUNT_CREDITS`].
pub(crate) fn amount(field: &'static str, credits: u64) -> Result<(), InvalidInput> {
    if credits == 0 {
        return Err(InvalidInput::ZeroAmount { field });
    }
    if credits > MAX_AMOUNT_CREDITS {
        return Err(InvalidInput::AmountTooLarge {
            field,
            amount: u128::from(credits),
            max: MAX_AMOUNT_CREDITS,
        });
    }
    Ok(())
}

/// A 1..=max limit.
pub(crate) fn limit(field: &'static str, value: u64, max: u64) -> Result<(), InvalidInput> {
    if value == 0 || value > max {
        return Err(InvalidInput::LimitOutOfRange { field, value, max });
    }
    Ok(())
}

/// Cut a failure message to [`MAX_MESSAGE_BYTES`] at a char boundary. Returns the kept text and
/// whether anything was cut.
pub(crate) fn truncate_message(message: &str) -> (String, bool) {
    if message.len() <= MAX_MESSAGE_BYTES {
        return (message.to_string(), false);
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    (message[..end].to_string(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_printable() {
        assert!(id("workspace", "ws-1").is_ok());
        assert!(id("workspace", &"é".repeat(64)).is_ok());
        assert_eq!(
            id("workspace", ""),
            Err(InvalidInput::Empty {
                field: "workspace",
                max: MAX_ID_BYTES
            })
        );
        assert!(matches!(
            id("workspace", &"x".repeat(MAX_ID_BYTES + 1)),
            Err(InvalidInput::TooLong { len: 129, .. })
        ));
        assert!(matches!(
            id("workspace", "a\nb"),
            Err(InvalidInput::ControlCharacter { .. })
        ));
        assert!(matches!(
            id("workspace", "a\0"),
            Err(InvalidInput::ControlCharacter { .. })
        ));
    }

    #[test]
    fn amounts_are_positive_and_bounded() {
        assert!(amount("amount", 1).is_ok());
        assert!(amount("amount", MAX_AMOUNT_CREDITS).is_ok());
        assert!(matches!(
            amount("amount", 0),
            Err(InvalidInput::ZeroAmount { .. })
        ));
        assert!(matches!(
            amount("amount", MAX_AMOUNT_CREDITS + 1),
            Err(InvalidInput::AmountTooLarge { .. })
        ));
    }

    #[test]
    fn messages_are_cut_at_a_char_boundary() {
        let (kept, cut) = truncate_message("short");
        assert_eq!((kept.as_str(), cut), ("short", false));
        let long = "é".repeat(MAX_MESSAGE_BYTES); // 2 bytes each
        let (kept, cut) = truncate_message(&long);
        assert!(cut);
        assert!(kept.len() <= MAX_MESSAGE_BYTES);
        assert!(long.starts_with(&kept));
        let odd = format!("a{}", "é".repeat(MAX_MESSAGE_BYTES));
        let (kept, cut) = truncate_message(&odd);
        assert!(cut && kept.len() == MAX_MESSAGE_BYTES - 1);
    }
}
