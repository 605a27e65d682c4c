//! The `rimir-operator` binary: `run` (default) the controller, `crd` print the CRD,
//! `render -f FILE` print what a MimirCluster would create.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rimir-operator",
    about = "Kubernetes operator for rimir MimirClusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the MimirCluster CRD as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) | None => print!("{}", rimir_operator::crd::crd_yaml()),
    }
    Ok(())
}
