//! Signing releases (release key) and desired states (director key).
//!
//! `fleetctl release sign` and `fleetctl desired sign` use these offline; the
//! server uses the same functions with its director key.

use std::collections::BTreeSet;

use fleet_protocol::dsse::{self, DESIRED_STATE_PAYLOAD_TYPE, Envelope, RELEASE_PAYLOAD_TYPE};
use fleet_protocol::trust::{Role, TrustedRoot};
use fleet_protocol::verify::{self, VerifyError};
use fleet_protocol::{
    AppName, DesiredApp, DesiredState, DeviceId, Digest, Release, SCHEMA_VERSION,
};

use crate::keys::KeyFile;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{what} is not a valid release: {source}")]
    BadRelease {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{what} is not a signed release envelope: {source} (sign it with `fleetctl release sign`)"
    )]
    BadSignedRelease {
        what: String,
        #[source]
        source: VerifyError,
    },
    #[error("{what} does not verify against the trust root: {source}")]
    Untrusted {
        what: String,
        #[source]
        source: VerifyError,
    },
    #[error("a {expected} key is needed to sign this, got a {got} key")]
    WrongKey { expected: Role, got: Role },
    #[error("app {app} is given twice; a desired state runs one release per app")]
    DuplicateApp { app: AppName },
    #[error("expires_at {expires_at} is not after issued_at {issued_at}")]
    BadExpiry { issued_at: u64, expires_at: u64 },
    #[error("cannot encode the payload: {source}")]
    Encode {
        #[source]
        source: serde_json::Error,
    },
}

fn require(key: &KeyFile, role: Role) -> Result<(), SignError> {
    if key.role() != role {
        return Err(SignError::WrongKey {
            expected: role,
            got: key.role(),
        });
    }
    Ok(())
}

/// Parses release JSON (`what` names it in errors) and signs it with the
/// release key. The signed payload is the release as this version of the
/// protocol encodes it.
pub fn sign_release(what: &str, release_json: &[u8], key: &KeyFile) -> Result<Envelope, SignError> {
    require(key, Role::Release)?;
    let release: Release =
        serde_json::from_slice(release_json).map_err(|source| SignError::BadRelease {
            what: what.to_owned(),
            source,
        })?;
    let payload = serde_json::to_vec(&release).map_err(|source| SignError::Encode { source })?;
    Ok(dsse::sign(
        RELEASE_PAYLOAD_TYPE,
        &payload,
        &[key.signing_key()],
    ))
}

/// A signed release ready to go into a desired state.
#[derive(Debug, Clone)]
pub struct SignedRelease {
    pub app: AppName,
    pub release_digest: Digest,
    pub envelope: Envelope,
}

/// Reads a signed release envelope (`what` names it in errors). With `trust`,
/// its signatures are checked as a device will; without, only its shape.
pub fn read_signed_release(
    what: &str,
    envelope_json: &[u8],
    trust: Option<&TrustedRoot>,
    now: u64,
) -> Result<SignedRelease, SignError> {
    let bad = |source| SignError::BadSignedRelease {
        what: what.to_owned(),
        source,
    };
    let envelope = Envelope::from_json(envelope_json, verify::MAX_RELEASE_BYTES)
        .map_err(|source| bad(VerifyError::MalformedEnvelope { source }))?;
    if envelope.payload_type != RELEASE_PAYLOAD_TYPE {
        return Err(bad(VerifyError::WrongPayloadType {
            expected: RELEASE_PAYLOAD_TYPE,
            got: envelope.payload_type,
        }));
    }
    let payload = envelope
        .payload_bytes()
        .map_err(|source| bad(VerifyError::MalformedEnvelope { source }))?;
    let release: Release = serde_json::from_slice(&payload).map_err(|source| {
        bad(VerifyError::MalformedPayload {
            payload_type: RELEASE_PAYLOAD_TYPE,
            source,
        })
    })?;
    if let Some(root) = trust {
        verify::verify_release_envelope(root, &envelope, now).map_err(|source| {
            SignError::Untrusted {
                what: what.to_owned(),
                source,
            }
        })?;
    }
    Ok(SignedRelease {
        app: release.app,
        release_digest: Digest::of(&payload),
        envelope,
    })
}

/// Builds and signs a device's desired state with the director key.
pub fn sign_desired_state(
    device: DeviceId,
    generation: u64,
    issued_at: u64,
    expires_at: u64,
    releases: Vec<SignedRelease>,
    key: &KeyFile,
) -> Result<Envelope, SignError> {
    require(key, Role::Director)?;
    if expires_at <= issued_at {
        return Err(SignError::BadExpiry {
            issued_at,
            expires_at,
        });
    }
    let mut seen = BTreeSet::new();
    let mut apps = Vec::with_capacity(releases.len());
    for r in releases {
        if !seen.insert(r.app.clone()) {
            return Err(SignError::DuplicateApp { app: r.app });
        }
        apps.push(DesiredApp {
            app: r.app,
            release_digest: r.release_digest,
            release: r.envelope,
        });
    }
    let state = DesiredState {
        schema: SCHEMA_VERSION,
        device,
        generation,
        issued_at,
        expires_at,
        apps,
    };
    let payload = serde_json::to_vec(&state).map_err(|source| SignError::Encode { source })?;
    Ok(dsse::sign(
        DESIRED_STATE_PAYLOAD_TYPE,
        &payload,
        &[key.signing_key()],
    ))
}
