//! The device registry's rules, sans I/O: what the `telemetry`, `device-status` and
//! `gateways` records say about each device and gateway. Fed records in any order (a replay
//! or a late backlog arrives after newer readings); time comes in as arguments.
//!
//! Per device and boot it keeps which sequence numbers arrived, as ranges, so the readings
//! that never arrived are the holes below the highest one ([`Device::gaps`]): a gap a later
//! record fills closes. Memory is bounded: at most [`MAX_RANGES`] ranges per boot (past that
//! the oldest holes are given up and counted) and [`MAX_BOOTS`] boots per device.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use litemap::LiteMap;

use vocab::wire::{DeviceStatus, ReadingRecord};

/// Most disjoint received ranges kept per boot.
pub const MAX_RANGES: usize = 256;
/// Most boots kept per device (the oldest go first).
pub const MAX_BOOTS: usize = 4;
/// Most channels kept per device (readings of others are counted, not charted).
pub const MAX_CHANNELS: usize = 16;
/// Recent values kept per channel, for the device page's chart.
pub const HISTORY_POINTS: usize = 32;
/// Values closer than this to the latest point replace it (the latest value of each step is
/// charted), so a fast device's chart still spans a minute or more.
pub const HISTORY_STEP_MS: i64 = 2_000;
/// The window a rate is counted over, ms.
pub const RATE_WINDOW_MS: i64 = 10_000;

/// A channel's recent values, oldest first: `(ms after base, value)` pairs (8 bytes a point).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    base_ms: i64,
    points: VecDeque<(u32, f32)>,
}

impl History {
    /// Adds a value taken at `ts_ms`, in time order; a value older than every one kept when
    /// the history is full is not kept.
    pub fn add(&mut self, ts_ms: i64, value: f32) {
        if self.points.is_empty() {
            self.base_ms = ts_ms;
        }
        if ts_ms < self.base_ms {
            if self.points.len() >= HISTORY_POINTS {
                return;
            }
            // Rebase on the older point (the deltas of the others grow by the difference).
            let by = self.base_ms - ts_ms;
            if self
                .points
                .back()
                .is_some_and(|(d, _)| i64::from(*d) + by > i64::from(u32::MAX))
            {
                return;
            }
            for p in &mut self.points {
                p.0 += by as u32;
            }
            self.base_ms = ts_ms;
        }
        let mut delta = ts_ms - self.base_ms;
        if delta > i64::from(u32::MAX) {
            // Far past the base: start again from this point.
            self.points.clear();
            self.base_ms = ts_ms;
            delta = 0;
        }
        let delta = delta as u32;
        if let Some(last) = self.points.back_mut() {
            if delta >= last.0 && i64::from(delta - last.0) < HISTORY_STEP_MS && self.points.len() > 1 {
                // Within the latest step (after the first two points): the newer value stands for it.
                let before = self.points[self.points.len() - 2].0;
                if i64::from(delta - before) < HISTORY_STEP_MS {
                    if let Some(last) = self.points.back_mut() {
                        *last = (delta, value);
                    }
                    return;
                }
            }
        }
        let at = self.points.partition_point(|(d, _)| *d <= delta);
        if self.points.len() >= HISTORY_POINTS {
            if at == 0 {
                return;
            }
            self.points.pop_front();
            self.points.insert(at - 1, (delta, value));
        } else {
            self.points.insert(at, (delta, value));
        }
    }

    /// The points, oldest first: `(timestamp ms, value)`.
    pub fn points(&self) -> impl Iterator<Item = (i64, f32)> + '_ {
        self.points
            .iter()
            .map(|(d, v)| (self.base_ms + i64::from(*d), *v))
    }

    /// The latest value: `(timestamp ms, value)`.
    pub fn last(&self) -> Option<(i64, f32)> {
        self.points
            .back()
            .map(|(d, v)| (self.base_ms + i64::from(*d), *v))
    }
}

/// Events counted in fixed windows of [`RATE_WINDOW_MS`] of their own timestamps: the rate is
/// the last whole window's count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rate {
    start: i64,
    current: u32,
    previous: u32,
}

