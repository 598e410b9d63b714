//! The sensor-node image for the Raspberry Pi Pico W: samples the RP2040's on-die temperature
//! sensor through its ADC, joins WiFi (the CYW43439 over PIO SPI, cyw43) with DHCP
//! (embassy-net), and publishes the readings to the gateway with the firmware library's
//! `Uplink` and `net::Gateway`, keeping each until the gateway's Ack says it is on disk.
//!
//! Configuration: the provisioning record in the flash's last 4 KiB ([`CONFIG_OFFSET`];
//! `edge-agent devices provision` writes its image; `firmware::provision`), so one binary
//! serves a fleet. A board without one falls back to values set at build time from the
//! environment (`NODE_DEVICE_ID`, `NODE_MQTT_PASSWORD`, `NODE_WIFI_SSID`, `NODE_WIFI_PASSWORD`,
//! `NODE_GATEWAY` as `HOST:PORT`, `NODE_SAMPLE_PERIOD_MS`), and with neither it says so on the
//! serial log (UART0: GP0 TX, 115200 8N1) and waits.

#![no_std]
#![no_main]

use core::cell::RefCell;
use core::fmt::Write as _;

use critical_section::Mutex;
use cyw43_pio::{DEFAULT_CLOCK_DIVIDER, PioSpi};
use embassy_executor::Spawner;
use embassy_net::tcp::client::{TcpClient, TcpClientState};
use embassy_net::{Stack, StackResources};
use embassy_rp::adc::{self, Adc, Channel};
use embassy_rp::bind_interrupts;
use embassy_rp::clocks::RoscRng;
use embassy_rp::flash::{Blocking, Flash};
use embassy_rp::gpio::{Level, Output};
use embassy_rp::peripherals::{DMA_CH0, PIO0};
use embassy_rp::pio::{self, Pio};
use embassy_rp::uart::{self, UartTx};
use embassy_time::{Delay, Duration, Instant, Timer};
use firmware::buffer::OverflowPolicy;
use firmware::mqtt::{Config, Uplink};
use firmware::net::Gateway;
use firmware::persist::{Journal, Keeper};
use firmware::provision::{self, Provision, SECTOR};
use firmware::wire::Reading;
use static_cell::StaticCell;

bind_interrupts!(struct Irqs {
    PIO0_IRQ_0 => pio::InterruptHandler<PIO0>;
});

/// The Pico W's flash.
const FLASH_SIZE: usize = 2 * 1024 * 1024;
/// Where the provisioning sector is: the flash's last 4 KiB, outside the image (memory.x).
const CONFIG_OFFSET: u32 = (FLASH_SIZE - SECTOR) as u32;

/// The journal of unacknowledged readings, below the provisioning sector (memory.x keeps the
/// image out of both): its queue (29 pages of 127 readings: more than the RAM buffer holds) and
/// its counter (2 pages). Offsets from the start of the flash.
const JOURNAL_QUEUE: core::ops::Range<u32> = 0x1E_0000..0x1F_D000;
const JOURNAL_COUNTER: core::ops::Range<u32> = 0x1F_D000..CONFIG_OFFSET;

/// The on-board flash, blocking (its writes run from RAM with the flash's execute-in-place
/// paused; embassy-rp does that).
type OnBoard = Flash<'static, embassy_rp::peripherals::FLASH, Blocking, FLASH_SIZE>;

/// The flash as the journal sees it: 4-byte reads and writes. The RP2040's flash programs
/// single bytes, which the journal refuses (a torn item header could be completed by the next
/// write's first byte: firmware::persist, "Flash words"); whole words make that a 32-bit
/// collision. Blocking underneath: the calls are made from the sampling step.
struct Words(OnBoard);

impl embedded_storage_async::nor_flash::ErrorType for Words {
    type Error = embassy_rp::flash::Error;
}

impl embedded_storage_async::nor_flash::ReadNorFlash for Words {
    const READ_SIZE: usize = 4;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.0.blocking_read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        FLASH_SIZE
    }
}

impl embedded_storage_async::nor_flash::NorFlash for Words {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = embassy_rp::flash::ERASE_SIZE;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.0.blocking_erase(from, to)
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0.blocking_write(offset, bytes)
    }
}

/// NOR flash: a programmed word can be programmed again (bits only go from 1 to 0).
impl embedded_storage_async::nor_flash::MultiwriteNorFlash for Words {}

