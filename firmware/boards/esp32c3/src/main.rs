//! The sensor-node image for the ESP32-C3: samples the chip's own temperature sensor, joins
//! WiFi (esp-radio) with DHCP (embassy-net), and publishes the readings to the gateway with the
//! firmware library's `Uplink`, keeping each until the gateway's Ack says it is on disk.
//!
//! Configuration: the provisioning record in the flash config sector at [`CONFIG_OFFSET`]
//! (`edge-agent devices provision` writes its image; `firmware::provision`), so one binary
//! serves a fleet. A board without one falls back to values set at build time from the
//! environment (`NODE_DEVICE_ID`, `NODE_MQTT_PASSWORD`, `NODE_WIFI_SSID`, `NODE_WIFI_PASSWORD`,
//! `NODE_GATEWAY` as `HOST:PORT`, `NODE_SAMPLE_PERIOD_MS`), and with neither it says so on the
//! serial log and waits.

#![no_std]
#![no_main]

use embassy_embedded_hal::adapter::BlockingAsync;
use embassy_executor::Spawner;
use embassy_net::tcp::client::{TcpClient, TcpClientState};
use embassy_net::{Runner, Stack, StackResources};
use embassy_time::{Delay, Duration, Instant, Timer};
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::timer::timg::TimerGroup;
use esp_println::println;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config as WifiConfig, ControllerConfig, Interface, PowerSaveMode,
    WifiController,
};
use esp_storage::FlashStorage;
use firmware::buffer::{Buffer, OverflowPolicy};
use firmware::mqtt::{Config, Uplink};
use firmware::net::Gateway;
use firmware::persist::{Journal, Keeper};
use firmware::provision::{self, Provision, SECTOR};
use firmware::wire::Reading;
use static_cell::StaticCell;

esp_bootloader_esp_idf::esp_app_desc!();

/// Where the provisioning sector is: the last 4 KiB of a 4 MiB flash, outside every partition
/// of the default table.
const CONFIG_OFFSET: u32 = 0x3F_F000;

/// The journal partition (`partitions.csv`): its queue of unacknowledged readings (29 pages of
/// 127 readings: more than the RAM buffer holds) and its counter (2 pages).
const JOURNAL_QUEUE: core::ops::Range<u32> = 0x3E_0000..0x3F_D000;
const JOURNAL_COUNTER: core::ops::Range<u32> = 0x3F_D000..0x3F_F000;

/// Readings kept until acknowledged.
const BUFFER: usize = 256;
/// The uplink's transmit buffer.
const TX: usize = 1024;

/// A line on the serial log (for the library's reports).
fn log(line: core::fmt::Arguments<'_>) {
    println!("{line}");
}

