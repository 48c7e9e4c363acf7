//! Checks on caller-supplied values, done before anything is written.

use crate::error::InvalidInput;
use crate::model::limits::{MAX_AMOUNT_CREDITS, MAX_ID_BYTES, MAX_MESSAGE_BYTES};

/// An id to look up: 1 to [`MAX_ID_BYTES`] bytes of UTF-8, no control characters. Lookups
/// (reads, `complete`, `fail`) use this weaker check, so that a record stored before
/// [`new_id`] existed can still be read and refunded.
pub(crate) fn id(field: &'static str, value: &str) -> Result<(), InvalidInput> {
    text(field, value, MAX_ID_BYTES, false)
}

/// An id a write stores (a workspace, an idempotency key, a generation id): [`id`], and it
/// must look like what it is (see [`visible`]).
pub(crate) fn new_id(field: &'static str, value: &str) -> Result<(), InvalidInput> {
    id(field, value)?;
    visible(field, value)
}

/// A name that groups records (a feature): [`text`] of at most `max` bytes, and [`visible`].
pub(crate) fn name(field: &'static str, value: &str, max: usize) -> Result<(), InvalidInput> {
    text(field, value, max, false)?;
    visible(field, value)
}

/// Unicode's format characters (General_Category = Cf, Unicode 15.1, from
/// <https://www.unicode.org/Public/15.1.0/ucd/UnicodeData.txt>), which include every bidi
/// control of UAX #9 (<https://www.unicode.org/reports/tr9/#Directional_Formatting_Characters>:
/// U+061C, U+200E, U+200F, U+202A..U+202E, U+2066..U+2069). Each prints as nothing or
/// reorders the text around it, so `ac\u{200b}me` prints as `acme` and `\u{202e}emca` as
/// `acme` reversed. Inclusive ranges, in order.
const FORMAT_CHARACTERS: &[(u32, u32, &str)] = &[
    (0x00AD, 0x00AD, "SOFT HYPHEN"),
    (0x0600, 0x0605, "an Arabic number sign"),
    (0x061C, 0x061C, "ARABIC LETTER MARK (bidi control)"),
    (0x06DD, 0x06DD, "ARABIC END OF AYAH"),
    (0x070F, 0x070F, "SYRIAC ABBREVIATION MARK"),
    (0x0890, 0x0891, "an Arabic pound or piastre mark above"),
    (0x08E2, 0x08E2, "ARABIC DISPUTED END OF AYAH"),
    (0x180E, 0x180E, "MONGOLIAN VOWEL SEPARATOR"),
    (0x200B, 0x200B, "ZERO WIDTH SPACE"),
    (0x200C, 0x200C, "ZERO WIDTH NON-JOINER"),
    (0x200D, 0x200D, "ZERO WIDTH JOINER"),
    (
        0x200E,
        0x200F,
        "a left-to-right or right-to-left mark (bidi control)",
    ),
    (
        0x202A,
        0x202E,
        "a bidi embedding or override (bidi control)",
    ),
    (0x2060, 0x2064, "a word joiner or invisible operator"),
    (0x2066, 0x2069, "a bidi isolate (bidi control)"),
    (0x206A, 0x206F, "a deprecated format character"),
    (
        0xFEFF,
        0xFEFF,
        "ZERO WIDTH NO-BREAK SPACE (byte order mark)",
    ),
    (0xFFF9, 0xFFFB, "an interlinear annotation character"),
    (0x110BD, 0x110BD, "KAITHI NUMBER SIGN"),
    (0x110CD, 0x110CD, "KAITHI NUMBER SIGN ABOVE"),
    (0x13430, 0x1343F, "an Egyptian hieroglyph format control"),
    (0x1BCA0, 0x1BCA3, "a shorthand format control"),
    (0x1D173, 0x1D17A, "a musical symbol format control"),
    (0xE0001, 0xE0001, "LANGUAGE TAG"),
    (0xE0020, 0xE007F, "a tag character"),
];

/// What is wrong with `c` in an id, if anything: a format or bidi character, or whitespace
/// other than the plain space (U+00A0, U+2003... look like a space but are other ids).
fn invisible(c: char) -> Option<String> {
    let code = u32::from(c);
    // Ids are mostly ASCII, and the table starts at U+00AD: below it a character can only be
    // wrong as whitespace, so the table walk is skipped (it was 3 % of a batch of starts).
    let listed = if code < FORMAT_CHARACTERS[0].0 {
        None
    } else {
        FORMAT_CHARACTERS
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&code))
    };
    if let Some((_, _, what)) = listed {
        return Some(format!("U+{code:04X}, {what}"));
    }
    if c.is_whitespace() && c != ' ' {
        return Some(format!("U+{code:04X}, a space other than U+0020"));
    }
    None
}

