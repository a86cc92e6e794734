//! `fleetctl tokens`: the API tokens of operators (admin only): create one
//! with a role (the token is printed once), list them, revoke one.

use clap::{Args, Subcommand};

use super::{CliError, Output, Remote, print_json, render};
use crate::api::types::TokenView;
use crate::store::TokenRole;

#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    pub command: TokensCommand,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; it is printed once, on standard output (the server
    /// keeps only its hash).
    Create {
        /// Its name, as the audit log shows it (letters, digits, . _ -).
        #[arg(long)]
        name: String,
        /// viewer (reads), operator (rollouts, releases, labels, image
        /// import) or admin (groups, tokens, the audit log).
        #[arg(long)]
        role: TokenRole,
    },
    /// List tokens: name, role, creation time (never a token).
    #[command(alias = "ls")]
    List,
    /// Revoke a token: it is refused from now on. The last admin token
    /// cannot be revoked.
    Revoke { name: String },
}

pub async fn run(args: TokensArgs) -> Result<(), CliError> {
    let remote = &args.remote;
    let client = remote.client()?;
    match args.command {
        TokensCommand::Create { name, role } => {
            let created =
                client
                    .create_token(&name, role)
                    .await
                    .map_err(|source| CliError::Server {
                        doing: format!("cannot create token {name:?}"),
                        source,
                    })?;
            match remote.output {
                Output::Json => print_json(&created),
                Output::Text => {
                    eprintln!(
                        "token {:?} ({}) created; it is shown only this once:",
                        created.name, created.role
                    );
                    println!("{}", created.token);
                    Ok(())
                }
            }
        }
        TokensCommand::List => {
            let all = client.tokens().await.map_err(|source| CliError::Server {
                doing: "cannot list tokens".into(),
                source,
            })?;
            match remote.output {
                Output::Json => print_json(&all),
                Output::Text => {
                    print!("{}", table(&all));
                    Ok(())
                }
            }
        }
        TokensCommand::Revoke { name } => {
            let revoked = client
                .revoke_token(&name)
                .await
                .map_err(|source| CliError::Server {
                    doing: format!("cannot revoke token {name:?}"),
                    source,
                })?;
            match remote.output {
                Output::Json => print_json(&revoked),
                Output::Text => {
                    println!("token {:?} ({}) revoked", revoked.name, revoked.role);
                    Ok(())
                }
            }
        }
    }
}

/// The `fleetctl tokens list` table. Times are UTC.
pub fn table(all: &[TokenView]) -> String {
    let mut out = format!("{:<24} {:<9} CREATED\n", "NAME", "ROLE");
    for t in all {
        out.push_str(&format!(
            "{:<24} {:<9} {}\n",
            t.name,
            t.role.as_str(),
            render::utc(t.created_at)
        ));
    }
    out
}
