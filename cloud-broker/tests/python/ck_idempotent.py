#!/usr/bin/env python3
"""confluent-kafka (librdkafka 2.x) against the broker: two idempotent producers
(enable.idempotence=True, acks=all), one compressing with lz4 and one with zstd, then a consumer
that must read every record exactly once: the exact set of payloads and keys, headers intact,
dense offsets from 0 on every partition, no duplicates. Any delivery report with an error fails
the run. With --restart-midway the broker is killed and restarted (by the caller) while the
zstd producer has records in flight: its retries must not duplicate anything. Exits non-zero with a message on the first mismatch."""
import argparse
import logging
import queue
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


class ClusterIdWatch(logging.Handler):
    """librdkafka's log lines, kept when they say the cluster id changed (a broker that forgot
    its identity across a restart); the rest goes to stderr as librdkafka would print it."""

    def __init__(self):
        super().__init__()
        self.changes = []

    def emit(self, record):
        line = record.getMessage()
        if "ClusterId" in line:
            self.changes.append(line)
        print(line, file=sys.stderr)


WATCH = ClusterIdWatch()
LOG = logging.getLogger("librdkafka")
LOG.addHandler(WATCH)
LOG.setLevel(logging.INFO)


def fail(msg):
    print(f"ck_idempotent: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def produce(a, codec, restart_midway=False):
    """Sends --count records compressed with `codec`; returns {value: (partition, offset)} from
    the delivery reports. With `restart_midway`, after half of them: prints `kill-now` and goes
    on producing at full speed until `killed` comes on stdin (so requests are in flight when
    the broker dies), then `start-now` and on until `restarted` (records queue up while it is
    down), then sends the other half."""
    errors, delivered = [], {}

    def report(err, msg):
        if err is not None:
            errors.append(f"{msg.value()!r}: {err}")
        else:
            delivered[msg.value().decode()] = (msg.partition(), msg.offset())

    p = Producer(
        {
            "logger": LOG,
            "bootstrap.servers": a.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": codec,
            "linger.ms": 5,
            "batch.num.messages": 500,
            "client.id": f"ck-{codec}",
        }
    )
    sent = 0

    def send():
        nonlocal sent
        value = f"{codec}-{sent}-" + "x" * (sent % 50)  # compressible, of varied length
        while True:
            try:
                p.produce(a.topic, key=f"device-{sent % 31}", value=value, headers={"codec": codec}, on_delivery=report)
                break
            except BufferError:  # the local queue is full: serve delivery reports, retry
                p.poll(0.01)
        sent += 1
        p.poll(0)

    def send_until(line):
        print(line, flush=True)
        deadline = time.monotonic() + 30
        while stdin.empty():
            if time.monotonic() > deadline:
                fail(f"printed {line} but nothing came on stdin within 30 s")
            send()
        stdin.get()

    for _ in range(a.count // 2 if restart_midway else a.count):
        send()
    if restart_midway:
        stdin = queue.Queue()
        threading.Thread(target=lambda: [stdin.put(line) for line in sys.stdin], daemon=True).start()
        send_until("kill-now")
        p.poll(0)  # every delivery report that came before the kill
        pending = sent - len(delivered)
        if pending == 0:
            fail("every record was delivered before the broker was killed: nothing crossed the restart")
        send_until("start-now")
        for _ in range(a.count - a.count // 2):
            send()
    left = p.flush(60)
    if left:
        fail(f"{codec}: {left} records still undelivered after 60 s")
    if errors:
        fail(f"{codec}: {len(errors)} delivery reports with errors, e.g. {errors[:3]}")
    if len(delivered) != sent:
        fail(f"{codec}: {len(delivered)} delivery reports for {sent} records")
    p.list_topics(timeout=10)  # a Metadata response after the restart (it carries the cluster id)
    p.poll(0.1)  # serves librdkafka's log lines
    if WATCH.changes:
        fail(f"the cluster id changed: {WATCH.changes[0]}")
    if restart_midway:
        print(f"ck_idempotent: {codec}: {pending} of {sent} records were unacknowledged when the broker was killed")
    return delivered


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", default="ck-idempotent")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--replication-factor", type=int, default=1, help="3 on a three-node cluster")
    ap.add_argument("--count", type=int, default=5000, help="records per producer")
    ap.add_argument(
        "--restart-midway", action="store_true",
        help="halfway through the zstd producer ask the caller (stdin/stdout) to kill and restart the broker",
    )
    a = ap.parse_args()

    admin = AdminClient({"bootstrap.servers": a.bootstrap, "logger": LOG})
    # A cluster elects its controller while it starts: CreateTopics is retried for up to 60 s.
    deadline = time.monotonic() + 60
    while True:
        try:
            for topic, f in admin.create_topics(
                [NewTopic(a.topic, a.partitions, a.replication_factor)], operation_timeout=10
            ).items():
                f.result()  # raises on error
            break
        except Exception as e:  # noqa: BLE001 - any refusal is retried until the deadline
            if "already exists" in str(e).lower() or "TOPIC_ALREADY_EXISTS" in str(e):
                break
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)

    delivered = {}
    for codec in ("lz4", "zstd"):
        delivered.update(produce(a, codec, a.restart_midway and codec == "zstd"))
    offsets = {}
    for value, (part, off) in delivered.items():
        offsets.setdefault(part, []).append(off)
    for part, offs in offsets.items():
        if sorted(offs) != list(range(len(offs))):
            fail(f"partition {part}: delivery-report offsets are not 0..{len(offs) - 1} (gaps or repeats)")

    c = Consumer(
        {
            "bootstrap.servers": a.bootstrap,
            "group.id": "ck-idempotent",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    c.subscribe([a.topic])
    got, eof = [], set()
    deadline = time.monotonic() + 30
    # Until every partition reported its end (EOF comes after the last record of a partition).
    while len(eof) < a.partitions:
        if time.monotonic() > deadline:
            fail(f"timed out: read {len(got)} of {len(delivered)}, partitions at their end: {sorted(eof)}")
        msg = c.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                eof.add(msg.partition())
                continue
            fail(f"consumer error: {msg.error()}")
        eof.discard(msg.partition())
        got.append(msg)
    c.close()

    values = [m.value().decode() for m in got]
    if len(values) != len(set(values)):
        fail(f"read {len(values) - len(set(values))} records twice")
    if set(values) != set(delivered):
        missing = set(delivered) - set(values)
        extra = set(values) - set(delivered)
        fail(f"read {len(values)} records, expected {len(delivered)}: {len(missing)} missing, {len(extra)} unexpected")
    for m in got:
        v = m.value().decode()
        codec, i = v.split("-")[0], int(v.split("-")[1])
        if m.key() != f"device-{i % 31}".encode() or m.headers() != [("codec", codec.encode())]:
            fail(f"record {v}: key {m.key()!r}, headers {m.headers()!r}")
        if (m.partition(), m.offset()) != delivered[v]:
            fail(f"record {v} read at {(m.partition(), m.offset())}, delivered at {delivered[v]}")
    print(
        f"ck_idempotent: ok: {len(delivered)} records (lz4 and zstd, idempotent) read exactly once "
        f"from {a.partitions} partitions {sorted((p, len(o)) for p, o in offsets.items())}"
    )


if __name__ == "__main__":
    main()