/// Readings kept until acknowledged.
const BUFFER: usize = 256;
/// The uplink's transmit buffer.
const TX: usize = 1024;

/// The serial log: UART0's transmit pin (GP0), blocking writes.
static LOG: Mutex<RefCell<Option<UartTx<'static, uart::Blocking>>>> = Mutex::new(RefCell::new(None));

struct LogLine;

impl core::fmt::Write for LogLine {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        critical_section::with(|cs| {
            if let Some(tx) = LOG.borrow_ref_mut(cs).as_mut() {
                let _ = tx.blocking_write(s.as_bytes());
            }
        });
        Ok(())
    }
}

fn log(args: core::fmt::Arguments<'_>) {
    let _ = LogLine.write_fmt(args);
    let _ = LogLine.write_str("\r\n");
}

macro_rules! println {
    ($($t:tt)*) => { log(format_args!($($t)*)) };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("panic: {info}");
    cortex_m::peripheral::SCB::sys_reset()
}

/// The provisioning record from flash, else the built-in one; without either, it says why on
/// the serial log and waits (a board is provisioned by writing the sector and resetting).
async fn configuration(flash: &mut OnBoard) -> Provision<'static> {
    static CONFIG: StaticCell<[u8; SECTOR]> = StaticCell::new();
    let sector = CONFIG.init([0xFF; SECTOR]);
    let read = flash.blocking_read(CONFIG_OFFSET, sector);
    let sector: &'static [u8; SECTOR] = sector;
    let why = match provision::choose(read, sector, CONFIG_OFFSET, firmware::built_in!("pico-w-1"), log) {
        Ok(p) => return p,
        Err(why) => why,
    };
    loop {
        println!(
            "not provisioned (config sector {why}): make one with `edge-agent devices provision`, \
             write it with `picotool load -o {:#x} ID.bin`, and reset",
            0x1000_0000 + CONFIG_OFFSET
        );
        Timer::after(Duration::from_secs(30)).await;
    }
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    let serial = UartTx::new_blocking(p.UART0, p.PIN_0, uart::Config::default());
    critical_section::with(|cs| LOG.borrow_ref_mut(cs).replace(serial));

    let mut flash = OnBoard::new_blocking(p.FLASH);
    let node = configuration(&mut flash).await;
    let id = node.device_id;

    // The radio: power on GP23, chip select GP25, data GP24, clock GP29 (the Pico W's wiring).
    let pwr = Output::new(p.PIN_23, Level::Low);
    let cs = Output::new(p.PIN_25, Level::High);
    let mut pio = Pio::new(p.PIO0, Irqs);
    let spi = PioSpi::new(
        &mut pio.common,
        pio.sm0,
        DEFAULT_CLOCK_DIVIDER,
        pio.irq0,
        cs,
        p.PIN_24,
        p.PIN_29,
        p.DMA_CH0,
    );
    static STATE: StaticCell<cyw43::State> = StaticCell::new();
    let (device, mut control, runner) = cyw43::new(
        STATE.init(cyw43::State::new()),
        pwr,
        spi,
        cyw43_firmware::CYW43_43439A0,
    )
    .await;
    spawner.spawn(radio_task(runner).expect("one radio task"));
    control.init(cyw43_firmware::CYW43_43439A0_CLM).await;
    // The radio sleeps between the access point's beacons.
    control
        .set_power_management(cyw43::PowerManagementMode::PowerSave)
        .await;

    let seed = RoscRng.next_u64();
    static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
    let (stack, net_runner) = embassy_net::new(
        device,
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    spawner.spawn(net_task(net_runner).expect("one network task"));
    spawner.spawn(wifi_task(control, stack, node.wifi_ssid, node.wifi_password).expect("one WiFi task"));
    println!("node {id}: joining {}", node.wifi_ssid);
    stack.wait_config_up().await;
    if let Some(c) = stack.config_v4() {
        println!("node {id}: address {}", c.address);
    }

    // The id was checked by `Provision::decode` or `built_in`.
    let Ok(mut cfg) = Config::new(id, 0) else {
        println!("node {id}: not a device id");
        loop {
            Timer::after(Duration::from_secs(3600)).await;
        }
    };
    if !node.mqtt_password.is_empty() {
        let _ = cfg.username.push_str(id);
        let _ = cfg.password.push_str(node.mqtt_password);
    }
    cfg.batch_max = usize::from(node.batch);
    // Unacknowledged readings survive a reset or a power cut in the journal (firmware::persist)
    // at the end of the flash: the interrupted boot goes on, its readings are sent again.
    static SCRATCH: StaticCell<[Reading; BUFFER]> = StaticCell::new();
    let (mut journal, boot, buffer) = Keeper::boot(
        Journal::new(Words(flash), JOURNAL_QUEUE, JOURNAL_COUNTER),
        RoscRng.next_u32(),
        SCRATCH.init([Reading::default(); BUFFER]),
        [Reading::default(); BUFFER],
        OverflowPolicy::DropOldest,
        log,
    );
    cfg.boot_id = boot;
    static UPLINK: StaticCell<Uplink<[Reading; BUFFER], TX>> = StaticCell::new();
    let uplink = UPLINK.init(Uplink::with_buffer(cfg, buffer, now_ms()));

    let mut adc = Adc::new_blocking(p.ADC, adc::Config::default());
    let mut sensor = Channel::new_temp_sensor(p.ADC_TEMP_SENSOR);
    let period = u64::from(node.sample_period_ms);
    let mut next = now_ms();
    let mut connector = gateway(stack, node.gateway.host, node.gateway.port);
    firmware::driver::run(uplink, &mut connector, &MonoClock, &mut Delay, |u, now| {
        if now >= next {
            // A conversion takes 2 µs: read in place.
            match adc.blocking_read(&mut sensor) {
                Ok(raw) => {
                    let reading = Reading {
                        channel: 0,
                        timestamp_ms: now,
                        value: celsius(raw),
                    };
                    // In flash before it can go on the wire (the driver polls after this).
                    if let Ok(seq) = u.push(reading, now) {
                        journal.record(seq, &reading);
                    }
                }
                Err(e) => println!("temperature sensor: {e:?}"),
            }
            next = now + period;
        }
        // Acked (or dropped on overflow): forgotten in flash too.
        journal.release(u.buffer().low_seq());
        Some(next)
    })
    .await;
    loop {
        Timer::after(Duration::from_secs(3600)).await;
    }
}

