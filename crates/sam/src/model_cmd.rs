//! `sam model`: the exhaustive model check of sequencer failover (DESIGN section 6).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use sam_model::{check, Mutant};

/// Flags of `sam model`.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Check a deliberately broken rule instead of the correct ones (expects a counterexample).
    #[arg(long, value_parser = parse_mutant)]
    mutant: Option<Mutant>,
}

fn parse_mutant(s: &str) -> Result<Mutant, String> {
    s.parse::<Mutant>().map_err(|_| {
        let names: Vec<&str> = Mutant::ALL.iter().map(|m| m.name()).collect();
        format!("unknown mutant {s:?}; one of: {}", names.join(", "))
    })
}

/// Runs `sam model`: prints the states explored and exits non-zero if the correct rules fail
/// (or a mutant survives).
pub fn execute(args: ModelArgs) -> Result<ExitCode> {
    let outcome = check(args.mutant);
    print!("{outcome}");
    let expected = match args.mutant {
        None => outcome.holds(),
        Some(_) => outcome.violated.is_some(),
    };
    Ok(if expected { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
