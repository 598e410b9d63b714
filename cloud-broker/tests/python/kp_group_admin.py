#!/usr/bin/env python3
"""kafka-python's admin client on consumer groups, in two phases (the Rust test kills and
restarts the broker between them):

  admin    two KafkaConsumer members form a group; list_groups shows it Stable (and the
           states filter keeps or drops it); describe_groups shows the state, protocol, each
           member's client id, host, subscription and assignment; delete_groups refuses it
           (NON_EMPTY_GROUP), and so does a simple offset commit (alter_group_offsets:
           UNKNOWN_MEMBER_ID). The members leave: Empty; the simple commit is accepted;
           delete_groups deletes it and its offsets (then Dead, GROUP_ID_NOT_FOUND). A group
           known only by offsets committed with alter_group_offsets is listed and described
           as Empty, and can be deleted too.
  restart  after a kill -9: the deleted groups' offsets are still gone; the group kept is
           still listed as Empty with its offset.

Exits non-zero with a message on the first mismatch."""
import argparse
import sys
import threading
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import UnknownMemberIdError
from kafka.structs import OffsetAndMetadata


def fail(msg):
    print(f"kp_group_admin: FAIL: {msg}", file=sys.stderr)
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


class Member(threading.Thread):
    """A consumer polling (and committing) until told to stop; close() sends LeaveGroup."""

    def __init__(self, a, client_id):
        super().__init__(daemon=True, name=client_id)
        self.a, self.client_id = a, client_id
        self.stop, self.closed, self.error = threading.Event(), threading.Event(), None

    def run(self):
        try:
            c = KafkaConsumer(bootstrap_servers=self.a.bootstrap, group_id=self.a.group, client_id=self.client_id,
                              enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=10_000,
                              heartbeat_interval_ms=500, request_timeout_ms=20_000)
            c.subscribe([self.a.topic])
            while not self.stop.is_set():
                if c.poll(timeout_ms=100):
                    c.commit()
            c.close()
        except Exception as e:  # reported by the main thread
            self.error = f"{self.client_id}: {type(e).__name__}: {e}"
        finally:
            self.closed.set()


def listed(admin, group, **kw):
    return {g["group_id"]: g for g in admin.list_groups(**kw)}.get(group)


