//! DSSE v1 envelopes (<https://github.com/secure-systems-lab/dsse>) with ed25519.
//!
//! The signature of an envelope is ed25519 over
//! `PAE(payloadType, payload)` = `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`,
//! where `LEN` is the ASCII decimal byte length. `payload` and `sig` are
//! standard base64 (with padding); `keyid` is the hex sha256 of the raw 32-byte
//! ed25519 public key. Envelopes made here verify with other DSSE tools
//! (securesystemslib, in-toto) given the same public key.
//!
//! This module only encodes, decodes and signs. Deciding whether an envelope
//! is trusted (which keys, which role, thresholds) is [`crate::verify`]'s job.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::Signer as _;
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Payload type of a signed [`crate::Release`].
pub const RELEASE_PAYLOAD_TYPE: &str = "application/vnd.fleet.release+json";
/// Payload type of a signed [`crate::DesiredState`].
pub const DESIRED_STATE_PAYLOAD_TYPE: &str = "application/vnd.fleet.desired-state+json";
/// Payload type of a signed [`crate::Command`].
pub const COMMAND_PAYLOAD_TYPE: &str = "application/vnd.fleet.command+json";
/// Payload type of signed root metadata ([`crate::trust::Root`]).
pub const ROOT_PAYLOAD_TYPE: &str = "application/vnd.fleet.root+json";

/// A DSSE envelope as JSON: base64 payload, payload type, signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Standard base64 of the payload bytes.
    pub payload: String,
    pub signatures: Vec<Signature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The key id: hex sha256 of the raw ed25519 public key.
    #[serde(default)]
    pub keyid: String,
    /// Standard base64 of the signature bytes.
    pub sig: String,
}

/// Why an envelope could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DsseError {
    #[error("envelope is {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("envelope is not DSSE JSON: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("envelope field {field} is not standard base64: {source}")]
    Base64 {
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    #[error("envelope has {count} signatures, more than the limit of {max}")]
    TooManySignatures { count: usize, max: usize },
}

impl Envelope {
    /// Most signatures an envelope may carry; more is refused before any is checked.
    pub const MAX_SIGNATURES: usize = 16;

    /// Parses envelope JSON, refusing more than `max_len` bytes or more than
    /// [`Self::MAX_SIGNATURES`] signatures. The payload stays base64 until
    /// [`Self::payload_bytes`] decodes it.
    pub fn from_json(bytes: &[u8], max_len: usize) -> Result<Self, DsseError> {
        if bytes.len() > max_len {
            return Err(DsseError::TooLarge {
                len: bytes.len(),
                max: max_len,
            });
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|source| DsseError::Json { source })?;
        if envelope.signatures.len() > Self::MAX_SIGNATURES {
            return Err(DsseError::TooManySignatures {
                count: envelope.signatures.len(),
                max: Self::MAX_SIGNATURES,
            });
        }
        Ok(envelope)
    }

    /// The envelope as pretty JSON (what `fleetctl` writes to files).
    pub fn to_json_pretty(&self) -> Vec<u8> {
        // Serialising plain strings and vectors cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The envelope as compact JSON (what goes over MQTT).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The decoded payload bytes: exactly the bytes that were signed.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, DsseError> {
        STANDARD
            .decode(&self.payload)
            .map_err(|source| DsseError::Base64 {
                field: "payload",
                source,
            })
    }

    /// The PAE bytes the signatures cover.
    pub fn pae(&self) -> Result<Vec<u8>, DsseError> {
        Ok(pae(&self.payload_type, &self.payload_bytes()?))
    }
}

impl Signature {
    /// The decoded signature bytes.
    pub fn sig_bytes(&self) -> Result<Vec<u8>, DsseError> {
        STANDARD
            .decode(&self.sig)
            .map_err(|source| DsseError::Base64 {
                field: "sig",
                source,
            })
    }
}

