//! The consumer group protocol's payloads ("consumer" protocol type): a member's
//! subscription, the assignment the group's leader hands each member, and the `range`
//! assignor Kafka's clients share (per topic, the partitions split into contiguous runs over
//! the subscribed members in member-id order, the first members taking one more).

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};

/// The assignor this consumer offers.
pub const ASSIGNOR: &str = "range";

/// A subscription to `topics`, as JoinGroup carries it (version 0, prefixed by its version).
pub fn subscription(topics: &[String]) -> Bytes {
    let s = ConsumerProtocolSubscription::default()
        .with_topics(topics.iter().map(|t| StrBytes::from_string(t.clone())).collect());
    let mut b = BytesMut::new();
    b.put_i16(0);
    // Encoding a subscription of names cannot fail at version 0.
    let _ = s.encode(&mut b, 0);
    b.freeze()
}

/// The topics of a member's subscription; `None` if it does not read. (Read by hand: every
/// version starts with the topic names, and a count from the wire is checked against the
/// bytes left before anything is allocated for it.)
pub fn subscribed_topics(b: Bytes) -> Option<Vec<String>> {
    let mut r = Reader(&b);
    r.i16()?; // version
    let n = r.count(2)?;
    let mut topics = Vec::with_capacity(n);
    for _ in 0..n {
        topics.push(r.string()?);
    }
    Some(topics)
}

/// An assignment, as SyncGroup carries it (version 0, prefixed by its version).
pub fn assignment(parts: &BTreeMap<String, Vec<i32>>) -> Bytes {
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        parts
            .iter()
            .map(|(t, ps)| {
                TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_string(t.clone())))
                    .with_partitions(ps.clone())
            })
            .collect(),
    );
    let mut b = BytesMut::new();
    b.put_i16(0);
    let _ = a.encode(&mut b, 0);
    b.freeze()
}

/// The partitions of an assignment (empty bytes: none); `None` if it does not read. (Read by
/// hand, as [`subscribed_topics`]: the assigned partitions come first in every version.)
pub fn assigned(b: Bytes) -> Option<BTreeMap<String, Vec<i32>>> {
    if b.is_empty() {
        return Some(BTreeMap::new());
    }
    let mut r = Reader(&b);
    r.i16()?; // version
    let n = r.count(6)?;
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for _ in 0..n {
        let t = r.string()?;
        let m = r.count(4)?;
        let ps = out.entry(t).or_default();
        for _ in 0..m {
            ps.push(r.i32()?);
        }
    }
    Some(out)
}

/// Big-endian fields of the consumer protocol's payloads.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    /// An array count, no more than the bytes left allow at `min` bytes an element.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = usize::try_from(self.i32()?).ok()?;
        (n.saturating_mul(min) <= self.0.len()).then_some(n)
    }
    fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.i16()?).ok()?;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// The range assignment of `partitions` (per topic, its partition count) to `members`
/// (member id → subscribed topics). Every member gets an entry, possibly empty.
pub fn range(
    members: &BTreeMap<String, Vec<String>>,
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> =
        members.keys().map(|m| (m.clone(), BTreeMap::new())).collect();
    let topics: BTreeSet<&String> = members.values().flatten().collect();
    for t in topics {
        let Some(&n) = partitions.get(t) else { continue };
        let subs: Vec<&String> = members
            .iter()
            .filter(|(_, ts)| ts.contains(t))
            .map(|(m, _)| m)
            .collect();
        let (each, extra) = (n / subs.len() as i32, n % subs.len() as i32);
        let mut next = 0;
        for (i, m) in subs.into_iter().enumerate() {
            let take = each + i32::from((i as i32) < extra);
            if take > 0 {
                if let Some(a) = out.get_mut(m) {
                    a.insert(t.clone(), (next..next + take).collect());
                }
            }
            next += take;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let topics = vec!["telemetry".to_string(), "gateways".to_string()];
        assert_eq!(subscribed_topics(subscription(&topics)), Some(topics));
        let a: BTreeMap<String, Vec<i32>> = [
            ("telemetry".to_string(), vec![0, 1, 2]),
            ("gateways".to_string(), vec![4]),
        ]
        .into();
        assert_eq!(assigned(assignment(&a)), Some(a));
        assert_eq!(assigned(Bytes::new()), Some(BTreeMap::new()));
        assert_eq!(
            assigned(Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff])),
            None
        );
        assert_eq!(subscribed_topics(Bytes::from_static(&[1])), None);
    }

    #[test]
    fn range_splits_each_topic_over_its_subscribers_in_member_order() {
        let members: BTreeMap<String, Vec<String>> = [
            ("b".to_string(), vec!["t".to_string(), "u".to_string()]),
            ("a".to_string(), vec!["t".to_string()]),
            ("c".to_string(), vec!["t".to_string(), "u".to_string()]),
        ]
        .into();
        let parts: BTreeMap<String, i32> = [("t".to_string(), 8), ("u".to_string(), 1)].into();
        let r = range(&members, &parts);
        assert_eq!(r["a"]["t"], vec![0, 1, 2]);
        assert_eq!(r["b"]["t"], vec![3, 4, 5]);
        assert_eq!(r["c"]["t"], vec![6, 7]);
        assert_eq!(r["b"]["u"], vec![0]);
        assert!(!r["c"].contains_key("u") && !r["a"].contains_key("u"));
        // A topic that does not exist (yet) is assigned to no one.
        let r = range(&members, &[("t".to_string(), 2)].into());
        assert_eq!(r["a"]["t"], vec![0]);
        assert_eq!(r["b"]["t"], vec![1]);
        assert!(r["c"].is_empty());
    }
}
