//! `fleetctl image`: images in the server's content store.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, Output, Remote, print_json};
use crate::content::ImportSummary;

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load an OCI image layout directory, an OCI archive or a `docker save`
    /// tar into the server's content store (served at /v2 to devices).
    Import {
        /// The layout directory or the tar file.
        path: PathBuf,
        /// Repository to store it under, e.g. `edge/model`.
        #[arg(long)]
        repository: String,
        /// Tag (default: the tags the layout or archive names).
        #[arg(long)]
        tag: Option<String>,
    },
}

pub async fn run(args: ImageArgs) -> Result<(), CliError> {
    let creds = args.remote.credentials()?;
    match args.command {
        ImageCommand::Import {
            path,
            repository,
            tag,
        } => {
            let summary = crate::content::cli::import_image(
                &creds.server,
                Some(&creds.token),
                &path,
                &repository,
                tag.as_deref(),
            )
            .await
            .map_err(|source| CliError::Import {
                path: path.clone(),
                source,
            })?;
            show(&summary, args.remote.output)
        }
    }
}

fn show(summary: &ImportSummary, output: Output) -> Result<(), CliError> {
    match output {
        Output::Json => print_json(summary),
        Output::Text => {
            for image in &summary.images {
                println!(
                    "imported {}:{} {}",
                    image.repository, image.tag, image.digest
                );
            }
            println!(
                "{} blobs added, {} already present",
                summary.blobs_added, summary.blobs_present
            );
            Ok(())
        }
    }
}
