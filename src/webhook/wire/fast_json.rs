//! A fast, strict JSON reader for the admission path.
//!
//! Most of an AdmissionReview is what the webhook skips (managed fields, probes, resources,
//! the last-applied annotation), and serde_json validates skipped values through its general
//! state machine: that was most of the cost of an admission. This reader drives the same
//! serde-derived views but skips values with a tight scanner.
//!
//! It is strict by design: it refuses anything it does not need to handle (an escape in a
//! string the view keeps, a number or `true` where the view reads a value, an array where it
//! reads an object, nesting past [`MAX_DEPTH`]), and the caller then reads the body with
//! serde_json. Where it accepts, it applies JSON's grammar exactly as serde_json does when
//! skipping, and hands the derived views the same borrowed strings, so it never accepts what
//! serde_json refuses and never reads a value differently (checked against serde_json in the
//! tests below and in `admission`).

use std::fmt;

use serde::Deserialize;
use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The reader declined the input; read it with serde_json instead.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not read by the fast path")
    }
}

impl std::error::Error for Refused {}

impl de::Error for Refused {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Refused
    }
}

/// Deepest nesting read or skipped (serde_json allows 128).
pub const MAX_DEPTH: usize = 64;

/// Reads `T` from the whole of `text` (whitespace around the value is allowed).
pub fn from_str<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, Refused> {
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        at: 0,
        depth: 0,
    };
    let value = T::deserialize(&mut reader)?;
    match reader.peek() {
        None => Ok(value),
        Some(_) => Err(Refused),
    }
}

struct Reader<'de> {
    text: &'de str,
    bytes: &'de [u8],
    at: usize,
    depth: usize,
}

const ONES: u64 = u64::MAX / 255;
const HIGH_BITS: u64 = ONES << 7;

const LOW_BITS: u64 = ONES * 0x7f;

/// Sets the high bit of each byte of `x` that ends or escapes a string (`"`, `\`) or may not
/// appear in one (a control character). Exact for every byte: no carry crosses bytes.
#[inline]
fn specials(x: u64) -> u64 {
    let zero = |y: u64| !(((y & LOW_BITS) + LOW_BITS) | y) & HIGH_BITS;
    let control = !(((x & LOW_BITS) + ONES * 0x60) | x) & HIGH_BITS;
    zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\'))) | control
}

fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

