//! Standard Webhooks signatures (standardwebhooks.com): `webhook-id`, `webhook-timestamp`
//! (Unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>`
//! where the secret is written `whsec_<base64>`. Pure.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Secrets shorter than this many bytes are refused (the spec recommends 24 to 64).
pub const SECRET_BYTES_MIN: usize = 16;

/// The key bytes of a `whsec_...` secret.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or("a webhook secret is written whsec_ followed by base64")?;
    let key = STANDARD
        .decode(b64)
        .map_err(|_| "the part after whsec_ is not base64".to_string())?;
    if key.len() < SECRET_BYTES_MIN {
        return Err(format!(
            "the secret must have at least {SECRET_BYTES_MIN} bytes"
        ));
    }
    Ok(key)
}

/// The `webhook-signature` header value for one delivery.
pub fn signature(key: &[u8], id: &str, timestamp_s: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_specs_example() {
        // The example of the Standard Webhooks specification (spec/standard-webhooks.md).
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_c2hvcnQ=").is_err());
    }
}
