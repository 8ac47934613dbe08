//! Go's `%q` quoting, so error messages read exactly like the original's.
//!
//! fleet's messages quote names with Go's `strconv.Quote` (strings, double
//! quotes) and `strconv.QuoteRune` (single characters, single quotes). API
//! clients see these messages verbatim in 400 bodies, so we reproduce the
//! escaping rules: `\a \b \f \n \r \t \v`, `\\`, the quote character, `\xNN`
//! for other ASCII controls, `\uNNNN`/`\UNNNNNNNN` for non-printable
//! characters. Go decides "printable" from Unicode categories; std has no
//! category tables, so non-ASCII printability is approximated (controls,
//! whitespace other than U+0020, common format characters, private-use and
//! non-characters are escaped). Unit names are ASCII, so the approximation only
//! shows in messages about exotic input.

use std::fmt::Write as _;

/// Quotes `s` like Go's `strconv.Quote` (what `%q` does for a string).
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        push_escaped(&mut out, c, '"');
    }
    out.push('"');
    out
}

/// Quotes `c` like Go's `strconv.QuoteRune` (what `%q` does for a rune).
pub fn go_quote_rune(c: char) -> String {
    let mut out = String::with_capacity(3);
    out.push('\'');
    push_escaped(&mut out, c, '\'');
    out.push('\'');
    out
}

fn push_escaped(out: &mut String, c: char, quote: char) {
    if c == quote || c == '\\' {
        out.push('\\');
        out.push(c);
        return;
    }
    if is_go_print(c) {
        out.push(c);
        return;
    }
    match c {
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        _ => {
            let n = u32::from(c);
            // Writing to a String cannot fail.
            let _ = if n < 0x20 || n == 0x7f {
                write!(out, "\\x{n:02x}")
            } else if n < 0x10000 {
                write!(out, "\\u{n:04x}")
            } else {
                write!(out, "\\U{n:08x}")
            };
        }
    }
}

/// Approximates Go's `strconv.IsPrint` (see the module docs).
fn is_go_print(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let n = u32::from(c);
    let format = matches!(
        n,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0xE0001
            | 0xE0020..=0xE007F
    );
    let private_use = matches!(n, 0xE000..=0xF8FF | 0xF0000..=0x10FFFF);
    let non_character = (0xFDD0..=0xFDEF).contains(&n) || n & 0xFFFE == 0xFFFE;
    !(format || private_use || non_character)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_strings_like_go() {
        assert_eq!(go_quote("foo.service"), r#""foo.service""#);
        assert_eq!(go_quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(go_quote("tab\there\n"), r#""tab\there\n""#);
        assert_eq!(go_quote("\u{1}\u{7f}"), r#""\x01\x7f""#);
        assert_eq!(go_quote("héllo ☃"), "\"héllo ☃\"");
        assert_eq!(go_quote("\u{a0}\u{feff}"), r#""\u00a0\ufeff""#);
        assert_eq!(go_quote("\u{10ffff}"), r#""\U0010ffff""#);
        assert_eq!(go_quote("it's"), r#""it's""#);
        // Formerly fleetctl's and the registry client's own copies' cases.
        assert_eq!(go_quote("foo@.service"), r#""foo@.service""#);
        assert_eq!(go_quote(r"a\b"), r#""a\\b""#);
        assert_eq!(go_quote("a\"b\\c\nd\te\u{1}"), r#""a\"b\\c\nd\te\x01""#);
        assert_eq!(go_quote("a\"b\n\u{1}"), r#""a\"b\n\x01""#);
        assert_eq!(go_quote("é"), "\"é\"");
    }

    #[test]
    fn quotes_runes_like_go() {
        assert_eq!(go_quote_rune('/'), "'/'");
        assert_eq!(go_quote_rune(' '), "' '");
        assert_eq!(go_quote_rune('\''), r"'\''");
        assert_eq!(go_quote_rune('"'), "'\"'");
        assert_eq!(go_quote_rune('\t'), r"'\t'");
        assert_eq!(go_quote_rune('é'), "'é'");
        assert_eq!(go_quote_rune('\u{0}'), r"'\x00'");
    }
}
