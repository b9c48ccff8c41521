//! JSON between the host and the guest, with no intermediate tree.
//!
//! * [`Writer`] produces JSON text token by token. The NIF walks an Erlang
//!   term and feeds it here, so arguments go straight from the term to the
//!   bytes the guest reads.
//! * [`decode`] parses JSON text and hands each value to a [`Builder`], so a
//!   response becomes Erlang terms directly.
//!
//! Both are bounded: nesting deeper than [`MAX_DEPTH`] is refused instead of
//! recursing on a native stack, and the writer stops at a byte budget.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Deepest nesting of arrays and objects accepted in either direction.
pub const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("JSON text larger than {0} bytes")]
    TooLarge(usize),
    #[error("float is not finite")]
    NonFiniteFloat,
}

/// Streaming JSON text writer. The caller is responsible for the structure
/// (a key before every object value); the writer inserts separators, escapes
/// strings and enforces the depth and size limits.
pub struct Writer {
    out: Vec<u8>,
    max_bytes: usize,
    /// One entry per open container: has it had an element yet?
    stack: Vec<bool>,
    after_key: bool,
}

impl Writer {
    pub fn new(max_bytes: usize) -> Self {
        Writer {
            out: Vec::with_capacity(64),
            max_bytes,
            stack: Vec::new(),
            after_key: false,
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    /// Whether `bytes` more would stay within the budget.
    pub fn fits(&self, bytes: usize) -> bool {
        self.out.len().saturating_add(bytes) <= self.max_bytes
    }

    /// The budget.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    fn check_size(&self) -> Result<(), EncodeError> {
        if self.out.len() > self.max_bytes {
            Err(EncodeError::TooLarge(self.max_bytes))
        } else {
            Ok(())
        }
    }

    fn separator(&mut self) {
        if self.after_key {
            self.after_key = false;
        } else if let Some(has_items) = self.stack.last_mut() {
            if *has_items {
                self.out.push(b',');
            }
            *has_items = true;
        }
    }

    fn open(&mut self, byte: u8) -> Result<(), EncodeError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(EncodeError::TooDeep);
        }
        self.separator();
        self.out.push(byte);
        self.stack.push(false);
        self.check_size()
    }

    fn close(&mut self, byte: u8) {
        self.stack.pop();
        self.out.push(byte);
    }

    pub fn begin_array(&mut self) -> Result<(), EncodeError> {
        self.open(b'[')
    }

    pub fn end_array(&mut self) {
        self.close(b']')
    }

    pub fn begin_object(&mut self) -> Result<(), EncodeError> {
        self.open(b'{')
    }

    pub fn end_object(&mut self) {
        self.close(b'}')
    }

    /// An object key; the next value written is its value.
    pub fn key(&mut self, key: &str) -> Result<(), EncodeError> {
        self.string(key)?;
        self.out.push(b':');
        self.after_key = true;
        Ok(())
    }

    pub fn null(&mut self) -> Result<(), EncodeError> {
        self.raw(b"null")
    }

    pub fn bool(&mut self, value: bool) -> Result<(), EncodeError> {
        self.raw(if value { b"true" } else { b"false" })
    }

    pub fn i64(&mut self, value: i64) -> Result<(), EncodeError> {
        self.separator();
        // Writing into a Vec cannot fail, and needs no String per number.
        let _ = std::io::Write::write_fmt(&mut self.out, format_args!("{value}"));
        self.check_size()
    }

    pub fn u64(&mut self, value: u64) -> Result<(), EncodeError> {
        self.separator();
        let _ = std::io::Write::write_fmt(&mut self.out, format_args!("{value}"));
        self.check_size()
    }

    pub fn f64(&mut self, value: f64) -> Result<(), EncodeError> {
        if !value.is_finite() {
            return Err(EncodeError::NonFiniteFloat);
        }
        // serde_json prints the shortest text that round-trips, and always
        // keeps a decimal point or exponent so the value stays a float.
        let text = serde_json::to_string(&value).map_err(|_| EncodeError::NonFiniteFloat)?;
        self.raw(text.as_bytes())
    }

    pub fn string(&mut self, value: &str) -> Result<(), EncodeError> {
        // Refuse before copying: escaping only makes the text longer.
        if self.out.len() + value.len() + 2 > self.max_bytes {
            return Err(EncodeError::TooLarge(self.max_bytes));
        }
        self.separator();
        self.out.reserve(value.len() + 2);
        self.out.push(b'"');
        let bytes = value.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0..=0x1f => b"",
                _ => continue,
            };
            self.out.extend_from_slice(&bytes[start..i]);
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.out.extend_from_slice(b"\\u00");
                self.out.push(HEX[(b >> 4) as usize]);
                self.out.push(HEX[(b & 0xf) as usize]);
            } else {
                self.out.extend_from_slice(escape);
            }
            start = i + 1;
        }
        self.out.extend_from_slice(&bytes[start..]);
        self.out.push(b'"');
        self.check_size()
    }

    fn raw(&mut self, text: &[u8]) -> Result<(), EncodeError> {
        self.separator();
        self.out.extend_from_slice(text);
        self.check_size()
    }
}

