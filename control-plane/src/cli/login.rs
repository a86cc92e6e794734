//! `fleetctl login`: check a server URL and token, then save them.

use clap::Args;

use super::credentials::{self, Credentials};
use super::{CliError, check_server_url};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Server URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub server: String,
    /// The API token (fleet-server prints the admin token on its first start).
    #[arg(long, env = "FLEET_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The fleet CA certificate (fleet-server's `<data>/pki/ca.crt`); saved
    /// with the credentials. Without it, https:// is checked against the
    /// public web roots.
    #[arg(long, env = "FLEET_CA")]
    pub ca: Option<std::path::PathBuf>,
}

/// Logs in: the credentials are saved only when the server accepted them.
pub async fn run(args: LoginArgs) -> Result<(), CliError> {
    check_server_url(&args.server)?;
    let ca = args.ca.as_deref().map(credentials::read_ca).transpose()?;
    let client = super::client_for(&args.server, args.token.clone(), ca.as_deref())?;
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
            ca,
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