impl<'de> Reader<'de> {
    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.at) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    fn eat(&mut self, b: u8) -> Result<(), Refused> {
        if self.peek() == Some(b) {
            self.at += 1;
            Ok(())
        } else {
            Err(Refused)
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Refused> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(Refused)
        }
    }

    fn enter(&mut self) -> Result<(), Refused> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Refused);
        }
        Ok(())
    }

    /// Reads an object or array: `visit` takes its members, then the closing bracket follows.
    fn container<T>(
        &mut self,
        open: u8,
        close: u8,
        visit: impl FnOnce(Elements<'_, 'de>) -> Result<T, Refused>,
    ) -> Result<T, Refused> {
        self.eat(open)?;
        self.enter()?;
        let value = visit(Elements {
            reader: &mut *self,
            first: true,
            close,
        })?;
        self.eat(close)?;
        self.depth -= 1;
        Ok(value)
    }

    /// Index of the first `"`, `\` or control byte at or after `at`, eight bytes at a time.
    #[inline]
    fn scan(&self, mut at: usize) -> Result<usize, Refused> {
        let bytes = self.bytes;
        while let Some(chunk) = bytes.get(at..at + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let hits = specials(u64::from_le_bytes(word));
            if hits != 0 {
                return Ok(at + (hits.trailing_zeros() / 8) as usize);
            }
            at += 8;
        }
        while let Some(&b) = bytes.get(at) {
            if is_special(b) {
                return Ok(at);
            }
            at += 1;
        }
        Err(Refused)
    }

    /// A string without escapes, borrowed from the input.
    fn plain_str(&mut self) -> Result<&'de str, Refused> {
        self.eat(b'"')?;
        let start = self.at;
        let end = self.scan(start)?;
        if self.bytes[end] != b'"' {
            return Err(Refused);
        }
        self.at = end + 1;
        // Both ends sit next to an ASCII quote, so they are character boundaries.
        self.text.get(start..end).ok_or(Refused)
    }

    /// Skips the rest of a string whose opening quote was consumed, checking its escapes.
    fn skip_str(&mut self) -> Result<(), Refused> {
        loop {
            let at = self.scan(self.at)?;
            match self.bytes[at] {
                b'"' => {
                    self.at = at + 1;
                    return Ok(());
                }
                b'\\' => match self.bytes.get(at + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at = at + 2,
                    Some(b'u') => {
                        let hex = self.bytes.get(at + 2..at + 6).ok_or(Refused)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err(Refused);
                        }
                        self.at = at + 6;
                    }
                    _ => return Err(Refused),
                },
                _ => return Err(Refused),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        self.at - start
    }

    /// Skips a number: `-`? (`0` | [1-9][0-9]*) (`.` [0-9]+)? ([eE] [+-]? [0-9]+)?
    fn skip_number(&mut self) -> Result<(), Refused> {
        if self.bytes[self.at] == b'-' {
            self.at += 1;
        }
        match self.bytes.get(self.at) {
            Some(b'0') => {
                self.at += 1;
                if self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
                    return Err(Refused);
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Refused),
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(Refused);
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(Refused);
            }
        }
        Ok(())
    }

    /// Reads `"key":` inside an object being skipped.
    fn skip_key(&mut self) -> Result<(), Refused> {
        self.eat(b'"')?;
        self.skip_str()?;
        self.eat(b':')
    }

    /// Skips one value of any kind, without recursion: `open` holds, one bit per level, whether
    /// each enclosing container is an object.
    fn skip_value(&mut self) -> Result<(), Refused> {
        let base = self.depth;
        let mut open: u64 = 0;
        loop {
            match self.peek().ok_or(Refused)? {
                b'"' => {
                    self.at += 1;
                    self.skip_str()?;
                }
                b @ (b'{' | b'[') => {
                    self.at += 1;
                    let (object, close) = (b == b'{', if b == b'{' { b'}' } else { b']' });
                    if self.peek() == Some(close) {
                        self.at += 1;
                    } else {
                        self.enter()?;
                        open = (open << 1) | u64::from(object);
                        if object {
                            self.skip_key()?;
                        }
                        continue;
                    }
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.skip_number()?,
                _ => return Err(Refused),
            }
            // After a value: close what ends here, or move on to the next element.
            loop {
                if self.depth == base {
                    return Ok(());
                }
                let object = open & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.at += 1;
                        if object {
                            self.skip_key()?;
                        }
                        break;
                    }
                    Some(b'}') if object => {}
                    Some(b']') if !object => {}
                    _ => return Err(Refused),
                }
                self.at += 1;
                self.depth -= 1;
                open >>= 1;
            }
        }
    }
}

impl<'de> Deserializer<'de> for &mut Reader<'de> {
    type Error = Refused;

    /// The views never ask for "whatever comes"; a caller that does gets serde_json instead.
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_borrowed_str(self.plain_str()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.container(b'{', b'}', |elements| visitor.visit_map(elements))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.deserialize_map(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.container(b'[', b']', |elements| visitor.visit_seq(elements))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.skip_value()?;
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct newtype_struct tuple tuple_struct enum
    }
}

/// The members of an object or the elements of an array being read.
struct Elements<'a, 'de> {
    reader: &'a mut Reader<'de>,
    first: bool,
    close: u8,
}

impl Elements<'_, '_> {
    /// Moves past the separator; false at the end of the container (left for the caller).
    fn next(&mut self) -> Result<bool, Refused> {
        match self.reader.peek() {
            Some(b) if b == self.close => return Ok(false),
            Some(b',') if !self.first => self.reader.at += 1,
            Some(_) if self.first => {}
            _ => return Err(Refused),
        }
        self.first = false;
        Ok(true)
    }
}

impl<'de> MapAccess<'de> for Elements<'_, 'de> {
    type Error = Refused;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Refused> {
        if !self.next()? {
            return Ok(None);
        }
        let key = self.reader.plain_str()?;
        self.reader.eat(b':')?;
        seed.deserialize(BorrowedStrDeserializer::new(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Refused> {
        seed.deserialize(&mut *self.reader)
    }
}

impl<'de> SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Refused;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Refused> {
        if !self.next()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.reader).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the reader takes `text` as exactly one JSON value.
    fn validate(text: &str) -> Result<(), Refused> {
        from_str::<de::IgnoredAny>(text).map(|_| ())
    }

    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<de::IgnoredAny>(text).is_ok()
    }