def phase_admin(a):
    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap, client_id="kp-group-admin", request_timeout_ms=10_000)
    admin.create_topics({a.topic: {"num_partitions": a.partitions, "replication_factor": 1}})
    producer = KafkaProducer(bootstrap_servers=a.bootstrap, acks="all")
    for i in range(30):
        producer.send(a.topic, key=b"k%d" % i, value=b"v%d" % i)
    producer.flush(timeout=30)
    producer.close()
    tps = [TopicPartition(a.topic, p) for p in range(a.partitions)]

    members = [Member(a, "kpa-1"), Member(a, "kpa-2")]
    for m in members:
        m.start()

    def describe(group):
        return admin.describe_groups([group])[group]

    def errors():
        return [m.error for m in members if m.error]

    def stable_with_both():
        if errors():
            fail(f"member errors: {errors()}")
        d = describe(a.group)
        ok = (d["group_state"] == "Stable" and len(d["members"]) == 2
              and all(m["member_assignment"] for m in d["members"]))
        return d if ok else None

    d = wait_for("both members in a Stable group", stable_with_both, 30, lambda: describe(a.group))
    if d["error"] is not None or d["protocol_type"] != "consumer" or d["protocol_data"] != "range":
        fail(f"describe_groups: {d}")
    if sorted(m["client_id"] for m in d["members"]) != ["kpa-1", "kpa-2"]:
        fail(f"member client ids: {d['members']}")
    if any(m["client_host"] != "/127.0.0.1" for m in d["members"]):
        fail(f"member hosts: {[m['client_host'] for m in d['members']]}")
    for m in d["members"]:
        if m["member_metadata"]["topics"] != [a.topic]:
            fail(f"member subscription: {m['member_metadata']}")
    owned = sorted(p for m in d["members"] for t in m["member_assignment"]["assigned_partitions"]
                   for p in t["partitions"] if t["topic"] == a.topic)
    if owned != list(range(a.partitions)):
        fail(f"assignments cover {owned}, expected every partition: {d['members']}")
    if not {"READ", "DESCRIBE", "DELETE"} <= set(d["authorized_operations"] or []):
        fail(f"authorized operations {d['authorized_operations']}")

    g = listed(admin, a.group)
    if g is None or g["group_state"] != "Stable" or g["protocol_type"] != "consumer":
        fail(f"list_groups: {g}")
    if listed(admin, a.group, states_filter=["Stable"]) is None:
        fail("list_groups with states ['Stable'] left the Stable group out")
    if listed(admin, a.group, states_filter=["Empty"]) is not None:
        fail("list_groups with states ['Empty'] listed a Stable group")

    if admin.delete_groups([a.group]) != {a.group: "NonEmptyGroupError"}:
        fail("delete_groups of a group with members did not answer NON_EMPTY_GROUP")
    simple = admin.alter_group_offsets(a.group, {tp: OffsetAndMetadata(0, "", None) for tp in tps})
    if set(simple.values()) != {UnknownMemberIdError}:
        fail(f"a simple commit to a group with members: {simple}, expected UNKNOWN_MEMBER_ID")

    for m in members:
        m.stop.set()
    for m in members:
        wait_for(f"{m.client_id} to close", m.closed.is_set, 30)
    if errors():
        fail(f"member errors: {errors()}")
    d = wait_for("the group to be Empty", lambda: (lambda d: d if d["group_state"] == "Empty" else None)(
        describe(a.group)), 30, lambda: describe(a.group))
    if d["members"] or d["protocol_type"] != "consumer":
        fail(f"an Empty group: {d}")
    if listed(admin, a.group, states_filter=["empty"]) is None:
        fail("list_groups with states ['empty'] left the Empty group out")

    simple = admin.alter_group_offsets(a.group, {tp: OffsetAndMetadata(1, "", None) for tp in tps})
    if any(e.errno != 0 for e in simple.values()):
        fail(f"a simple commit to an Empty group: {simple}")
    if admin.delete_groups([a.group]) != {a.group: "OK"}:
        fail("delete_groups of an Empty group failed")
    if admin.list_group_offsets([a.group])[a.group]:
        fail("offsets of a deleted group are still there")
    if describe(a.group)["group_state"] != "Dead" or listed(admin, a.group) is not None:
        fail(f"a deleted group: {describe(a.group)}")
    if admin.delete_groups([a.group]) != {a.group: "GroupIdNotFoundError"}:
        fail("delete_groups of a deleted group did not answer GROUP_ID_NOT_FOUND")

    # Groups known only by their committed offsets (no member ever joined).
    for group in (a.group + "-kept", a.group + "-gone"):
        res = admin.alter_group_offsets(group, {tps[0]: OffsetAndMetadata(5, "by hand", None)})
        if any(e.errno != 0 for e in res.values()):
            fail(f"a simple commit for {group}: {res}")
        d = describe(group)
        if (d["group_state"], d["protocol_type"], d["members"]) != ("Empty", "", []):
            fail(f"a group known by its offsets: {d}")
        if (listed(admin, group, states_filter=["Empty"]) or {}).get("group_state") != "Empty":
            fail(f"list_groups: {group} not listed as Empty")
    if admin.delete_groups([a.group + "-gone"]) != {a.group + "-gone": "OK"}:
        fail("delete_groups of a group known by its offsets failed")
    admin.close()
    print(f"kp_group_admin: ok: listed, described (Stable, then Empty), refused and then deleted {a.group}")


def phase_restart(a):
    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap, request_timeout_ms=10_000)
    for group in (a.group, a.group + "-gone"):
        if admin.list_group_offsets([group])[group]:
            fail(f"offsets of the deleted group {group} came back after the restart")
        if listed(admin, group) is not None:
            fail(f"the deleted group {group} is listed after the restart")
    kept = a.group + "-kept"
    offsets = admin.list_group_offsets([kept])[kept]
    if {tp.partition: om.offset for tp, om in offsets.items()} != {0: 5}:
        fail(f"offsets of {kept} after the restart: {offsets}")
    if (listed(admin, kept) or {}).get("group_state") != "Empty":
        fail(f"{kept} is not listed as Empty after the restart")
    admin.close()
    print("kp_group_admin: ok: after the restart the deleted groups' offsets are still gone, the kept one's are there")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["admin", "restart"])
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", default="kp-group-admin")
    ap.add_argument("--group", default="kp-group-admin")
    ap.add_argument("--partitions", type=int, default=4)
    a = ap.parse_args()
    {"admin": phase_admin, "restart": phase_restart}[a.phase](a)


if __name__ == "__main__":
    main()
