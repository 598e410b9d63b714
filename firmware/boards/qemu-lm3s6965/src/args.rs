//! Run parameters from the semihosting command line.
//!
//! QEMU passes them as `-semihosting-config enable=on,target=native,arg=qemu,arg=id=dev-7,arg=n=200`,
//! which the image reads as the line `qemu id=dev-7 n=200`. The first token is the program name
//! (QEMU puts the kernel path there when no `arg=` is given) and is skipped unless it is a
//! `key=value` pair itself. Every other token must be a known `key=value`; anything else ends
//! the run with a failure, because a test with a misspelt parameter should not pass on defaults.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `id` | device id (MQTT client id and topic level; `firmware::mqtt::Config::new` checks it) | `qemu-1` |
//! | `boot` | boot id: a number, or `time` for the host's clock in seconds | hash of `id` and the host clock |
//! | `n` | readings to generate before exiting once none is left unacknowledged (see `main`); `0` = run forever | 100 |
//! | `rate` | readings per second (1..=1000) | 50 |
//! | `batch` | most readings per publish (1..=64, clamped to what the TX buffer holds) | 8 |
//! | `keepalive` | MQTT keep-alive, seconds (0 = off) | 5 |
//! | `resend` | resend in-flight readings after this long without ack progress, ms | 2000 |
//! | `timeout` | a broker request unanswered this long ends the session, ms | 3000 |
//! | `pass` | MQTT password: the device connects with its id as username and this password (`[mqtt] auth = "password"` on the agent); 8..=64 bytes | none (no username, no password) |
//! | `full` | when the buffer is full: `wait` = the simulated sensor holds its samples and catches up later (nothing is lost), `drop` = sample anyway and let the buffer drop the oldest | `wait` |
//!
//! This image keeps no state across resets, so by default every boot gets a new boot id (the
//! device id hashed with the host clock): a gateway that remembers earlier runs must not take a
//! rerun's readings for duplicates. A test that wants fixed identities passes `boot=<n>`.

/// Parsed run parameters.
pub struct Params<'a> {
    pub id: &'a str,
    pub boot: u32,
    pub n: u32,
    pub rate: u32,
    pub batch: u32,
    pub keepalive: u32,
    pub resend_ms: u32,
    pub timeout_ms: u32,
    /// Whether the sensor samples into a full buffer (`full=drop`), losing the oldest reading.
    pub drop_when_full: bool,
    /// The MQTT password (the username is the id), if any.
    pub password: Option<&'a str>,
}

/// Parses the command line; `Err` carries a message naming the offending token.
pub fn parse(line: &str) -> Result<Params<'_>, &'static str> {
    let mut p = Params {
        id: "qemu-1",
        boot: 0,
        n: 100,
        rate: 50,
        batch: 8,
        keepalive: 5,
        resend_ms: 2_000,
        timeout_ms: 3_000,
        drop_when_full: false,
        password: None,
    };
    let mut boot = None;
    for (i, token) in line.split(' ').filter(|t| !t.is_empty()).enumerate() {
        let Some((key, value)) = token.split_once('=') else {
            if i == 0 {
                continue; // the program name
            }
            return Err("argument is not key=value");
        };
        match key {
            "id" => p.id = value,
            "pass" if (8..=64).contains(&value.len()) => p.password = Some(value),
            "pass" => return Err("bad pass (8..=64 bytes)"),
            "boot" if value == "time" => boot = Some(crate::host::time_s()),
            "boot" => boot = Some(num(value, 0, u32::MAX).ok_or("bad boot")?),
            "n" => p.n = num(value, 0, u32::MAX).ok_or("bad n")?,
            "rate" => p.rate = num(value, 1, 1_000).ok_or("bad rate (1..=1000)")?,
            "batch" => p.batch = num(value, 1, 64).ok_or("bad batch (1..=64)")?,
            "keepalive" => p.keepalive = num(value, 0, u32::from(u16::MAX)).ok_or("bad keepalive")?,
            "resend" => p.resend_ms = num(value, 1, u32::MAX).ok_or("bad resend")?,
            "timeout" => p.timeout_ms = num(value, 1, u32::MAX).ok_or("bad timeout")?,
            "full" => {
                p.drop_when_full = match value {
                    "wait" => false,
                    "drop" => true,
                    _ => return Err("bad full (wait or drop)"),
                }
            }
            // The kernel path may sit first and could contain '='.
            _ if i == 0 => {}
            _ => return Err("unknown argument"),
        }
    }
    p.boot = boot.unwrap_or_else(|| fnv1a(p.id) ^ crate::host::time_s().wrapping_mul(0x9e37_79b9));
    Ok(p)
}

fn num(s: &str, min: u32, max: u32) -> Option<u32> {
    s.parse::<u32>().ok().filter(|v| (min..=max).contains(v))
}

/// FNV-1a, 32 bit: a stable, well-spread boot id per device id.
fn fnv1a(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}
