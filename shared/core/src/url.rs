//! Percent-encoding (RFC 3986) as URLs, query strings and form bodies need
//! it: one implementation for the web page's paths, the fidelity proxy's
//! form bodies and the identity token's audience.

/// `s` with every byte but the unreserved characters (`A-Z a-z 0-9 - _ . ~`)
/// as `%XX`.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `%XX` decoded; a `%` not followed by two hex digits stays as it is;
/// bytes that are not UTF-8 become U+FFFD.
pub fn decode(s: &str) -> String {
    decode_bytes(s, false)
}

/// Like [`decode`], with `+` as a space (`application/x-www-form-urlencoded`).
pub fn decode_form(s: &str) -> String {
    decode_bytes(s, true)
}

fn decode_bytes(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_decode_round_trip() {
        assert_eq!(encode("a b/ü~"), "a%20b%2F%C3%BC~");
        assert_eq!(decode(&encode("a b/ü~")), "a b/ü~");
        assert_eq!(decode("model%2Ebin%"), "model.bin%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("%zz1"), "%zz1");
        assert_eq!(decode("a+b"), "a+b");
        assert_eq!(decode_form("a+b%2B"), "a b+");
    }
}
