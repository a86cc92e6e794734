//! DSSE v1 envelopes (<https://github.com/secure-systems-lab/dsse>).

use serde::{Deserialize, Serialize};

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
