//! The few semihosting calls the image makes, issued raw (no `hio`, no `core::fmt`), so that
//! talking to the host costs a handful of instructions and no formatting machinery.
//!
//! Semihosting traps into the debugger (QEMU with `-semihosting-config enable=on`); on a real
//! board without a debugger attached a `bkpt` would fault, which is fine for a QEMU-only image.

use cortex_m_semihosting::{nr, syscall1};

/// SYS_EXIT_EXTENDED (semihosting 2.0): exit with a status code; QEMU supports it on A32/T32.
const SYS_EXIT_EXTENDED: usize = 0x20;
/// ADP_Stopped_ApplicationExit: the reason code under which the subcode is the exit status.
const APPLICATION_EXIT: usize = 0x2_0026;

/// Copies the semihosting command line into `buf` and returns it, or `None` if the host has
/// none, it does not fit, or it is not UTF-8.
///
/// QEMU builds it from `-semihosting-config ...,arg=A,arg=B` as `"A B"`, or uses the kernel
/// path when no `arg=` is given.
pub fn cmdline(buf: &mut [u8]) -> Option<&str> {
    // SYS_GET_CMDLINE takes {buffer, length} and writes the used length back into the block.
    // The space for the terminating NUL is kept out of the length the host may fill.
    let mut block = [buf.as_mut_ptr() as usize, buf.len().saturating_sub(1)];
    // SAFETY: the block points at `buf` with its real length; the `bkpt` asm has no `nomem`
    // option, so the compiler assumes the host wrote through the pointer.
    let rc = unsafe { syscall1(nr::GET_CMDLINE, block.as_mut_ptr() as usize) };
    if rc != 0 {
        return None;
    }
    let len = block[1].min(buf.len());
    core::str::from_utf8(&buf[..len]).ok()
}

/// Host wall-clock time in seconds since the Unix epoch (SYS_TIME).
pub fn time_s() -> u32 {
    // SAFETY: SYS_TIME takes no argument block.
    unsafe { syscall1(nr::TIME, 0) as u32 }
}

/// Writes bytes to the host's debug console (SYS_WRITE0 needs a NUL-terminated string, so the
/// bytes go out in NUL-terminated chunks through a small stack buffer).
pub fn print(bytes: &[u8]) {
    let mut chunk = [0u8; 64];
    for part in bytes.chunks(chunk.len() - 1) {
        chunk[..part.len()].copy_from_slice(part);
        chunk[part.len()] = 0;
        // SAFETY: `chunk` is NUL-terminated and outlives the call.
        unsafe { syscall1(nr::WRITE0, chunk.as_ptr() as usize) };
    }
}

/// Ends the QEMU process with exit status `code`.
///
/// Plain SYS_EXIT can only say 0 or 1 on a 32-bit core; the extended call carries any code,
/// which the run uses to tell "all acknowledged" (0) from "finished with readings dropped" (2).
pub fn exit(code: u32) -> ! {
    let block = [APPLICATION_EXIT, code as usize];
    // SAFETY: the block is {reason, subcode} as SYS_EXIT_EXTENDED expects and outlives the call.
    unsafe { syscall1(SYS_EXIT_EXTENDED, block.as_ptr() as usize) };
    // Only a debugger that chose to resume gets here; there is nothing sensible left to do.
    loop {
        cortex_m::asm::wfi();
    }
}

/// Prints `qemu-lm3s6965: <msg>` and exits with failure.
pub fn fail(msg: &str) -> ! {
    let mut line = Line::new();
    line.push(msg);
    line.send();
    exit(1)
}

/// A one-line message assembled without `core::fmt`: strings and decimal numbers only.
pub struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    /// A line that starts with the image's name.
    pub fn new() -> Self {
        let mut line = Line {
            buf: [0; 160],
            len: 0,
        };
        line.push("qemu-lm3s6965: ");
        line
    }

    /// Appends `s`, truncating at the line's capacity (a cut message beats a panic).
    pub fn push(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() - 1 {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    /// Appends `key=<n>` preceded by a space.
    pub fn num(&mut self, key: &str, mut n: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(" ").push(key).push("=");
        // Digits are ASCII, so this cannot fail.
        self.push(core::str::from_utf8(&digits[i..]).unwrap_or("?"))
    }

    /// Prints the line with a newline.
    pub fn send(&mut self) {
        self.buf[self.len] = b'\n';
        print(&self.buf[..self.len + 1]);
    }
}
