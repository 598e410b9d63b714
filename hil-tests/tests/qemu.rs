//! The real firmware image under QEMU (Cortex-M3, lm3s6965), its UART0 piped over TCP to a
//! real mosquitto, with the test acker as the gateway: it exits 0 only once every reading was
//! acknowledged, across cut links and a broker restart.

use std::time::Duration;

use hil_tests::acker::Acker;
use hil_tests::mosquitto::Mosquitto;
use hil_tests::proxy::Proxy;
use hil_tests::qemu::{self, Qemu};
use hil_tests::wait;

const RUN: Duration = Duration::from_secs(120);

fn args(id: &str, n: u64) -> Vec<String> {
    [
        format!("id={id}"),
        format!("n={n}"),
        "rate=100".into(),
        "batch=8".into(),
        "keepalive=2".into(),
    ]
    .into_iter()
    .chain(["resend=1000".into(), "timeout=2000".into()])
    .collect()
}

fn received(acker: &Acker, id: &str) -> u64 {
    acker
        .stats()
        .boots
        .iter()
        .filter(|((d, _), _)| d == id)
        .map(|(_, b)| b.received)
        .sum()
}

fn assert_exactly_once_in_order(acker: &Acker, id: &str, n: u64) {
    let st = acker.stats();
    let boots: Vec<_> = st.boots.iter().filter(|((d, _), _)| d == id).collect();
    assert_eq!(boots.len(), 1, "one boot");
    assert_eq!(
        boots[0].1.seqs,
        (0..n).collect::<Vec<_>>(),
        "every reading once, in order"
    );
    assert_eq!(boots[0].1.gaps, 0);
}

#[test]
fn firmware_publishes_through_mosquitto_and_exits_zero_once_all_acked() {
    let broker = Mosquitto::start().unwrap();
    let acker = Acker::start("127.0.0.1", broker.port()).unwrap();
    let mut q = Qemu::start(broker.port(), &args("qemu-plain", 300), RUN).unwrap();
    let status = q.wait(RUN).unwrap();
    assert!(status.success(), "QEMU exit: {status}");
    assert_exactly_once_in_order(&acker, "qemu-plain", 300);
    // QEMU exited without DISCONNECT, so the broker publishes the device's last will.
    let will = wait::until(Duration::from_secs(30), "the last will (status offline)", || {
        acker
            .stats()
            .statuses
            .get("qemu-plain")
            .filter(|s| !s.online)
            .cloned()
    })
    .unwrap();
    assert_eq!(will.buffer_capacity, 64);
    assert!(acker
        .stats()
        .boots
        .keys()
        .any(|(d, b)| d == "qemu-plain" && *b == will.boot_id));
}

#[test]
fn firmware_survives_cut_links_and_resends() {
    let broker = Mosquitto::start().unwrap();
    let acker = Acker::start("127.0.0.1", broker.port()).unwrap();
    let proxy = Proxy::start(broker.addr().parse().unwrap()).unwrap();
    let mut q = Qemu::start(proxy.port(), &args("qemu-cut", 400), RUN).unwrap();
    for threshold in [80, 200] {
        wait::until(Duration::from_secs(60), "progress before the cut", || {
            (received(&acker, "qemu-cut") >= threshold).then_some(())
        })
        .unwrap();
        proxy.cut();
    }
    let status = q.wait(RUN).unwrap();
    assert!(status.success(), "QEMU exit: {status}");
    assert!(proxy.accepted() >= 3, "QEMU reconnected after each cut");
    assert_exactly_once_in_order(&acker, "qemu-cut", 400);
    let st = acker.stats();
    let s = st.statuses.get("qemu-cut").expect("status");
    assert!(
        s.counters.reconnects >= 1,
        "the device counted its reconnects: {s:?}"
    );
}

#[test]
fn firmware_survives_a_broker_restart() {
    let mut broker = Mosquitto::start().unwrap();
    let port = broker.port();
    let acker = Acker::start("127.0.0.1", port).unwrap();
    let mut q = Qemu::start(port, &args("qemu-restart", 400), RUN).unwrap();
    wait::until(Duration::from_secs(60), "progress before the restart", || {
        (received(&acker, "qemu-restart") >= 100).then_some(())
    })
    .unwrap();
    broker.stop();
    // The outage is the fault under test; its length is a parameter, not a wait for a condition.
    std::thread::sleep(Duration::from_secs(2));
    let _broker = Mosquitto::start_on(port).unwrap();
    let status = q.wait(RUN).unwrap();
    assert!(status.success(), "QEMU exit: {status}");
    assert_exactly_once_in_order(&acker, "qemu-restart", 400);
}

#[test]
fn image_fits_the_flash_and_ram_targets() {
    use object::{Object, ObjectSection, SectionFlags};
    let bytes = std::fs::read(qemu::lm3s6965_image().unwrap()).unwrap();
    let elf = object::File::parse(&*bytes).unwrap();
    let (mut flash, mut ram) = (0u64, 0u64);
    for s in elf.sections() {
        let SectionFlags::Elf { sh_flags } = s.flags() else {
            continue;
        };
        if sh_flags & u64::from(object::elf::SHF_ALLOC) == 0 {
            continue;
        }
        let name = s.name().unwrap_or("");
        let in_ram = (0x2000_0000..0x2001_0000).contains(&s.address());
        if in_ram {
            ram += s.size();
        }
        // .data occupies flash too (its initial image); .bss/.uninit do not.
        if (!in_ram || name == ".data") && s.kind() != object::SectionKind::UninitializedData {
            flash += s.size();
        }
    }
    let buffer = 64 * std::mem::size_of::<firmware::wire::Reading>() as u64;
    println!("flash {flash} B, static RAM {ram} B (buffer {buffer} B)");
    assert!(flash <= 24 * 1024, "flash {flash} B exceeds 24 KiB");
    assert!(
        ram <= 4 * 1024 + buffer,
        "static RAM {ram} B exceeds 4 KiB + buffer {buffer} B"
    );
}
