//! `fleetctl`: the operator CLI. Parses the command line and dispatches to
//! `fleet_control_plane::cli`; a failure's class is the exit code.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use fleet_control_plane::cli::audit::AuditArgs;
use fleet_control_plane::cli::desired::DesiredCommand;
use fleet_control_plane::cli::devices::DevicesArgs;
use fleet_control_plane::cli::enroll::EnrollArgs;
use fleet_control_plane::cli::groups::GroupsArgs;
use fleet_control_plane::cli::image::ImageArgs;
use fleet_control_plane::cli::keys::KeysCommand;
use fleet_control_plane::cli::login::LoginArgs;
use fleet_control_plane::cli::release::ReleaseCommand;
use fleet_control_plane::cli::rollout::RolloutArgs;
use fleet_control_plane::cli::tokens::TokensArgs;
use fleet_control_plane::cli::{self, CliError, EXIT_CODES_HELP};

#[derive(Parser)]
#[command(
    name = "fleetctl",
    version = fleet_control_plane::VERSION,
    about = "The Fleet operator CLI",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per run: the rollout flags (GPU, requirements) make it large.
#[allow(clippy::large_enum_variant)]
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
    /// Device enrollment: bootstrap tokens, approvals.
    Enroll(EnrollArgs),
    /// Groups of devices (by label selector or explicit members) and labels.
    Groups(GroupsArgs),
    /// Images in the server's content store.
    Image(ImageArgs),
    /// API tokens with roles (viewer, operator, admin): create, list, revoke.
    Tokens(TokensArgs),
    /// The audit log: who called what, when, from where (admin).
    Audit(AuditArgs),
    /// Print a shell completion script, e.g. `fleetctl completions bash`.
    Completions { shell: clap_complete::Shell },
}

fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Keys(c) => cli::keys::run(c),
        Command::Release(c) => cli::release::run(c),
        Command::Desired(c) => cli::desired::run(c),
        Command::Login(a) => cli::block_on(cli::login::run(a)),
        Command::Rollout(a) => cli::block_on(cli::rollout::run(a)),
        Command::Devices(a) => cli::block_on(cli::devices::run(a)),
        Command::Enroll(a) => cli::block_on(cli::enroll::run(a)),
        Command::Groups(a) => cli::block_on(cli::groups::run(a)),
        Command::Image(a) => cli::block_on(cli::image::run(a)),
        Command::Tokens(a) => cli::block_on(cli::tokens::run(a)),
        Command::Audit(a) => cli::block_on(cli::audit::run(a)),
        Command::Completions { shell } => cli::completions(shell, &mut Cli::command()),
    }
}

fn main() -> ExitCode {
    // clap prints usage errors and exits 2 itself.
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.report());
            ExitCode::from(e.exit_code())
        }
    }
}
