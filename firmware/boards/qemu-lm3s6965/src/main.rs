//! # qemu-lm3s6965 — the sensor node on QEMU's Stellaris LM3S6965 (Cortex-M3)
//!
//! The same `firmware` library a real node runs, driven by a bare-metal main loop: a simulated
//! temperature sensor fills the uplink's buffer of unacknowledged readings, and the uplink
//! speaks MQTT over UART0, which QEMU connects to a TCP socket (the gateway or any MQTT broker
//! with an acker). The run ends, with QEMU's exit status, once `n` readings were acknowledged
//! as durable, with QEMU's exit status telling how it went:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | all `n` readings were acknowledged |
//! | 1 | bad arguments, a panic or a fault (a line on stderr says which) |
//! | 2 | the run finished, but the buffer overflowed and some readings were dropped (`full=drop`) |
//! | 124 | (from `timeout`) the readings were never all acknowledged |
//!
//! ```text
//! qemu-system-arm -cpu cortex-m3 -machine lm3s6965evb -display none -monitor none \
//!   -semihosting-config enable=on,target=native,arg=qemu,arg=id=qemu-1,arg=n=200 \
//!   -serial tcp:127.0.0.1:1883,nodelay=on -kernel target/thumbv7m-none-eabi/release/qemu-lm3s6965
//! ```
//!
//! Parameters are listed in [`args`]. The image prints one `start` line and, on success, one
//! `done` line with the uplink's counters to the semihosting console (QEMU's stderr):
//!
//! ```text
//! qemu-lm3s6965: start id=qemu-1 boot=4272934779 n=200
//! qemu-lm3s6965: done generated=200 sent=200 resent=0 acked=200 dropped=0 reconnects=0 ms=4053
//! ```
//!
//! # Layout
//! - [`args`] — `key=value` run parameters from the semihosting command line.
//! - [`clock`] — the 1 ms SysTick clock (and the core clock QEMU runs at).
//! - [`uart`] — UART0 as the uplink's `Link`.
//! - [`host`] — semihosting calls (command line, console, exit) without `core::fmt`.
//!
//! # Size
//! Nothing here formats with `core::fmt`: the panic and fault handlers print a fixed string,
//! and numbers are printed by [`host::Line`]. That keeps the image within 24 KiB of flash.
#![no_std]
#![no_main]

mod args;
mod clock;
mod host;
mod uart;

use cortex_m_rt::{entry, exception, ExceptionFrame};
use firmware::buffer::OverflowPolicy;
use firmware::mqtt::{Config, Uplink};
use firmware::wire::Reading;

use crate::clock::Clock;
use crate::uart::Uart0;

/// Readings the node holds unacknowledged: 1.28 s of samples at the default 50/s.
const BUFFER: usize = 64;
/// Transmit buffer: a 23-reading batch fits, so `batch` up to 23 is honoured.
const TX: usize = 512;