/// Receives parsed JSON values bottom-up and builds the caller's own
/// representation (Erlang terms in the NIF, plain values in tests).
pub trait Builder {
    type Value;
    fn null(&mut self) -> Self::Value;
    fn bool(&mut self, value: bool) -> Self::Value;
    fn i64(&mut self, value: i64) -> Self::Value;
    fn u64(&mut self, value: u64) -> Self::Value;
    fn f64(&mut self, value: f64) -> Self::Value;
    fn string(&mut self, value: &str) -> Self::Value;
    fn array(&mut self, items: Vec<Self::Value>) -> Self::Value;
    /// Keys are in document order; a later duplicate key wins.
    fn object(&mut self, entries: Vec<(Self::Value, Self::Value)>) -> Self::Value;
}

/// Parses one JSON document (surrounding whitespace allowed) into `builder`'s
/// values. Errors carry serde_json's message, with line and column.
pub fn decode<B: Builder>(text: &[u8], builder: &mut B) -> Result<B::Value, String> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = Seed { builder, depth: 0 }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

struct Seed<'b, B> {
    builder: &'b mut B,
    depth: usize,
}

impl<'de, B: Builder> DeserializeSeed<'de> for Seed<'_, B> {
    type Value = B::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<B::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<B: Builder> Seed<'_, B> {
    fn nested(&mut self) -> Seed<'_, B> {
        Seed {
            builder: self.builder,
            depth: self.depth + 1,
        }
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        if self.depth >= MAX_DEPTH {
            Err(E::custom(format!("nesting deeper than {MAX_DEPTH} levels")))
        } else {
            Ok(())
        }
    }
}

