//! [`UnitFile`]: parsing unit text into options and writing the canonical
//! text that fleet stores and hashes.
//!
//! # Parsing
//!
//! The parser reproduces go-systemd's `unit.Deserialize` as vendored by fleet
//! v1.0, because the options it yields decide the canonical text and so the
//! hash, which must be byte-identical with the original:
//!
//! * Blank lines are skipped. Lines whose first non-blank character is `#`
//!   or `;` are comments; a comment line ending in `\` (optionally followed
//!   by one space) also swallows the next line.
//! * `[Name]` starts a section. The name is taken verbatim up to the first
//!   `]`; only whitespace may follow it.
//! * Any other line is `Name=Value`. The name is everything before the first
//!   `=`, trimmed. The value is the rest of the line, trimmed.
//! * A value line ending in `\` continues onto the next line. The stored
//!   value keeps the backslash and the newline, and the next line verbatim
//!   (it is never a comment or a section header). A blank line ends the value
//!   and is consumed; if the value then ends in the newline, that newline is
//!   kept after trimming (`A=x \` followed by an empty line gives `"x \\\n"`).
//! * Lines end at `\n`. A `\r` before it is part of the line, so in CRLF
//!   files a `\` just before `\r\n` does not continue the value (the `\r` is
//!   trimmed from the value). A `\r` before `=` makes the option invalid.
//!
//! Deliberate differences, all on input the original accepted silently or
//! handled by accident: text before the first section header is an error
//! (the original skipped it character by character), a section header must
//! close on its own line (the original read on to the next `]`), a leading
//! UTF-8 byte-order mark is ignored, and every physical line of 2048 bytes or
//! more is rejected (the original's check depended on its read buffer's fill
//! level and could miss such lines). Options that could not be written back
//! as the same lines are errors too (see [`OptionProblem`]): a control
//! character other than tab in a section name, option name or value (a `\r`
//! ending a CRLF line is not part of the value), and a value ending in a
//! backslash (`A=x\ ` with a space after the backslash, a last line ending
//! in `\` with no newline, `\` before `\r\n`), whose canonical line would
//! swallow the next one. Every error names its 1-based line.
//!
//! # Canonical text
//!
//! Sections in order of first appearance, each `[Section]\n` followed by its
//! options as `Name=Value\n` in their original order, with one empty line
//! between sections and none after the last. No options, no text. This is
//! go-systemd's `unit.Serialize`; the [`UnitHash`] is the SHA-1 of it.
//!
//! A [`UnitFile`]'s options are always in the parser's normal form
//! ([`UnitFile::from_options`] puts them in it), so for options that pass
//! [`UnitOption::check`] the canonical text parses back to the same options
//! and the same hash: what an agent writes is what it reads back.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::hash::UnitHash;
use crate::line::{self, OptionProblem};
use crate::quote::go_quote;

/// Lines of this many bytes or more are rejected (systemd's `LINE_MAX`,
/// beyond which it truncates lines).
pub const LINE_MAX: usize = 2048;

/// One `Name=Value` line of a unit file, with the section it belongs to.
///
/// This is also the API's `options` item (`{"section","name","value"}`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitOption {
    /// Section header the option appeared under, without brackets, e.g.
    /// `Service`; options are grouped by it in the canonical text.
    pub section: String,
    /// Option name, e.g. `ExecStart`; trimmed of whitespace when parsed (and
    /// in a [`UnitFile`]).
    pub name: String,
    /// Option value, trimmed when parsed (and in a [`UnitFile`]);
    /// continuation lines are kept with their `\` and newline, since the
    /// canonical text and hash depend on them.
    pub value: String,
}

impl UnitOption {
    /// Builds an option from its three parts.
    pub fn new(
        section: impl Into<String>,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        Self {
            section: section.into(),
            name: name.into(),
            value: value.into(),
        }
    }

    /// Whether the option can be written as unit-file lines that read back
    /// as the same option, once in normal form (see [`OptionProblem`]); the
    /// API refuses options that cannot.
    ///
    /// ```
    /// use units::{OptionProblem, UnitOption};
    ///
    /// assert!(UnitOption::new("Service", "ExecStart", "/bin/sleep 1 ").check().is_ok());
    /// assert_eq!(
    ///     UnitOption::new("Service", "ExecStart", "/bin/a\n/bin/b").check(),
    ///     Err(OptionProblem::BareNewline)
    /// );
    /// ```
    pub fn check(&self) -> Result<(), OptionProblem> {
        let name = line::normal_name(&self.name);
        let value = line::normal_value(&self.value);
        line::check_section(&self.section)?;
        line::check_name(name)?;
        line::check_value(value)?;
        line::check_line_lengths(name, value)
    }
}

