//! `fleetctl devices`: the devices the server knows.

use clap::{Args, Subcommand};
use fleet_protocol::DeviceId;

use super::{CliError, Output, Remote, print_json, render};

#[derive(Debug, Args)]
pub struct DevicesArgs {
    #[command(subcommand)]
    pub command: DevicesCommand,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List devices.
    Ls,
    /// One device with its latest status.
    Show { id: DeviceId },
}

pub async fn run(args: DevicesArgs) -> Result<(), CliError> {
    let remote = &args.remote;
    let client = remote.client()?;
    match args.command {
        DevicesCommand::Ls => {
            let all = client.devices().await.map_err(|source| CliError::Server {
                doing: "cannot list devices".into(),
                source,
            })?;
            match remote.output {
                Output::Json => print_json(&all),
                Output::Text => {
                    print!("{}", render::devices(&all));
                    Ok(())
                }
            }
        }
        DevicesCommand::Show { id } => {
            let d = client
                .device(&id)
                .await
                .map_err(|source| CliError::Server {
                    doing: format!("cannot show device {id}"),
                    source,
                })?;
            match remote.output {
                Output::Json => print_json(&d),
                Output::Text => {
                    render::device(&d);
                    Ok(())
                }
            }
        }
    }
}
