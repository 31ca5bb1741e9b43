//! Secrets at rest and API-key hashing.
//!
//! PINs, submitted codes, generated 360dialog keys, partners' 360dialog Partner API keys and
//! webhook secrets are sealed with AES-256-GCM under `ENCRYPTION_KEY` (32 random bytes,
//! standard base64). Each value gets a fresh random 96-bit nonce, stored in front of the
//! ciphertext, and is bound to where it lives by the associated data (e.g. `migration:<id>:pin`),
//! so a ciphertext copied to another row or column does not decrypt.
//!
//! Key rotation: a [`Cipher`] may also hold a previous key (`ENCRYPTION_KEY_OLD`). It always
//! seals under the primary key and opens with the primary key first, then the previous one, so
//! a service can run while `waba-migrator reencrypt` ([`crate::crypto_rotation`]) moves every
//! stored value to the primary key.
//!
//! Our own API keys are random 256-bit tokens; only their SHA-256 is stored (a slow password
//! hash buys nothing for high-entropy tokens and would cost every request).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "ENCRYPTION_KEY must be 32 bytes encoded as standard base64 (e.g. `openssl rand -base64 32`)"
    )]
    BadKey,
    #[error(
        "a stored secret could not be decrypted (wrong ENCRYPTION_KEY / ENCRYPTION_KEY_OLD or tampered data)"
    )]
    Decrypt,
}

/// Which key opened a sealed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsed {
    /// `ENCRYPTION_KEY`: nothing to do.
    Primary,
    /// `ENCRYPTION_KEY_OLD`: the value should be re-sealed under the primary key.
    Old,
}

/// AES-256-GCM sealing of secrets at rest, under a primary key and optionally a previous key
/// accepted for decryption only.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
    old: Option<Aes256Gcm>,
    /// HMAC keys derived from the primary and the old key, for keyed fingerprints.
    mac: MacKey,
    old_mac: Option<MacKey>,
    /// The fingerprint key kept in the database, sealed (see
    /// [`Cipher::with_fingerprint_key`]): what fingerprints and derived secrets are made with
    /// once loaded, whatever `ENCRYPTION_KEY` is now.
    kept_mac: Option<MacKey>,
}

/// A 32-byte HMAC-SHA256 key derived from an `ENCRYPTION_KEY` (never the key itself).
#[derive(Clone)]
struct MacKey([u8; 32]);

impl MacKey {
    fn derive(key: &[u8]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(b"waba-migrator/fingerprint/v1");
        Self(mac.finalize().into_bytes().into())
    }

    fn fingerprint(&self, bytes: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(bytes);
        mac.finalize().into_bytes().to_vec()
    }
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher([redacted])")
    }
}

impl Cipher {
    /// From the `ENCRYPTION_KEY` setting.
    pub fn from_base64(key: &SecretString) -> Result<Self, CryptoError> {
        Self::from_base64_with_old(key, None)
    }

    /// From `ENCRYPTION_KEY` (seals and opens) and `ENCRYPTION_KEY_OLD` (opens only), during a
    /// key rotation. `old: None` is the same as [`Cipher::from_base64`].
    pub fn from_base64_with_old(
        primary: &SecretString,
        old: Option<&SecretString>,
    ) -> Result<Self, CryptoError> {
        let (aead, mac) = keys_from_base64(primary)?;
        let old = old.map(keys_from_base64).transpose()?;
        Ok(Self {
            aead,
            mac,
            old_mac: old.as_ref().map(|(_, m)| m.clone()),
            old: old.map(|(a, _)| a),
            kept_mac: None,
        })
    }

    /// The fingerprint key to keep in the database when none is kept yet: the one fingerprints
    /// were made with so far (under `ENCRYPTION_KEY_OLD` during a rotation, the key most of them
    /// were made under), so they all still match. Base64, to be sealed.
    pub fn fingerprint_key_to_keep(&self) -> SecretString {
        SecretString::from(STANDARD.encode(self.old_mac.as_ref().unwrap_or(&self.mac).0))
    }