#[entry]
fn main() -> ! {
    let mut line_buf = [0u8; 256];
    let Some(line) = host::cmdline(&mut line_buf) else {
        host::fail("cannot read the semihosting command line")
    };
    let p = match args::parse(line) {
        Ok(p) => p,
        Err(msg) => host::fail(msg),
    };
    let Ok(mut cfg) = Config::new(p.id, p.boot) else {
        host::fail("bad id (1..=32 of A-Za-z0-9_.-)")
    };
    if let Some(pass) = p.password {
        // Both fit: the id is at most 32 bytes, the password at most 64 (args::parse).
        if cfg.username.push_str(p.id).is_err() || cfg.password.push_str(pass).is_err() {
            host::fail("credentials too long")
        }
    }
    cfg.batch_max = p.batch as usize;
    cfg.keep_alive_s = p.keepalive as u16;
    cfg.resend_timeout_ms = u64::from(p.resend_ms);
    cfg.response_timeout_ms = u64::from(p.timeout_ms);
    // Short backoff so tests that cut the link see the node back within a couple of seconds.
    cfg.reconnect_min_ms = 200;
    cfg.reconnect_max_ms = 2_000;

    let Some(core) = cortex_m::Peripherals::take() else {
        host::fail("peripherals taken twice")
    };
    let mut clock = Clock::start(core.SYST);
    let mut uart = Uart0::init();

    host::Line::new()
        .push("start id=")
        .push(p.id)
        .num("boot", u64::from(p.boot))
        .num("n", u64::from(p.n))
        .send();

    let t0 = clock.now();
    // About 2.6 KiB, in a static so that the image's static RAM figure tells the truth about
    // what the node needs (the buffer, TX/RX buffers and session state) and the stack stays small.
    let Some(uplink) = cortex_m::singleton!(: Uplink<[Reading; BUFFER], TX> = Uplink::new(
        cfg,
        [Reading::default(); BUFFER],
        OverflowPolicy::DropOldest,
        0,
        t0,
    )) else {
        host::fail("uplink initialised twice")
    };
    let n = u64::from(p.n);
    let rate = u64::from(p.rate);
    let mut made: u64 = 0;
    loop {
        let now = clock.now();
        // Sample k is due at t0 + k/rate s; catching up after a long write or a full buffer
        // keeps the rate and the readings exactly as in an undisturbed run.
        let mut next_sample = u64::MAX;
        while n == 0 || made < n {
            let due = t0 + made * 1_000 / rate;
            if due > now {
                next_sample = due;
                break;
            }
            // A link outage longer than the buffer (64 readings: 0.64 s at 100/s, while noticing
            // a dead UART link takes `timeout`) would overflow it. By default the simulated
            // sensor then holds its samples, as a sensor with its own FIFO would, and catches
            // up once acks free room; with `full=drop` it samples anyway and the buffer drops
            // the oldest (counted, exit status 2).
            if !p.drop_when_full && uplink.buffer().len() >= BUFFER {
                break;
            }
            // Stamped with the time it was due rather than `now`, so timestamps are exactly
            // `t0 + k * 1000 / rate` and a test can recompute every reading.
            let reading = Reading {
                channel: 0,
                timestamp_ms: due,
                value: temperature(made),
            };
            // DropOldest never refuses; an overflow shows up in the counters instead.
            let _ = uplink.push(reading, now);
            made += 1;
        }
        let deadline = firmware::driver::service(uplink, &mut uart, now);
        // Done once all `n` readings exist and none is left waiting: each was acknowledged or,
        // after an outage longer than the buffer, dropped. Waiting for `acked >= n` instead
        // would never end after a drop.
        if n > 0 && made >= n && uplink.buffer().is_empty() {
            let c = uplink.counters();
            host::Line::new()
                .push("done")
                .num("generated", c.generated)
                .num("sent", c.sent)
                .num("resent", c.resent)
                .num("acked", c.acked)
                .num("dropped", c.dropped_overflow)
                .num("reconnects", c.reconnects)
                .num("ms", clock.now() - t0)
                .send();
            host::exit(if c.acked >= n { 0 } else { 2 });
        }
        // Sleep until the next SysTick when nothing is due and no byte waits. The UART raises no
        // interrupt, so a byte that lands just after the check waits at most 1 ms; QEMU keeps
        // filling the RX FIFO from the socket while the core sleeps. Measured: a 200-reading run
        // takes the same 4.05 s with or without WFI, but QEMU burns 0.3 s of host CPU instead of
        // 4.1 s, which matters when a test runs many nodes.
        if deadline.min(next_sample) > clock.now() && !uart_has_bytes(&mut uart) {
            cortex_m::asm::wfi();
        }
    }
}

fn uart_has_bytes(uart: &mut Uart0) -> bool {
    matches!(embedded_io::ReadReady::read_ready(uart), Ok(true))
}

/// A deterministic room temperature in °C for sample `k`: 21 °C plus a slow 0.01 °C-per-sample
/// ramp that restarts every 500 samples, plus a ±0.5 °C triangle wobble with a 40-sample
/// period. Integer centi-degrees, so no libm and exact values a test can recompute.
fn temperature(k: u64) -> f32 {
    let ramp = (k % 500) as i32;
    let phase = (k % 40) as i32;
    let wobble = if phase < 20 { phase } else { 40 - phase } * 5 - 50;
    (2_100 + ramp + wobble) as f32 * 0.01
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // The message is deliberately not printed: formatting it would link core::fmt.
    host::fail("panic")
}

#[exception]
unsafe fn HardFault(_: &ExceptionFrame) -> ! {
    host::fail("hard fault")
}

#[exception]
unsafe fn DefaultHandler(_irq: i16) {
    host::fail("unexpected interrupt")
}