/// The RP2040 datasheet's conversion for the on-die sensor: 0.706 V at 27 °C, -1.721 mV/°C,
/// with the ADC's 3.3 V reference and 12 bits.
fn celsius(raw: u16) -> f32 {
    let volts = f32::from(raw) * 3.3 / 4096.0;
    27.0 - (volts - 0.706) / 0.001721
}

fn now_ms() -> u64 {
    Instant::now().as_millis()
}

struct MonoClock;

impl firmware::driver::Clock for MonoClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// Socket buffers: two, so a new session can open while the last one's socket closes.
type Client = TcpClient<'static, 2, 1536, 1536>;

/// The gateway over embassy-net's TCP client (the library's connector, shared with the other
/// WiFi image and the host test that runs it over a TAP device).
fn gateway(stack: Stack<'static>, host: &'static str, port: u16) -> Gateway<'static, 2, 1536, 1536> {
    static STATE: StaticCell<TcpClientState<2, 1536, 1536>> = StaticCell::new();
    static CLIENT: StaticCell<Client> = StaticCell::new();
    let mut client = TcpClient::new(stack, STATE.init(TcpClientState::new()));
    client.set_timeout(Some(Duration::from_secs(30)));
    Gateway::new(stack, CLIENT.init(client), host, port, log)
}

type Radio = cyw43::Runner<'static, Output<'static>, PioSpi<'static, PIO0, 0, DMA_CH0>>;

#[embassy_executor::task]
async fn radio_task(runner: Radio) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, cyw43::NetDriver<'static>>) -> ! {
    runner.run().await
}

/// Joins the network, and joins it again whenever the link drops.
#[embassy_executor::task]
async fn wifi_task(
    mut control: cyw43::Control<'static>,
    stack: Stack<'static>,
    ssid: &'static str,
    password: &'static str,
) {
    loop {
        if !stack.is_link_up() {
            let options = if password.is_empty() {
                cyw43::JoinOptions::new_open()
            } else {
                cyw43::JoinOptions::new(password.as_bytes())
            };
            match control.join(ssid, options).await {
                Ok(()) => println!("WiFi up"),
                Err(e) => println!("WiFi: join failed: status {}", e.status),
            }
        }
        Timer::after(Duration::from_secs(5)).await;
    }
}