/// The contents of a unit file: its options in their original order.
///
/// Two files with the same canonical text (and so the same [`UnitHash`]) may
/// still differ in option order across sections; compare [`UnitFile::hash`]
/// to ask whether two units have the same content. `Display` writes the
/// canonical text; serde uses the option list (in normal form after
/// deserializing, as [`UnitFile::from_options`] gives).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitFile {
    /// Options in the order they were parsed or given, in the parser's normal
    /// form; the canonical text regroups them by section but keeps this order
    /// within a section, and the API returns them in this order.
    options: Vec<UnitOption>,
}

impl Serialize for UnitFile {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.options.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for UnitFile {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<UnitOption>::deserialize(deserializer).map(UnitFile::from_options)
    }
}

/// A unit file's text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based number of the offending line.
    pub line: usize,
    /// What is wrong with it.
    pub kind: ParseErrorKind,
}

/// What is wrong with a line of a unit file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The line is [`LINE_MAX`] bytes or longer.
    #[error("line too long ({} bytes or more)", LINE_MAX)]
    LineTooLong,
    /// An option (or other text) appears before the first section header.
    #[error("option {} outside of any section", go_quote(.text))]
    OutsideSection {
        /// The offending line, trimmed.
        text: String,
    },
    /// An option that could not be written back as the same lines.
    #[error("option {} in section {}: {problem}", go_quote(.name), go_quote(.section))]
    InvalidOption {
        /// The section it is in.
        section: String,
        /// The option's name.
        name: String,
        /// What is wrong with it.
        problem: OptionProblem,
    },
    /// A section header whose name could not be written back the same.
    #[error("section {}: {problem}", go_quote(.section))]
    InvalidSection {
        /// The section name.
        section: String,
        /// What is wrong with it.
        problem: OptionProblem,
    },
    /// An option line has no `=` (or a `\r` before it).
    #[error("missing \"=\" in option line {}", go_quote(.text))]
    MissingEquals {
        /// The offending line, trimmed.
        text: String,
    },
    /// A line starting with `[` has no `]`.
    #[error("section header {} is missing \"]\"", go_quote(.text))]
    UnterminatedSection {
        /// The offending line, trimmed.
        text: String,
    },
    /// Something other than whitespace follows a section header's `]`.
    #[error("unexpected text {} after section header [{section}]", go_quote(.garbage))]
    GarbageAfterSection {
        /// Name of the section whose header is followed by text.
        section: String,
        /// The text after `]`, trimmed.
        garbage: String,
    },
}

impl UnitFile {
    /// Parses unit-file text (see the module docs for the exact rules).
    ///
    /// ```
    /// let f = units::UnitFile::parse("[Service]\n# comment\nExecStart = /bin/true \n")?;
    /// assert_eq!(f.canonical(), "[Service]\nExecStart=/bin/true\n");
    /// # Ok::<(), units::ParseError>(())
    /// ```
    pub fn parse(text: &str) -> Result<UnitFile, ParseError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Parser::new(text).run()
    }

    /// Wraps options, e.g. from an API request, putting each name and value
    /// in the parser's normal form: trimmed as the parser trims them (see
    /// [`OptionProblem`] for why). Nothing is validated; see
    /// [`UnitOption::check`] and [`crate::validate_options`].
    ///
    /// ```
    /// use units::{UnitFile, UnitOption};
    ///
    /// let f = UnitFile::from_options(vec![UnitOption::new("Service", "ExecStart", " /bin/true ")]);
    /// assert_eq!(f.options()[0].value, "/bin/true");
    /// assert_eq!(UnitFile::parse(&f.canonical())?, f);
    /// # Ok::<(), units::ParseError>(())
    /// ```
    pub fn from_options(mut options: Vec<UnitOption>) -> UnitFile {
        for opt in &mut options {
            line::normalize(&mut opt.name, line::normal_name);
            line::normalize(&mut opt.value, line::normal_value);
        }
        UnitFile { options }
    }

    /// The options in their original order.
    pub fn options(&self) -> &[UnitOption] {
        &self.options
    }

    /// Unwraps the options, in their original order.
    pub fn into_options(self) -> Vec<UnitOption> {
        self.options
    }

    /// The canonical text that fleet stores, hashes and `fleetctl cat`
    /// prints (see the module docs).
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        for (i, (section, opts)) in self.sections().iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push('[');
            out.push_str(section);
            out.push_str("]\n");
            for opt in opts {
                out.push_str(&opt.name);
                out.push('=');
                out.push_str(&opt.value);
                out.push('\n');
            }
        }
        out
    }

    /// The options grouped by section, sections in order of first
    /// appearance, options in their order within each.
    fn sections(&self) -> Vec<(&str, Vec<&UnitOption>)> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut sections: Vec<(&str, Vec<&UnitOption>)> = Vec::new();
        for opt in &self.options {
            let slot = *index.entry(opt.section.as_str()).or_insert_with(|| {
                sections.push((opt.section.as_str(), Vec::new()));
                sections.len() - 1
            });
            sections[slot].1.push(opt);
        }
        sections
    }

    /// The options in the order parsing the canonical text yields them:
    /// grouped by section as [`UnitFile::canonical`] writes them.
    pub(crate) fn regrouped(&self) -> Vec<UnitOption> {
        self.sections()
            .into_iter()
            .flat_map(|(_, opts)| opts.into_iter().cloned())
            .collect()
    }

    /// SHA-1 of [`UnitFile::canonical`]: the unit's content address.
    pub fn hash(&self) -> UnitHash {
        UnitHash::digest(self.canonical().as_bytes())
    }

    /// Values of every `name` option in `section`, in order. Values are
    /// returned as stored: `[X-Fleet]` multi-values are not split here (see
    /// [`crate::Requirements`]).
    pub fn values<'a>(
        &'a self,
        section: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.options
            .iter()
            .filter(move |o| o.section == section && o.name == name)
            .map(|o| o.value.as_str())
    }

    /// Whether any option belongs to `section`. A header with no options
    /// under it leaves no trace, as in the original. The agent enables units
    /// that have an `Install` section.
    pub fn has_section(&self, section: &str) -> bool {
        self.options.iter().any(|o| o.section == section)
    }

    /// The first `Description=` of the `[Unit]` section, shown by
    /// `fleetctl list-unit-files` (the original takes the first one too).
    pub fn description(&self) -> Option<&str> {
        self.values("Unit", "Description").next()
    }
}

