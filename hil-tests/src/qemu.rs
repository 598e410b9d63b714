//! Running the firmware image under `qemu-system-arm`.

use std::path::PathBuf;

/// The QEMU board image, built by `cargo build --release` in `firmware/boards/qemu-lm3s6965`.
pub fn lm3s6965_image() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let p =
        root.join("firmware/boards/qemu-lm3s6965/target/thumbv7m-none-eabi/release/qemu-lm3s6965");
    anyhow::ensure!(
        p.is_file(),
        "{} is missing: build it with `cargo build --release` in firmware/boards/qemu-lm3s6965 \
         (the README's test command does)",
        p.display()
    );
    Ok(p)
}
