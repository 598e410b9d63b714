#!/usr/bin/env python3
"""kafka-python consumer groups against the broker, in phases the caller runs in order (the
Rust test kills and restarts the broker between them):

  group    create the topic; three members (threads) join and split its partitions; records
           produced with acks='all' are consumed exactly once and committed; one member
           leaves, the other two take over its partitions and consume what comes next.
  produce  produce --count more records with acks='all' (prefix --prefix).
  resume   a fresh consumer in the same group starts at the committed offsets and reads
           exactly the records of --expect PREFIX:COUNT (nothing committed before, nothing twice).

Each phase exits non-zero with a message saying what did not match."""
import argparse
import sys
import threading
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition


def fail(msg):
    print(f"kp_group: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def wait_for(what, cond, timeout_s, state=None):
    """Polls `cond` until it holds; fails with `what` (and `state()`) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout_s} s waiting for {what}" + (f"; {state()}" if state else ""))
        time.sleep(0.05)


def consumer_config(a, client_id):
    return dict(
        bootstrap_servers=a.bootstrap,
        group_id=a.group,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=300,
        max_poll_interval_ms=30000,
        request_timeout_ms=10000,
    )


def produce(a, prefix, count):
    """Sends `count` keyed records with acks='all'; returns {partition: records sent}."""
    producer = KafkaProducer(
bootstrap_servers=a.bootstrap, acks="all", linger_ms=5)
    futures = [
        producer.send(a.topic, key=f"key-{i % 97}".encode(), value=f"{prefix}-{i}".encode()) for i in range(count)
    ]
    producer.flush(timeout=30)
    per_partition = {}
    for f in futures:
        md = f.get(timeout=30)  # raises the broker's error, if any
        per_partition.setdefault(md.partition, []).append(md.offset)
    producer.close()
    for p, offsets in per_partition.items():
        if len(set(offsets)) != len(offsets):
            fail(f"partition {p}: the broker gave two records one offset: {sorted(offsets)}")
    return {p: len(o) for p, o in per_partition.items()}


def committed_offsets(admin, a):
    got = admin.list_group_offsets({a.group: None})[a.group]
    return {tp.partition: om.offset for tp, om in got.items() if tp.topic == a.topic}


class Member(threading.Thread):
    """One group member: polls, records what it read and from which partitions it owned,
    commits synchronously after every non-empty poll."""

    def __init__(self, a, name, log, lock):
        super().__init__(daemon=True, name=name)
        self.a, self.log, self.lock = a, log, lock
        self.assignment = frozenset()
        self.history = []  # every distinct assignment, in order
        self.error = None
        self.stop = threading.Event()
        self.closed = threading.Event()

    def run(self):
        try:
            c = KafkaConsumer(**consumer_config(self.a, self.name))
            c.subscribe([self.a.topic])
            while not self.stop.is_set():
                batches = c.poll(timeout_ms=100)
                owned = frozenset(tp.partition for tp in c.assignment())
                with self.lock:
                    if owned != self.assignment:
                        self.assignment = owned
                        self.history.append(owned)
                    for tp, records in batches.items():
                        for r in records:
                            if tp.partition not in owned:
                                raise AssertionError(f"{self.name} read partition {tp.partition}, owns {owned}")
                            self.log.append((self.name, r.partition, r.offset, r.value.decode()))
                if batches:
                    c.commit()
            c.close()  # LeaveGroup
        except Exception as e:  # reported by the main thread
            self.error = f"{self.name}: {type(e).__name__}: {e}"
        finally:
            self.closed.set()


def phase_group(a):
    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap, request_timeout_ms=10000)
    admin.create_topics({a.topic: {"num_partitions": a.partitions, "replication_factor": 1}})
    all_parts = frozenset(range(a.partitions))
    lock = threading.Lock()
    log = []
    members = [Member(a, f"member-{n}", log, lock) for n in range(3)]
    for m in members:
        m.start()

    def state():
        with lock:
            errs = [m.error for m in members if m.error]
            return f"assignments {[sorted(m.assignment) for m in members]}, {len(log)} records read, errors {errs}"

    def split_among(ms):
        with lock:
            if any(m.error for m in members):
                fail(state())
            owned = [m.assignment for m in ms]
            return all(owned) and sum(len(o) for o in owned) == len(all_parts) and frozenset().union(*owned) == all_parts

    # 1. Three members split the partitions (each owns some, none shared, all owned).
    wait_for("three members to split the partitions", lambda: split_among(members), 30, state)
    before = {m.name: m.assignment for m in members}

    # 2. Records produced now are read once each, by the member owning their partition.
    sent = produce(a, "r1", a.count)
    expected = {f"r1-{i}" for i in range(a.count)}
    wait_for(f"{a.count} records read", lambda: len(log) >= a.count, 30, state)
    wait_for("offsets committed", lambda: committed_offsets(admin, a) == sent, 30,
             lambda: f"committed {committed_offsets(admin, a)}, produced {sent}")
    with lock:
        values = [v for (_, _, _, v) in log]
        readers = {name for (name, _, _, _) in log}
    if len(values) != a.count or set(values) != expected:
        fail(f"round 1: read {len(values)} records ({len(set(values))} distinct), expected {a.count}")
    if readers != {m.name for m in members}:
        fail(f"round 1: only {sorted(readers)} read anything")

    # 3. One member leaves; the other two take over its partitions.
    leaver, stay = members[2], members[:2]
    orphaned = leaver.assignment
    leaver.stop.set()
    wait_for("the leaving member to close", leaver.closed.is_set, 30, state)
    wait_for("the two remaining members to own every partition", lambda: split_among(stay), 30, state)
    with lock:
        after = {m.name: m.assignment for m in stay}
    if not any(after[m.name] > before[m.name] for m in stay):
        fail(f"no remaining member gained partitions: before {before}, after {after}")
    if not orphaned <= frozenset().union(*after.values()):
        fail(f"partitions {sorted(orphaned)} of the member that left are not owned: {after}")

    # 4. What comes next is read by the remaining two, from where the leaver committed.
    sent2 = produce(a, "r2", a.count)
    total = {p: sent.get(p, 0) + sent2.get(p, 0) for p in all_parts}
    total = {p: n for p, n in total.items() if n}
    wait_for(f"{2 * a.count} records read", lambda: len(log) >= 2 * a.count, 30, state)
    wait_for("offsets committed", lambda: committed_offsets(admin, a) == total, 30,
             lambda: f"committed {committed_offsets(admin, a)}, produced {total}")
    with lock:
        round2 = [(name, p, v) for (name, p, _, v) in log if v.startswith("r2-")]
        values = [v for (_, _, _, v) in log]
    if len(values) != 2 * a.count or set(values) != expected | {f"r2-{i}" for i in range(a.count)}:
        dup = len(values) - len(set(values))
        fail(f"after the rebalance: read {len(values)} records, {dup} of them twice, expected {2 * a.count}")
    if any(name == leaver.name for (name, _, _) in round2):
        fail("the member that left read records after leaving")
    if not any(p in orphaned for (_, p, _) in round2):
        fail(f"no round-2 record landed on the orphaned partitions {sorted(orphaned)}: pick more records")
    for m in stay:
        m.stop.set()
    for m in stay:
        wait_for(f"{m.name} to close", m.closed.is_set, 30, state)
    if any(m.error for m in members):
        fail(state())
    admin.close()
    print(
        f"kp_group: ok: 3 members split {a.partitions} partitions {sorted(map(sorted, before.values()))}; "
        f"after one left: {sorted(map(sorted, after.values()))}; {2 * a.count} records read once each"
    )


def phase_produce(a):
    sent = produce(a, a.prefix, a.count)
    if sum(sent.values()) != a.count:
        fail(f"produced {sum(sent.values())} of {a.count}")
    print(f"kp_group: ok: produced {a.count} records {a.prefix}-* with acks=all: {sorted(sent.items())}")


def phase_resume(a):
    expected = set()
    for spec in a.expect:
        prefix, n = spec.split(":")
        expected |= {f"{prefix}-{i}" for i in range(int(n))}
    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap, request_timeout_ms=10000)
    parts = [p["partition_index"] for p in admin.describe_topics([a.topic])[0]["partitions"]]
    if sorted(parts) != list(range(a.partitions)):
        fail(f"topic has partitions {sorted(parts)} after the restart, expected {a.partitions}")
    committed = committed_offsets(admin, a)
    if not committed:
        fail("no committed offsets for the group after the restart")
    c = KafkaConsumer(**consumer_config(a, "resumer"))
    tps = [TopicPartition(a.topic, p) for p in parts]
    end = c.end_offsets(tps)
    c.subscribe([a.topic])
    got, first = [], {}
    deadline = time.monotonic() + 30
    # Read until every partition's position reached its end offset (taken before reading).
    while not (c.assignment() and all(c.position(tp) >= end[tp] for tp in tps)):
        if time.monotonic() > deadline:
            fail(f"timed out resuming: read {len(got)} of {len(expected)}, assignment {c.assignment()}")
        for tp, records in c.poll(timeout_ms=100).items():
            for r in records:
                first.setdefault(tp.partition, r.offset)
                got.append(r.value.decode())
    c.commit()
    c.close()
    for p, off in first.items():
        if off != committed.get(p, 0):
            fail(f"partition {p}: first record read at offset {off}, committed offset was {committed.get(p)}")
    old = [v for v in got if v not in expected]
    if old:
        fail(f"read {len(old)} records from before the commit, e.g. {old[:5]}")
    if len(got) != len(expected) or set(got) != expected:
        fail(f"read {len(got)} records ({len(set(got))} distinct), expected {len(expected)}")
    after = committed_offsets(admin, a)
    if after != {tp.partition: o for tp, o in end.items() if o}:
        fail(f"committed after resuming {after}, end offsets {end}")
    admin.close()
    print(f"kp_group: ok: resumed at the committed offsets {sorted(committed.items())}, read {len(got)} records once each")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["group", "produce", "resume"])
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", default="kp-group")
    ap.add_argument("--group", default="kp-group")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--count", type=int, default=300, help="records per round")
    ap.add_argument("--prefix", default="r3", help="produce: value prefix")
    ap.add_argument("--expect", nargs="*", default=[], help="resume: PREFIX:COUNT of the records to read")
    a = ap.parse_args()
    {"group": phase_group, "produce": phase_produce, "resume": phase_resume}[a.phase](a)


if __name__ == "__main__":
    main()
