#!/usr/bin/env python3
"""kafka-python consumer groups against the broker, in phases the caller runs in order (the
Rust test kills and restarts the broker between them):

  group    create the topic; three members (threads) join and split its partitions; records
           produced with acks='all' are consumed exactly once and committed; one member
           leaves, the other two take over its partitions and consume what comes next; a
           member in a child process is killed (SIGKILL) as another joins, and the group
           drops it after its session timeout and goes on.
  produce  produce --count more records with acks='all' (prefix --prefix).
  resume   a fresh consumer in the same group starts at the committed offsets and reads
           exactly the records of --expect PREFIX:COUNT (nothing committed before, nothing twice).
  member   (used by `group`) one member until killed, printing its assignments.

Each phase exits non-zero with a message saying what did not match."""
import argparse
import subprocess
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
        max_poll_interval_ms=60000,  # the rebalance timeout
        request_timeout_ms=10000,
    )


def produce(a, prefix, count):
    """Sends `count` keyed records with acks='all'; returns {partition: records sent}."""
    # kafka-python 3 makes an acks='all' producer idempotent by default.
    producer = KafkaProducer(bootstrap_servers=a.bootstrap, acks="all", linger_ms=5)
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

    def __init__(self, a, name, log, lock, on_assign=None):
        super().__init__(daemon=True, name=name)
        self.a, self.log, self.lock, self.on_assign = a, log, lock, on_assign
        self.assignment = frozenset()
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
                        if self.on_assign:
                            self.on_assign(owned)
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


class ChildMember:
    """A member in a child process (`kp_group.py member`), so that it can be killed with
    SIGKILL: no LeaveGroup, no more heartbeats. It prints its assignments; we follow them."""

    def __init__(self, a, name):
        self.name, self.assignment, self.error, self.reads = name, frozenset(), None, 0
        args = [sys.executable, __file__, "member", "--bootstrap", a.bootstrap, "--topic", a.topic]
        args += ["--group", a.group, "--partitions", str(a.partitions)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self):
        for line in self.proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "assigned":
                self.assignment = frozenset(int(p) for p in rest.split(",") if p)
            elif kind == "read":
                self.reads += 1
            elif kind == "error":
                self.error = rest

    def kill9(self):
        self.proc.kill()
        self.proc.wait()


def phase_member(a):
    """Runs one member until killed, printing `assigned P,P,...` on every change."""
    lock = threading.Lock()
    log = []

    def on_assign(owned):
        print("assigned " + ",".join(map(str, sorted(owned))), flush=True)

    m = Member(a, "child", log, lock, on_assign)
    m.start()
    seen = 0
    while not m.closed.wait(0.05):
        with lock:
            for _ in log[seen:]:
                print("read", flush=True)
            seen = len(log)
    print(f"error {m.error}", flush=True)


