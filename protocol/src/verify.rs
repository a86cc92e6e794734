//! The verifier: turns envelope bytes into [`Verified`] values.
//!
//! Every check on signatures runs on the exact bytes received (the PAE of the
//! raw payload bytes) before the payload is parsed; only then is it decoded and
//! handed out as a [`Verified<T>`], which nothing outside this module can
//! construct. Each rejection is a distinct [`VerifyError`] variant with a
//! stable [`VerifyError::code`].

use std::collections::BTreeSet;
use std::ops::Deref;

use serde::de::DeserializeOwned;

use crate::dsse::{
    COMMAND_PAYLOAD_TYPE, DESIRED_STATE_PAYLOAD_TYPE, Envelope, KeyId, RELEASE_PAYLOAD_TYPE,
};
use crate::id::{DeviceId, Digest};
use crate::message::{Command, DesiredState, Release};
pub use crate::rejection::VerifyError;
use crate::root::Role;
use crate::signature::{Opened, open, parse_envelope};
use crate::trust::TrustedRoot;

/// Largest release envelope accepted, in bytes.
pub const MAX_RELEASE_BYTES: usize = 256 * 1024;
/// Largest desired-state envelope accepted, in bytes (it embeds its releases).
pub const MAX_DESIRED_STATE_BYTES: usize = 4 * 1024 * 1024;
/// Largest command envelope accepted, in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Largest envelope [`verify_bytes`] accepts, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = MAX_DESIRED_STATE_BYTES;
/// Most apps one desired state may list.
pub const MAX_APPS: usize = 64;

/// A value parsed from a payload whose signatures were verified first.
/// Only this crate's verifier makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T> {
    value: T,
    payload_digest: Digest,
    signed_by: Vec<KeyId>,
}

impl<T> Verified<T> {
    /// The verified value.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// sha256 of the exact payload bytes that were signed (for a release,
    /// what a desired state's `release_digest` names).
    pub fn payload_digest(&self) -> &Digest {
        &self.payload_digest
    }

    /// The keys whose valid signatures met the threshold.
    pub fn signed_by(&self) -> &[KeyId] {
        &self.signed_by
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// A verified desired state together with its verified releases (same order
/// as `apps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDesiredState {
    state: Verified<DesiredState>,
    releases: Vec<Verified<Release>>,
}

impl VerifiedDesiredState {
    pub fn state(&self) -> &Verified<DesiredState> {
        &self.state
    }

    /// One verified release per entry of `apps`, in the same order.
    pub fn releases(&self) -> &[Verified<Release>] {
        &self.releases
    }

