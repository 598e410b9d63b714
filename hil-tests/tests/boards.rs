//! The WiFi boards' images fit the flash and RAM budgets recorded in BENCHMARKS.md (the images
//! are built by the README's test command before the tests run).

use std::path::PathBuf;

use object::{Object, ObjectSection, SectionFlags, SectionKind};

fn image(board: &str, target: &str, bin: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../firmware/boards")
        .join(board)
        .join("target")
        .join(target)
        .join("release")
        .join(bin);
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build --release` in firmware/boards/{board} \
         (the README's test command does)",
        p.display()
    );
    p
}

/// (flash, static RAM) of an ESP32-C3 image: flash holds every loaded section with contents
/// (code, read-only data, and the initial images of `.data` and the IRAM code); static RAM is
/// what is placed in internal SRAM (IRAM `0x4037_C000..0x403E_0000`, DRAM
/// `0x3FC8_0000..0x3FCE_0000`), less the stack, which takes whatever is left, and esp-hal's
/// placeholder sections (`*_dummy`, which only reserve address ranges).
fn esp32c3_sizes(bytes: &[u8]) -> (u64, u64) {
    let elf = object::File::parse(bytes).unwrap();
    let (mut flash, mut ram) = (0u64, 0u64);
    for s in elf.sections() {
        let SectionFlags::Elf { sh_flags } = s.flags() else {
            continue;
        };
        let name = s.name().unwrap_or("");
        if sh_flags & u64::from(object::elf::SHF_ALLOC) == 0 || name.contains("dummy") {
            continue;
        }
        let a = s.address();
        let in_ram = (0x4037_C000..0x403E_0000).contains(&a) || (0x3FC8_0000..0x3FCE_0000).contains(&a);
        if in_ram && name != ".stack" {
            ram += s.size();
        }
        if s.kind() != SectionKind::UninitializedData && name != ".stack" && !name.ends_with("uninit") {
            flash += s.size();
        }
    }
    (flash, ram)
}

#[test]
fn the_esp32c3_image_fits_its_budgets() {
    let bytes = std::fs::read(image("esp32c3", "riscv32imc-unknown-none-elf", "esp32c3-node")).unwrap();
    let (flash, ram) = esp32c3_sizes(&bytes);
    println!("ESP32-C3: flash {flash} B, static RAM {ram} B");
    // Budgets (BENCHMARKS.md): WiFi's own code and heap are most of both; the static RAM
    // includes the 100 KiB heap esp-radio allocates from, and the stack takes the rest.
    assert!(flash <= 640 * 1024, "flash {flash} B exceeds 640 KiB");
    assert!(ram <= 192 * 1024, "static RAM {ram} B exceeds 192 KiB");
}

/// (flash, static RAM) of an RP2040 image: flash holds every loaded section with contents in
/// the XIP window (`0x1000_0000..`: the second-stage bootloader, vectors, code, read-only data
/// with the radio's firmware) plus the initial image of `.data`; static RAM is `.data` and
/// `.bss` (`0x2000_0000..`; the stack takes the rest).
fn rp2040_sizes(bytes: &[u8]) -> (u64, u64) {
    let elf = object::File::parse(bytes).unwrap();
    let (mut flash, mut ram) = (0u64, 0u64);
    for s in elf.sections() {
        let SectionFlags::Elf { sh_flags } = s.flags() else {
            continue;
        };
        if sh_flags & u64::from(object::elf::SHF_ALLOC) == 0 {
            continue;
        }
        let a = s.address();
        let in_ram = (0x2000_0000..0x2004_2000).contains(&a);
        if in_ram {
            ram += s.size();
        }
        if s.kind() != SectionKind::UninitializedData && !s.name().unwrap_or("").ends_with("uninit") {
            flash += s.size();
        }
    }
    (flash, ram)
}

#[test]
fn the_pico_w_image_fits_its_budgets() {
    let bytes = std::fs::read(image("pico-w", "thumbv6m-none-eabi", "pico-w-node")).unwrap();
    let (flash, ram) = rp2040_sizes(&bytes);
    println!("Pico W: flash {flash} B, static RAM {ram} B");
    // Budgets (BENCHMARKS.md): the CYW43439's firmware is 226 KiB of the flash; the RP2040 has
    // 264 KiB of SRAM, of which the stack takes what static RAM leaves.
    assert!(flash <= 512 * 1024, "flash {flash} B exceeds 512 KiB");
    assert!(ram <= 96 * 1024, "static RAM {ram} B exceeds 96 KiB");
}