impl Rate {
    /// Counts `n` events at `ts_ms` (events older than the last window are not counted).
    pub fn add(&mut self, ts_ms: i64, n: u32) {
        let window = ts_ms.div_euclid(RATE_WINDOW_MS) * RATE_WINDOW_MS;
        if window > self.start {
            self.previous = if window == self.start + RATE_WINDOW_MS {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.start = window;
        }
        if window == self.start {
            self.current = self.current.saturating_add(n);
        } else if window == self.start - RATE_WINDOW_MS {
            self.previous = self.previous.saturating_add(n);
        }
    }

    /// Events per second at `now_ms` over the last [`RATE_WINDOW_MS`], sliding: the current
    /// window's count plus the previous window's weighted by how much of it the last
    /// [`RATE_WINDOW_MS`] still covers (0 once both are older).
    pub fn per_sec(&self, now_ms: i64) -> f64 {
        let window = now_ms.div_euclid(RATE_WINDOW_MS) * RATE_WINDOW_MS;
        let into = (now_ms - window) as f64 / RATE_WINDOW_MS as f64;
        let (cur, prev) = if window == self.start {
            (self.current, self.previous)
        } else if window == self.start + RATE_WINDOW_MS {
            (0, self.current)
        } else {
            (0, 0)
        };
        (f64::from(cur) + f64::from(prev) * (1.0 - into)) * 1000.0 / RATE_WINDOW_MS as f64
    }
}

/// Sequence numbers received in one boot, as disjoint `start..end` ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Boot {
    ranges: BTreeMap<u64, u64>,
    count: u64,
    /// Holes given up to keep at most [`MAX_RANGES`] ranges (their readings are not counted
    /// as missing any more, nor listed).
    pub forgotten_gaps: u64,
}

impl Boot {
    /// Records `seq`; `false` when it had arrived before (a duplicate).
    pub fn insert(&mut self, seq: u64) -> bool {
        let new = self.insert_range(seq);
        self.count += u64::from(new);
        new
    }

    fn insert_range(&mut self, seq: u64) -> bool {
        let end = seq.saturating_add(1);
        // The range at or before `seq`.
        if let Some((&s, &e)) = self.ranges.range(..=seq).next_back() {
            if seq < e {
                return false;
            }
            if e == seq {
                // Extends it; perhaps joins the next.
                let next = self.ranges.get(&end).copied();
                self.ranges.insert(s, next.unwrap_or(end));
                if next.is_some() {
                    self.ranges.remove(&end);
                }
                return true;
            }
        }
        match self.ranges.remove(&end) {
            Some(e) => drop(self.ranges.insert(seq, e)),
            None => drop(self.ranges.insert(seq, end)),
        }
        while self.ranges.len() > MAX_RANGES {
            // Join the two oldest ranges: the hole between them is given up.
            let mut it = self.ranges.iter();
            let (Some((&s0, &e0)), Some((&s1, &e1))) = (it.next(), it.next()) else {
                break;
            };
            self.forgotten_gaps += s1 - e0;
            self.ranges.remove(&s1);
            self.ranges.insert(s0, e1);
        }
        true
    }

    /// Readings received.
    pub fn received(&self) -> u64 {
        self.count
    }

    /// The highest sequence number received.
    pub fn highest(&self) -> Option<u64> {
        self.ranges.values().next_back().map(|e| e - 1)
    }

    /// Ranges never received below the highest one received, from sequence 0 (a boot numbers
    /// its readings from 0): `(from, to)`, both inclusive.
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut next = 0;
        for (&s, &e) in &self.ranges {
            if s > next {
                out.push((next, s - 1));
            }
            next = e;
        }
        out
    }

    /// Readings missing: the sum of [`Boot::gaps`].
    pub fn missing(&self) -> u64 {
        self.gaps().iter().map(|(a, b)| b - a + 1).sum()
    }
}