    /// Makes fingerprints and derived secrets with `kept` (the key kept sealed in the database,
    /// base64), also accepting those made directly under `ENCRYPTION_KEY` (and
    /// `ENCRYPTION_KEY_OLD`) before it was kept. A key rotation re-seals the kept key, so
    /// idempotency fingerprints and client-page links outlive the old key.
    pub fn with_fingerprint_key(mut self, kept: &SecretString) -> Result<Self, CryptoError> {
        let bytes: [u8; 32] = STANDARD
            .decode(kept.expose_secret())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(CryptoError::BadKey)?;
        self.kept_mac = Some(MacKey(bytes));
        Ok(self)
    }

    /// Keyed fingerprints (HMAC-SHA256 under the kept fingerprint key, then a key derived from
    /// `ENCRYPTION_KEY`; with no kept key loaded, from `ENCRYPTION_KEY`, then from
    /// `ENCRYPTION_KEY_OLD`) of data that contains secrets, such as a request body with a PIN:
    /// an unkeyed hash of a 6-digit PIN is reversed by trying a million values. The first is
    /// the one to store; a stored one matching any of them is a match. A kept key was first
    /// made from `ENCRYPTION_KEY_OLD` if one was set, so the old key's own is not needed then,
    /// and a kept key replaced after a leak is not undone by it.
    pub fn fingerprints(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let old = self.old_mac.as_ref().filter(|_| self.kept_mac.is_none());
        let mut keys: Vec<&MacKey> = Vec::with_capacity(3);
        for k in self.kept_mac.iter().chain([&self.mac]).chain(old) {
            if !keys.iter().any(|seen| seen.0 == k.0) {
                keys.push(k);
            }
        }
        keys.into_iter().map(|k| k.fingerprint(bytes)).collect()
    }

    /// Whether a previous key is configured.
    /// Secrets derived for `purpose` from `input` under each key, the primary key's first:
    /// values the service can compute again whenever it needs them (a client page's token),
    /// so they are never stored. Different purposes never give the same secret.
    pub fn derived_secrets(&self, purpose: &str, input: &[u8]) -> Vec<[u8; 32]> {
        let mut bytes = Vec::with_capacity(purpose.len() + 1 + input.len());
        bytes.extend_from_slice(b"derive:");
        bytes.extend_from_slice(purpose.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(input);
        self.fingerprints(&bytes)
            .into_iter()
            .map(|f| f.try_into().expect("HMAC-SHA256 is 32 bytes"))
            .collect()
    }

    pub fn has_old_key(&self) -> bool {
        self.old.is_some()
    }

    /// A new random key in the `ENCRYPTION_KEY` format.
    pub fn generate_key() -> SecretString {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        SecretString::from(STANDARD.encode(k))
    }

    pub fn seal(&self, plaintext: &str, aad: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption cannot fail for in-memory inputs");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a value sealed under the primary key or, failing that, the previous key.
    pub fn open(&self, sealed: &[u8], aad: &str) -> Result<SecretString, CryptoError> {
        self.open_reporting_key(sealed, aad).map(|(pt, _)| pt)
    }

    /// Like [`Cipher::open`], and says which key opened the value.
    pub fn open_reporting_key(
        &self,
        sealed: &[u8],
        aad: &str,
    ) -> Result<(SecretString, KeyUsed), CryptoError> {
        if let Ok(pt) = open_with(&self.aead, sealed, aad) {
            return Ok((pt, KeyUsed::Primary));
        }
        match &self.old {
            Some(old) => open_with(old, sealed, aad).map(|pt| (pt, KeyUsed::Old)),
            None => Err(CryptoError::Decrypt),
        }
    }
}

fn keys_from_base64(key: &SecretString) -> Result<(Aes256Gcm, MacKey), CryptoError> {
    let bytes = STANDARD
        .decode(key.expose_secret().trim())
        .map_err(|_| CryptoError::BadKey)?;
    if bytes.len() != 32 {
        return Err(CryptoError::BadKey);
    }
    let aead = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
    Ok((aead, MacKey::derive(&bytes)))
}

fn open_with(aead: &Aes256Gcm, sealed: &[u8], aad: &str) -> Result<SecretString, CryptoError> {
    if sealed.len() < NONCE_LEN {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let pt = aead
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| CryptoError::Decrypt)?;
    String::from_utf8(pt)
        .map(SecretString::from)
        .map_err(|_| CryptoError::Decrypt)
}

/// SHA-256 of an API key, as stored.
pub fn hash_api_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Constant-time comparison of two byte strings.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new API key of ours: `wm_<prefix>_<secret>`, where the 8-character prefix is stored in
/// clear to identify the key in listings and logs. Returns (key, prefix).
pub fn generate_api_key() -> (SecretString, String) {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let prefix = format!("wm_{}", URL_SAFE_NO_PAD.encode(id));
    let key = format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(secret));
    (SecretString::from(key), prefix)
}

/// A Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes.
pub fn generate_webhook_secret() -> SecretString {
    let mut k = [0u8; 32];
    rand::rng().fill_bytes(&mut k);
    SecretString::from(format!("whsec_{}", STANDARD.encode(k)))
}

/// A random 6-digit two-step verification PIN.
pub fn generate_pin() -> SecretString {
    let n = rand::random_range(0..1_000_000u32);
    SecretString::from(format!("{n:06}"))
}

/// The associated data each sealed value is bound to, so a ciphertext copied into another
/// row or column does not open. One place for every name, shared by the writers, the readers
/// and `crate::crypto_rotation`.
pub mod aad {
    use uuid::Uuid;

