#!/usr/bin/env python3
"""confluent-kafka's (librdkafka's) AdminClient on consumer groups: two Consumers form a group;
list_consumer_groups shows it Stable (and its states filter keeps or drops it);
describe_consumer_groups gives the state, the assignor, each member's client id, host and
assignment; delete_consumer_groups refuses it (NON_EMPTY_GROUP). The consumers close: the
group is Empty, deleted with its offsets, then described as Dead and GROUP_ID_NOT_FOUND on a
second delete. Exits non-zero with a message on the first mismatch."""
import argparse
import sys
import time

from confluent_kafka import (
    Consumer, ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaError, KafkaException, Producer, TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic


def fail(msg):
    print(f"ck_group_admin: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def wait_for(what, cond, timeout_s, state=None):
    """Polls `cond` until it returns a true value (returned); fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout_s} s waiting for {what}" + (f"; {state()}" if state else ""))
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", default="ck-group-admin")
    ap.add_argument("--group", default="ck-group-admin")
    ap.add_argument("--partitions", type=int, default=4)
    a = ap.parse_args()

    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    for f in admin.create_topics([NewTopic(a.topic, a.partitions, 1)]).values():
        f.result(30)
    p = Producer({"bootstrap.servers": a.bootstrap, "acks": "all"})
    for i in range(40):
        p.produce(a.topic, key=b"k%d" % i, value=b"v%d" % i)
    if p.flush(30):
        fail("records left unsent")

    consumers = [
        Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group, "client.id": cid,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "session.timeout.ms": 10_000, "heartbeat.interval.ms": 500})
        for cid in ("ck-1", "ck-2")
    ]
    for c in consumers:
        c.subscribe([a.topic])

    read = []

    def poll_all():
        for c in consumers:
            msg = c.poll(0.05)
            if msg is not None and msg.error() is None:
                read.append(msg.value())
                c.commit(message=msg, asynchronous=False)

    def describe(group):
        return admin.describe_consumer_groups([group], include_authorized_operations=True)[group].result(30)

    def listed(group, states=None):
        kw = {"states": states} if states is not None else {}
        res = admin.list_consumer_groups(request_timeout=30, **kw).result(30)
        if res.errors:
            fail(f"list_consumer_groups errors: {res.errors}")
        return {g.group_id: g for g in res.valid}.get(group)

    def stable_with_both():
        poll_all()
        d = describe(a.group)
        if d.state == ConsumerGroupState.STABLE and len(d.members) == 2 and all(
                m.assignment.topic_partitions for m in d.members):
            return d
        return None

    d = wait_for("both consumers in a Stable group", stable_with_both, 30, lambda: describe(a.group))
    if d.partition_assignor != "range" or d.is_simple_consumer_group:
        fail(f"describe_consumer_groups: assignor {d.partition_assignor!r}, simple {d.is_simple_consumer_group}")
    if sorted(m.client_id for m in d.members) != ["ck-1", "ck-2"]:
        fail(f"member client ids: {[m.client_id for m in d.members]}")
    if any(m.host != "/127.0.0.1" for m in d.members):
        fail(f"member hosts: {[m.host for m in d.members]}")
    owned = sorted(tp.partition for m in d.members for tp in m.assignment.topic_partitions if tp.topic == a.topic)
    if owned != list(range(a.partitions)):
        fail(f"assignments cover {owned}, expected every partition")
    if d.coordinator is None or d.coordinator.port != int(a.bootstrap.rsplit(":", 1)[1]):
        fail(f"coordinator {d.coordinator}")

    wait_for("the 40 records read and committed", lambda: poll_all() or len(read) >= 40, 30,
             lambda: f"{len(read)} read")
    g = listed(a.group)
    if g is None or g.state != ConsumerGroupState.STABLE or g.is_simple_consumer_group:
        fail(f"list_consumer_groups: {g}")
    if listed(a.group, {ConsumerGroupState.STABLE}) is None:
        fail("list_consumer_groups with states {STABLE} left the Stable group out")
    if listed(a.group, {ConsumerGroupState.EMPTY}) is not None:
        fail("list_consumer_groups with states {EMPTY} listed a Stable group")

    def delete(group):
        """The error code of delete_consumer_groups for `group` (0: deleted)."""
        try:
            admin.delete_consumer_groups([group], request_timeout=30)[group].result(30)
            return 0
        except KafkaException as e:
            return e.args[0].code()

    if delete(a.group) != KafkaError.NON_EMPTY_GROUP:
        fail("delete_consumer_groups of a group with members did not answer NON_EMPTY_GROUP")

    for c in consumers:
        c.close()  # LeaveGroup
    d = wait_for("the group to be Empty",
                 lambda: (lambda d: d if d.state == ConsumerGroupState.EMPTY else None)(describe(a.group)),
                 30, lambda: describe(a.group))
    if d.members:
        fail(f"an Empty group with members: {d.members}")
    if listed(a.group, {ConsumerGroupState.EMPTY}) is None:
        fail("list_consumer_groups with states {EMPTY} left the Empty group out")

    committed = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(a.group)])[a.group].result(30)
    if not any(tp.offset > 0 for tp in committed.topic_partitions):
        fail(f"no offsets committed by the consumers: {committed.topic_partitions}")
    code = delete(a.group)
    if code != 0:
        fail(f"delete_consumer_groups of an Empty group: error {code}")
    gone = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(
            a.group, [TopicPartition(a.topic, p) for p in range(a.partitions)])])[a.group].result(30)
    if any(tp.offset >= 0 for tp in gone.topic_partitions):
        fail(f"offsets of a deleted group: {gone.topic_partitions}")
    if describe(a.group).state != ConsumerGroupState.DEAD or listed(a.group) is not None:
        fail(f"a deleted group: {describe(a.group)}")
    if delete(a.group) != KafkaError.GROUP_ID_NOT_FOUND:
        fail("delete_consumer_groups of a deleted group did not answer GROUP_ID_NOT_FOUND")
    print(f"ck_group_admin: ok: listed, described (Stable, then Empty), refused and then deleted {a.group}")


if __name__ == "__main__":
    main()
