//! Decoding text in which bytes are written as a marker and two hex digits:
//! URLs (`%2F`, for fleetd's HTTP client) and systemd's D-Bus object path
//! labels (`_2e`, for the systemd crate). Both formats are the same but for
//! the marker, so one decoder serves them.

/// Decodes every `<marker>XX` in `s` (the two characters after the marker
/// read as `u8::from_str_radix(XX, 16)` does) to the byte they name; other
/// bytes are kept. `None` when an escape is cut
/// short or not hex, or when the bytes are not UTF-8.
#[must_use]
pub fn decode_hex_escapes(s: &str, marker: u8) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == marker {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_with_either_marker() {
        assert_eq!(
            decode_hex_escapes("a%2Fb%2f", b'%').as_deref(),
            Some("a/b/")
        );
        assert_eq!(
            decode_hex_escapes("web_40_31_2eservice", b'_').as_deref(),
            Some("web@1.service")
        );
        assert_eq!(decode_hex_escapes("plain", b'%').as_deref(), Some("plain"));
        assert_eq!(decode_hex_escapes("%c3%a9", b'%').as_deref(), Some("é"));
        assert_eq!(decode_hex_escapes("cut%2", b'%'), None);
        assert_eq!(decode_hex_escapes("%zz", b'%'), None);
        assert_eq!(decode_hex_escapes("%ff", b'%'), None);
    }
}