/// What the registry knows of one device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Device {
    /// The gateway its latest reading came through.
    pub gateway: Option<Arc<str>>,
    /// First and last time a record of it was seen (the registry's clock, ms).
    pub first_seen_ms: i64,
    /// Last time a record of it was seen.
    pub last_seen_ms: i64,
    /// Its boots, by boot id.
    pub boots: LiteMap<u32, Boot>,
    /// The boot of its latest status, or of the highest reading's boot.
    pub current_boot: u32,
    /// Readings received (duplicates not counted).
    pub readings: u64,
    /// Readings that arrived more than once.
    pub duplicates: u64,
    /// Each channel's recent values (at most [`MAX_CHANNELS`]).
    pub channels: LiteMap<u16, History>,
    /// Readings of channels past [`MAX_CHANNELS`] (counted, not charted).
    pub uncharted: u64,
    /// Readings per second (by the records' timestamps).
    pub rate: Rate,
    /// Its latest status.
    pub status: Option<DeviceStatus>,
    /// Boots forgotten to stay within [`MAX_BOOTS`].
    pub forgotten_boots: u64,
}

impl Device {
    /// Readings missing across the boots kept: `(boot, from, to)`.
    pub fn gaps(&self) -> Vec<(u32, u64, u64)> {
        self.boots
            .iter()
            .flat_map(|(b, boot)| boot.gaps().into_iter().map(move |(f, t)| (*b, f, t)))
            .collect()
    }

    /// The readings the device said it dropped itself (its buffer overflowed), in its latest
    /// status.
    pub fn dropped_overflow(&self) -> u64 {
        self.status.as_ref().map_or(0, |s| s.counters.dropped_overflow)
    }

    /// Online: its last will has not said it went away, and it was heard from within
    /// `timeout_ms` of `now_ms`.
    pub fn online(&self, now_ms: i64, timeout_ms: i64) -> bool {
        self.status.as_ref().is_none_or(|s| s.online) && now_ms - self.last_seen_ms <= timeout_ms
    }
}

/// The registry: every device seen, up to a bound.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Devices by id.
    pub devices: BTreeMap<String, Device>,
    /// Most devices kept: records of others are counted in [`Registry::untracked`].
    pub max_devices: usize,
    /// Records of devices past [`Registry::max_devices`].
    pub untracked: u64,
    /// Gateway names, shared by their devices.
    names: BTreeMap<Arc<str>, ()>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(usize::MAX)
    }
}

impl Registry {
    /// An empty registry that keeps at most `max_devices` devices.
    pub fn new(max_devices: usize) -> Self {
        Registry {
            devices: BTreeMap::new(),
            max_devices,
            untracked: 0,
            names: BTreeMap::new(),
        }
    }

    fn device(&mut self, id: &str, now_ms: i64) -> Option<&mut Device> {
        if !self.devices.contains_key(id) {
            if self.devices.len() >= self.max_devices {
                self.untracked += 1;
                return None;
            }
            self.devices.insert(
                id.to_string(),
                Device {
                    first_seen_ms: now_ms,
                    ..Device::default()
                },
            );
        }
        self.devices.get_mut(id)
    }

    fn name(&mut self, g: &str) -> Arc<str> {
        if let Some((k, ())) = self.names.get_key_value(g) {
            return k.clone();
        }
        let k: Arc<str> = Arc::from(g);
        self.names.insert(k.clone(), ());
        k
    }

    /// A `telemetry` record: device `id`'s reading `r`, forwarded by `gateway`, stamped
    /// `now_ms` (the record's time).
    pub fn reading(&mut self, id: &str, gateway: Option<&str>, r: &ReadingRecord, now_ms: i64) {
        // The common case in one lookup: a known device, through the gateway it used before.
        if let Some(d) = self.devices.get_mut(id) {
            if gateway.is_none_or(|g| d.gateway.as_deref() == Some(g)) {
                return Self::take(d, None, r, now_ms);
            }
        }
        let gateway = gateway.map(|g| self.name(g));
        if let Some(d) = self.device(id, now_ms) {
            Self::take(d, gateway, r, now_ms);
        }
    }

