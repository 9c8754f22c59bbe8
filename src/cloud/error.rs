//! Error bodies: the cloud API's `{"error_code","error_msg"}`, and reading the message out of
//! whatever error body an upstream sends.

use serde::{Deserialize, Serialize};

/// The error body of the CCE and IAM APIs.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CloudError {
    pub(crate) error_code: String,
    pub(crate) error_msg: String,
}

/// The shapes an upstream's error message comes in.
#[derive(Deserialize, Default)]
struct AnyError {
    error_msg: Option<String>,
    message: Option<String>,
    error: Option<Nested>,
}

#[derive(Deserialize)]
struct Nested {
    message: Option<String>,
}

/// The message of an error body (`error_msg`, `message`, `error.message`), or its first
/// 300 bytes as text.
pub(crate) fn message(body: &[u8]) -> String {
    let e: AnyError = serde_json::from_slice(body).unwrap_or_default();
    e.error_msg
        .or(e.message)
        .or(e.error.and_then(|n| n.message))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_every_shape() {
        assert_eq!(message(br#"{"error_code":"X","error_msg":"m1"}"#), "m1");
        assert_eq!(message(br#"{"message":"m2"}"#), "m2");
        assert_eq!(message(br#"{"error":{"code":"c","message":"m3"}}"#), "m3");
        assert_eq!(message(b"plain text"), "plain text");
        assert_eq!(message(&[b'x'; 400]).len(), 300);
    }
}
