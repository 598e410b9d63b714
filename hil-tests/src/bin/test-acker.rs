//! `test-acker`: acknowledges every batch it receives on an MQTT broker (a stand-in for the
//! edge agent's Ack path when testing devices against a plain broker such as mosquitto).
//! Its Ack means "received", not "durable": never use it where durability matters.

use std::sync::{Arc, Mutex};

use clap::Parser;

/// Acknowledge device batches on a broker; print totals every few seconds.
#[derive(Debug, Parser)]
#[command(name = "test-acker", version)]
struct Args {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = Args::parse();
    let stats = Arc::new(Mutex::new(hil_tests::acker::Stats::default()));
    let s = stats.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            let st = s.lock().unwrap_or_else(|e| e.into_inner());
            println!(
                "boots {}  readings {}  acks {}  malformed {}",
                st.boots.len(),
                st.received(),
                st.acks_sent,
                st.malformed
            );
        }
    });
    hil_tests::acker::run(&a.host, a.port, stats, None).await;
}
