//! A 1 ms monotonic clock on SysTick.
//!
//! The Cortex-M3 has no 64-bit atomics, so the SysTick exception bumps a `u32` and
//! [`Clock::now`] widens it to `u64`, counting wraps. That is sound as long as `now` is called
//! at least once per 2^32 ms (49 days); the main loop calls it every millisecond or so.
//!
//! # Clock rate under QEMU
//! QEMU 7.2's lm3s6965evb derives the core clock from the RCC register: a 200 MHz PLL divided
//! by SYSDIV+1, and the reset value of RCC has SYSDIV = 15, so the core runs at 12.5 MHz
//! (an 80 ns period; the real chip boots from its 12 MHz oscillator instead). SysTick on the
//! processor clock therefore reloads at 12_500 - 1. QEMU's SysTick follows the host's
//! clock (no `-icount`), and measured against the host it gives 4_000 ms in 4.01-4.02 s
//! (1_000 ms ≈ 1.004 s including print latency); with a 12 MHz reload it ran 4 % fast
//! (4_000 ms in 3.85 s). The external reference clock (CLKSOURCE = 0) is not usable: QEMU
//! reports "Timer with period zero" for it on this machine.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;

/// Core clock of QEMU's lm3s6965evb after reset (see the module docs).
pub const CORE_HZ: u32 = 12_500_000;

static TICKS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    // Only this handler writes TICKS, so a relaxed add is enough.
    TICKS.fetch_add(1, Ordering::Relaxed);
}

/// Milliseconds since [`Clock::start`].
pub struct Clock {
    last: u32,
    high: u64,
}

impl Clock {
    /// Starts SysTick at 1 kHz with its interrupt enabled.
    pub fn start(mut syst: SYST) -> Self {
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(CORE_HZ / 1_000 - 1);
        syst.clear_current();
        syst.enable_counter();
        syst.enable_interrupt();
        Clock { last: 0, high: 0 }
    }

    /// The current time in ms; monotonic.
    pub fn now(&mut self) -> u64 {
        let t = TICKS.load(Ordering::Relaxed);
        if t < self.last {
            self.high += 1 << 32;
        }
        self.last = t;
        self.high | u64::from(t)
    }
}