    /// [`Registry::reading`] with the record's raw [`vocab::headers::EDGE`] header, parsed
    /// only when it does not name the gateway the device used before (the common case costs a
    /// prefix comparison, not a parse).
    pub fn reading_via(&mut self, id: &str, edge: Option<&[u8]>, r: &ReadingRecord, now_ms: i64) {
        if let Some(d) = self.devices.get_mut(id) {
            let same = match (edge, d.gateway.as_deref()) {
                (None, _) => true,
                (Some(e), Some(g)) => from_gateway(e, g),
                (Some(_), None) => false,
            };
            if same {
                return Self::take(d, None, r, now_ms);
            }
        }
        let gateway = edge
            .and_then(vocab::headers::parse_edge)
            .map(|(g, ..)| self.name(g));
        if let Some(d) = self.device(id, now_ms) {
            Self::take(d, gateway, r, now_ms);
        }
    }

    fn take(d: &mut Device, gateway: Option<Arc<str>>, r: &ReadingRecord, now_ms: i64) {
        d.last_seen_ms = d.last_seen_ms.max(now_ms);
        if gateway.is_some() {
            d.gateway = gateway;
        }
        if !d.boots.contains_key(&r.boot_id) {
            if d.boots.len() >= MAX_BOOTS {
                if let Some((&oldest, _)) = d.boots.iter().next() {
                    if oldest > r.boot_id {
                        // Older than every boot kept: counted, not kept.
                        d.readings += 1;
                        return;
                    }
                    d.boots.remove(&oldest);
                    d.forgotten_boots += 1;
                }
            }
            if r.boot_id >= d.current_boot {
                d.current_boot = r.boot_id;
            }
        }
        if d.boots.entry(r.boot_id).or_default().insert(r.seq) {
            d.readings += 1;
            d.rate.add(now_ms, 1);
            let ch = r.reading.channel;
            if d.channels.contains_key(&ch) || d.channels.len() < MAX_CHANNELS {
                // Charted by the record's time: a device that does not know the time stamps
                // its readings from boot, and the edge stamps those records when it logs them.
                d.channels.entry(ch).or_default().add(now_ms, r.reading.value);
            } else {
                d.uncharted += 1;
            }
        } else {
            d.duplicates += 1;
        }
    }

    /// A `device-status` record (a birth, or with `online == false` a last will).
    pub fn status(&mut self, s: &DeviceStatus, now_ms: i64) {
        let Some(d) = self.device(s.device_id.as_str(), now_ms) else {
            return;
        };
        d.last_seen_ms = d.last_seen_ms.max(now_ms);
        d.current_boot = d.current_boot.max(s.boot_id);
        d.status = Some(s.clone());
    }
}

