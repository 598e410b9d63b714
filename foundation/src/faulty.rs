//! A disk that fails the way real ones do, for redb (its `StorageBackend`): writes that fail
//! with ENOSPC after a budget of bytes, writes torn halfway, failed fsyncs, bits flipped in
//! what is stored, and power cuts that lose everything not yet synced.
//!
//! [`FaultyDisk`] is the disk; each open of a database takes a fresh [`FaultyDisk::backend`]
//! (a store that reopens after a failure gets one too). [`FaultyDisk::power_cut`] discards
//! every later write until [`FaultyDisk::power_on`], which brings the bytes back to what the
//! last successful sync made durable: drop the store in between, as the process would die.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    /// What reads see.
    bytes: Vec<u8>,
    /// What survives a power cut: the bytes at the last successful sync.
    durable: Vec<u8>,
    /// Bytes that may still be written before writes fail with ENOSPC (`None`: no limit).
    space: Option<u64>,
    /// The next write is torn: half of it lands, then it fails.
    tear_next: bool,
    /// Syncs fail while this is above 0 (one per failed sync).
    failing_syncs: u32,
    /// The power is off: writes and syncs vanish.
    off: bool,
    /// Faults injected so far (what a test reports).
    faults: u64,
}

/// A shared, fault-injecting in-memory disk.
#[derive(Debug, Clone, Default)]
pub struct FaultyDisk(Arc<Mutex<State>>);

/// One open of a [`FaultyDisk`] as redb's storage backend.
#[derive(Debug)]
pub struct Backend(FaultyDisk);

impl FaultyDisk {
    /// An empty disk without faults.
    pub fn new() -> FaultyDisk {
        FaultyDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A backend for one open of the database on this disk.
    pub fn backend(&self) -> Backend {
        Backend(self.clone())
    }

    /// Writes fail with ENOSPC once `bytes` more have been written (`None`: space again).
    pub fn space(&self, bytes: Option<u64>) {
        self.lock().space = bytes;
    }

    /// The next write is torn: its first half lands, then it fails.
    pub fn tear_next_write(&self) {
        self.lock().tear_next = true;
    }

    /// The next `n` syncs fail (after the data may or may not have reached the disk: here it
    /// has not).
    pub fn fail_syncs(&self, n: u32) {
        self.lock().failing_syncs = n;
    }

    /// Flips bit `bit` (0..8) of the byte at `at` (taken modulo the disk's length) in what is
    /// stored, durable or not: a failing sector. Returns the offset flipped, `None` on an
    /// empty disk.
    pub fn flip(&self, at: u64, bit: u8) -> Option<u64> {
        let mut s = self.lock();
        if s.bytes.is_empty() {
            return None;
        }
        let at = (at % s.bytes.len() as u64) as usize;
        s.bytes[at] ^= 1 << (bit % 8);
        if at < s.durable.len() {
            s.durable[at] ^= 1 << (bit % 8);
        }
        s.faults += 1;
        Some(at as u64)
    }

    /// The power goes off: every write and sync from now on vanishes.
    pub fn power_cut(&self) {
        let mut s = self.lock();
        s.off = true;
        s.faults += 1;
    }

    /// The power comes back: the disk holds what its last successful sync made durable.
    pub fn power_on(&self) {
        let mut s = self.lock();
        s.off = false;
        s.bytes = s.durable.clone();
    }

    /// No more injected failures (space, torn writes, failing syncs); flipped bits stay.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.space = None;
        s.tear_next = false;
        s.failing_syncs = 0;
    }

    /// The stored bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// Faults injected so far.
    pub fn faults(&self) -> u64 {
        self.lock().faults
    }
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(28)
}

impl redb::StorageBackend for Backend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.0.lock().bytes.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let s = self.0.lock();
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset"))?;
        let end = start
            .checked_add(out.len())
            .filter(|&e| e <= s.bytes.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(&s.bytes[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut s = self.0.lock();
        if s.off {
            return Ok(());
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("length"))?;
        if len > s.bytes.len() {
            let grow = (len - s.bytes.len()) as u64;
            if let Some(space) = s.space {
                if grow > space {
                    s.faults += 1;
                    return Err(enospc());
                }
                s.space = Some(space - grow);
            }
        }
        s.bytes.resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut s = self.0.lock();
        if s.off {
            return Ok(());
        }
        if s.failing_syncs > 0 {
            s.failing_syncs -= 1;
            s.faults += 1;
            return Err(io::Error::other("injected fsync failure"));
        }
        s.durable = s.bytes.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut s = self.0.lock();
        if s.off {
            return Ok(());
        }
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset"))?;
        let mut data = data;
        let mut torn = false;
        if s.tear_next {
            s.tear_next = false;
            s.faults += 1;
            data = &data[..data.len() / 2];
            torn = true;
        }
        if let Some(space) = s.space {
            if data.len() as u64 > space {
                s.faults += 1;
                return Err(enospc());
            }
            s.space = Some(space - data.len() as u64);
        }
        let end = start + data.len();
        if end > s.bytes.len() {
            s.bytes.resize(end, 0);
        }
        s.bytes[start..end].copy_from_slice(data);
        if torn {
            return Err(io::Error::other("injected torn write"));
        }
        Ok(())
    }
}
