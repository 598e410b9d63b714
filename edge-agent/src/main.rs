//! `edge-agent`: the gateway binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    edge_agent::cli::main(std::env::args_os())
}
