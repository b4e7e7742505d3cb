//! `sam`: the command line of SAM, Scalable Atomic Multicast.

mod model_cmd;
mod sim_cmd;

use clap::{Parser, Subcommand};

/// SAM: an open group in which every member delivers every message in one agreed total order.
#[derive(Parser, Debug)]
#[command(name = "sam", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the deterministic simulator: a whole group under seeded faults, with every promise checked.
    Sim(Box<sim_cmd::SimArgs>),
    /// Model-check sequencer failover exhaustively (3 commit servers, k_commit = 2, 2 mids,
    /// 3 numbers, 3 ballots, a lossy network, one storage loss) and print the states explored.
    Model(model_cmd::ModelArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => sim_cmd::execute(*args),
        Command::Model(args) => model_cmd::execute(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
