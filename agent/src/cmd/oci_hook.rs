//! `fleet-agent oci-hook tegra-prepare …`: the agent as an OCI
//! `createContainer` hook (the runtime runs it; see
//! [`fleet_agent::gpu::hook`]). Errors go to stderr, which the runtime puts
//! in its own error, and so into the release's status.

use fleet_agent::gpu::hook::{self, Prepare};

#[derive(clap::Args)]
pub struct HookArgs {
    #[command(subcommand)]
    hook: Hook,
}

#[derive(clap::Subcommand)]
enum Hook {
    /// The CSV fallback's symlinks and ld.so cache for Tegra libraries.
    TegraPrepare {
        /// `--link TARGET::LINK`, `--folder DIR`, `--ldconfig PATH`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

pub fn run(args: HookArgs) -> anyhow::Result<()> {
    match args.hook {
        Hook::TegraPrepare { args } => {
            let prepare = Prepare::parse(&args)?;
            let rootfs = hook::rootfs_from_state(std::io::stdin().lock())?;
            hook::prepare(&prepare, &rootfs)?;
            Ok(())
        }
    }
}