/// Whether every byte of `value` is printable ASCII (U+0020 to U+007E), as most ids are:
/// such a value has no control, format or bidi character and no whitespace but U+0020, so
/// the per-character walks of [`text`] and [`visible`] can be spared (one pass over bytes;
/// the walks were 2 % of a batch of starts, callgrind).
fn printable_ascii(value: &str) -> bool {
    value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A fast yes for [`visible`]: printable ASCII with no space at either end. `false` sends the
/// value to the full check, which finds what, if anything, is wrong.
fn ascii_visible(value: &str) -> bool {
    printable_ascii(value) && !value.starts_with(' ') && !value.ends_with(' ')
}

/// Refuse a value that would print like another one: a Unicode format or bidi character
/// anywhere, whitespace other than U+0020 anywhere, or whitespace at either end.
pub(crate) fn visible(field: &'static str, value: &str) -> Result<(), InvalidInput> {
    if ascii_visible(value) {
        return Ok(());
    }
    visible_by_char(field, value)
}

/// [`visible`] one character at a time: the rule itself, and the error that says what broke it.
fn visible_by_char(field: &'static str, value: &str) -> Result<(), InvalidInput> {
    let what = if let Some(what) = value.chars().find_map(invisible) {
        what
    } else if value.starts_with(char::is_whitespace) {
        "leading whitespace".to_string()
    } else if value.ends_with(char::is_whitespace) {
        "trailing whitespace".to_string()
    } else {
        return Ok(());
    };
    let shown = value
        .chars()
        .map(|c| {
            if invisible(c).is_some() {
                format!("\\u{{{:x}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect();
    Err(InvalidInput::InvisibleCharacter { field, shown, what })
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
    if !printable_ascii(value) && value.chars().any(char::is_control) {
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
    fn the_ascii_test_agrees_with_the_rule() {
        // Every ASCII string of up to three characters from a set that holds each kind of
        // byte the rule treats apart: letters, space, the other whitespace, controls, DEL.
        let alphabet = [
            b'a', b' ', b'\t', b'\n', 0x0b, 0x0c, b'\r', 0x00, 0x1f, 0x7f, b'~',
        ];
        let mut cases = vec![String::new()];
        for len in 1..=3 {
            let mut idx = vec![0usize; len];
            loop {
                cases.push(idx.iter().map(|&i| char::from(alphabet[i])).collect());
                let Some(pos) = idx.iter().rposition(|&i| i + 1 < alphabet.len()) else {
                    break;
                };
                idx[pos] += 1;
                idx[pos + 1..].iter_mut().for_each(|i| *i = 0);
            }
        }
        for case in &cases {
            // The fast yes is never wrong, and printable ASCII never needs the full check.
            let ok = visible_by_char("f", case).is_ok();
            assert!(!ascii_visible(case) || ok, "{case:?}");
            if printable_ascii(case) {
                assert_eq!(ascii_visible(case), ok, "{case:?}");
            }
            let control = case.chars().any(char::is_control);
            assert_eq!(text("f", case, 8, true).is_ok(), !control, "{case:?}");
        }
        assert!(
            !ascii_visible("caf\u{e9}"),
            "non-ASCII always takes the full check"
        );
    }

    #[test]
    fn new_ids_must_look_like_what_they_are() {
        assert!(new_id("workspace", "acme").is_ok());
        assert!(new_id("workspace", "acme corp").is_ok());
        assert!(new_id("workspace", "café-東京").is_ok());
        for (bad, what) in [
            ("acme ", "trailing whitespace"),
            (" acme", "leading whitespace"),
            ("ac\u{200b}me", "U+200B"),
            ("\u{202e}emca", "U+202E"),
            ("acme\u{2066}", "U+2066"),
            ("ac\u{ad}me", "U+00AD"),
            ("acme\u{feff}", "U+FEFF"),
            ("acme\u{e0041}", "U+E0041"),
            ("ac\u{a0}me", "U+00A0"),
            ("ac\u{3000}me", "U+3000"),
        ] {
            let Err(InvalidInput::InvisibleCharacter {
                field,
                what: got,
                shown,
            }) = new_id("workspace", bad)
            else {
                panic!("{bad:?} was accepted");
            };
            assert_eq!(field, "workspace");
            assert!(got.contains(what), "{bad:?}: {got}");
            assert!(shown.is_ascii() || !shown.contains(|c| invisible(c).is_some()));
        }
        // Lookups keep the old rule, so records stored before it can still be read.
        assert!(id("workspace", "acme ").is_ok());
        // The table is in order and its ranges do not overlap.
        for pair in FORMAT_CHARACTERS.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0);
        }
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
