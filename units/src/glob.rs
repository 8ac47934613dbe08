//! Go's `path.Match`, the glob dialect of `Conflicts` and `Replaces`.
//!
//! fleet matched these globs with Go's `path.Match`, and users' unit files
//! depend on its exact dialect, so this is a hand port rather than a glob
//! crate (whose dialects differ: `**`, `{a,b}`, `!` negation, `*` crossing
//! `/`, ...). The dialect:
//!
//! * `*` matches any run of bytes except `/`; `?` matches one character
//!   except `/`.
//! * `[...]` is a character class of single characters and `lo-hi` ranges;
//!   `[^...]` negates it. Inside a class `\` escapes the next character, and
//!   `-` or `]` must be escaped.
//! * `\` escapes the next character outside a class too.
//! * The match must cover the whole name.
//!
//! A malformed pattern (unclosed `[`, trailing `\`, empty class, ...) matches
//! nothing, like modern Go, which reports `ErrBadPattern` for it; fleet
//! ignored that error and treated it as "no match".
//!
//! The port works on bytes, like the original: `*` may skip into the middle
//! of a multi-byte character, and `?` or a class then sees U+FFFD there.

/// The pattern is syntactically invalid (Go's `path.ErrBadPattern`).
struct BadPattern;

/// Reports whether `name` matches the shell `pattern`, with Go `path.Match`
/// semantics (see the module docs). A malformed pattern matches nothing.
///
/// ```
/// assert!(units::glob_match("web@*.service", "web@1.service"));
/// assert!(units::glob_match("db-[0-9].service", "db-7.service"));
/// assert!(!units::glob_match("*", "a/b"));
/// assert!(!units::glob_match("[", "["));
/// ```
pub fn glob_match(pattern: &str, name: &str) -> bool {
    matches!(path_match(pattern.as_bytes(), name.as_bytes()), Ok(true))
}

fn path_match(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, BadPattern> {
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing `*` matches the rest of the name unless it has a `/`.
            return Ok(!name.contains(&b'/'));
        }
        // Look for a match at the current position. If this is the last
        // chunk, it must consume the whole name.
        match match_chunk(chunk, name)? {
            Some(t) if t.is_empty() || !pattern.is_empty() => {
                name = t;
                continue;
            }
            _ => {}
        }
        if star {
            // Look for a match skipping i+1 bytes; `*` cannot skip a `/`.
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                if let Some(t) = match_chunk(chunk, &name[i + 1..])? {
                    // The last chunk must consume the whole name.
                    if pattern.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'pattern;
                }
                i += 1;
            }
        }
        // No match. Like Go, still report a malformed rest of the pattern.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Splits off the leading stars and the chunk up to the next unbracketed
