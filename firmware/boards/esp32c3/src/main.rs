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

use embassy_executor::Spawner;
use embassy_net::tcp::client::{TcpClient, TcpClientState, TcpConnection};
use embassy_net::{Runner, Stack, StackResources};
use embassy_time::{Delay, Duration, Instant, Timer};
use embedded_nal_async::TcpConnect as _;
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::timer::timg::TimerGroup;
use esp_println::println;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config as WifiConfig, ControllerConfig, Interface, WifiController,
};
use firmware::buffer::OverflowPolicy;
use firmware::mqtt::{Config, Uplink};
use firmware::provision::{Provision, SECTOR};
use firmware::wire::Reading;
use static_cell::StaticCell;

esp_bootloader_esp_idf::esp_app_desc!();

/// Where the provisioning sector is: the last 4 KiB of a 4 MiB flash, outside every partition
/// of the default table.
const CONFIG_OFFSET: u32 = 0x3F_F000;

/// Readings kept until acknowledged.
const BUFFER: usize = 256;
/// The uplink's transmit buffer.
const TX: usize = 1024;

/// The configuration set at build time, if `NODE_WIFI_SSID` was.
fn built_in() -> Option<Provision<'static>> {
    let ssid = option_env!("NODE_WIFI_SSID")?;
    let (host, port) = option_env!("NODE_GATEWAY")
        .unwrap_or("192.168.1.2:1883")
        .rsplit_once(':')?;
    let p = Provision {
        device_id: option_env!("NODE_DEVICE_ID").unwrap_or("esp32c3-1"),
        mqtt_password: option_env!("NODE_MQTT_PASSWORD").unwrap_or(""),
        wifi_ssid: ssid,
        wifi_password: option_env!("NODE_WIFI_PASSWORD").unwrap_or(""),
        gateway: firmware::provision::Gateway {
            host,
            port: port.parse().ok()?,
        },
        sample_period_ms: option_env!("NODE_SAMPLE_PERIOD_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000),
        batch: 8,
    };
    // A build without a password (an agent with `auth = "none"`) is allowed here only; the
    // device id is checked as a provisioned one is.
    firmware::wire::is_valid_device_id(p.device_id).then_some(p)
}

/// The provisioning record from flash, else the built-in one; without either, it says why on
/// the serial log and waits (a board is provisioned by flashing the sector and resetting).
async fn configuration(flash: esp_hal::peripherals::FLASH<'static>) -> Provision<'static> {
    static CONFIG: StaticCell<[u8; SECTOR]> = StaticCell::new();
    let sector = CONFIG.init([0xFF; SECTOR]);
    let mut storage = esp_storage::FlashStorage::new(flash);
    let read = storage.read(CONFIG_OFFSET, sector);
    let sector: &'static [u8; SECTOR] = sector;
    let why = match read {
        Err(e) => {
            println!("config sector at {CONFIG_OFFSET:#x}: read failed: {e:?}");
            "unreadable"
        }
        Ok(()) => match Provision::decode(sector) {
            Ok(p) => return p,
            Err(e) => {
                println!("config sector at {CONFIG_OFFSET:#x}: {e}");
                "not usable"
            }
        },
    };
    if let Some(p) = built_in() {
        println!("using the configuration built in");
        return p;
    }
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

    let node = configuration(p.FLASH).await;
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
        p.WIFI,
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

    // The id was checked by `Provision::decode` or `built_in`.
    let Ok(mut cfg) = Config::new(id, boot_id()) else {
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
    static UPLINK: StaticCell<Uplink<[Reading; BUFFER], TX>> = StaticCell::new();
    let uplink = UPLINK.init(Uplink::new(
        cfg,
        [Reading::default(); BUFFER],
        OverflowPolicy::DropOldest,
        0,
        now_ms(),
    ));

    let sensor = esp_hal::tsens::TemperatureSensor::new(p.TSENS, Default::default())
        .expect("the temperature sensor starts");
    let period = u64::from(node.sample_period_ms);
    let mut next = now_ms();
    let mut connector = Gateway::new(stack, node.gateway.host, node.gateway.port);
    firmware::driver::run(uplink, &mut connector, &MonoClock, &mut Delay, |u, now| {
        if now >= next {
            let reading = Reading {
                channel: 0,
                timestamp_ms: now,
                value: sensor.get_temperature().to_celsius(),
            };
            let _ = u.push(reading, now);
            next = now + period;
        }
        Some(next)
    })
    .await;
    loop {
        Timer::after(Duration::from_secs(3600)).await;
    }
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

/// Opens TCP connections to the gateway (embassy-net's client: sockets from a pool, returned
/// when a session's connection drops).
struct Gateway {
    client: &'static Client,
    stack: Stack<'static>,
    host: &'static str,
    port: u16,
}

impl Gateway {
    fn new(stack: Stack<'static>, host: &'static str, port: u16) -> Self {
        static STATE: StaticCell<TcpClientState<2, 1536, 1536>> = StaticCell::new();
        static CLIENT: StaticCell<Client> = StaticCell::new();
        let mut client = TcpClient::new(stack, STATE.init(TcpClientState::new()));
        client.set_timeout(Some(Duration::from_secs(30)));
        Gateway {
            client: CLIENT.init(client),
            stack,
            host,
            port,
        }
    }

    /// The gateway's address: the host as an IPv4 address, else resolved by DNS (each time: a
    /// gateway that moves is found again).
    async fn resolve(&self) -> Option<core::net::SocketAddr> {
        if let Ok(ip) = self.host.parse::<core::net::Ipv4Addr>() {
            return Some(core::net::SocketAddr::from((ip, self.port)));
        }
        match self
            .stack
            .dns_query(self.host, embassy_net::dns::DnsQueryType::A)
            .await
        {
            Ok(addrs) => addrs
                .first()
                .map(|a| core::net::SocketAddr::new((*a).into(), self.port)),
            Err(e) => {
                println!("gateway {}: DNS: {e:?}", self.host);
                None
            }
        }
    }
}

impl firmware::driver::Connector for Gateway {
    type Conn = TcpConnection<'static, 2, 1536, 1536>;

    async fn connect(&mut self) -> Option<Self::Conn> {
        let addr = self.resolve().await?;
        match self.client.connect(addr).await {
            Ok(c) => Some(c),
            Err(e) => {
                println!("gateway {addr}: {e:?}");
                None
            }
        }
    }
}

#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>) {
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                println!("WiFi up");
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
