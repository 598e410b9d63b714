//! `demo`: the whole appliance in one command — a single-node cloud broker, an edge agent
//! with its bridge, a simulated fleet and (when QEMU is present) one firmware image.
//!
//! The binary is also the cloud broker and the edge agent: `demo cloud-broker run ...` and
//! `demo edge-agent ...` run those commands (so `cargo run --bin demo` builds everything it
//! starts, and the tests start the real processes from one binary).

use std::process::ExitCode;

#[global_allocator]
static ALLOC: cloud_broker::alloc::LazyHuge = cloud_broker::alloc::LazyHuge;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("cloud-broker") => {
            args.remove(0);
            cloud_broker::cli::main(args)
        }
        Some("edge-agent") => {
            args.remove(0);
            edge_agent::cli::main(args)
        }
        _ => demo(args),
    }
}

fn demo(_args: Vec<std::ffi::OsString>) -> ExitCode {
    eprintln!("demo: not yet");
    ExitCode::FAILURE
}