    pub fn into_parts(self) -> (Verified<DesiredState>, Vec<Verified<Release>>) {
        (self.state, self.releases)
    }
}

impl Deref for VerifiedDesiredState {
    type Target = DesiredState;
    fn deref(&self) -> &DesiredState {
        &self.state
    }
}

fn verify_opened<T: DeserializeOwned>(
    root: &TrustedRoot,
    role: Role,
    opened: Opened,
) -> Result<Verified<T>, VerifyError> {
    let signed_by = root.check_signatures(role, &opened)?;
    // Only now, with the signatures checked, is the payload parsed.
    let value = serde_json::from_slice(&opened.payload).map_err(|source| {
        VerifyError::MalformedPayload {
            payload_type: opened.payload_type,
            source,
        }
    })?;
    Ok(Verified {
        value,
        payload_digest: Digest::of(&opened.payload),
        signed_by,
    })
}

/// Verifies an envelope of any `payload_type` signed for `role` and returns
/// its raw payload bytes (for tools; the typed functions below are what the
/// agent uses).
pub fn verify_bytes(
    root: &TrustedRoot,
    role: Role,
    payload_type: &'static str,
    envelope_bytes: &[u8],
    now: u64,
) -> Result<Verified<Vec<u8>>, VerifyError> {
    root.check_not_expired(now)?;
    let opened = parse_envelope(envelope_bytes, payload_type, MAX_ENVELOPE_BYTES)?;
    let signed_by = root.check_signatures(role, &opened)?;
    Ok(Verified {
        payload_digest: Digest::of(&opened.payload),
        value: opened.payload,
        signed_by,
    })
}

/// Verifies a release envelope (JSON bytes) signed by the release role.
pub fn verify_release(
    root: &TrustedRoot,
    envelope_bytes: &[u8],
    now: u64,
) -> Result<Verified<Release>, VerifyError> {
    root.check_not_expired(now)?;
    let opened = parse_envelope(envelope_bytes, RELEASE_PAYLOAD_TYPE, MAX_RELEASE_BYTES)?;
    release_from_opened(root, opened)
}

/// Verifies a release envelope already decoded as an [`Envelope`] (as embedded
/// in a desired state). The payload bytes are exactly the base64-decoded
/// `payload`, so this is the same check as [`verify_release`].
pub fn verify_release_envelope(
    root: &TrustedRoot,
    envelope: &Envelope,
    now: u64,
) -> Result<Verified<Release>, VerifyError> {
    root.check_not_expired(now)?;
    // The same bound as a release envelope on its own (base64 included).
    if envelope.payload.len() > MAX_RELEASE_BYTES {
        return Err(VerifyError::TooLarge {
            what: RELEASE_PAYLOAD_TYPE,
            len: envelope.payload.len(),
            max: MAX_RELEASE_BYTES,
        });
    }
    let opened = open(envelope.clone(), RELEASE_PAYLOAD_TYPE)?;
    release_from_opened(root, opened)
}

fn release_from_opened(
    root: &TrustedRoot,
    opened: Opened,
) -> Result<Verified<Release>, VerifyError> {
    let release: Verified<Release> = verify_opened(root, Role::Release, opened)?;
    if release.runtime.privileged && !root.allow_privileged() {
        return Err(VerifyError::PrivilegedNotAllowed {
            app: release.app.clone(),
        });
    }
    Ok(release)
}

/// Verifies a device's desired state: signed by the director role, addressed
/// to `expected_device`, not expired, newer than `last_generation`, and every
/// release in it signed by the release role, of the app it is listed under and
/// with the payload digest the desired state names.
pub fn verify_desired_state(
    root: &TrustedRoot,
    envelope_bytes: &[u8],
    expected_device: &DeviceId,
    last_generation: Option<u64>,
    now: u64,
) -> Result<VerifiedDesiredState, VerifyError> {
    root.check_not_expired(now)?;
    let opened = parse_envelope(
        envelope_bytes,
        DESIRED_STATE_PAYLOAD_TYPE,
        MAX_DESIRED_STATE_BYTES,
    )?;
    let state: Verified<DesiredState> = verify_opened(root, Role::Director, opened)?;
    if &state.device != expected_device {
        return Err(VerifyError::WrongDevice {
            expected: expected_device.clone(),
            got: state.device.clone(),
        });
    }
    if now >= state.expires_at {
        return Err(VerifyError::Expired {
            expires_at: state.expires_at,
            now,
        });
    }
    if let Some(last) = last_generation
        && state.generation <= last
    {
        return Err(VerifyError::StaleGeneration {
            got: state.generation,
            last,
        });
    }
    if state.apps.len() > MAX_APPS {
        return Err(VerifyError::TooManyApps {
            count: state.apps.len(),
            max: MAX_APPS,
        });
    }
    let mut seen = BTreeSet::new();
    let mut releases = Vec::with_capacity(state.apps.len());
    for entry in &state.apps {
        if !seen.insert(&entry.app) {
            return Err(VerifyError::DuplicateApp {
                app: entry.app.clone(),
            });
        }
        let release = verify_release_envelope(root, &entry.release, now)?;
        if release.payload_digest() != &entry.release_digest {
            return Err(VerifyError::ReleaseDigestMismatch {
                app: entry.app.clone(),
                expected: entry.release_digest.clone(),
                actual: release.payload_digest().clone(),
            });
        }
        if release.app != entry.app {
            return Err(VerifyError::ReleaseAppMismatch {
                expected: entry.app.clone(),
                got: release.app.clone(),
            });
        }
        releases.push(release);
    }
    Ok(VerifiedDesiredState { state, releases })
}

/// Verifies a command: signed by the director role, addressed to
/// `expected_device`, not expired. Replay of command ids is the caller's to track.
pub fn verify_command(
    root: &TrustedRoot,
    envelope_bytes: &[u8],
    expected_device: &DeviceId,
    now: u64,
) -> Result<Verified<Command>, VerifyError> {
    root.check_not_expired(now)?;
    let opened = parse_envelope(envelope_bytes, COMMAND_PAYLOAD_TYPE, MAX_COMMAND_BYTES)?;
    let command: Verified<Command> = verify_opened(root, Role::Director, opened)?;
    if &command.device != expected_device {
        return Err(VerifyError::WrongDevice {
            expected: expected_device.clone(),
            got: command.device.clone(),
        });
    }
    if now >= command.expires_at {
        return Err(VerifyError::Expired {
            expires_at: command.expires_at,
            now,
        });
    }
    Ok(command)
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