    #[test]
    fn skips_every_kind_of_value_serde_json_accepts() {
        for text in [
            "0",
            "-0",
            "1",
            "-12.5e+3",
            "3E7",
            "0.0e-0",
            "12345678901234567890123",
            "1e400",
            "true",
            "false",
            "null",
            r#""""#,
            r#""plain""#,
            r#""esc \" \\ \/ \b \f \n \r \t""#,
            r#""\u00e9\uD83D\uDE00 lone \ud800""#,
            "\"ünïcödé 😀\"",
            "[]",
            "{}",
            "[[],{}]",
            r#"{"a":[1,{"b":null,"c":[true,false]}],"d":"e"}"#,
            " \t\r\n[ 1 , 2 ]\n",
            r#"{"k:{\"name\":\"app\"}":{".":{}}}"#,
            "\"long string past eight bytes, twice over\"",
        ] {
            assert!(serde_accepts(text), "{text}");
            assert_eq!(validate(text), Ok(()), "{text}");
        }
    }

    #[test]
    fn refuses_everything_serde_json_refuses() {
        for text in [
            "",
            " ",
            "01",
            "-",
            "-a",
            "1.",
            "1.e5",
            "1e",
            "1e+",
            ".5",
            "+1",
            "0x10",
            "tru",
            "nul",
            "True",
            "\"open",
            "\"bad \\x escape\"",
            "\"\\u12g4\"",
            "\"\\u12\"",
            "\"tab\there\"",
            "\"nl\nhere\"",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{\"a\":}",
            "{1:2}",
            "{\"a\":1",
            "[1",
            "]",
            "}",
            "[1]]",
            "1 2",
            "{\"a\":1}x",
            "[\"a\"\"b\"]",
            "'a'",
        ] {
            assert!(!serde_accepts(text), "serde_json accepts {text:?}");
            assert_eq!(validate(text), Err(Refused), "{text:?}");
        }
    }

    #[test]
    fn every_byte_in_every_position_is_classified_exactly() {
        for special in 0..=255u8 {
            for other in [
                b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x23, 0x5d, 0x7f, 0x80, 0xff,
            ] {
                for at in 0..8 {
                    let mut word = [other; 8];
                    word[at] = special;
                    let hits = specials(u64::from_le_bytes(word));
                    for (i, &b) in word.iter().enumerate() {
                        assert_eq!(hits >> (i * 8 + 7) & 1 == 1, is_special(b), "{word:?} at {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(validate(&deep(MAX_DEPTH)), Ok(()));
        assert_eq!(validate(&deep(MAX_DEPTH + 1)), Err(Refused));
        let objects = |n| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        assert_eq!(validate(&objects(MAX_DEPTH)), Ok(()));
        assert_eq!(validate(&objects(MAX_DEPTH + 1)), Err(Refused));
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct View<'a> {
        #[serde(borrow, default)]
        name: Option<&'a str>,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Item {
        #[serde(default)]
        id: Option<String>,
    }

    #[test]
    fn reads_views_like_serde_json_and_refuses_what_it_does_not_need() {
        for text in [
            r#"{"name":"x","items":[{"id":"a","skip":[1,{"z":null}]},{}],"other":{"deep":[[]]}}"#,
            r#" { "name" : null , "items" : [ ] } "#,
            r#"{}"#,
        ] {
            let ours: View = from_str(text).unwrap();
            assert_eq!(ours, serde_json::from_str::<View>(text).unwrap(), "{text}");
        }
        for text in [
            r#"{"name":"esc\"aped"}"#, // a kept string with an escape
            r#"{"na\u006de":"x"}"#,    // an escaped key
            r#"{"name":1}"#,           // wrong type (serde_json refuses too)
            r#"{"items":{}}"#,         // wrong type
            r#"["x",[]]"#,             // a struct as an array (serde_json accepts)
            r#"{"name":"x"} trailing"#,
        ] {
            assert_eq!(from_str::<View>(text), Err(Refused), "{text}");
        }
    }
}
