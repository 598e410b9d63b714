//! Thin drivers that run an [`Uplink`] over real I/O.
//!
//! - [`service`]: blocking `embedded-io` (`Read + Write + ReadReady`), for a bare-metal main loop
//!   over a UART. It never blocks on reads, so the loop can keep sampling.
//! - [`run`] (feature `async`): `embedded-io-async` with any `DelayNs`, for async runtimes on
//!   an MCU (embassy) or a host (tokio through `embedded-io-adapters`).

use crate::buffer::Storage;
use crate::mqtt::{Action, Uplink};

/// A byte link to the broker for the blocking driver.
pub trait Link: embedded_io::Read + embedded_io::Write + embedded_io::ReadReady {
    /// Opens (or re-opens) the connection. A UART is always open: the default does nothing.
    fn open(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Closes the connection. The default does nothing.
    fn close(&mut self) {}
}

/// Does everything the uplink can do at `now` without waiting for input, and returns the time
/// (ms) by which it should be called again at the latest. Call it again sooner whenever bytes
/// may have arrived or a reading was pushed.
pub fn service<S: Storage, const TX: usize, L: Link>(
    uplink: &mut Uplink<S, TX>,
    link: &mut L,
    now: u64,
) -> u64 {
    let mut buf = [0u8; 64];
    loop {
        match uplink.poll(now) {
            Action::Connect => match link.open() {
                Ok(()) => uplink.on_connected(now),
                Err(_) => uplink.on_connect_failed(now),
            },
            Action::Transmit => match link.write(uplink.transmit()) {
                Ok(0) | Err(_) => {
                    link.close();
                    uplink.on_disconnected(now);
                }
                Ok(n) => uplink.consume_tx(n),
            },
            Action::Close => link.close(),
            Action::Wait(deadline) => match link.read_ready() {
                Ok(true) => match link.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        link.close();
                        uplink.on_disconnected(now);
                    }
                    Ok(n) => uplink.on_received(&buf[..n], now),
                },
                Ok(false) => return deadline,
                Err(_) => {
                    link.close();
                    uplink.on_disconnected(now);
                }
            },
        }
    }
}

#[cfg(feature = "async")]
pub use self::asynch::{run, Clock, Connector};

#[cfg(feature = "async")]
mod asynch {
    use super::*;
    use embassy_futures::select::{select, Either};
    use embedded_hal_async::delay::DelayNs;
    use embedded_io_async::{Read, Write};

    /// Opens connections to the broker.
    pub trait Connector {
        /// The connection type.
        type Conn: Read + Write;
        /// Opens a new connection.
        #[allow(async_fn_in_trait)]
        async fn connect(&mut self) -> Option<Self::Conn>;
    }

    /// A monotonic millisecond clock.
    pub trait Clock {
        /// Milliseconds since an arbitrary, fixed origin.
        fn now_ms(&self) -> u64;
    }

    fn ms(d: u64) -> u32 {
        u32::try_from(d).unwrap_or(u32::MAX).max(1)
    }

    /// Runs the uplink, reconnecting as it asks, until `tick` returns `None`.
    ///
    /// `tick(uplink, now)` is called every turn: push due readings there and return when it
    /// next wants to run (ms), or `None` to stop. Reads are raced against timers with
    /// `select`, which is safe because dropping an `embedded-io-async` read loses no bytes
    /// that were not returned. A write that stalls for `response_timeout_ms` ends the session.
    pub async fn run<S, const TX: usize, C, K, D, F>(
        uplink: &mut Uplink<S, TX>,
        connector: &mut C,
        clock: &K,
        delay: &mut D,
        mut tick: F,
    ) where
        S: Storage,
        C: Connector,
        K: Clock,
        D: DelayNs,
        F: FnMut(&mut Uplink<S, TX>, u64) -> Option<u64>,
    {
        let mut conn: Option<C::Conn> = None;
        let mut buf = [0u8; 256];
        let stall = uplink.config().response_timeout_ms;
        loop {
            let now = clock.now_ms();
            let Some(tick_at) = tick(uplink, now) else { return };
            match uplink.poll(now) {
                Action::Connect => match connector.connect().await {
                    Some(c) => {
                        conn = Some(c);
                        uplink.on_connected(clock.now_ms());
                    }
                    None => uplink.on_connect_failed(clock.now_ms()),
                },
                Action::Transmit => {
                    let ok = match conn.as_mut() {
                        Some(c) => {
                            match select(c.write(uplink.transmit()), delay.delay_ms(ms(stall))).await {
                                Either::First(Ok(n)) if n > 0 => {
                                    uplink.consume_tx(n);
                                    true
                                }
                                _ => false,
                            }
                        }
                        None => false,
                    };
                    if !ok {
                        conn = None;
                        uplink.on_disconnected(clock.now_ms());
                    }
                }
                Action::Close => conn = None,
                Action::Wait(deadline) => {
                    let until = deadline.min(tick_at);
                    if until <= now {
                        continue;
                    }
                    match conn.as_mut() {
                        Some(c) => match select(c.read(&mut buf), delay.delay_ms(ms(until - now))).await {
                            Either::First(Ok(n)) if n > 0 => uplink.on_received(&buf[..n], clock.now_ms()),
                            Either::First(_) => {
                                conn = None;
                                uplink.on_disconnected(clock.now_ms());
                            }
                            Either::Second(()) => {}
                        },
                        None => delay.delay_ms(ms(until - now)).await,
                    }
                }
            }
        }
    }
}
