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
    /// Revoke a device for good: the broker cuts it off at once, the API,
    /// renewal and enrollment refuse it from then on (admin).
    Revoke { id: DeviceId },
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
        DevicesCommand::Revoke { id } => {
            let r = client
                .revoke_device(&id)
                .await
                .map_err(|source| CliError::Server {
                    doing: format!("cannot revoke device {id}"),
                    source,
                })?;
            match remote.output {
                Output::Json => print_json(&r),
                Output::Text => {
                    println!(
                        "device {} revoked at {} ({} certificate(s)); it needs a new device id to come back",
                        r.device,
                        render::utc(r.revoked_at),
                        r.serials.len()
                    );
                    Ok(())
                }
            }
        }
    }
}
