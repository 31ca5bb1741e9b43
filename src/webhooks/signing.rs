//! Standard Webhooks signatures: `base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`, sent as
//! `webhook-signature: v1,<sig>`; several space-separated signatures while a rotated-out secret
//! still signs. The key is the base64 part of the partner's `whsec_…` secret, decoded.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::Sha256;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// A decoded signing key.
pub struct SigningKey(SecretBox<Vec<u8>>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    /// From a `whsec_<base64>` secret (the prefix is optional, as in the spec's libraries).
    pub fn from_secret(secret: &SecretString) -> Option<Self> {
        let s = secret.expose_secret();
        let b64 = s.strip_prefix("whsec_").unwrap_or(s);
        let bytes = STANDARD.decode(b64).ok()?;
        (!bytes.is_empty()).then(|| Self(SecretBox::new(Box::new(bytes))))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` value: one signature per key, current key first.
pub fn signature_header(keys: &[SigningKey], msg_id: &str, timestamp: i64, body: &str) -> String {
    keys.iter()
        .map(|k| k.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn matches_the_specification_example() {
        let key = SigningKey::from_secret(&SecretString::from(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ))
        .unwrap();
        let sig = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rejects_secrets_that_are_not_base64() {
        assert!(SigningKey::from_secret(&SecretString::from("whsec_%%%")).is_none());
        assert!(SigningKey::from_secret(&SecretString::from("whsec_")).is_none());
    }

    #[test]
    fn one_signature_per_key() {
        let a = SigningKey::from_secret(&SecretString::from("whsec_AAAA")).unwrap();
        let b = SigningKey::from_secret(&SecretString::from("whsec_BBBB")).unwrap();
        let h = signature_header(&[a, b], "id", 1, "{}");
        let parts: Vec<_> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }
}
