use clap::Parser;

#[derive(Parser)]
#[command(name = "fleet-agent", version = fleet_agent::VERSION, about = "The Fleet device agent")]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
