//! Text a guest chose, made safe to show: in a log record, in an error.
//!
//! A guest's text never holds a character that a terminal or log viewer
//! could act on, and never spans two lines: [`escape`] writes
//!
//! | input | written as |
//! |---|---|
//! | `\` (backslash) | `\\`, so an escape can't be forged |
//! | newline, carriage return, tab | `\n`, `\r`, `\t` |
//! | any other C0 control (U+0000-U+001F) and DEL (U+007F) | `\xNN`, two lowercase hex digits: NUL is `\x00`, ESC is `\x1b` |
//! | C1 controls (U+0080-U+009F, NEL U+0085 among them), the line and paragraph separators U+2028/U+2029, the bidirectional embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069 | Rust's `\u{N}`, lowercase hex without leading zeros: `\u{85}`, `\u{2028}` |
//!
//! That is every character for which [`char::is_control`] holds, plus the
//! Unicode line breakers that are not controls (VT, FF, CR, LF and NEL are
//! controls) and the characters that reorder text on display. Invalid UTF-8
//! becomes U+FFFD, one per invalid sequence, as `String::from_utf8_lossy`
//! does. Everything else, other non-ASCII text included, is kept as is.
//!
//! The log (`logs`) escapes every line; refusals escape the names a
//! module chose (`Error::refused`), and exec errors the end of a
//! guest's stderr.

/// Whether `c` is written as an escape (see the table above).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\\' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Decodes `bytes` as UTF-8 (invalid sequences becoming U+FFFD) and escapes
/// it as the table above says. The result is never shorter than `bytes`.
pub fn escape(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        let mut start = 0;
        for (i, c) in valid.char_indices() {
            if !needs_escape(c) {
                continue;
            }
            out.push_str(&valid[start..i]);
            start = i + c.len_utf8();
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_ascii() => {
                    let b = c as u8;
                    out.push_str("\\x");
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0xf)]));
                }
                c => out.extend(c.escape_unicode()),
            }
        }
        out.push_str(&valid[start..]);
        if !chunk.invalid().is_empty() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
    out
}

/// Export names listed in a refusal, at most, each cut to
/// [`LISTED_NAME_CHARS`]: a module may have 100,000 exports of 100 KB.
const LISTED_EXPORTS: usize = 8;
const LISTED_NAME_CHARS: usize = 64;

/// The first export names, cut, and how many more there are (the refusal
/// that carries them is escaped whole).
pub fn listed<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = names.len();
    if total == 0 {
        return "nothing".into();
    }
    let mut listed: Vec<String> = names
        .take(LISTED_EXPORTS)
        .map(|name| {
            let cut = if name.chars().count() > LISTED_NAME_CHARS {
                "..."
            } else {
                ""
            };
            let name: String = name.chars().take(LISTED_NAME_CHARS).collect();
            format!("`{name}{cut}`")
        })
        .collect();
    if total > LISTED_EXPORTS {
        listed.push(format!("and {} more", total - LISTED_EXPORTS));
    }
    listed.join(", ")
}
