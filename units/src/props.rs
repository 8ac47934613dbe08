//! Property tests: canonical text is a fixed point of parsing.

use proptest::prelude::*;

use crate::{UnitFile, UnitOption};

/// Section names as they can come out of the parser: no `]`, no newline,
/// not empty of meaning but possibly odd.
fn section() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Unit".to_owned()),
        Just("Service".to_owned()),
        Just("X-Fleet".to_owned()),
        Just("Install".to_owned()),
        "[A-Za-z ][A-Za-z0-9 @#;=\\[-]{0,8}",
    ]
}

/// Option names as the parser yields them: trimmed, no `=`, no line break,
/// not starting with a comment or header character.
fn option_name() -> impl Strategy<Value = String> {
    "([A-Za-z<][A-Za-z0-9 #;\\[\\]-]{0,10}[A-Za-z0-9])?"
}

/// Values as the parser yields them: trimmed, not ending in a backslash;
/// continuation lines appear as `\` + newline + text.
fn value() -> impl Strategy<Value = String> {
    let line = "[A-Za-z0-9\"'=#;@%*\\[\\] \\\\-]{0,12}";
    (prop::collection::vec(line, 1..4), any::<bool>()).prop_map(|(lines, trailing_newline)| {
        let mut value = String::new();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim_end_matches([' ', '\\']);
            if i == 0 {
                value.push_str(line.trim_start());
            } else {
                value.push_str(" \\\n");
                value.push_str(line);
            }
        }
        let mut value = value.trim().to_owned();
        while value.ends_with('\\') {
            value.pop();
            value.truncate(value.trim_end().len());
        }
        // A continuation ended by a blank line keeps its newline.
        if trailing_newline && !value.is_empty() {
            format!("{value} \\\n")
        } else {
            value
        }
    })
}

fn option() -> impl Strategy<Value = UnitOption> {
    (section(), option_name(), value()).prop_map(|(s, n, v)| UnitOption::new(s, n, v))
}

/// Text built from the pieces the parser knows about, including comments,
/// blank lines, CRLF endings and continuations.
fn unit_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        2 => "\\[[A-Za-z -]{0,6}\\][ \t]{0,2}",
        8 => "[ \t]{0,2}[A-Za-z][A-Za-z0-9 ]{0,5}[ \t]{0,2}=[ \t]{0,2}[A-Za-z0-9 \"=\\\\#;\\[]{0,10}",
        3 => "[ \t]{0,2}[A-Za-z]{1,4}=[A-Za-z0-9 =#\\[]{0,8}\\\\",
        2 => "[ \t]{0,2}[#;][A-Za-z0-9 \\\\]{0,8}",
        2 => "[ \t]{0,3}",
        1 => "[A-Za-z0-9 \\\\#=\\[]{0,10}",
    ];
    (
        prop::collection::vec((piece, prop_oneof![Just("\n"), Just("\r\n")]), 0..14),
        any::<bool>(),
    )
        .prop_map(|(lines, header)| {
            let mut text = String::from(if header { "[Unit]\n" } else { "" });
            for (line, end) in lines {
                text.push_str(&line);
                text.push_str(end);
            }
            text
        })
}

proptest! {
    #[test]
    fn canonical_text_parses_back_to_the_same_options(opts in prop::collection::vec(option(), 0..12)) {
        let file = UnitFile::from_options(opts);
        let text = file.canonical();
        let reparsed = UnitFile::parse(&text).map_err(|e| TestCaseError::fail(format!("{e} in {text:?}")))?;
        prop_assert_eq!(reparsed.canonical(), text);
        prop_assert_eq!(reparsed.hash(), file.hash());
        // Parsing regroups by section; within a section order is kept.
        let regrouped = UnitFile::parse(&UnitFile::from_options(reparsed.options().to_vec()).canonical()).unwrap();
        prop_assert_eq!(regrouped.options(), reparsed.options());
    }

    #[test]
    fn parsed_text_is_canonical_after_one_round(text in unit_text()) {
        // Values ending in a backslash cannot round-trip in the original
        // format either: the written backslash continues onto the next line.
        if let Ok(first) = UnitFile::parse(&text) {
            if first.options().iter().any(|o| o.value.ends_with('\\')) {
                return Ok(());
            }
            let canonical = first.canonical();
            let second = UnitFile::parse(&canonical).map_err(|e| TestCaseError::fail(format!("{e} in {canonical:?}")))?;
            prop_assert_eq!(second.canonical(), canonical.clone());
            prop_assert_eq!(second.hash(), first.hash());
            prop_assert_eq!(UnitFile::parse(&second.canonical()).unwrap(), second);
        }
    }

    #[test]
    fn glob_literal_patterns_match_themselves(name in "[A-Za-z0-9:_.@-]{1,20}") {
        prop_assert!(crate::glob_match(&name, &name));
        prop_assert!(crate::glob_match("*", &name));
    }
}