/// The provisioning record from flash, else the built-in one; without either, it says why on
/// the serial log and waits (a board is provisioned by flashing the sector and resetting).
async fn configuration(storage: &mut FlashStorage<'static>) -> Provision<'static> {
    static CONFIG: StaticCell<[u8; SECTOR]> = StaticCell::new();
    let sector = CONFIG.init([0xFF; SECTOR]);
    let read = storage.read(CONFIG_OFFSET, sector);
    let sector: &'static [u8; SECTOR] = sector;
    let why = match provision::choose(read, sector, CONFIG_OFFSET, firmware::built_in!("esp32c3-1"), log) {
        Ok(p) => return p,
        Err(why) => why,
    };
    loop {
        println!(
            "not provisioned (config sector {why}): make one with `edge-agent devices provision`, \
             flash it with `espflash write-bin {CONFIG_OFFSET:#x} ID.bin`, and reset"
        );
        Timer::after(Duration::from_secs(30)).await;
    }
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    let p = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 36 * 1024);
    let timg0 = TimerGroup::new(p.TIMG0);
    esp_rtos::start(timg0.timer0, p.FROM_CPU_INTR0);

    let mut flash = FlashStorage::new(p.FLASH);
    let node = configuration(&mut flash).await;
    let id = node.device_id;
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
    let (mut journal, boot, buffer) = restore(flash);
    cfg.boot_id = boot;
    static UPLINK: StaticCell<Uplink<[Reading; BUFFER], TX>> = StaticCell::new();
    let uplink = UPLINK.init(Uplink::with_buffer(cfg, buffer, now_ms()));
    let sensor = esp_hal::tsens::TemperatureSensor::new(p.TSENS, Default::default())
        .expect("the temperature sensor starts");
    let period = u64::from(node.sample_period_ms);

    // On battery: one sample per wake; the radio only once a batch is waiting (or at power-on,
    // so a new node shows up at once). A deep-sleep wake is a reset: the journal carried the
    // readings and the numbering through it, and the RTC timer the clock.
    #[cfg(feature = "battery")]
    let mut low_power = esp_hal::rtc_cntl::sleep::LowPower::new(p.LPWR);
    #[cfg(feature = "battery")]
    let rtc = esp_hal::rtc_cntl::Rtc::new(p.RTC_TIMER);
    #[cfg(feature = "battery")]
    {
        let t = rtc.time_since_power_up().as_millis();
        sample(uplink, &mut journal, &sensor, t, now_ms());
        // The next sample a period after this one was due (not after this wake's boot), or after
        // this one if the node is behind.
        let planned = persisted(0);
        let next = if planned == 0 || planned + period <= t {
            t + period
        } else {
            planned + period
        };
        persist(0, next);
        let power_on = esp_hal::rtc_cntl::wakeup_cause().is_empty();
        let due = uplink.buffer().unsent() >= usize::from(node.batch) && t >= persisted(1);
        if !power_on && !due {
            sleep_until(&mut low_power, &rtc);
        }
    }

    let stack = join(p.WIFI, &node, spawner).await;
    let mut connector = gateway(stack, node.gateway.host, node.gateway.port);
    #[cfg(not(feature = "battery"))]
    let mut next = now_ms();
    #[cfg(feature = "battery")]
    let give_up = now_ms() + AWAKE_MAX_MS;
    firmware::driver::run(uplink, &mut connector, &MonoClock, &mut Delay, |u, now| {
        #[cfg(not(feature = "battery"))]
        if now >= next {
            sample(u, &mut journal, &sensor, now, now);
            next = now + period;
        }
        // Acked (or dropped on overflow): forgotten in flash too.
        journal.release(u.buffer().low_seq());
        #[cfg(feature = "battery")]
        return (!u.buffer().is_empty() && now < give_up).then_some(now + 100);
        #[cfg(not(feature = "battery"))]
        Some(next)
    })
    .await;
    #[cfg(feature = "battery")]
    {
        // Everything acknowledged: the next batch goes when due. Not: the gateway is out of
        // reach, so the radio waits longer and longer (1 min doubling to 1 h) before it tries
        // again; the readings wait in the journal meanwhile.
        let now = rtc.time_since_power_up().as_millis();
        if uplink.buffer().is_empty() {
            persist(1, 0);
            persist(2, 0);
        } else {
            let wait = persisted(2).saturating_mul(2).clamp(60_000, 3_600_000);
            println!("gateway not reached: the radio waits {} s", wait / 1000);
            persist(1, now + wait);
            persist(2, wait);
        }
        sleep_until(&mut low_power, &rtc);
    }
    #[allow(unreachable_code)]
    loop {
        Timer::after(Duration::from_secs(3600)).await;
    }
}

/// What a battery node keeps through deep sleep, in RTC milliseconds since power-on: [0] when
/// the next sample is due, [1] when the radio may try the gateway again, [2] the last wait
/// before that. Zeroed at power-on, which is the state "nothing planned, no backoff".
#[cfg(feature = "battery")]
#[esp_hal::ram(unstable(rtc_fast, persistent))]
static mut KEPT: [u64; 3] = [0; 3];

#[cfg(feature = "battery")]
fn persisted(i: usize) -> u64 {
    // SAFETY: one thread; copied by value through a raw pointer (no reference to the static).
    let kept = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(KEPT)) };
    kept[i]
}

#[cfg(feature = "battery")]
fn persist(i: usize, v: u64) {
    // SAFETY: as in `persisted`.
    let mut kept = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(KEPT)) };
    kept[i] = v;
    // SAFETY: as in `persisted`.
    unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!(KEPT), kept) }
}

/// How long a battery node stays awake to send a batch before it gives up until the next one.
#[cfg(feature = "battery")]
const AWAKE_MAX_MS: u64 = 20_000;

/// Deep sleep until the next sample is due (at least 10 ms): the chip draws about 5 µA with
/// the RTC timer running, and the wake is a reset.
#[cfg(feature = "battery")]
fn sleep_until(
    low_power: &mut esp_hal::rtc_cntl::sleep::LowPower<'_>,
    rtc: &esp_hal::rtc_cntl::Rtc<'_>,
) -> ! {
    let ahead = persisted(0)
        .saturating_sub(rtc.time_since_power_up().as_millis())
        .max(10);
    low_power
        .set_wakeup_deadline(esp_hal::time::Instant::now() + esp_hal::time::Duration::from_millis(ahead));
    low_power.sleep_deep(esp_hal::rtc_cntl::sleep::RtcSleepConfig::deep())
}

