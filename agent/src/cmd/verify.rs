//! `fleet-agent verify`: checks a signed desired state as the agent does on receipt.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fleet_protocol::dsse::Envelope;
use fleet_protocol::verify::MAX_DESIRED_STATE_BYTES;
use fleet_protocol::{DeviceId, TrustedRoot, VerifyError, verify_desired_state};

/// Verify a signed desired state against a trust root, as the agent does on receipt.
/// Exit status: 0 verified, 1 rejected, 2 unreadable input or unusable trust root.
#[derive(clap::Args)]
pub struct Args {
    /// The device's trust root (trust.json).
    #[arg(long)]
    trust: PathBuf,
    /// This device's id; without it the id named in the desired state is used.
    #[arg(long)]
    device: Option<DeviceId>,
    /// The last generation applied; the desired state must be newer.
    #[arg(long)]
    last_generation: Option<u64>,
    /// Check at this time (Unix seconds) instead of the clock, e.g. for fixtures.
    #[arg(long)]
    now: Option<u64>,
    /// The signed desired state (DSSE envelope JSON).
    desired: PathBuf,
}

pub fn run(args: Args) -> ExitCode {
    let now = args.now.unwrap_or_else(super::unix_now);
    match verify(
        &args.trust,
        args.device,
        args.last_generation,
        now,
        &args.desired,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

const EXIT_REJECTED: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;

fn read(path: &Path) -> Result<Vec<u8>, ExitCode> {
    std::fs::read(path).map_err(|e| {
        eprintln!("error: cannot read {}: {e}", path.display());
        ExitCode::from(EXIT_BAD_INPUT)
    })
}

/// The device named in an envelope's payload, read without verifying: only to
/// choose what to verify against when `--device` is not given.
fn named_device(bytes: &[u8]) -> Option<DeviceId> {
    let envelope = Envelope::from_json(bytes, MAX_DESIRED_STATE_BYTES).ok()?;
    let payload: serde_json::Value =
        serde_json::from_slice(&envelope.payload_bytes().ok()?).ok()?;
    DeviceId::new(payload.get("device")?.as_str()?).ok()
}

fn rejected(what: &str, e: &VerifyError, exit: u8) -> ExitCode {
    eprintln!("{what}: {}: {e}", e.code());
    ExitCode::from(exit)
}

fn verify(
    trust: &Path,
    device: Option<DeviceId>,
    last_generation: Option<u64>,
    now: u64,
    desired: &Path,
) -> Result<(), ExitCode> {
    let root = TrustedRoot::bootstrap(&read(trust)?, now)
        .map_err(|e| rejected("trust root rejected", &e, EXIT_BAD_INPUT))?;
    let bytes = read(desired)?;
    let device = match device {
        Some(d) => d,
        None => {
            let Some(d) = named_device(&bytes) else {
                eprintln!(
                    "rejected: malformed_envelope: no device id in {}",
                    desired.display()
                );
                return Err(ExitCode::from(EXIT_REJECTED));
            };
            eprintln!("note: --device not given, checking for device {d}");
            d
        }
    };
    let state = verify_desired_state(&root, &bytes, &device, last_generation, now)
        .map_err(|e| rejected("rejected", &e, EXIT_REJECTED))?;
    println!(
        "verified: device {} generation {} expires_at {} (trust root v{})",
        state.device,
        state.generation,
        state.expires_at,
        root.version()
    );
    for release in state.releases() {
        println!(
            "  app {} {} {}@{} release {}",
            release.app,
            release.version,
            release.repository,
            release.manifest_digest,
            release.payload_digest()
        );
    }
    Ok(())
}
