//! Standard Webhooks signing: the secret a receiver shares with us and the `webhook-signature` value.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Prefix of a base64-encoded secret, as Standard Webhooks libraries generate them.
const BASE64_PREFIX: &str = "whsec_";

/// Longest accepted key, in bytes: far above any real secret, low enough to refuse a misplaced file.
const MAX_KEY_BYTES: usize = 1024;

/// The key a webhook's requests are signed with.
///
/// Kept apart from plain strings so it is never printed: its `Debug` shows only that a key is set.
#[derive(Clone)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// Why a configured secret was refused; never contains the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid webhook secret: {problem}; use either `whsec_` followed by standard base64 of the key, \
     or any other non-empty text (used as is), of 1 to {MAX_KEY_BYTES} bytes"
)]
pub struct InvalidSecret {
    problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Problem {
    #[error("it is empty")]
    Empty,
    #[error("it is {0} bytes long")]
    TooLong(usize),
    #[error("the text after `whsec_` is not valid standard base64")]
    BadBase64,
}

impl FromStr for SigningSecret {
    type Err = InvalidSecret;

    fn from_str(raw: &str) -> Result<SigningSecret, InvalidSecret> {
        let key = match raw.strip_prefix(BASE64_PREFIX) {
            Some(encoded) => STANDARD.decode(encoded).map_err(|_| InvalidSecret {
                problem: Problem::BadBase64,
            })?,
            None => raw.as_bytes().to_vec(),
        };
        let problem = if key.is_empty() {
            Problem::Empty
        } else if key.len() > MAX_KEY_BYTES {
            Problem::TooLong(key.len())
        } else {
            return Ok(SigningSecret { key });
        };
        Err(InvalidSecret { problem })
    }
}

/// The `webhook-signature` header value for one request: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}`, so receivers can check with any Standard Webhooks library.
pub fn signature(secret: &SigningSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.key).expect("HMAC takes keys of any size");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_vector() {
        // The Standard Webhooks specification's example; checked with python3's hmac module.
        let secret: SigningSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        assert_eq!(
            signature(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn plain_text_secret_is_used_as_bytes() {
        // python3: base64.b64encode(hmac.new(b'plain text secret',
        //     b'delivery-1.1700000000.{"a":1}', hashlib.sha256).digest())
        let secret: SigningSecret = "plain text secret".parse().unwrap();
        assert_eq!(
            signature(&secret, "delivery-1", 1700000000, br#"{"a":1}"#),
            "v1,ismziiFRvWoYl4b7zjj/AQ+KoNbZlWo/cINrTQNmj1Q="
        );
    }

    #[test]
    fn refuses_empty_long_and_bad_base64() {
        for raw in [
            "",
            "whsec_",
            "whsec_not*base64",
            &"x".repeat(MAX_KEY_BYTES + 1),
        ] {
            let err = raw.parse::<SigningSecret>().unwrap_err();
            let message = err.to_string();
            assert!(message.contains("whsec_"), "{message}");
            if !raw.is_empty() && raw != "whsec_" {
                assert!(!message.contains(raw), "{message}");
            }
        }
        assert!("x".repeat(MAX_KEY_BYTES).parse::<SigningSecret>().is_ok());
    }

    #[test]
    fn debug_hides_the_key() {
        let secret: SigningSecret = "hunter2".parse().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
        let encoded = "whsec_aHVudGVyMg==".parse::<SigningSecret>().unwrap();
        assert!(!format!("{encoded:?}").contains("hunter2"));
    }
}
