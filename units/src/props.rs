//! Property tests: canonical text is a fixed point of parsing, and the
//! options the API accepts are exactly those whose canonical text reads back
//! to them (so no stored unit hashes differently once written to disk).

use proptest::prelude::*;

use crate::{RequirementsError, UnitFile, UnitName, UnitOption, validate_options};

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

/// Pieces of option text that unit-file syntax allows: whitespace of every
/// kind, backslashes and continuations, the characters the syntax gives
/// meaning to, and ordinary text.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[A-Za-z0-9/ .-]{1,8}",
        3 => Just(" ".to_owned()),
        1 => Just("\t".to_owned()),
        1 => Just("\u{a0}".to_owned()),
        1 => Just("\u{3000}".to_owned()),
        2 => Just("\\".to_owned()),
        4 => Just("\\\n".to_owned()),
        1 => prop_oneof![Just("#"), Just(";"), Just("["), Just("]"), Just("="), Just("\"")]
            .prop_map(str::to_owned),
        1 => Just("é☃".to_owned()),
    ]
}

/// Pieces that are not allowed, or only at the ends of a value: bare line
/// breaks, carriage returns, control characters, Unicode line separators.
fn hostile_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("\n".to_owned()),
        1 => Just("\r".to_owned()),
        1 => Just("\r\n".to_owned()),
        1 => Just("\0".to_owned()),
        1 => Just("\u{1b}".to_owned()),
        1 => Just("\u{7f}".to_owned()),
        1 => Just("\u{85}".to_owned()),
        1 => Just("\u{2028}".to_owned()),
        1 => Just("\u{b}".to_owned()),
    ]
}

/// Text made of up to `max` pieces, mostly allowed ones.
fn hostile(max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![12 => fragment(), 1 => hostile_fragment()];
    prop::collection::vec(piece, 0..max).prop_map(|parts| parts.concat())
}

/// Options as an API client may send them.
fn sent_option() -> impl Strategy<Value = UnitOption> {
    let section = prop_oneof![3 => Just("Service".to_owned()), 1 => hostile(3)];
    let name = prop_oneof![3 => Just("ExecStart".to_owned()), 1 => hostile(3)];
    let value = prop_oneof![
        8 => hostile(8),
        // Near the line length limit.
        1 => (2030usize..2050).prop_map(|n| format!("/bin/{}", "x".repeat(n))),
    ];
    (section, name, value).prop_map(|(s, n, v)| UnitOption::new(s, n, v))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The API's check, [`validate_options`], accepts a set of options
    /// exactly when the canonical text of the stored (normal-form) options
    /// reads back to those options; when it does, what an agent writes,
    /// parses and hashes has the stored hash. No value that could restart a
    /// unit on every agent pass is accepted, and none is refused that would
    /// have been fine.
    #[test]
    fn accepted_exactly_when_canonical_text_reads_back(sent in prop::collection::vec(sent_option(), 1..5)) {
        let name: UnitName = "values.service".parse().unwrap();
        let stored = UnitFile::from_options(sent);
        let text = stored.canonical();
        let back = UnitFile::parse(&text);
        let reads_back = back.as_ref().is_ok_and(|b| b.options() == stored.regrouped().as_slice());
        match validate_options(&name, &stored) {
            Ok(_) => {
                prop_assert!(reads_back, "accepted {:?} but {:?} reads back as {:?}", stored, text, back);
                let back = back.unwrap();
                prop_assert_eq!(back.hash(), stored.hash());
                prop_assert_eq!(back.canonical(), text);
            }
            Err(RequirementsError::InvalidOption { unit, section, option, .. }) => {
                prop_assert_eq!(unit, "values.service");
                prop_assert!(stored.options().iter().any(|o| o.section == section && o.name == option));
                prop_assert!(!reads_back, "refused {:?}, yet {:?} reads back the same", stored, text);
            }
            Err(e) => prop_assert!(false, "{:?}: unexpected refusal {}", stored, e),
        }
    }
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
        if let Ok(first) = UnitFile::parse(&text) {
            // What parses is accepted by the API as it is.
            for opt in first.options() {
                prop_assert_eq!(opt.check(), Ok(()), "{:?} from {:?}", opt, text);
            }
            prop_assert_eq!(UnitFile::from_options(first.options().to_vec()), first.clone());
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
