//! `fleetctl login`: check a server URL and token, then save them.

use clap::Args;

use super::credentials::{self, Credentials};
use super::{CliError, check_server_url};
use crate::client::Client;

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Server URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub server: String,
    /// The API token (fleet-server prints the admin token on its first start).
    #[arg(long, env = "FLEET_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// Logs in: the credentials are saved only when the server accepted them.
pub async fn run(args: LoginArgs) -> Result<(), CliError> {
    check_server_url(&args.server)?;
    let client = Client::new(&args.server, Some(args.token.clone()));
    let devices = client.devices().await.map_err(|source| CliError::Server {
        doing: format!("cannot log in to {}", args.server),
        source,
    })?;
    let path = credentials::credentials_path()?;
    credentials::save(
        &path,
        &Credentials {
            server: client.base().to_owned(),
            token: args.token,
        },
    )?;
    println!(
        "logged in to {} ({} devices); credentials saved in {}",
        client.base(),
        devices.len(),
        path.display()
    );
    Ok(())
}