def phase_group(a):
    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap, request_timeout_ms=10000)
    admin.create_topics({a.topic: {"num_partitions": a.partitions, "replication_factor": a.replication_factor}})
    all_parts = frozenset(range(a.partitions))
    tps = [TopicPartition(a.topic, p) for p in sorted(all_parts)]
    fresh = admin.list_group_offsets({a.group: tps})[a.group]
    if sorted(fresh) != tps or any(om.offset != -1 for om in fresh.values()):
        fail(f"OffsetFetch for a group that never committed: {fresh}, expected offset -1 for each partition")
    lock = threading.Lock()
    log, everyone = [], []
    produced, expected = {}, set()

    def member(name):
        m = Member(a, name, log, lock)
        everyone.append(m)
        m.start()
        return m

    def state():
        with lock:
            errs = [m.error for m in everyone if m.error]
            owned = {m.name: sorted(m.assignment) for m in everyone}
            return f"assignments {owned}, {len(log)} records read, errors {errs}"

    def split_among(ms):
        with lock:
            if any(m.error for m in everyone):
                fail(state())
            owned = [m.assignment for m in ms]
            return all(owned) and sum(len(o) for o in owned) == len(all_parts) and frozenset().union(*owned) == all_parts

    def owners(ms):
        with lock:
            return {m.name: m.assignment for m in ms}

    def round_of(prefix, readers):
        """Produces --count records; each must be read once, by one of `readers`, and committed."""
        for p, n in produce(a, prefix, a.count).items():
            produced[p] = produced.get(p, 0) + n
        expected.update(f"{prefix}-{i}" for i in range(a.count))
        wait_for(f"{len(expected)} records read", lambda: len(log) >= len(expected), 30, state)
        wait_for("offsets committed", lambda: committed_offsets(admin, a) == produced, 30,
                 lambda: f"committed {committed_offsets(admin, a)}, produced {produced}")
        with lock:
            values = [v for (_, _, _, v) in log]
            this = [(name, p) for (name, p, _, v) in log if v.startswith(prefix + "-")]
        if len(values) != len(expected) or set(values) != expected:
            dup = len(values) - len(set(values))
            fail(f"round {prefix}: read {len(values)} records, {dup} of them twice, expected {len(expected)}")
        names = {n for n, _ in this}
        if names != {m.name for m in readers}:
            fail(f"round {prefix}: read by {sorted(names)}, expected each of {sorted(m.name for m in readers)}")
        return this

    # 1. Three members split the partitions (each owns some, none shared, all owned); records
    #    produced with acks='all' are read once each, by the member owning their partition.
    a_, b_, c_ = member("member-a"), member("member-b"), member("member-c")
    wait_for("three members to split the partitions", lambda: split_among([a_, b_, c_]), 30, state)
    first = owners([a_, b_, c_])
    round_of("r1", [a_, b_, c_])

    # 2. One member leaves (LeaveGroup); the other two take over its partitions and read what
    #    comes next from where it committed.
    orphaned = c_.assignment
    c_.stop.set()
    wait_for("the leaving member to close", c_.closed.is_set, 30, state)
    wait_for("the two remaining members to own every partition", lambda: split_among([a_, b_]), 30, state)
    second = owners([a_, b_])
    if not any(second[m.name] > first[m.name] for m in (a_, b_)):
        fail(f"no remaining member gained partitions: before {first}, after {second}")
    r2 = round_of("r2", [a_, b_])
    if not any(p in orphaned for (_, p) in r2):
        fail(f"no round-2 record landed on the partitions {sorted(orphaned)} of the leaver: produce more")

    # 3. A member in a child process joins, then dies by SIGKILL (no LeaveGroup) just as a new
    #    member joins. The dead one must be dropped when its session times out (6 s), even in
    #    the middle of that rebalance, not only when the rebalance times out (60 s).
    child = ChildMember(a, "member-x")
    everyone.append(child)
    wait_for("a child-process member to get partitions", lambda: split_among([a_, b_, child]), 30, state)
    third = owners([a_, b_, child])
    child.kill9()
    killed_at = time.monotonic()
    d_ = member("member-d")
    wait_for("the group to drop the killed member and split among the rest",
             lambda: split_among([a_, b_, d_]), 20, state)
    took = time.monotonic() - killed_at
    if child.reads:
        fail(f"the child member read {child.reads} records, though all were committed before it joined")
    fourth = owners([a_, b_, d_])
    round_of("r3", [a_, b_, d_])

    for m in (a_, b_, d_):
        m.stop.set()
    for m in (a_, b_, d_):
        wait_for(f"{m.name} to close", m.closed.is_set, 30, state)
    if any(m.error for m in everyone):
        fail(state())
    admin.close()

    def show(o):
        return sorted(sorted(v) for v in o.values())

    print(
        f"kp_group: ok: {a.partitions} partitions split {show(first)}; after a LeaveGroup {show(second)}; "
        f"with a child member {show(third)}; {took:.1f} s after its SIGKILL {show(fourth)}; "
        f"{len(expected)} records read once each"
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
    ap.add_argument("phase", choices=["group", "produce", "resume", "member"])
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", default="kp-group")
    ap.add_argument("--group", default="kp-group")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--replication-factor", type=int, default=1, help="group: 3 on a three-node cluster")
    ap.add_argument("--count", type=int, default=300, help="records per round")
    ap.add_argument("--prefix", default="r3", help="produce: value prefix")
    ap.add_argument("--expect", nargs="*", default=[], help="resume: PREFIX:COUNT of the records to read")
    a = ap.parse_args()
    phases = {"group": phase_group, "produce": phase_produce, "resume": phase_resume, "member": phase_member}
    phases[a.phase](a)


if __name__ == "__main__":
    main()