impl<'de, B: Builder> Visitor<'de> for Seed<'_, B> {
    type Value = B::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<B::Value, E> {
        Ok(self.builder.null())
    }

    fn visit_bool<E>(self, v: bool) -> Result<B::Value, E> {
        Ok(self.builder.bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<B::Value, E> {
        Ok(self.builder.i64(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<B::Value, E> {
        Ok(self.builder.u64(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<B::Value, E> {
        Ok(self.builder.f64(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<B::Value, E> {
        Ok(self.builder.string(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<B::Value, A::Error> {
        self.enter()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(self.nested())? {
            items.push(item);
        }
        Ok(self.builder.array(items))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<B::Value, A::Error> {
        self.enter()?;
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let key = self.builder.string(&key);
            let value = map.next_value_seed(self.nested())?;
            entries.push((key, value));
        }
        Ok(self.builder.object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a compact canonical text, so tests compare strings.
    struct Show;

    impl Builder for Show {
        type Value = String;
        fn null(&mut self) -> String {
            "nil".into()
        }
        fn bool(&mut self, v: bool) -> String {
            v.to_string()
        }
        fn i64(&mut self, v: i64) -> String {
            format!("i{v}")
        }
        fn u64(&mut self, v: u64) -> String {
            format!("u{v}")
        }
        fn f64(&mut self, v: f64) -> String {
            format!("f{v}")
        }
        fn string(&mut self, v: &str) -> String {
            format!("{v:?}")
        }
        fn array(&mut self, items: Vec<String>) -> String {
            format!("[{}]", items.join(" "))
        }
        fn object(&mut self, entries: Vec<(String, String)>) -> String {
            let parts: Vec<String> = entries.iter().map(|(k, v)| format!("{k}=>{v}")).collect();
            format!("%{{{}}}", parts.join(" "))
        }
    }

    fn show(text: &str) -> Result<String, String> {
        decode(text.as_bytes(), &mut Show)
    }

    #[test]
    fn decodes_every_kind_of_value() {
        assert_eq!(
            show(r#" {"a": [1, -2, 2.5, true, null, "x\u00e9\n"], "b": {}} "#).unwrap(),
            r#"%{"a"=>[u1 i-2 f2.5 true nil "xé\n"] "b"=>%{}}"#
        );
        assert_eq!(
            show("18446744073709551615").unwrap(),
            "u18446744073709551615"
        );
        assert!(show("1e400").unwrap_err().contains("number out of range"));
    }

    #[test]
    fn keeps_duplicate_keys_in_order_for_the_builder() {
        assert_eq!(show(r#"{"k":1,"k":2}"#).unwrap(), r#"%{"k"=>u1 "k"=>u2}"#);
    }

    #[test]
    fn refuses_invalid_and_trailing_text() {
        assert!(show("").is_err());
        assert!(show("{").is_err());
        assert!(show("hello").is_err());
        assert!(show("{} x").unwrap_err().contains("trailing characters"));
        assert!(show("\"\u{0}\"").is_err());
    }

    #[test]
    fn bounds_nesting_depth() {
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(show(&ok).is_ok());
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(show(&deep).is_err());
        let deep_obj = r#"{"a":"#.repeat(MAX_DEPTH + 1) + "1" + &"}".repeat(MAX_DEPTH + 1);
        assert!(show(&deep_obj).is_err());
    }

    fn write_sample(w: &mut Writer) -> Result<(), EncodeError> {
        w.begin_object()?;
        w.key("name")?;
        w.string("Fun\"Less\"\n\u{1}\\é")?;
        w.key("list")?;
        w.begin_array()?;
        w.i64(-3)?;
        w.u64(u64::MAX)?;
        w.f64(1.0)?;
        w.f64(0.1)?;
        w.bool(false)?;
        w.null()?;
        w.begin_object()?;
        w.end_object();
        w.begin_array()?;
        w.end_array();
        w.end_array();
        w.end_object();
        Ok(())
    }

    #[test]
    fn writes_valid_json_that_round_trips() {
        let mut w = Writer::new(1 << 20);
        write_sample(&mut w).unwrap();
        let text = String::from_utf8(w.into_bytes()).unwrap();
        assert_eq!(
            text,
            r#"{"name":"Fun\"Less\"\n\u0001\\é","list":[-3,18446744073709551615,1.0,0.1,false,null,{},[]]}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["name"], "Fun\"Less\"\n\u{1}\\é");
    }

    #[test]
    fn writer_enforces_limits() {
        let mut w = Writer::new(10);
        assert_eq!(
            w.string("more than ten bytes"),
            Err(EncodeError::TooLarge(10))
        );
        let mut w = Writer::new(1 << 20);
        for _ in 0..MAX_DEPTH {
            w.begin_array().unwrap();
        }
        assert_eq!(w.begin_array(), Err(EncodeError::TooDeep));
        assert_eq!(
            Writer::new(100).f64(f64::NAN),
            Err(EncodeError::NonFiniteFloat)
        );
    }
}
