//! UART0 of the LM3S6965 (a PL011 derivative) as the uplink's byte link to the broker.
//!
//! Under QEMU, `-serial tcp:HOST:PORT` (or a `-chardev socket`) connects UART0 to a TCP socket,
//! so the bytes are plain MQTT to the broker (or to the gateway). The driver polls the flag
//! register; no UART interrupt is used, so the main loop must poll often (it does, at least
//! every SysTick).
//!
//! QEMU facts this relies on (QEMU 7.2, `pl011_luminary`):
//! - It transmits whatever is written to DR and never reports TXFF, blocking the vCPU while the
//!   socket is backed up; bytes written while the socket is disconnected are lost, which the
//!   uplink notices through its response timeout and answers with a fresh CONNECT.
//! - It ignores UARTCTL's enable bits, but they are set anyway as real hardware needs them.
//! - Without LCRH.FEN the receive FIFO is one byte deep and QEMU feeds the socket's bytes one
//!   at a time; with FEN it holds 16, so each poll drains more.
//! - Clock gating (RCGC1) and the pin mux (GPIOA AFSEL) are not emulated and are not set up
//!   here; a real LM3S6965 would need both.

use core::convert::Infallible;
use core::ptr::{read_volatile, write_volatile};

const BASE: usize = 0x4000_C000;
const DR: usize = BASE;
const FR: usize = BASE + 0x018;
const IBRD: usize = BASE + 0x024;
const FBRD: usize = BASE + 0x028;
const LCRH: usize = BASE + 0x02C;
const CTL: usize = BASE + 0x030;

/// FR: receive FIFO empty.
const FR_RXFE: u32 = 1 << 4;
/// FR: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;
/// FR: still shifting out bits.
const FR_BUSY: u32 = 1 << 3;
/// LCRH: 8 data bits, FIFOs on.
const LCRH_8N1_FIFO: u32 = (0b11 << 5) | (1 << 4);
/// CTL: UART, transmitter and receiver enabled.
const CTL_ENABLE: u32 = (1 << 0) | (1 << 8) | (1 << 9);

fn reg(addr: usize) -> u32 {
    // SAFETY: `addr` is one of UART0's registers, always mapped on this MCU.
    unsafe { read_volatile(addr as *const u32) }
}

fn set(addr: usize, value: u32) {
    // SAFETY: as in `reg`; only this driver touches UART0.
    unsafe { write_volatile(addr as *mut u32, value) }
}

/// UART0, owned by the main loop.
pub struct Uart0(());

impl Uart0 {
    /// Configures UART0 for 115200 8N1 with FIFOs. Call once.
    pub fn init() -> Self {
        set(CTL, 0);
        // 12.5 MHz / (16 * 115200) = 6.78: IBRD 6, FBRD round(0.78 * 64) = 50. QEMU ignores
        // the baud rate; the values are right for the clock the board runs at.
        set(IBRD, 6);
        set(FBRD, 50);
        set(LCRH, LCRH_8N1_FIFO);
        set(CTL, CTL_ENABLE);
        Uart0(())
    }

    fn rx_empty(&self) -> bool {
        reg(FR) & FR_RXFE != 0
    }
}

impl embedded_io::ErrorType for Uart0 {
    type Error = Infallible;
}

impl embedded_io::Read for Uart0 {
    /// Blocks for the first byte (as `embedded_io::Read` requires), then takes what the FIFO
    /// holds. The driver only calls this after `read_ready`, so it does not block in practice.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.rx_empty() {}
        let mut n = 0;
        while n < buf.len() && !self.rx_empty() {
            // Bits 8..11 are framing/parity/break/overrun flags; a byte stream has no use for
            // them (a corrupt MQTT stream ends in a protocol error and a reconnect).
            buf[n] = reg(DR) as u8;
            n += 1;
        }
        Ok(n)
    }
}

impl embedded_io::ReadReady for Uart0 {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(!self.rx_empty())
    }
}

impl embedded_io::Write for Uart0 {
    /// Blocks until the FIFO has room, then fills it.
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while reg(FR) & FR_TXFF != 0 {}
        let mut n = 0;
        while n < buf.len() && reg(FR) & FR_TXFF == 0 {
            set(DR, u32::from(buf[n]));
            n += 1;
        }
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        while reg(FR) & FR_BUSY != 0 {}
        Ok(())
    }
}

/// The UART is always open: `open`/`close` keep their no-op defaults, and a new session simply
/// starts with the uplink's CONNECT on the same wire.
impl firmware::driver::Link for Uart0 {}