impl fmt::Display for UnitFile {
    /// Writes the canonical text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl FromStr for UnitFile {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnitFile::parse(s)
    }
}

/// One physical line of the input.
#[derive(Clone, Copy)]
struct Line<'a> {
    /// Text without the `\n`. A `\r` before the `\n` stays (as in the
    /// original's `toEOL`); a last, unterminated line loses one trailing `\r`.
    text: &'a str,
    /// Whether a `\n` followed; decides if a continuation adds a newline.
    terminated: bool,
}

struct Parser<'a> {
    /// All physical lines; the last one is unterminated (possibly empty).
    lines: Vec<Line<'a>>,
    /// Options found so far.
    options: Vec<UnitOption>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        let mut lines: Vec<Line<'a>> = text
            .split('\n')
            .map(|text| Line {
                text,
                terminated: true,
            })
            .collect();
        if let Some(last) = lines.last_mut() {
            last.terminated = false;
            last.text = last.text.strip_suffix('\r').unwrap_or(last.text);
        }
        Self {
            lines,
            options: Vec::new(),
        }
    }

    /// Line `i` (0-based), rejected if it is too long.
    fn line(&self, i: usize) -> Result<Line<'a>, ParseError> {
        let line = self.lines[i];
        // The original looked for `\r` or `\n` within the next LINE_MAX bytes.
        let len = line.text.find('\r').unwrap_or(line.text.len());
        if len >= LINE_MAX {
            return Err(error(i, ParseErrorKind::LineTooLong));
        }
        Ok(line)
    }

    fn run(mut self) -> Result<UnitFile, ParseError> {
        let mut section: Option<&'a str> = None;
        let mut i = 0;
        while i < self.lines.len() {
            let body = self.line(i)?.text.trim_start();
            match body.chars().next() {
                None => i += 1,
                Some('#' | ';') => i = self.skip_comment(i)?,
                Some('[') => {
                    section = Some(parse_header(i, body)?);
                    i += 1;
                }
                Some(_) => {
                    let Some(section) = section else {
                        return Err(error(
                            i,
                            ParseErrorKind::OutsideSection {
                                text: body.trim_end().to_owned(),
                            },
                        ));
                    };
                    // The original read the name up to `=`, failing on `\r`.
                    let eq = match (body.find('='), body.find('\r')) {
                        (Some(eq), Some(cr)) if cr < eq => None,
                        (eq, _) => eq,
                    };
                    let Some(eq) = eq else {
                        return Err(error(
                            i,
                            ParseErrorKind::MissingEquals {
                                text: body.trim_end().to_owned(),
                            },
                        ));
                    };
                    let (value, next) = self.read_value(i, &body[eq + 1..])?;
                    let name = body[..eq].trim();
                    if let Err(problem) = line::check_name(name).and(line::check_value(&value)) {
                        return Err(error(
                            i,
                            ParseErrorKind::InvalidOption {
                                section: section.to_owned(),
                                name: name.to_owned(),
                                problem,
                            },
                        ));
                    }
                    self.options.push(UnitOption {
                        section: section.to_owned(),
                        name: name.to_owned(),
                        value,
                    });
                    i = next;
                }
            }
        }
        Ok(UnitFile {
            options: self.options,
        })
    }

    /// Skips the comment starting on line `i` and the lines its trailing
    /// backslashes continue onto; returns the next line to read.
    fn skip_comment(&self, mut i: usize) -> Result<usize, ParseError> {
        loop {
            let text = self.line(i)?.text;
            let text = text.strip_suffix(' ').unwrap_or(text);
            i += 1;
            if !text.ends_with('\\') || i >= self.lines.len() {
                return Ok(i);
            }
        }
    }

    /// Reads a value whose first piece (after `=`) is on line `i`, following
    /// continuations; returns the value and the next line to read.
    fn read_value(&self, mut i: usize, first: &'a str) -> Result<(String, usize), ParseError> {
        let mut value = String::new();
        let mut piece = first;
        let mut terminated = self.lines[i].terminated;
        loop {
            i += 1;
            if piece.trim().is_empty() {
                break;
            }
            value.push_str(piece);
            if !piece.ends_with('\\') {
                break;
            }
            if terminated {
                value.push('\n');
            }
            if i >= self.lines.len() {
                break;
            }
            let next = self.line(i)?;
            piece = next.text;
            terminated = next.terminated;
        }
        let value = if value.ends_with('\n') {
            // The value ended on a blank line after a continuation: the
            // original keeps that last newline.
            format!("{}\n", value.trim())
        } else {
            value.trim().to_owned()
        };
        Ok((value, i))
    }
}

