//! Small validated names shared by the domain types.

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

/// Free text such as a display name: 1 to `max` characters, trimmed, no control characters.
pub(crate) fn text(field: &str, value: &str, max: usize) -> Result<String, Invalid> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if trimmed.chars().count() > max {
        return Err(Invalid::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(trimmed.to_owned())
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
        assert_eq!(text("n", "  Acme  ", 10).unwrap(), "Acme");
        assert!(text("n", "   ", 10).is_err());
        assert!(text("n", "a\nb", 10).is_err());
        assert!(text("n", "abcdefghijk", 10).is_err());
    }
}
