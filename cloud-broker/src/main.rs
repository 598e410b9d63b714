//! `cloud-broker`: the cloud end of the appliance, a Kafka-protocol broker.

use std::process::ExitCode;

#[global_allocator]
static ALLOC: cloud_broker::alloc::LazyHuge = cloud_broker::alloc::LazyHuge;

fn main() -> ExitCode {
    cloud_broker::cli::main(std::env::args_os())
}