/// Reads the temperature sensor and hands the reading to the uplink, and to the journal before
/// it can go on the wire (the driver polls the uplink only after this returns).
/// `timestamp_ms` is the reading's time; `now` the uplink's clock.
fn sample(
    u: &mut Uplink<[Reading; BUFFER], TX>,
    journal: &mut Flash,
    sensor: &esp_hal::tsens::TemperatureSensor<'_>,
    timestamp_ms: u64,
    now: u64,
) {
    let reading = Reading {
        channel: 0,
        timestamp_ms,
        value: sensor.get_temperature().to_celsius(),
    };
    if let Ok(seq) = u.push(reading, now) {
        journal.record(seq, &reading);
    }
}

/// Joins the WiFi network (esp-radio, station mode) and waits for a DHCP lease (embassy-net).
async fn join(
    wifi: esp_hal::peripherals::WIFI<'static>,
    node: &Provision<'static>,
    spawner: Spawner,
) -> Stack<'static> {
    let id = node.device_id;
    println!("node {id}: joining {}", node.wifi_ssid);
    let auth = if node.wifi_password.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        AuthenticationMethodConfig::Wpa2Personal(node.wifi_password.try_into().unwrap_or_default())
    };
    let station = StationConfig::default()
        .with_ssid(node.wifi_ssid.try_into().unwrap_or_default())
        .with_authentication(auth);
    let controller = WifiController::new(
        wifi,
        ControllerConfig::default().with_initial_config(WifiConfig::Station(station)),
    )
    .expect("the WiFi controller starts");
    let iface = Interface::station();
    let seed =
        u64::from(esp_hal::rng::Rng::new().random()) << 32 | u64::from(esp_hal::rng::Rng::new().random());
    static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        iface,
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    spawner.spawn(wifi_task(controller).expect("one WiFi task"));
    spawner.spawn(net_task(runner).expect("one network task"));
    stack.wait_config_up().await;
    if let Some(c) = stack.config_v4() {
        println!("node {id}: address {}", c.address);
    }
    stack
}

/// The journal over the chip's flash (esp-storage's driver is blocking; the journal's flash
/// calls are made from the sampling step, where a few milliseconds of flash work are fine).
type Flash = Keeper<BlockingAsync<FlashStorage<'static>>>;

/// The journal of unacknowledged readings (firmware::persist) in the `journal` partition of
/// `partitions.csv`, and the buffer it restored: readings a reset or power cut interrupted go
/// out again under their old boot and sequence numbers (the gateway drops duplicates). Without
/// a usable journal the node still runs, keeping readings in RAM only, and says so.
fn restore(flash: FlashStorage<'static>) -> (Flash, u32, Buffer<[Reading; BUFFER]>) {
    static SCRATCH: StaticCell<[Reading; BUFFER]> = StaticCell::new();
    Keeper::boot(
        Journal::new(BlockingAsync::new(flash), JOURNAL_QUEUE, JOURNAL_COUNTER),
        boot_id(),
        SCRATCH.init([Reading::default(); BUFFER]),
        [Reading::default(); BUFFER],
        OverflowPolicy::DropOldest,
        log,
    )
}

/// A boot id: the time since power-on is no use, so the hardware RNG.
fn boot_id() -> u32 {
    esp_hal::rng::Rng::new().random()
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

/// The gateway over embassy-net's TCP client (the library's connector, shared with the host
/// test that runs it over a TAP device).
fn gateway(stack: Stack<'static>, host: &'static str, port: u16) -> Gateway<'static, 2, 1536, 1536> {
    static STATE: StaticCell<TcpClientState<2, 1536, 1536>> = StaticCell::new();
    static CLIENT: StaticCell<Client> = StaticCell::new();
    let mut client = TcpClient::new(stack, STATE.init(TcpClientState::new()));
    client.set_timeout(Some(Duration::from_secs(30)));
    Gateway::new(stack, CLIENT.init(client), host, port, log)
}

#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>) {
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                println!("WiFi up");
                // The radio sleeps between the access point's DTIM beacons; the node answers
                // within a beacon interval, which the uplink's timeouts allow for many times.
                if let Err(e) = controller.set_power_saving(PowerSaveMode::Minimum) {
                    println!("WiFi power saving: {e:?}");
                }
                let _ = controller.wait_for_disconnect_async().await;
                println!("WiFi down");
            }
            Err(e) => println!("WiFi: {e:?}"),
        }
        Timer::after(Duration::from_secs(2)).await;
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface>) {
    runner.run().await
}
