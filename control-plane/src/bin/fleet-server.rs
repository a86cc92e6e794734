use clap::Parser;

#[derive(Parser)]
#[command(name = "fleet-server", version = fleet_control_plane::VERSION, about = "The Fleet control plane")]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
