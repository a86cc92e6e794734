//! Opening a DSSE envelope and checking its signatures against a role's keys:
//! the step below both the trust root (which checks root metadata with it)
//! and the verifier (releases, desired states, commands).

use std::collections::{BTreeMap, BTreeSet};

use crate::dsse::{DsseError, Envelope, KeyId, VerifyingKey, pae};
use crate::rejection::VerifyError;
use crate::root::{Role, RoleKeys};

/// An envelope whose type was checked and whose payload was decoded, not yet
/// verified.
pub(crate) struct Opened {
    pub(crate) payload_type: &'static str,
    pub(crate) payload: Vec<u8>,
    signatures: Vec<crate::dsse::Signature>,
}

/// Size-checks and decodes envelope JSON, checks its payload type.
pub(crate) fn parse_envelope(
    bytes: &[u8],
    payload_type: &'static str,
    max: usize,
) -> Result<Opened, VerifyError> {
    if bytes.len() > max {
        return Err(VerifyError::TooLarge {
            what: payload_type,
            len: bytes.len(),
            max,
        });
    }
    let envelope = Envelope::from_json(bytes, max)
        .map_err(|source| VerifyError::MalformedEnvelope { source })?;
    open(envelope, payload_type)
}

pub(crate) fn open(envelope: Envelope, payload_type: &'static str) -> Result<Opened, VerifyError> {
    if envelope.signatures.len() > Envelope::MAX_SIGNATURES {
        return Err(VerifyError::MalformedEnvelope {
            source: DsseError::TooManySignatures {
                count: envelope.signatures.len(),
                max: Envelope::MAX_SIGNATURES,
            },
        });
    }
    if envelope.payload_type != payload_type {
        return Err(VerifyError::WrongPayloadType {
            expected: payload_type,
            got: envelope.payload_type,
        });
    }
    let payload = envelope
        .payload_bytes()
        .map_err(|source| VerifyError::MalformedEnvelope { source })?;
    Ok(Opened {
        payload_type,
        payload,
        signatures: envelope.signatures,
    })
}

/// Checks `opened`'s signatures against `role_keys` (the key ids and
/// threshold of `role`), looking keys up in `keys`.
///
/// A signature by a key of the role that does not verify is always an error
/// ([`VerifyError::BadSignature`]). Signatures by keys the role does not list
/// are ignored when the role's threshold is met by others; when it is not, the
/// error says why: a key of another role, an unknown key, or too few valid
/// signatures. Signatures by the same key count once.
pub(crate) fn check_signatures(
    keys: &BTreeMap<KeyId, VerifyingKey>,
    role_keys: &RoleKeys,
    role: Role,
    opened: &Opened,
) -> Result<Vec<KeyId>, VerifyError> {
    let message = pae(opened.payload_type, &opened.payload);
    let mut valid = BTreeSet::new();
    let mut wrong_role: Option<KeyId> = None;
    let mut unknown: Option<String> = None;
    for signature in &opened.signatures {
        let sig = signature
            .sig_bytes()
            .ok()
            .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok());
        let Ok(keyid) = KeyId::new(signature.keyid.as_str()) else {
            // No (or no usable) key id: DSSE makes it optional, so try the role's keys.
            let found = sig.as_ref().and_then(|sig| {
                role_keys.keyids.iter().find(|id| {
                    keys.get(id)
                        .is_some_and(|k| k.verify_strict(&message, sig).is_ok())
                })
            });
            match found {
                Some(id) => {
                    valid.insert(id.clone());
                }
                None => {
                    unknown.get_or_insert_with(|| signature.keyid.clone());
                }
            }
            continue;
        };
        let Some(key) = keys.get(&keyid) else {
            unknown.get_or_insert_with(|| keyid.to_string());
            continue;
        };
        if !role_keys.keyids.contains(&keyid) {
            wrong_role.get_or_insert(keyid);
            continue;
        }
        match sig {
            Some(sig) if key.verify_strict(&message, &sig).is_ok() => {
                valid.insert(keyid);
            }
            _ => return Err(VerifyError::BadSignature { role, keyid }),
        }
    }
    let need = role_keys.threshold as usize;
    if valid.len() >= need {
        return Ok(valid.into_iter().collect());
    }
    if let Some(keyid) = wrong_role {
        return Err(VerifyError::WrongRole { keyid, role });
    }
    if let Some(keyid) = unknown {
        return Err(VerifyError::UnknownKey { keyid });
    }
    Err(VerifyError::BelowThreshold {
        role,
        have: valid.len(),
        need,
    })
}
