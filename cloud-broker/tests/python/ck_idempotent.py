#!/usr/bin/env python3
"""confluent-kafka (librdkafka 2.x) against the broker: two idempotent producers
(enable.idempotence=True, acks=all), one compressing with lz4 and one with zstd, then a consumer
that must read every record exactly once: the exact set of payloads and keys, headers intact,
dense offsets from 0 on every partition, no duplicates. Any delivery report with an error fails
the run. Exits non-zero with a message on the first mismatch."""
import argparse
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def fail(msg):
    print(f"ck_idempotent: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def produce(a, codec):
    """Sends --count records compressed with `codec`; returns {value: partition} from the reports."""
    errors, delivered = [], {}

    def report(err, msg):
        if err is not None:
            errors.append(f"{msg.value()!r}: {err}")
        else:
            delivered[msg.value().decode()] = (msg.partition(), msg.offset())

    p = Producer(
        {
            "bootstrap.servers": a.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": codec,
            "linger.ms": 20,
            "batch.num.messages": 500,
            "client.id": f"ck-{codec}",
        }
    )
    for i in range(a.count):
        value = f"{codec}-{i}-" + "x" * (i % 50)  # compressible, of varied length
        while True:
            try:
                p.produce(a.topic, key=f"device-{i % 31}", value=value, headers={"codec": codec}, on_delivery=report)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(30)
    if left:
        fail(f"{codec}: {left} records still undelivered after 30 s")
    if errors:
        fail(f"{codec}: {len(errors)} delivery reports with errors, e.g. {errors[:3]}")
    if len(delivered) != a.count:
        fail(f"{codec}: {len(delivered)} delivery reports for {a.count} records")
    return delivered


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", default="ck-idempotent")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--count", type=int, default=5000, help="records per producer")
    a = ap.parse_args()

    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    for topic, f in admin.create_topics([NewTopic(a.topic, a.partitions, 1)], operation_timeout=10).items():
        f.result()  # raises on error

    delivered = {}
    for codec in ("lz4", "zstd"):
        delivered.update(produce(a, codec))
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
            fail(f"timed out: read {len(got)} of {2 * a.count}, partitions at their end: {sorted(eof)}")
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
        f"ck_idempotent: ok: {2 * a.count} records (lz4 and zstd, idempotent) read exactly once "
        f"from {a.partitions} partitions {sorted((p, len(o)) for p, o in offsets.items())}"
    )


if __name__ == "__main__":
    main()