    fn migration(id: Uuid, field: &str) -> String {
        format!("migration:{id}:{field}")
    }

    /// A partner's stored 360dialog Partner API key.
    pub fn partner_key(partner_id: Uuid) -> String {
        format!("partner:{partner_id}:d360_api_key")
    }

    /// A partner's webhook signing secret.
    pub fn webhook_secret(partner_id: Uuid) -> String {
        format!("partner:{partner_id}:webhook_secret")
    }

    /// A migration's two-step verification PIN.
    pub fn pin(id: Uuid) -> String {
        migration(id, "pin")
    }

    /// A submitted verification code, until it is verified.
    pub fn otp_code(id: Uuid) -> String {
        migration(id, "otp_code")
    }

    /// The generated 360dialog channel API key.
    pub fn api_key(id: Uuid) -> String {
        migration(id, "api_key")
    }

    /// The fingerprint key kept in the database (`fingerprint_keys`).
    pub fn fingerprint_key(id: Uuid) -> String {
        format!("fingerprint_key:{id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let c = Cipher::from_base64(&Cipher::generate_key()).unwrap();
        let sealed = c.seal("123456", "migration:1:pin");
        assert!(!sealed.windows(6).any(|w| w == b"123456"));
        assert_eq!(
            c.open(&sealed, "migration:1:pin").unwrap().expose_secret(),
            "123456"
        );
        assert!(c.open(&sealed, "migration:2:pin").is_err());
        let other = Cipher::from_base64(&Cipher::generate_key()).unwrap();
        assert!(other.open(&sealed, "migration:1:pin").is_err());
        // Fresh nonce each time.
        assert_ne!(sealed, c.seal("123456", "migration:1:pin"));
    }

    #[test]
    fn a_kept_fingerprint_key_outlives_a_key_rotation() {
        let (a, b) = (Cipher::generate_key(), Cipher::generate_key());
        let under_a = Cipher::from_base64(&a).unwrap();
        let before = under_a.fingerprints(b"body")[0].clone();
        let kept = under_a.fingerprint_key_to_keep();
        // Kept during the rotation: the old key's, the one fingerprints were made with.
        let rotating = Cipher::from_base64_with_old(&b, Some(&a)).unwrap();
        assert_eq!(
            rotating.fingerprint_key_to_keep().expose_secret(),
            kept.expose_secret()
        );
        // B alone no longer makes A's fingerprints, unless it loaded the kept key.
        let only_b = Cipher::from_base64(&b).unwrap();
        assert!(!only_b.fingerprints(b"body").contains(&before));
        let only_b = only_b.with_fingerprint_key(&kept).unwrap();
        let now = only_b.fingerprints(b"body");
        assert_eq!(now[0], before, "the kept key's fingerprint comes first");
        assert_eq!(now.len(), 2, "and B's own is still accepted");
        assert_eq!(
            only_b.derived_secrets("p", b"x")[0],
            under_a.derived_secrets("p", b"x")[0]
        );
        // Kept equal to the primary's: no duplicate.
        let a_kept = under_a.clone().with_fingerprint_key(&kept).unwrap();
        assert_eq!(a_kept.fingerprints(b"body"), vec![before.clone()]);
        assert!(
            Cipher::from_base64(&a)
                .unwrap()
                .with_fingerprint_key(&SecretString::from("short"))
                .is_err()
        );
        // A kept key replaced (after a leak) during a rotation: the old key's own fingerprint
        // no longer matches, only the new kept key's and the primary's.
        let replaced = Cipher::from_base64_with_old(&b, Some(&a))
            .unwrap()
            .with_fingerprint_key(&Cipher::generate_key())
            .unwrap();
        assert!(!replaced.fingerprints(b"body").contains(&before));
        assert_eq!(replaced.fingerprints(b"body").len(), 2);
    }

    #[test]
    fn old_key_opens_but_never_seals() {
        let (a, b) = (Cipher::generate_key(), Cipher::generate_key());
        let under_a = Cipher::from_base64(&a)
            .unwrap()
            .seal("654321", "migration:1:pin");
        let rotating = Cipher::from_base64_with_old(&b, Some(&a)).unwrap();
        assert!(rotating.has_old_key());
        let (pt, used) = rotating
            .open_reporting_key(&under_a, "migration:1:pin")
            .unwrap();
        assert_eq!((pt.expose_secret(), used), ("654321", KeyUsed::Old));
        assert_eq!(
            rotating
                .open(&under_a, "migration:1:pin")
                .unwrap()
                .expose_secret(),
            "654321"
        );
        // The old key still binds the value to its location.
        assert!(rotating.open(&under_a, "migration:2:pin").is_err());

        // New values are sealed under the primary key only.
        let sealed = rotating.seal("654321", "migration:1:pin");
        let (_, used) = rotating
            .open_reporting_key(&sealed, "migration:1:pin")
            .unwrap();
        assert_eq!(used, KeyUsed::Primary);
        let only_b = Cipher::from_base64(&b).unwrap();
        assert!(!only_b.has_old_key());
        assert_eq!(
            only_b
                .open(&sealed, "migration:1:pin")
                .unwrap()
                .expose_secret(),
            "654321"
        );
        assert!(
            Cipher::from_base64(&a)
                .unwrap()
                .open(&sealed, "migration:1:pin")
                .is_err()
        );
        // Without the old key, values under it no longer open.
        assert!(only_b.open(&under_a, "migration:1:pin").is_err());

        // A key that is neither fails, and so does a bad old key at construction.
        let stranger = Cipher::from_base64(&Cipher::generate_key())
            .unwrap()
            .seal("654321", "migration:1:pin");
        assert!(rotating.open(&stranger, "migration:1:pin").is_err());
        assert!(Cipher::from_base64_with_old(&b, Some(&SecretString::from("short"))).is_err());
        let same = Cipher::from_base64_with_old(&b, None).unwrap();
        assert!(!same.has_old_key());
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(Cipher::from_base64(&SecretString::from("short")).is_err());
        assert!(Cipher::from_base64(&SecretString::from(STANDARD.encode([0u8; 16]))).is_err());
    }

    #[test]
    fn api_keys_have_visible_prefix() {
        let (key, prefix) = generate_api_key();
        assert!(key.expose_secret().starts_with(&format!("{prefix}_")));
        assert!(key.expose_secret().len() > 50);
        assert_eq!(hash_api_key(key.expose_secret()).len(), 32);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert_eq!(generate_pin().expose_secret().len(), 6);
        assert!(
            generate_webhook_secret()
                .expose_secret()
                .starts_with("whsec_")
        );
    }

    #[test]
    fn fingerprints_are_keyed_and_survive_a_rotation() {
        let (a, b) = (Cipher::generate_key(), Cipher::generate_key());
        let under_a = Cipher::from_base64(&a).unwrap();
        let body = br#"{"pin":"123456"}"#;
        let fa = under_a.fingerprints(body);
        assert_eq!(fa.len(), 1);
        assert_ne!(fa[0], Sha256::digest(body).to_vec(), "not an unkeyed hash");
        assert_eq!(fa, under_a.fingerprints(body), "deterministic");
        assert_ne!(fa, under_a.fingerprints(br#"{"pin":"123457"}"#));
        let rotating = Cipher::from_base64_with_old(&b, Some(&a)).unwrap();
        let fr = rotating.fingerprints(body);
        assert_eq!(fr.len(), 2);
        assert_ne!(fr[0], fa[0], "new fingerprints use the primary key");
        assert_eq!(
            fr[1], fa[0],
            "old fingerprints still match during the rotation"
        );
    }
}
