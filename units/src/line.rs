//! What an option may hold so that it survives being written as unit-file
//! lines and read back: the normal form of names and values, and
//! [`OptionProblem`], why an option cannot be written at all.
//!
//! # Why a normal form
//!
//! A unit's hash is the SHA-1 of its canonical text, and an agent knows which
//! content it runs by parsing the file it wrote and hashing that. So the
//! canonical text of every unit fleet stores must parse back to exactly the
//! stored options, or the agent sees other content on every pass and restarts
//! the unit each time. The parser trims names and values (as the original's
//! did, which keeps the hash of every unit *file* identical with the
//! original's), so an API client's `"/bin/sleep 1000 "` would come back as
//! `"/bin/sleep 1000"`.
//!
//! We do not escape or quote such values: unit-file syntax has no way to keep
//! whitespace at the ends of a value, and systemd strips it too, so
//! `ExecStart=/bin/sleep 1000 ` and `ExecStart=/bin/sleep 1000` run the same
//! command. Instead [`UnitFile::from_options`](crate::UnitFile::from_options)
//! puts every option into the form the parser yields, so the options fleet
//! stores, returns from `GET` and hashes are already what the file reads back
//! to. This is also what the original showed: its registry re-parsed the
//! stored text on every read, so its API returned, and its agents hashed,
//! the trimmed values. A value that has no such form (a line break that does
//! not continue the value, a control character, a trailing backslash that
//! would swallow the next line) is refused instead, with an
//! [`OptionProblem`].
//!
//! Normal form, as the parser yields it:
//!
//! * A name loses the whitespace around it.
//! * A value loses the whitespace before it and after its last line. Its
//!   line breaks are continuations (`\` then newline), kept with the lines
//!   they continue onto verbatim. A value whose last line is blank ends in
//!   `\` and a newline (the original keeps that newline).
//! * A section name is verbatim.
//!
//! Refused: control characters (tab aside; systemd ends lines at NUL and at
//! carriage returns, and rejects control characters in several settings), a
//! line break not preceded by `\`, a value ending in `\`, a section name
//! with `]`, a name with `=` or starting with `#`, `;` or `[` (the line would
//! read as something else), and lines of [`LINE_MAX`] bytes or more.

use std::fmt;

use crate::file::LINE_MAX;
use crate::quote::go_quote_rune;

/// Why an option cannot be written as unit-file lines that read back the
/// same.
///
/// Options are kept in the form the parser yields: names and values trimmed
/// (systemd strips that whitespace too, so the command is the same), and
/// line breaks in values only as backslash continuations. Then the canonical
/// text an agent writes parses back to the stored options, and its hash to
/// the stored hash. What has no such form is one of these problems:
/// control characters other than tab, a line break not preceded by `\`, a
/// value ending in `\`, `]` in a section name, `=` in an option name or
/// `#`, `;`, `[` at its start, and lines of [`LINE_MAX`] bytes or more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionProblem {
    /// A control character other than tab (or, in a value, a newline).
    #[error("{part} contains control character {}", go_quote_rune(*.character))]
    ControlCharacter {
        /// Where it is.
        part: Part,
        /// The character, so the message can show it.
        character: char,
    },
    /// A newline in the value that does not follow a backslash: the rest
    /// would read as other lines.
    #[error("value contains a line break not preceded by a backslash")]
    BareNewline,
    /// The value ends in a backslash, which would continue it onto the
    /// next line.
    #[error("value ends in a backslash, which would join it to the next line")]
    TrailingBackslash,
    /// The section name contains `]`, which would end its header early.
    #[error("section name contains \"]\"")]
    BracketInSection,
    /// The option name contains `=`, which would end the name early.
    #[error("option name contains \"=\"")]
    EqualsInName,
    /// The option name starts with a character that makes the line a
    /// comment (`#`, `;`) or a section header (`[`).
    #[error("option name starts with {}, so the line would not read as an option", go_quote_rune(*.character))]
    NameStart {
        /// The first character of the name.
        character: char,
    },
    /// A line of the option (or its section header) would be [`LINE_MAX`]
    /// bytes or longer.
    #[error("line too long ({} bytes or more)", LINE_MAX)]
    LineTooLong,
}