/// Whether the edge header `e` (`<gateway>/<topic>/<partition>/<offset>`, the gateway may
/// hold `/`) names gateway `g`, as [`vocab::headers::parse_edge`] would read it.
fn from_gateway(e: &[u8], g: &str) -> bool {
    let g = g.as_bytes();
    e.len() > g.len()
        && e.starts_with(g)
        && e[g.len()] == b'/'
        && e[g.len() + 1..].iter().filter(|&&b| b == b'/').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use vocab::wire::{Counters, Reading};

    fn rec(boot: u32, seq: u64) -> ReadingRecord {
        ReadingRecord {
            boot_id: boot,
            seq,
            reading: Reading {
                channel: 0,
                timestamp_ms: seq * 10,
                value: seq as f32,
            },
        }
    }

    #[test]
    fn the_edge_header_names_the_gateway_as_parse_edge_reads_it() {
        for (e, g, want) in [
            (&b"gw/telemetry/0/5"[..], "gw", true),
            (b"gw/telemetry/0/5", "g", false),
            (b"a/b/telemetry/0/5", "a", false),
            (b"a/b/telemetry/0/5", "a/b", true),
            (b"gw", "gw", false),
            (b"gw/", "gw", false),
        ] {
            assert_eq!(from_gateway(e, g), want, "{:?} {g}", std::str::from_utf8(e));
            let parsed = vocab::headers::parse_edge(e).map(|(x, ..)| x == g);
            if want {
                assert_eq!(parsed, Some(true));
            }
        }
        // reading_via: a device moving to another gateway is seen to.
        let mut r = Registry::default();
        r.reading_via("d", Some(b"a/b/t/0/1"), &rec(1, 0), 1);
        assert_eq!(r.devices["d"].gateway.as_deref(), Some("a/b"));
        r.reading_via("d", Some(b"a/b/t/0/2"), &rec(1, 1), 2);
        r.reading_via("d", Some(b"a/c/t/0/2"), &rec(1, 2), 3);
        assert_eq!(r.devices["d"].gateway.as_deref(), Some("a/c"));
        r.reading_via("d", None, &rec(1, 3), 4);
        assert_eq!(r.devices["d"].gateway.as_deref(), Some("a/c"));
        assert_eq!(r.devices["d"].readings, 4);
    }

    #[test]
    fn gaps_are_the_holes_below_the_highest_and_a_late_record_closes_one() {
        let mut r = Registry::default();
        for seq in [0, 1, 2, 5, 6, 9] {
            r.reading("d", Some("gw"), &rec(1, seq), seq as i64 * 10);
        }
        let d = &r.devices["d"];
        assert_eq!(d.gaps(), vec![(1, 3, 4), (1, 7, 8)]);
        assert_eq!((d.readings, d.duplicates), (6, 0));
        // A replay fills 3..=4 out of order; 8 arrives; 7 is still missing.
        for seq in [4, 3, 8] {
            r.reading("d", Some("gw"), &rec(1, seq), seq as i64 * 10);
        }
        let d = &r.devices["d"];
        assert_eq!(d.gaps(), vec![(1, 7, 7)]);
        assert_eq!(d.boots[&1].missing(), 1);
        assert_eq!(
            d.channels[&0].last(),
            Some((90, 9.0)),
            "the latest by time, not by arrival"
        );
        // A duplicate is counted, not received again.
        r.reading("d", Some("gw"), &rec(1, 5), 300);
        let d = &r.devices["d"];
        assert_eq!((d.readings, d.duplicates), (9, 1));
        assert_eq!(d.boots[&1].received(), 9);
    }

    #[test]
    fn a_boot_change_starts_a_new_sequence_and_old_boots_are_bounded() {
        let mut r = Registry::default();
        r.reading("d", None, &rec(1, 0), 1);
        r.reading("d", None, &rec(1, 2), 1);
        r.reading("d", None, &rec(2, 0), 2);
        let d = &r.devices["d"];
        assert_eq!(d.current_boot, 2);
        assert_eq!(d.gaps(), vec![(1, 1, 1)], "boot 2 starts again at 0");
        for boot in 3..=8 {
            r.reading("d", None, &rec(boot, 0), 3);
        }
        let d = &r.devices["d"];
        assert_eq!(d.boots.len(), MAX_BOOTS);
        assert_eq!(d.forgotten_boots, 4);
        assert_eq!(d.boots.keys().next(), Some(&5));
        // A reading of a boot older than every one kept is counted only.
        r.reading("d", None, &rec(1, 7), 4);
        assert_eq!(r.devices["d"].boots.len(), MAX_BOOTS);
    }

    #[test]
    fn devices_past_the_bound_are_counted_not_kept() {
        let mut r = Registry::new(2);
        for id in ["a", "b", "c", "a", "c"] {
            r.reading(id, Some("gw"), &rec(1, 0), 1);
        }
        assert_eq!(r.devices.len(), 2);
        assert_eq!(r.untracked, 2);
        assert!(Arc::ptr_eq(
            r.devices["a"].gateway.as_ref().unwrap(),
            r.devices["b"].gateway.as_ref().unwrap()
        ));
    }

    #[test]
    fn history_keeps_the_latest_points_in_time_order() {
        let mut h = History::default();
        let step = HISTORY_STEP_MS * 10;
        for i in 0..(HISTORY_POINTS as i64 + 5) {
            h.add(1_000 + i * step, i as f32);
        }
        let pts: Vec<_> = h.points().collect();
        assert_eq!(pts.len(), HISTORY_POINTS);
        assert_eq!(pts[0], (1_000 + 5 * step, 5.0));
        // A late point inside the window goes in its place; one older than all is dropped.
        h.add(1_000 + 5 * step + 5, 99.0);
        h.add(0, -1.0);
        let pts: Vec<_> = h.points().collect();
        assert_eq!(pts.len(), HISTORY_POINTS);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(pts.contains(&(1_000 + 5 * step + 5, 99.0)));
        assert_eq!(
            h.last(),
            Some((
                1_000 + (HISTORY_POINTS as i64 + 4) * step,
                (HISTORY_POINTS + 4) as f32
            ))
        );
        // Values closer than a step to the latest two replace the latest.
        let mut h = History::default();
        for t in [0, 100, 200, 300, HISTORY_STEP_MS * 3] {
            h.add(t, t as f32);
        }
        assert_eq!(
            h.points().collect::<Vec<_>>(),
            vec![
                (0, 0.0),
                (300, 300.0),
                (HISTORY_STEP_MS * 3, (HISTORY_STEP_MS * 3) as f32)
            ]
        );
        // An older point while not full rebases.
        let mut h = History::default();
        h.add(5_000, 1.0);
        h.add(4_000, 2.0);
        assert_eq!(h.points().collect::<Vec<_>>(), vec![(4_000, 2.0), (5_000, 1.0)]);
        // A jump past u32 ms starts again.
        h.add(5_000 + (1 << 33), 3.0);
        assert_eq!(h.points().count(), 1);
    }

    #[test]
    fn rate_slides_over_the_last_window() {
        let mut r = Rate::default();
        for i in 0..50 {
            r.add(100_000 + i * 200, 1); // 5 per second over 10 s
        }
        assert_eq!(r.per_sec(109_999), 5.0, "50 in the current window");
        assert_eq!(r.per_sec(110_000), 5.0, "the previous window, whole");
        assert_eq!(r.per_sec(115_000), 2.5, "half of it still in the last 10 s");
        assert_eq!(r.per_sec(120_000), 0.0, "silent for a whole window");
        r.add(95_000, 10); // late, into the window before
        r.add(10_000, 3); // too old: not counted
        assert_eq!(r.per_sec(100_000), 6.0);
    }

    #[test]
    fn holes_past_the_bound_are_given_up_and_counted() {
        let mut b = Boot::default();
        for i in 0..(MAX_RANGES as u64 + 10) {
            assert!(b.insert(i * 2)); // every other reading: a hole after each
        }
        assert!(b.ranges.len() <= MAX_RANGES);
        assert_eq!(b.forgotten_gaps, 10);
        assert_eq!(b.missing() + b.forgotten_gaps, MAX_RANGES as u64 + 9);
        assert!(!b.insert(0), "a duplicate inside a joined range");
    }

    #[test]
    fn status_reports_overflow_and_online_follows_the_will_and_the_timeout() {
        let mut r = Registry::default();
        let mut s = DeviceStatus {
            device_id: "d".try_into().unwrap(),
            boot_id: 3,
            online: true,
            firmware_version: "1.0".try_into().unwrap(),
            buffer_capacity: 64,
            uptime_ms: 10,
            counters: Counters {
                dropped_overflow: 12,
                ..Counters::default()
            },
        };
        r.status(&s, 1_000);
        let d = &r.devices["d"];
        assert_eq!((d.dropped_overflow(), d.current_boot), (12, 3));
        assert!(d.online(1_500, 1_000));
        assert!(!d.online(2_001, 1_000), "silent past the timeout");
        s.online = false;
        r.status(&s, 1_600);
        assert!(!r.devices["d"].online(1_600, 1_000), "its last will");
    }

    /// Inserting in any order gives the same ranges as in order.
    #[test]
    fn any_arrival_order_gives_the_same_gaps() {
        use proptest::prelude::*;
        proptest!(|(seqs in proptest::collection::vec(0u64..300, 0..400))| {
            let mut b = Boot::default();
            let mut sorted = seqs.clone();
            sorted.sort();
            sorted.dedup();
            for s in &seqs {
                b.insert(*s);
            }
            let mut c = Boot::default();
            for s in &sorted {
                c.insert(*s);
            }
            prop_assert_eq!(b.gaps(), c.gaps());
            prop_assert_eq!(b.received(), sorted.len() as u64);
            let missing: u64 = sorted.last().map_or(0, |m| m + 1) - sorted.len() as u64;
            prop_assert_eq!(b.missing(), missing);
        });
    }
}
