//! Small validated names and text shared by the domain types, and the one rule for free text
//! ([`SingleLine`]).

use crate::error::Invalid;

/// A DNS-1123 label: at most 63 lower-case alphanumerics or '-', starting and ending with an
/// alphanumeric. Tenant ids and data-residency regions are such labels, because they become
/// Kubernetes namespace names and labels.
pub(crate) fn dns1123_label(field: &str, value: &str) -> Result<(), Invalid> {
    let bytes = value.as_bytes();
    let ok_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(ok_char)
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-';
    if valid {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!(
                "{value:?} is not a DNS-1123 label (1-63 characters of a-z, 0-9 and '-', \
                 starting and ending with a letter or digit)"
            ),
        ))
    }
}

/// A snake_case identifier of at most 63 characters (meter and unit names).
pub(crate) fn identifier(field: &str, value: &str) -> Result<(), Invalid> {
    let bytes = value.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!("{value:?} is not a name (1-63 characters of a-z, 0-9 and '_', starting with a letter)"),
        ))
    }
}

/// One line of text a person typed (a display name, an owner, a reason): 1 to `max_chars`
/// characters once surrounding whitespace is trimmed, and nothing that could break the line
/// where it is shown again — a log line, an audit record, an alert annotation, a CSV cell or a
/// terminal. So it holds no control character (C0 such as NUL, BEL, ESC, TAB, CR and LF; DEL;
/// C1 such as NEL), no line or paragraph separator (U+2028, U+2029) and no bidirectional
/// embedding, override or isolate (U+202A–U+202E, U+2066–U+2069, which make text display
/// in another order than it is stored). The check runs before trimming: `"reason\n"` is
/// refused, not quietly shortened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleLine(String);

impl SingleLine {
    pub fn parse(field: &str, value: &str, max_chars: usize) -> Result<Self, Invalid> {
        if let Some(bad) = value.chars().find(|&c| breaks_a_line(c)) {
            return Err(Invalid::new(
                field,
                format!(
                    "must be one line of text without control characters ({:?} found)",
                    bad
                ),
            ));
        }
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(Invalid::new(field, "must not be empty"));
        }
        if trimmed.chars().count() > max_chars {
            return Err(Invalid::new(
                field,
                format!("must be at most {max_chars} characters"),
            ));
        }
        Ok(SingleLine(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `c` is refused in a [`SingleLine`]; text from elsewhere is escaped where it holds
/// one before it is logged.
pub fn breaks_a_line(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// Why something was decided (an approval, a rejection, an exemption, a correction): one line
/// of 1 to 1000 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(SingleLine);

impl Reason {
    pub const MAX_CHARS: usize = 1000;

    pub fn parse(field: &str, value: &str) -> Result<Self, Invalid> {
        SingleLine::parse(field, value, Self::MAX_CHARS).map(Reason)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_labels() {
        for good in ["a", "acme", "team-1", "0", &"a".repeat(63)] {
            assert!(dns1123_label("id", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Acme",
            "a_b",
            "a.b",
            "ä",
            &"a".repeat(64),
            "a\"}",
        ] {
            assert_eq!(dns1123_label("id", bad).unwrap_err().field, "id", "{bad}");
        }
    }

    #[test]
    fn identifiers() {
        for good in ["cpu", "network_egress", "gpu2"] {
            assert!(identifier("meter", good).is_ok());
        }
        for bad in ["", "Cpu", "2cpu", "cpu-x", "cpu{}", &"a".repeat(64)] {
            assert!(identifier("meter", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        let text = |value: &str, max| SingleLine::parse("n", value, max);
        assert_eq!(text("  Acme  ", 10).unwrap().as_str(), "Acme");
        assert!(text("   ", 10).is_err());
        assert!(text("a\nb", 10).is_err());
        assert!(text("abcdefghijk", 10).is_err());
        // characters, not bytes
        assert_eq!(text("東京東京", 4).unwrap().as_str(), "東京東京");
    }

    #[test]
    fn a_single_line_holds_no_control_character() {
        for bad in [
            "nul\u{0}",
            "bel\u{7}",
            "\u{1b}[2J",
            "tab\t",
            "cr\r",
            "lf\n",
            "crlf\r\nx",
            "trailing\n",
            "\nleading",
            "vt\u{b}",
            "ff\u{c}",
            "del\u{7f}",
            "nel\u{85}",
            "csi\u{9b}",
            "ls\u{2028}",
            "ps\u{2029}",
            "lre\u{202a}",
            "rlo\u{202e}",
            "lri\u{2066}",
            "pdi\u{2069}",
        ] {
            let error = SingleLine::parse("reason", bad, 100).unwrap_err();
            assert_eq!(error.field, "reason", "{bad:?}");
            assert!(error.message.contains("one line"), "{bad:?}: {error}");
        }
        for good in [
            "Café – 東京 ✓",
            "=1+1",
            "\"quoted\", comma; semicolon",
            "arabic \u{627}\u{644}\u{639}\u{631}\u{628}\u{64a}\u{629}",
            "zero\u{200b}width",
            "non\u{a0}breaking",
        ] {
            assert_eq!(SingleLine::parse("n", good, 100).unwrap().as_str(), good);
        }
    }

    #[test]
    fn reasons_are_single_lines_of_at_most_1000_characters() {
        assert_eq!(Reason::parse("reason", " ok ").unwrap().as_str(), "ok");
        assert!(Reason::parse("reason", &"x".repeat(1000)).is_ok());
        assert_eq!(
            Reason::parse("reason", &"x".repeat(1001))
                .unwrap_err()
                .field,
            "reason"
        );
        assert!(Reason::parse("reason", "").is_err());
        assert!(Reason::parse("reason", "a\u{0}b").is_err());
    }
}