/// The part of an option an [`OptionProblem`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Part {
    /// The section name.
    Section,
    /// The option name.
    Name,
    /// The value.
    Value,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Section => "section name",
            Part::Name => "option name",
            Part::Value => "value",
        })
    }
}

/// Whitespace the normal form drops at the ends of a value: what the parser
/// trims, except the newline, which is never whitespace to drop (a value
/// can only end in one after a continuation).
fn is_blank(c: char) -> bool {
    c.is_whitespace() && c != '\n'
}

/// A control character no part of an option may contain.
fn is_forbidden(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// The name as the parser yields it.
pub(crate) fn normal_name(name: &str) -> &str {
    name.trim()
}

/// The value as the parser yields it (see the module docs). For a value
/// [`check_value`] refuses, something short of that.
pub(crate) fn normal_value(value: &str) -> &str {
    let value = value.trim_start_matches(is_blank);
    if let Some(last_break) = value.rfind('\n') {
        let (before, last_line) = (&value[..last_break], &value[last_break + 1..]);
        if before.ends_with('\\') && last_line.trim().is_empty() {
            return &value[..=last_break];
        }
    }
    value.trim_end_matches(is_blank)
}

/// Replaces `s` by its normal form when that differs.
pub(crate) fn normalize(s: &mut String, normal: fn(&str) -> &str) {
    let n = normal(s);
    // The normal form is a slice of `s`: the same length means the same text.
    if n.len() != s.len() {
        *s = n.to_owned();
    }
}

/// Refuses the first forbidden character of `text`, naming the `part` it
/// is in.
fn no_control_character(text: &str, part: Part) -> Result<(), OptionProblem> {
    match text.chars().find(|&c| is_forbidden(c)) {
        Some(character) => Err(OptionProblem::ControlCharacter { part, character }),
        None => Ok(()),
    }
}

/// Checks a section name as written in a header.
pub(crate) fn check_section(section: &str) -> Result<(), OptionProblem> {
    no_control_character(section, Part::Section)?;
    if section.contains(']') {
        return Err(OptionProblem::BracketInSection);
    }
    if section.len() + "[]".len() >= LINE_MAX {
        return Err(OptionProblem::LineTooLong);
    }
    Ok(())
}

/// Checks a name in normal form.
pub(crate) fn check_name(name: &str) -> Result<(), OptionProblem> {
    no_control_character(name, Part::Name)?;
    if name.contains('=') {
        return Err(OptionProblem::EqualsInName);
    }
    match name.chars().next() {
        Some(character @ ('#' | ';' | '[')) => Err(OptionProblem::NameStart { character }),
        _ => Ok(()),
    }
}

/// Checks a value in normal form.
pub(crate) fn check_value(value: &str) -> Result<(), OptionProblem> {
    let mut previous = None;
    for c in value.chars() {
        if c == '\n' {
            if previous != Some('\\') {
                return Err(OptionProblem::BareNewline);
            }
        } else if is_forbidden(c) {
            return Err(OptionProblem::ControlCharacter {
                part: Part::Value,
                character: c,
            });
        }
        previous = Some(c);
    }
    if value.ends_with('\\') {
        return Err(OptionProblem::TrailingBackslash);
    }
    Ok(())
}

/// Checks the lengths of the lines `name=value` is written as (both in
/// normal form).
pub(crate) fn check_line_lengths(name: &str, value: &str) -> Result<(), OptionProblem> {
    let mut lines = value.split('\n');
    let first = lines.next().unwrap_or_default();
    if name.len() + "=".len() + first.len() >= LINE_MAX || lines.any(|l| l.len() >= LINE_MAX) {
        return Err(OptionProblem::LineTooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_values() {
        for (value, normal) in [
            ("/bin/sleep 1000 ", "/bin/sleep 1000"),
            (" \t/bin/sleep 1000", "/bin/sleep 1000"),
            ("\u{a0}x\r", "x"),
            ("", ""),
            ("   ", ""),
            ("a \\\n  b  ", "a \\\n  b"),
            ("a \\\n  ", "a \\\n"),
            ("a \\\n", "a \\\n"),
            ("a \\\n\u{3000}", "a \\\n"),
            // Not valid, and left with their line breaks for the check.
            ("a\n", "a\n"),
            ("\nx", "\nx"),
            ("a \\\n \n ", "a \\\n \n"),
        ] {
            assert_eq!(normal_value(value), normal, "{value:?}");
            assert_eq!(normal_value(normal), normal, "{normal:?} is normal");
        }
        let mut s = String::from(" x ");
        normalize(&mut s, normal_value);
        assert_eq!(s, "x");
    }

    #[test]
    fn value_checks() {
        for ok in ["", "x", "a \\\n b", "a \\\n", "\\\n", "tab\there", "é☃"] {
            assert_eq!(check_value(ok), Ok(()), "{ok:?}");
        }
        for (bad, problem) in [
            ("a\nb", OptionProblem::BareNewline),
            ("a\n", OptionProblem::BareNewline),
            ("a \\ \nb", OptionProblem::BareNewline),
            ("a \\\n\nb", OptionProblem::BareNewline),
            ("x\\", OptionProblem::TrailingBackslash),
            ("a \\\nb\\", OptionProblem::TrailingBackslash),
            (
                "a\0b",
                OptionProblem::ControlCharacter {
                    part: Part::Value,
                    character: '\0',
                },
            ),
            (
                "a\rb",
                OptionProblem::ControlCharacter {
                    part: Part::Value,
                    character: '\r',
                },
            ),
            (
                "a\u{85}b",
                OptionProblem::ControlCharacter {
                    part: Part::Value,
                    character: '\u{85}',
                },
            ),
        ] {
            assert_eq!(check_value(bad), Err(problem), "{bad:?}");
        }
        assert_eq!(
            check_value("a\u{1b}").unwrap_err().to_string(),
            r"value contains control character '\x1b'"
        );
    }

    #[test]
    fn name_and_section_checks() {
        assert_eq!(check_name(""), Ok(()));
        assert_eq!(check_name("Exec Start"), Ok(()));
        assert_eq!(check_name("a=b"), Err(OptionProblem::EqualsInName));
        for c in ['#', ';', '['] {
            assert_eq!(
                check_name(&format!("{c}x")),
                Err(OptionProblem::NameStart { character: c })
            );
        }
        assert_eq!(
            check_name("a\nb").unwrap_err().to_string(),
            r"option name contains control character '\n'"
        );
        assert_eq!(check_section(" odd [name "), Ok(()));
        assert_eq!(check_section("a]b"), Err(OptionProblem::BracketInSection));
        assert_eq!(
            check_section("a\nb").unwrap_err().to_string(),
            r"section name contains control character '\n'"
        );
        assert_eq!(
            check_section(&"s".repeat(LINE_MAX - 2)),
            Err(OptionProblem::LineTooLong)
        );
        assert_eq!(check_section(&"s".repeat(LINE_MAX - 3)), Ok(()));
    }

    #[test]
    fn line_lengths() {
        let fill = LINE_MAX - "ExecStart=".len();
        assert_eq!(
            check_line_lengths("ExecStart", &"x".repeat(fill - 1)),
            Ok(())
        );
        assert_eq!(
            check_line_lengths("ExecStart", &"x".repeat(fill)),
            Err(OptionProblem::LineTooLong)
        );
        let continued = format!("a \\\n{}", "y".repeat(LINE_MAX));
        assert_eq!(
            check_line_lengths("A", &continued),
            Err(OptionProblem::LineTooLong)
        );
    }
}
