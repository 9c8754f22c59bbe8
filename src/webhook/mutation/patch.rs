//! The mutation's output: a JSON Patch of `add` operations whose values are JSON text.
//!
//! The injected volume, mount and env vars are the same for every pod, so they are rendered
//! once (in [`Injection`](super::Injection)) and each operation borrows that text; writing a
//! patch is then copying bytes, not building and serializing a `serde_json::Value` tree. The
//! one per-pod part, the token's lifetime, is a number written between two prepared halves.

use std::borrow::Cow;

/// One `add` operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add<'a> {
    /// A JSON pointer with its tokens escaped (`~0`, `~1`).
    pub path: String,
    pub value: Value<'a>,
}

/// The value of an operation, as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Text(Cow<'a, str>),
    /// `head`, the number, `tail`: prepared text with a per-pod number in it.
    Spliced {
        head: &'a str,
        number: i64,
        tail: &'a str,
    },
}

impl Value<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::Text(text) => out.extend_from_slice(text.as_bytes()),
            Value::Spliced { head, number, tail } => {
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(itoa::Buffer::new().format(*number).as_bytes());
                out.extend_from_slice(tail.as_bytes());
            }
        }
    }

    /// Bytes [`write`](Self::write) appends, at most.
    fn len(&self) -> usize {
        match self {
            Value::Text(text) => text.len(),
            Value::Spliced { head, tail, .. } => head.len() + 20 + tail.len(),
        }
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(text: &'a str) -> Self {
        Value::Text(Cow::Borrowed(text))
    }
}

impl From<String> for Value<'_> {
    fn from(text: String) -> Self {
        Value::Text(Cow::Owned(text))
    }
}

/// A JSON Patch (RFC 6902) made of `add` operations only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patch<'a>(pub Vec<Add<'a>>);

impl Patch<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends the patch to `out` as a compact JSON array.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, op) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"op":"add","path":"#);
            write_str(out, &op.path);
            out.extend_from_slice(br#","value":"#);
            op.value.write(out);
            out.push(b'}');
        }
        out.push(b']');
    }

    /// The patch as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.iter().map(|op| op.value.len() + 64).sum());
        self.write_json(&mut out);
        out
    }

    /// The same patch as a [`json_patch::Patch`], to apply it to a document.
    pub fn to_json_patch(&self) -> json_patch::Patch {
        // Every value is JSON text this module wrote; failing to read it back is a bug.
        serde_json::from_slice(&self.to_json()).expect("a patch reads back as a JSON Patch")
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let plain = |b: &u8| *b >= 0x20 && *b != b'"' && *b != b'\\';
    if s.as_bytes().iter().all(plain) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// `s` as a JSON string literal.
pub fn str_literal(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    write_str(&mut out, s);
    // Only whole UTF-8 strings and ASCII escapes were written.
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// Appends one JSON pointer token (RFC 6901): `~` becomes `~0`, `/` becomes `~1`.
pub fn push_token(path: &mut String, token: &str) {
    path.push('/');
    let mut rest = token;
    while let Some(i) = rest.find(['~', '/']) {
        path.push_str(&rest[..i]);
        path.push_str(if rest.as_bytes()[i] == b'~' { "~0" } else { "~1" });
        rest = &rest[i + 1..];
    }
    path.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_only_when_they_need_it() {
        for s in [
            "plain",
            "",
            "q\"uote",
            "back\\slash",
            "new\nline",
            "tab\t",
            "ünïcode",
            "\u{1}",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
            assert_eq!(str_literal(s).as_bytes(), out);
        }
    }

    #[test]
    fn pointer_tokens_are_escaped() {
        let mut p = String::new();
        for t in ["metadata", "a~b/c", "~1"] {
            push_token(&mut p, t);
        }
        assert_eq!(p, "/metadata/a~0b~1c/~01");
        let ptr = json_patch::jsonptr::PointerBuf::parse(&p).unwrap();
        let tokens: Vec<_> = ptr.tokens().map(|t| t.decoded().into_owned()).collect();
        assert_eq!(tokens, ["metadata", "a~b/c", "~1"]);
    }

    #[test]
    fn a_patch_is_written_as_rfc_6902_json() {
        let patch = Patch(vec![
            Add {
                path: "/spec/volumes/-".into(),
                value: r#"{"name":"v"}"#.into(),
            },
            Add {
                path: "/metadata/annotations/a~1b".into(),
                value: str_literal("x\"y").into(),
            },
            Add {
                path: "/spec/volumes/-".into(),
                value: Value::Spliced {
                    head: r#"{"n":"#,
                    number: i64::MIN,
                    tail: "}",
                },
            },
        ]);
        let json: serde_json::Value = serde_json::from_slice(&patch.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"op": "add", "path": "/spec/volumes/-", "value": {"name": "v"}},
                {"op": "add", "path": "/metadata/annotations/a~1b", "value": "x\"y"},
                {"op": "add", "path": "/spec/volumes/-", "value": {"n": i64::MIN}},
            ])
        );
        assert!(patch.to_json().len() <= patch.0.iter().map(|op| op.value.len() + 64).sum());
        assert_eq!(patch.to_json_patch().0.len(), 3);
        assert_eq!(Patch::default().to_json(), b"[]");
    }
}