/// star: `(had_star, chunk, rest)`.
fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while let [b'*', rest @ ..] = pattern {
        pattern = rest;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            // A trailing backslash is reported by match_chunk.
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// Matches `chunk` (no unbracketed stars) against a prefix of `s`, returning
/// the rest of `s` on success. The whole chunk is always parsed, so a
/// malformed chunk is reported even when the match already failed.
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> Result<Option<&'a [u8]>, BadPattern> {
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match c {
            b'[' => {
                let mut r = 0;
                if !failed {
                    let (decoded, n) = decode_rune(s);
                    r = decoded;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if ranges > 0 && chunk.first() == Some(&b']') {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_esc(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    // get_esc guarantees a non-empty rest.
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = get_esc(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                if c == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(BadPattern);
                    }
                }
                if !failed {
                    if chunk[0] != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { None } else { Some(s) })
}

/// Reads one (possibly escaped) character of a class.
fn get_esc(chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    let mut chunk = match chunk.first() {
        None | Some(b'-' | b']') => return Err(BadPattern),
        Some(b'\\') => &chunk[1..],
        Some(_) => chunk,
    };
    if chunk.is_empty() {
        return Err(BadPattern);
    }
    let (r, n) = decode_rune(chunk);
    if r == u32::from(char::REPLACEMENT_CHARACTER) && n == 1 {
        return Err(BadPattern);
    }
    chunk = &chunk[n..];
    if chunk.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, chunk))
}

/// Decodes the first UTF-8 character of a non-empty `s` like Go's
/// `utf8.DecodeRune`: invalid or truncated input gives `(U+FFFD, 1)`.
fn decode_rune(s: &[u8]) -> (u32, usize) {
    const INVALID: (u32, usize) = (0xFFFD, 1);
    let b0 = s[0];
    let (len, init) = match b0 {
        0x00..=0x7F => return (u32::from(b0), 1),
        0xC2..=0xDF => (2, b0 & 0x1F),
        0xE0..=0xEF => (3, b0 & 0x0F),
        0xF0..=0xF4 => (4, b0 & 0x07),
        _ => return INVALID,
    };
    let Some(tail) = s.get(1..len) else {
        return INVALID;
    };
    let mut r = u32::from(init);
    for &b in tail {
        if b & 0xC0 != 0x80 {
            return INVALID;
        }
        r = (r << 6) | u32::from(b & 0x3F);
    }
    let min = match len {
        2 => 0x80,
        3 => 0x800,
        _ => 0x10000,
    };
    if r < min || r > 0x10FFFF || (0xD800..=0xDFFF).contains(&r) {
        return INVALID;
    }
    (r, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's own `path.Match` test table (`path/match_test.go`), where
    /// "error" rows must not match.
    #[test]
    fn go_match_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            // Malformed patterns (Go returns ErrBadPattern) match nothing.
            ("[]a]", "]", false),
            ("[-]", "-", false),
            ("[x-]", "x", false),
            ("[x-]", "-", false),
            ("[x-]", "z", false),
            ("[-x]", "x", false),
            ("[-x]", "-", false),
            ("[-x]", "a", false),
            ("\\", "a", false),
            ("[a-b-c]", "a", false),
            ("[", "a", false),
            ("[^", "a", false),
            ("[^bc", "a", false),
            ("a[", "a", false),
            ("a[", "ab", false),
            ("a[", "x", false),
            ("a/b[", "x", false),
            ("*x", "xxx", true),
        ];
        for &(pattern, name, want) in cases {
            assert_eq!(
                glob_match(pattern, name),
                want,
                "glob_match({pattern:?}, {name:?})"
            );
        }
    }

    #[test]
    fn unit_name_globs() {
        assert!(glob_match("foo*", "foo.service"));
        assert!(glob_match("foo@*.service", "foo@1.service"));
        assert!(!glob_match("foo@*.service", "foo@1.socket"));
        assert!(glob_match("*.service", "foo.service"));
        assert!(glob_match("?oo.service", "foo.service"));
        assert!(glob_match("apache.[0-9].service", "apache.3.service"));
        // `!` is not a negation in Go's dialect, only `^` is.
        assert!(glob_match("apache.[!0-9].service", "apache.3.service"));
        assert!(!glob_match("apache.[^0-9].service", "apache.3.service"));
        assert!(glob_match("*bar*", "foobarbaz.service"));
        assert!(!glob_match("bar", "foobar"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        // A malformed tail is reported even when an earlier chunk failed.
        assert!(!glob_match("x*[", "abc"));
    }

    #[test]
    fn decodes_like_go() {
        assert_eq!(decode_rune(b"a"), (u32::from('a'), 1));
        assert_eq!(decode_rune("é".as_bytes()), (0xE9, 2));
        assert_eq!(decode_rune("☺".as_bytes()), (0x263A, 3));
        assert_eq!(decode_rune("😀".as_bytes()), (0x1F600, 4));
        assert_eq!(decode_rune(&"☺".as_bytes()[1..]), (0xFFFD, 1));
        assert_eq!(decode_rune(&[0xE2, 0x98]), (0xFFFD, 1));
        assert_eq!(decode_rune(&[0xC0, 0x80]), (0xFFFD, 1));
    }
}
