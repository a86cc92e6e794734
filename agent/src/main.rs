use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "fleet-agent", version = fleet_agent::VERSION, about = "The Fleet device agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a signed desired state against a trust root, as the agent does on receipt.
    Verify(cli::verify::VerifyArgs),
    /// Pull an image (manifest, config, layers) into the content store.
    Pull(cli::pull::PullArgs),
    /// Remove blobs no kept image references, and stale downloads.
    Gc(cli::pull::GcArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Verify(args)) => return cli::verify::run(args),
        Some(Command::Pull(args)) => rt.block_on(cli::pull::pull(args)),
        Some(Command::Gc(args)) => cli::pull::gc(args),
        None => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-agent: {e:#}");
            let disk_full = e
                .downcast_ref::<fleet_agent::fetch::PullError>()
                .is_some_and(|p| p.is_disk_full());
            ExitCode::from(if disk_full {
                cli::pull::EXIT_DISK_FULL
            } else {
                1
            })
        }
    }
}