/// Parses a section header `body` (starting with `[`) found on line `i`.
fn parse_header(i: usize, body: &str) -> Result<&str, ParseError> {
    let inner = &body[1..];
    let Some(close) = inner.find(']') else {
        return Err(error(
            i,
            ParseErrorKind::UnterminatedSection {
                text: body.trim_end().to_owned(),
            },
        ));
    };
    let (name, rest) = (&inner[..close], inner[close + 1..].trim());
    if !rest.is_empty() {
        return Err(error(
            i,
            ParseErrorKind::GarbageAfterSection {
                section: name.to_owned(),
                garbage: rest.to_owned(),
            },
        ));
    }
    if let Err(problem) = line::check_section(name) {
        return Err(error(
            i,
            ParseErrorKind::InvalidSection {
                section: name.to_owned(),
                problem,
            },
        ));
    }
    Ok(name)
}

fn error(index: usize, kind: ParseErrorKind) -> ParseError {
    ParseError {
        line: index + 1,
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ParseErrorKind::InvalidOption;

    fn opt(section: &str, name: &str, value: &str) -> UnitOption {
        UnitOption::new(section, name, value)
    }

    fn parse(text: &str) -> Vec<UnitOption> {
        UnitFile::parse(text)
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
            .into_options()
    }

    fn parse_err(text: &str) -> ParseError {
        match UnitFile::parse(text) {
            Ok(f) => panic!("{text:?} should not parse, got {:?}", f.options()),
            Err(e) => e,
        }
    }

    #[test]
    fn options_under_sections() {
        assert_eq!(
            parse(
                "[Unit]\nDescription=Foo\nDescription=Bar\nRequires=baz.service\nAfter=baz.service\n"
            ),
            vec![
                opt("Unit", "Description", "Foo"),
                opt("Unit", "Description", "Bar"),
                opt("Unit", "Requires", "baz.service"),
                opt("Unit", "After", "baz.service"),
            ]
        );
        assert_eq!(
            parse(
                "[Unit]\nDescription=Foo\n\n[Service]\nExecStart=/usr/bin/sleep infinity\n\n[X-Third-Party]\nPants=on\n\n"
            ),
            vec![
                opt("Unit", "Description", "Foo"),
                opt("Service", "ExecStart", "/usr/bin/sleep infinity"),
                opt("X-Third-Party", "Pants", "on"),
            ]
        );
        assert_eq!(parse("[Unit]\n[Service]\n[X-Third-Party]\n"), vec![]);
        assert_eq!(parse(""), vec![]);
        assert_eq!(parse("\n\n  \n"), vec![]);
    }

    #[test]
    fn comments_and_blank_lines_are_dropped() {
        assert_eq!(
            parse(
                "; comment alpha\n# comment bravo\n[Unit]\n; comment charlie\n  # comment delta\n#Description=Foo\nDescription=Bar\n; comment echo\n\n\t\n# comment foxtrot\n"
            ),
            vec![opt("Unit", "Description", "Bar")]
        );
        // A comment ending in a backslash (and at most one space) swallows
        // the next line.
        assert_eq!(
            parse("[Unit]\n# wrapped \\\nDescription=Hidden\nAfter=x\n"),
            vec![opt("Unit", "After", "x")]
        );
        assert_eq!(
            parse("[Unit]\n# wrapped \\ \nDescription=Hidden\nAfter=x\n"),
            vec![opt("Unit", "After", "x")]
        );
        assert_eq!(
            parse("[Unit]\n# not wrapped \\  \nDescription=Shown\n"),
            vec![opt("Unit", "Description", "Shown")]
        );
        assert_eq!(
            parse("# a \\\n# b \\\nignored\n[A]\nx=1"),
            vec![opt("A", "x", "1")]
        );
        assert_eq!(parse("[A]\n# trailing \\"), vec![]);
    }

    #[test]
    fn names_and_values_are_trimmed() {
        assert_eq!(
            parse("[Unit]\n Description   =words here\n"),
            vec![opt("Unit", "Description", "words here")]
        );
        assert_eq!(
            parse("[Unit]\nDescription= words here \t"),
            vec![opt("Unit", "Description", "words here")]
        );
        assert_eq!(
            parse("[Unit]\nSome Thing = Bar\n"),
            vec![opt("Unit", "Some Thing", "Bar")]
        );
        assert_eq!(
            parse("[Unit]\n<<<<<<<<=Bar\n"),
            vec![opt("Unit", "<<<<<<<<", "Bar")]
        );
        // Only the first `=` separates; the rest belongs to the value.
        assert_eq!(
            parse("[Service]\nEnvironment=A=B C=D\n"),
            vec![opt("Service", "Environment", "A=B C=D")]
        );
        // Quotes are not special to the parser.
        assert_eq!(
            parse("[Service]\nEnvironment= \"FOO=BAR\" \"BAZ=QUX\"\n"),
            vec![opt("Service", "Environment", "\"FOO=BAR\" \"BAZ=QUX\"")]
        );
        assert_eq!(
            parse("[Unit]\nEmpty=\nAlso=   \n=NoName\n"),
            vec![
                opt("Unit", "Empty", ""),
                opt("Unit", "Also", ""),
                opt("Unit", "", "NoName"),
            ]
        );
        assert_eq!(
            parse("[Unit]\nDescription=Bar"),
            vec![opt("Unit", "Description", "Bar")]
        );
        assert_eq!(parse("[©]\nµ☃=ÇôrèÕ$"), vec![opt("©", "µ☃", "ÇôrèÕ$")]);
        // Section names are verbatim.
        assert_eq!(
            parse("  [ Odd [name ]  \nk=v\n"),
            vec![opt(" Odd [name ", "k", "v")]
        );
    }

    #[test]
    fn continuation_lines_keep_backslash_and_newline() {
        assert_eq!(
            parse("[Service]\nExecStart=/bin/sh -c \\\n  \"echo hi\"\nUser=core\n"),
            vec![
                opt("Service", "ExecStart", "/bin/sh -c \\\n  \"echo hi\""),
                opt("Service", "User", "core"),
            ]
        );
        assert_eq!(
            parse("[Unit]\nDescription= Unnecessarily wrapped \\\n    words here\n"),
            vec![opt(
                "Unit",
                "Description",
                "Unnecessarily wrapped \\\n    words here"
            )]
        );
        // Several continuations; comment-like and header-like lines inside a
        // continuation are part of the value.
        assert_eq!(
            parse(
                "[Unit]\nDescription=Bar\\\n# comment alpha\n\nDescription=Bar\\\n# comment bravo \\\n[Baz]\n"
            ),
            vec![
                opt("Unit", "Description", "Bar\\\n# comment alpha"),
                opt("Unit", "Description", "Bar\\\n# comment bravo \\\n[Baz]"),
            ]
        );
        // A backslash that is not last does not continue.
        assert_eq!(parse("[Unit]\nB=y\\z\n"), vec![opt("Unit", "B", "y\\z")]);
        // A value ending in a backslash is refused: its canonical line would
        // continue onto the next one. The original kept `x\` here, and `Bar \`
        // on a last line with no newline.
        let trailing = InvalidOption {
            section: "Unit".into(),
            name: "A".into(),
            problem: OptionProblem::TrailingBackslash,
        };
        for text in [
            "[Unit]\nA=x\\ \nB=y\n",
            "[Unit]\nA=Bar \\",
            "[Unit]\nA=x\\\t",
        ] {
            assert_eq!(
                parse_err(text),
                ParseError {
                    line: 2,
                    kind: trailing.clone()
                },
                "{text:?}"
            );
        }
        assert_eq!(
            parse_err("[Unit]\nB=1\nA=x\\ \n").to_string(),
            r#"line 3: option "A" in section "Unit": value ends in a backslash, which would join it to the next line"#
        );
        // A blank line ends the value; the newline before it is kept.
        assert_eq!(
            parse("[Unit]\nDescription= words here \\\n  \nAfter=x\n"),
            vec![
                opt("Unit", "Description", "words here \\\n"),
                opt("Unit", "After", "x")
            ]
        );
        assert_eq!(
            parse("[Unit]\nDescription=a \\\n"),
            vec![opt("Unit", "Description", "a \\\n")]
        );
        assert_eq!(
            parse("[Unit]\nA=one \\\ntwo \\\nthree\n"),
            vec![opt("Unit", "A", "one \\\ntwo \\\nthree")]
        );
        // An empty first piece is an empty value, not a continuation.
        assert_eq!(
            parse("[Unit]\nA=\n  x=1\n"),
            vec![opt("Unit", "A", ""), opt("Unit", "x", "1")]
        );
    }

    #[test]
    fn carriage_returns() {
        assert_eq!(
            parse("[Unit]\r\nDescription=Foo\r\n\r\n[Service]\r\nExecStart=/bin/true\r\n"),
            vec![
                opt("Unit", "Description", "Foo"),
                opt("Service", "ExecStart", "/bin/true")
            ]
        );
        // In CRLF files a backslash before `\r\n` does not continue, so the
        // value ends in a backslash, which is refused.
        let e = parse_err("[Unit]\r\nA=x \\\r\nB=y\r");
        assert_eq!(
            (e.line, e.kind),
            (
                2,
                InvalidOption {
                    section: "Unit".into(),
                    name: "A".into(),
                    problem: OptionProblem::TrailingBackslash
                }
            )
        );
        // A `\r` inside a value is refused: systemd would end the line there
        // (the original kept it).
        assert_eq!(
            parse_err("[Unit]\nA=x\ry\n").to_string(),
            r#"line 2: option "A" in section "Unit": value contains control character '\r'"#
        );
        assert_eq!(parse_err("[Unit]\nA\r=x\n").line, 2);
    }

    #[test]
    fn control_characters_are_refused() {
        assert_eq!(
            parse_err("[Service]\nExecStart=/bin/a\0b\n").to_string(),
            r#"line 2: option "ExecStart" in section "Service": value contains control character '\x00'"#
        );
        assert_eq!(
            parse_err("[Service]\nExecStart=/bin/sh -c \\\n  a\u{1b}b\n").line,
            2
        );
        assert_eq!(
            parse_err("[A]\nk\u{7f}=v\n").to_string(),
            r#"line 2: option "k\x7f" in section "A": option name contains control character '\x7f'"#
        );
        assert_eq!(
            parse_err("\n[Ser\u{1}vice]\n").to_string(),
            r#"line 2: section "Ser\x01vice": section name contains control character '\x01'"#
        );
        // Tabs are fine anywhere, and control characters in comments too.
        assert_eq!(
            parse("[A\tB]\n# \u{1}\nk\tj=v\tw\t\n"),
            vec![opt("A\tB", "k\tj", "v\tw")]
        );
    }

    #[test]
    fn from_options_puts_options_in_normal_form() {
        let f = UnitFile::from_options(vec![
            opt("Service", "ExecStart", "/bin/sleep 1000 "),
            opt("Service", " ExecStop\t", " /bin/kill \\\n  -9  "),
            opt(" Odd ", "A", "x \\\n \t"),
        ]);
        let normal = vec![
            opt("Service", "ExecStart", "/bin/sleep 1000"),
            opt("Service", "ExecStop", "/bin/kill \\\n  -9"),
            opt(" Odd ", "A", "x \\\n"),
        ];
        assert_eq!(f.options(), normal.as_slice());
        assert_eq!(UnitFile::parse(&f.canonical()).unwrap().options(), normal);
        // Deserializing normalizes too.
        let json = r#"[{"section":"Service","name":"ExecStart","value":" /bin/true "}]"#;
        assert_eq!(
            serde_json::from_str::<UnitFile>(json).unwrap().options()[0].value,
            "/bin/true"
        );
        // The hash is the original's for the unit as its agents read it:
        // `printf '[Service]\nExecStart=/bin/sleep 1000\n' | sha1sum`.
        assert_eq!(
            UnitFile::from_options(vec![opt("Service", "ExecStart", "/bin/sleep 1000 ")])
                .hash()
                .to_string(),
            "2d432f4a06608c1a8b2848b66c836793a1d48ce6"
        );
    }

    #[test]
    fn option_checks_name_the_problem() {
        let check = |s: &str, n: &str, v: &str| opt(s, n, v).check();
        assert_eq!(check("Service", "ExecStart", " /bin/true "), Ok(()));
        assert_eq!(check("Service", "ExecStart", "a \\\n b"), Ok(()));
        assert_eq!(
            check("Service", "ExecStart", "/bin/a\n/bin/b"),
            Err(OptionProblem::BareNewline)
        );
        assert_eq!(
            check("Service", "ExecStart", "/bin/a \\ "),
            Err(OptionProblem::TrailingBackslash)
        );
        assert_eq!(
            check("Service", "#ExecStart", "x"),
            Err(OptionProblem::NameStart { character: '#' })
        );
        assert_eq!(
            check("Service", "A=B", "x"),
            Err(OptionProblem::EqualsInName)
        );
        assert_eq!(
            check("Ser]vice", "A", "x"),
            Err(OptionProblem::BracketInSection)
        );
        assert_eq!(
            check("Service", "A", &"x".repeat(LINE_MAX - 2)),
            Err(OptionProblem::LineTooLong)
        );
        assert_eq!(check("Service", "A", &"x".repeat(LINE_MAX - 3)), Ok(()));
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        assert_eq!(parse("\u{feff}[Unit]\nA=b\n"), vec![opt("Unit", "A", "b")]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_err("[Unit]\nDescription=Foo\nDescription\n");
        assert_eq!(e.line, 3);
        assert_eq!(
            e.kind,
            ParseErrorKind::MissingEquals {
                text: "Description".into()
            }
        );
        assert_eq!(
            e.to_string(),
            r#"line 3: missing "=" in option line "Description""#
        );

        let e = parse_err("[Unit]\n<<<<<<\nDescription=Foo\n");
        assert_eq!(e.line, 2);

        let e = parse_err("[Unit]\nDescription=Foo\nAfter");
        assert_eq!(
            (e.line, e.to_string().as_str()),
            (3, r#"line 3: missing "=" in option line "After""#)
        );

        let e = parse_err("# comment\nDescription=Foo\n[Unit]\nDescription=Bar\n");
        assert_eq!(e.line, 2);
        assert_eq!(
            e.to_string(),
            r#"line 2: option "Description=Foo" outside of any section"#
        );
        assert_eq!(parse_err("garbage\n[Unit]\n").line, 1);

        let e = parse_err("[Unit\nDescription=Foo\n");
        assert_eq!(
            e.to_string(),
            r#"line 1: section header "[Unit" is missing "]""#
        );

        let e = parse_err("\n[Unit] pants\nDescription=Foo\n");
        assert_eq!(e.line, 2);
        assert_eq!(
            e.to_string(),
            r#"line 2: unexpected text "pants" after section header [Unit]"#
        );
        assert_eq!(parse_err("[Unit] # no trailing comments\n").line, 1);
    }

    #[test]
    fn line_length_limit() {
        let head = "[Service]\nExecStart=";
        let fill = |len: usize| "x".repeat(len - "ExecStart=".len());
        // 2047 bytes is fine, with or without a trailing newline or `\r`.
        for tail in ["", "\n", "\r\n", "\r"] {
            let text = format!("{head}{}{tail}", fill(LINE_MAX - 1));
            assert_eq!(
                UnitFile::parse(&text).unwrap().options()[0].value.len(),
                LINE_MAX - 1 - 10
            );
        }
        // 2048 bytes is not.
        for tail in ["", "\n", "\r\n", "\r"] {
            let text = format!("{head}{}{tail}", fill(LINE_MAX));
            let e = parse_err(&text);
            assert_eq!(
                e,
                ParseError {
                    line: 2,
                    kind: ParseErrorKind::LineTooLong
                }
            );
            assert_eq!(e.to_string(), "line 2: line too long (2048 bytes or more)");
        }
        // Comments and continuation lines count too.
        let long = "y".repeat(LINE_MAX);
        assert_eq!(parse_err(&format!("#{long}\n[A]\n")).line, 1);
        assert_eq!(parse_err(&format!("[A]\nk=v\\\n{long}\n")).line, 3);
        assert_eq!(parse_err(&format!("[A]\n# c \\\n{long}\n")).line, 3);
        assert_eq!(parse_err(&format!("[A]\n\n\n{long}")).line, 4);
        // Lines are measured in bytes, not characters.
        let wide = format!("[A]\nk={}", "é".repeat(1023));
        assert_eq!(wide.lines().nth(1).map(str::len), Some(2048));
        assert_eq!(parse_err(&wide).line, 2);
    }

    #[test]
    fn canonical_groups_sections_in_first_appearance_order() {
        let f = UnitFile::parse(
            "[Service]\nExecStart=/bin/a\n[Unit]\nDescription=x\n[Service]\nExecStop=/bin/b\n[Unit]\nAfter=y\n",
        )
        .unwrap();
        assert_eq!(
            f.canonical(),
            "[Service]\nExecStart=/bin/a\nExecStop=/bin/b\n\n[Unit]\nDescription=x\nAfter=y\n"
        );
        // Options keep their original order.
        assert_eq!(f.options()[1], opt("Unit", "Description", "x"));
        assert_eq!(f.to_string(), f.canonical());
        assert_eq!(UnitFile::default().canonical(), "");
        assert_eq!(
            UnitFile::from_options(vec![opt("", "", "")]).canonical(),
            "[]\n=\n"
        );
    }

    /// Golden texts and hashes; each hash was computed independently with
    /// `printf '<canonical>' | sha1sum`.
    #[test]
    fn golden_canonical_text_and_hash() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            (
                "[Service]\nExecStart=/usr/bin/sleep 3000\n",
                "[Service]\nExecStart=/usr/bin/sleep 3000\n",
                "248b997d6becee1b835b7ec7d9c8e68d7dd24623",
            ),
            (
                "# hello\n[Unit]\nDescription = Hello World\n\n\n[Service]\nExecStart=/bin/bash -c \"while true; do echo Hello; sleep 1; done\"\n",
                "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/bash -c \"while true; do echo Hello; sleep 1; done\"\n",
                "e691c7738733e8cc13741640221b78ed8b6c2ec9",
            ),
            (
                "[Service]\nExecStart=/bin/a\n[Unit]\nDescription=x\n[Service]\nExecStop=/bin/b\n",
                "[Service]\nExecStart=/bin/a\nExecStop=/bin/b\n\n[Unit]\nDescription=x\n",
                "091169bca2968447ec859fe37b87532500241dd8",
            ),
            (
                "[Service]\nExecStart=/bin/sh -c \\\n  \"echo hi\"\n\n[X-Fleet]\nConflicts=web@*.service\n",
                "[Service]\nExecStart=/bin/sh -c \\\n  \"echo hi\"\n\n[X-Fleet]\nConflicts=web@*.service\n",
                "89551fd43c0e490a709bb450ac4cdb75f4a180e5",
            ),
            (
                // A continuation ended by a blank line keeps its newline, so
                // the canonical text has two empty lines before [Install].
                "[Service]\r\nExecStart=/bin/echo \\\n\n[Install]\nWantedBy=multi-user.target",
                "[Service]\nExecStart=/bin/echo \\\n\n\n[Install]\nWantedBy=multi-user.target\n",
                "4dddba6395d00c30c2a84301e8d1d4b4313efa3a",
            ),
        ];
        for &(input, canonical, hash) in cases {
            let f = UnitFile::parse(input).unwrap();
            assert_eq!(f.canonical(), canonical, "canonical text of {input:?}");
            assert_eq!(f.hash().to_string(), hash, "hash of {canonical:?}");
        }
    }

    #[test]
    fn accessors() {
        let f = UnitFile::parse(
            "[Unit]\nDescription=first\nDescription=second\n[Install]\nWantedBy=multi-user.target\n[X-Fleet]\nConflicts=\"a\" \"b\"\n",
        )
        .unwrap();
        assert_eq!(f.description(), Some("first"));
        assert_eq!(
            f.values("Unit", "Description").collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert_eq!(
            f.values("X-Fleet", "Conflicts").collect::<Vec<_>>(),
            ["\"a\" \"b\""]
        );
        assert_eq!(f.values("Unit", "Nope").count(), 0);
        assert!(f.has_section("Install"));
        assert!(!f.has_section("Service"));
        // A header without options leaves no trace.
        assert!(
            !UnitFile::parse("[Install]\n")
                .unwrap()
                .has_section("Install")
        );
        assert_eq!(UnitFile::default().description(), None);
        assert_eq!(
            "[Unit]\nA=b".parse::<UnitFile>().unwrap().options().len(),
            1
        );
        let opts = f.clone().into_options();
        assert_eq!(UnitFile::from_options(opts), f);
    }

    #[test]
    fn serde_uses_the_option_list() {
        let f = UnitFile::from_options(vec![opt("Service", "ExecStart", "/bin/true")]);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(
            json,
            r#"[{"section":"Service","name":"ExecStart","value":"/bin/true"}]"#
        );
        assert_eq!(serde_json::from_str::<UnitFile>(&json).unwrap(), f);
    }
}
