#!/usr/bin/env python3
"""kafka-python's admin client against the broker: CreateTopics with partitions and a
`retention.ms` config (and the topic id in the answer), DescribeConfigs showing it, a second
create refused, DeleteTopics by name and by topic id, and the topics gone from Metadata. Exits non-zero with a message on the first mismatch."""
import argparse
import sys
import time
import uuid

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import TopicAlreadyExistsError, UnknownTopicIdError


def fail(msg):
    print(f"kp_admin: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", default="kp-admin")
    ap.add_argument("--partitions", type=int, default=5)
    ap.add_argument("--retention-ms", type=int, default=3_600_000)
    a = ap.parse_args()

    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap, client_id="kp-admin", request_timeout_ms=10_000)
    if a.topic in admin.list_topics():
        fail(f"topic {a.topic} exists before it was created")
    # raise_errors (the default) turns a topic error into an exception.
    created = admin.create_topics(
        {a.topic: {"num_partitions": a.partitions, "replication_factor": 1,
                   "configs": {"retention.ms": str(a.retention_ms)}}}
    )["topics"][0]
    if created.get("num_partitions") != a.partitions:
        fail(f"CreateTopics answered {created}")

    meta = admin.describe_topics([a.topic])
    if len(meta) != 1 or meta[0]["error_code"] != 0:
        fail(f"describe_topics: {meta}")
    if str(created.get("topic_id")) != str(meta[0]["topic_id"]) or meta[0]["topic_id"] is None:
        fail(f"topic id from CreateTopics {created.get('topic_id')}, from Metadata {meta[0]['topic_id']}")
    parts = sorted(p["partition_index"] for p in meta[0]["partitions"])
    if parts != list(range(a.partitions)):
        fail(f"partitions {parts}, expected 0..{a.partitions - 1}")

    topic = ConfigResource(ConfigResourceType.TOPIC, a.topic)
    # The default filter keeps what differs from the defaults: only the config we set.
    got = admin.describe_configs([topic])["topic"][a.topic]
    if set(got) != {"retention.ms"} or got["retention.ms"]["value"] != str(a.retention_ms):
        fail(f"DescribeConfigs (modified only) gave {got}")
    if got["retention.ms"]["config_source"] != "DYNAMIC_TOPIC_CONFIG":
        fail(f"retention.ms source {got['retention.ms']['config_source']}")
    got = admin.describe_configs([topic], config_filter="all")["topic"][a.topic]
    want = {"retention.ms": str(a.retention_ms), "retention.bytes": "-1", "cleanup.policy": "delete"}
    if {k: v["value"] for k, v in got.items() if k in want} != want:
        fail(f"DescribeConfigs (all) gave {got}")
    if got["cleanup.policy"]["config_source"] != "DEFAULT_CONFIG":
        fail(f"cleanup.policy (not set) has source {got['cleanup.policy']['config_source']}")
    # Only the asked-for key when one is named.
    one = ConfigResource(ConfigResourceType.TOPIC, a.topic, configs={"cleanup.policy": None})
    got = admin.describe_configs([one], config_filter="all")["topic"][a.topic]
    if set(got) != {"cleanup.policy"}:
        fail(f"DescribeConfigs for cleanup.policy alone gave {got}")

    try:
        admin.create_topics({a.topic: {"num_partitions": 1, "replication_factor": 1}})
    except TopicAlreadyExistsError:
        pass
    else:
        fail("a second CreateTopics for the same name succeeded")

    admin.delete_topics([a.topic])
    deadline = time.monotonic() + 10
    while a.topic in admin.list_topics():
        if time.monotonic() > deadline:
            fail("topic still listed 10 s after DeleteTopics")
        time.sleep(0.05)
    # By topic id (DeleteTopics v6): a known one goes, an unknown one is an error.
    other = admin.create_topics({a.topic + "-by-id": {"num_partitions": 1, "replication_factor": 1}})["topics"][0]
    admin.delete_topics([uuid.UUID(str(other["topic_id"]))])
    if a.topic + "-by-id" in admin.list_topics():
        fail("topic still listed after DeleteTopics by its id")
    try:
        admin.delete_topics([uuid.uuid4()])
    except UnknownTopicIdError:
        pass
    else:
        fail("DeleteTopics of an unknown topic id succeeded")
    admin.close()
    print(f"kp_admin: ok: created {a.topic} with {a.partitions} partitions and retention.ms={a.retention_ms}, deleted it")


if __name__ == "__main__":
    main()
