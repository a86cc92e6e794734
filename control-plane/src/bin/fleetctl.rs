//! `fleetctl`: the operator CLI.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser, Subcommand};
use fleet_control_plane::cli::{self, DevicesArgs, GroupsArgs, LoginArgs, RolloutArgs};
use fleet_control_plane::keys::{self, KeyFile};
use fleet_control_plane::sign;
use fleet_protocol::DeviceId;
use fleet_protocol::trust::{Role, TrustedRoot};

#[derive(Parser)]
#[command(name = "fleetctl", version = fleet_control_plane::VERSION, about = "The Fleet operator CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Signing keys and the devices' trust root (trust.json).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Releases: what an app runs, signed by the release key.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Desired states for one device, signed by the director key (offline / USB use).
    #[command(subcommand)]
    Desired(DesiredCommand),
    /// Save the server URL and API token for the next commands.
    Login(LoginArgs),
    /// Roll an image out to a group: `fleetctl rollout IMAGE --group G`; or
    /// follow and steer rollouts (status, pause, resume, abort, undo).
    Rollout(RolloutArgs),
    /// Devices known to the server.
    Devices(DevicesArgs),
    /// Groups of devices (by label selector or explicit members) and labels.
    Groups(GroupsArgs),
    /// Images in the server's content store.
    Image(cli::ImageArgs),
    /// Print a shell completion script, e.g. `fleetctl completions bash`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create root, release and director keys and a version 1 trust.json.
    Init {
        /// Directory for the key files and trust.json (created if missing).
        #[arg(long, default_value = "fleet-keys", env = "FLEET_KEYS_DIR")]
        dir: PathBuf,
        /// Days until the trust root expires (devices refuse everything after).
        #[arg(long, default_value_t = 365)]
        expires_days: u64,
        /// Let releases ask for privileged containers.
        #[arg(long)]
        allow_privileged: bool,
    },
    /// Replace the root key: writes trust.json version N+1 signed by the old and the new root key.
    Rotate {
        #[arg(long, default_value = "fleet-keys", env = "FLEET_KEYS_DIR")]
        dir: PathBuf,
        /// Days until the new trust root expires.
        #[arg(long, default_value_t = 365)]
        expires_days: u64,
    },
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Sign a release JSON file with the release key.
    Sign {
        /// The release (JSON: app, version, repository, manifest_digest, runtime).
        release: PathBuf,
        /// The release key file.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed release envelope.
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum DesiredCommand {
    /// Build and sign a device's desired state from signed releases.
    Sign {
        /// The device id.
        #[arg(long)]
        device: DeviceId,
        /// Must be greater than the last generation the device applied.
        #[arg(long)]
        generation: u64,
        /// Seconds from now until the desired state expires.
        #[arg(long, default_value_t = 86_400)]
        expires_in: u64,
        /// The director key file.
        #[arg(long)]
        key: PathBuf,
        /// Check each release against this trust root first.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Signed release files (from `fleetctl release sign`).
        #[arg(required = true)]
        releases: Vec<PathBuf>,
        /// Where to write the signed desired state.
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn now() -> Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn remote(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Login(args) => cli::login(args).await,
            Command::Rollout(args) => cli::rollout(args).await,
            Command::Devices(args) => cli::devices(args).await,
            Command::Groups(args) => cli::groups(args).await,
            Command::Image(args) => cli::image(args).await,
            _ => Ok(()),
        }
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Login(_)
        | Command::Rollout(_)
        | Command::Devices(_)
        | Command::Groups(_)
        | Command::Image(_) => {
            return remote(cli);
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "fleetctl", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .context("cannot write the completion script")?;
        }
        Command::Keys(KeysCommand::Init {
            dir,
            expires_days,
            allow_privileged,
        }) => {
            let made = keys::init(&dir, expires_days, allow_privileged, now()?)?;
            for (role, path, keyid) in &made.keys {
                println!("{role:<8} key {keyid}  {}", path.display());
            }
            println!(
                "trust root v1 (expires at {})  {}",
                made.expires_at,
                made.trust.display()
            );
            println!(
                "next: copy {} to each device; keep root.key and release.key offline; \
                 give director.key to fleet-server",
                made.trust.display()
            );
        }
        Command::Keys(KeysCommand::Rotate { dir, expires_days }) => {
            let r = keys::rotate(&dir, expires_days, now()?)?;
            println!("root     key {}  {}", r.keyid, r.root_key.display());
            println!(
                "trust root v{} (expires at {})  {}",
                r.version,
                r.expires_at,
                r.trust.display()
            );
            println!(
                "previous root kept as {} and {}",
                r.archived_trust.display(),
                r.archived_root_key.display()
            );
            println!(
                "next: devices accept v{} only after v{}: deliver every version in order",
                r.version,
                r.version - 1
            );
        }
        Command::Release(ReleaseCommand::Sign {
            release,
            key,
            output,
        }) => {
            let key = KeyFile::load_for(&key, Role::Release)?;
            let envelope =
                sign::sign_release(&release.display().to_string(), &read(&release)?, &key)?;
            let mut bytes = envelope.to_json_pretty();
            bytes.push(b'\n');
            write_output(&output, &bytes)?;
            println!(
                "signed by release key {}  {}",
                key.keyid(),
                output.display()
            );
        }
        Command::Desired(DesiredCommand::Sign {
            device,
            generation,
            expires_in,
            key,
            trust,
            releases,
            output,
        }) => {
            let now = now()?;
            let key = KeyFile::load_for(&key, Role::Director)?;
            let root = match &trust {
                Some(path) => {
                    Some(TrustedRoot::bootstrap(&read(path)?, now).with_context(|| {
                        format!("{} is not a usable trust root", path.display())
                    })?)
                }
                None => None,
            };
            let mut signed = Vec::new();
            for path in &releases {
                signed.push(sign::read_signed_release(
                    &path.display().to_string(),
                    &read(path)?,
                    root.as_ref(),
                    now,
                )?);
            }
            let apps: Vec<String> = signed.iter().map(|r| r.app.to_string()).collect();
            let envelope = sign::sign_desired_state(
                device.clone(),
                generation,
                now,
                now.saturating_add(expires_in),
                signed,
                &key,
            )?;
            let mut bytes = envelope.to_json_pretty();
            bytes.push(b'\n');
            write_output(&output, &bytes)?;
            println!(
                "desired state for {device}, generation {generation}, apps [{}], signed by director key {}  {}",
                apps.join(", "),
                key.keyid(),
                output.display()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
