#!/usr/bin/env python3
"""kafka-python with `api_version` pinned, as much code in the wild does (to skip probing). A
pinned client sends the request versions of that Kafka release without asking, so each must be
served: for every --api-versions entry, an admin client creates a topic with a config,
describes it and deletes it; an idempotent acks=all producer sends --count records; a group
member reads them all, commits, and leaves (LeaveGroup) — shown by a second member being
assigned at once instead of after the first one's session timeout. Exits non-zero with a
message on the first failure."""
import argparse
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

SESSION_TIMEOUT_MS = 10_000


def fail(msg):
    print(f"kp_pinned: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def consumer(a, pinned, topic, group):
    c = KafkaConsumer(
        bootstrap_servers=a.bootstrap,
        api_version=pinned,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=500,
        request_timeout_ms=20_000,
    )
    c.subscribe([topic])
    return c


def check(a, pinned):
    name = "pinned-" + "-".join(map(str, pinned))
    topic, group = name, name + "-group"
    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap, api_version=pinned, request_timeout_ms=5000)
    admin.create_topics({topic: {"num_partitions": 2, "replication_factor": 1, "configs": {"retention.ms": "60000"}}})
    got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])["topic"][topic]
    if got.get("retention.ms", {}).get("value") != "60000":
        fail(f"{pinned}: DescribeConfigs gave {got}")

    producer = KafkaProducer(bootstrap_servers=a.bootstrap, api_version=pinned, acks="all", enable_idempotence=True)
    futures = [producer.send(topic, key=b"k%d" % (i % 7), value=b"v%d" % i) for i in range(a.count)]
    producer.flush(timeout=20)
    for f in futures:
        f.get(timeout=20)
    producer.close()

    c = consumer(a, pinned, topic, group)
    values, deadline = [], time.monotonic() + 20
    while len(values) < a.count:
        if time.monotonic() > deadline:
            fail(f"{pinned}: read {len(values)} of {a.count} records in 20 s")
        for records in c.poll(timeout_ms=100).values():
            values += [r.value for r in records]
    if sorted(values) != sorted(b"v%d" % i for i in range(a.count)):
        fail(f"{pinned}: read {len(values)} records ({len(set(values))} distinct), expected {a.count}")
    c.commit()
    c.close()  # LeaveGroup at the pinned version

    # After a LeaveGroup the group is empty: the next member is assigned within the initial
    # rebalance delay. Had the leave failed, it would wait for the first one's session timeout.
    started = time.monotonic()
    c = consumer(a, pinned, topic, group)
    while not c.assignment():
        if time.monotonic() - started > SESSION_TIMEOUT_MS / 2000:
            fail(f"{pinned}: a new member waited {time.monotonic() - started:.1f} s: the LeaveGroup did not take")
        c.poll(timeout_ms=100)
    committed = {p: c.committed(TopicPartition(topic, p)) for p in range(2)}
    if sum(o or 0 for o in committed.values()) != a.count:
        fail(f"{pinned}: committed {committed}, expected {a.count} records in all")
    c.close()
    admin.delete_topics([topic])
    admin.close()
    return time.monotonic() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--api-versions", nargs="+", default=["2.0", "2.4", "2.8", "3.0"])
    ap.add_argument("--count", type=int, default=50)
    a = ap.parse_args()
    for v in a.api_versions:
        pinned = tuple(int(x) for x in v.split("."))
        took = check(a, pinned)
        print(f"kp_pinned: ok: api_version={pinned}: admin, idempotent producer, group; rejoin after leave {took:.1f} s")


if __name__ == "__main__":
    main()