/// DSSE v1 pre-authentication encoding of `payload_type` and `payload`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let type_len = payload_type.len().to_string();
    let body_len = payload.len().to_string();
    let mut out = Vec::with_capacity(
        "DSSEv1".len() + 4 + type_len.len() + payload_type.len() + body_len.len() + payload.len(),
    );
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(type_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// Signs `payload` as `payload_type` with each key (one signature per key, in order).
pub fn sign(payload_type: &str, payload: &[u8], keys: &[&SigningKey]) -> Envelope {
    let message = pae(payload_type, payload);
    let signatures = keys
        .iter()
        .map(|key| Signature {
            keyid: KeyId::of(&key.verifying_key()).to_string(),
            sig: STANDARD.encode(key.sign(&message).to_bytes()),
        })
        .collect();
    Envelope {
        payload_type: payload_type.to_owned(),
        payload: STANDARD.encode(payload),
        signatures,
    }
}

/// Standard base64 of the raw 32-byte public key (the `public` field of trust metadata).
pub fn encode_public_key(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// A key id: 64 lowercase hex digits, the sha256 of the raw ed25519 public key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

/// A string that is not 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key id {value:?} is not 64 lowercase hex digits")]
pub struct BadKeyId {
    pub value: String,
}

impl KeyId {
    /// The key id of `key`.
    pub fn of(key: &VerifyingKey) -> Self {
        Self(hex::encode(Sha256::digest(key.as_bytes())))
    }

    /// Validates a key id string.
    pub fn new(value: impl Into<String>) -> Result<Self, BadKeyId> {
        let value = value.into();
        if value.len() == 64
            && value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            Ok(Self(value))
        } else {
            Err(BadKeyId { value })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

impl FromStr for KeyId {
    type Err = BadKeyId;
    fn from_str(s: &str) -> Result<Self, BadKeyId> {
        Self::new(s)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE v1 protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn pae_lengths_are_byte_lengths_in_decimal() {
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
        // "é" is two bytes in UTF-8.
        assert_eq!(pae("é", b"x y"), "DSSEv1 2 é 3 x y".as_bytes().to_vec());
        let body = vec![b'a'; 1234];
        let out = pae("t", &body);
        assert!(out.starts_with(b"DSSEv1 1 t 1234 a"));
        assert_eq!(out.len(), "DSSEv1 1 t 1234 ".len() + 1234);
    }

    #[test]
    fn signing_produces_standard_base64_and_sha256_key_ids() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let env = sign("text/plain", b"hello", &[&key]);
        assert_eq!(env.payload, "aGVsbG8=");
        assert_eq!(env.signatures.len(), 1);
        let keyid = &env.signatures[0].keyid;
        assert_eq!(
            keyid,
            &hex::encode(Sha256::digest(key.verifying_key().as_bytes()))
        );
        let sig = env.signatures[0].sig_bytes().unwrap();
        assert_eq!(sig.len(), 64);
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        key.verifying_key()
            .verify_strict(b"DSSEv1 10 text/plain 5 hello", &sig)
            .unwrap();
        // The JSON shape other DSSE tools read.
        let json: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
        assert_eq!(json["payloadType"], "text/plain");
        assert!(json["signatures"][0]["keyid"].is_string());
        assert!(json["signatures"][0]["sig"].is_string());
    }

    #[test]
    fn from_json_enforces_size_and_signature_limits() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let env = sign("t", b"x", &[&key]);
        let json = env.to_json();
        assert!(matches!(
            Envelope::from_json(&json, json.len() - 1),
            Err(DsseError::TooLarge { .. })
        ));
        assert_eq!(Envelope::from_json(&json, json.len()).unwrap(), env);
        let keys: Vec<SigningKey> = (0..17).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
        let refs: Vec<&SigningKey> = keys.iter().collect();
        let many = sign("t", b"x", &refs).to_json();
        assert!(matches!(
            Envelope::from_json(&many, 1 << 20),
            Err(DsseError::TooManySignatures { count: 17, .. })
        ));
        assert!(matches!(
            Envelope::from_json(b"{", 100),
            Err(DsseError::Json { .. })
        ));
    }

    #[test]
    fn key_ids_are_validated() {
        assert!(KeyId::new("a".repeat(64)).is_ok());
        assert!(KeyId::new("A".repeat(64)).is_err());
        assert!(KeyId::new("a".repeat(63)).is_err());
        assert!(serde_json::from_str::<KeyId>("\"xyz\"").is_err());
    }
}
