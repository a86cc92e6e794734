use clap::Parser;

#[derive(Parser)]
#[command(name = "fleetctl", version = fleet_control_plane::VERSION, about = "The Fleet operator CLI")]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
