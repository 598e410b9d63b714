#!/usr/bin/env python3
"""Kafka transactions through real clients (`--client ck`: confluent-kafka, i.e. librdkafka;
`--client kp`: kafka-python):

- an aborted transaction's records are invisible to a read_committed consumer (which also
  stops at the last stable offset while a transaction is open) and visible to a
  read_uncommitted one; a committed transaction's are visible to both;
- a second producer with the same transactional id fences the first;
- (ck) an exactly-once read-process-write loop: a consumer group reads `<tag>-in`, and each
  batch's output and the group's offsets go in one transaction to `<tag>-out`. With
  `--kill-at K` the script prints `kill-now` in the middle of the transaction after K
  records (its output written, its offsets and commit not yet) and waits for a line on
  stdin (the harness kills the transaction coordinator's node meanwhile); failed
  transactions are aborted and the input re-read from the committed offsets. At the end `<tag>-out` read
  with read_committed holds every input record exactly once.

Exits non-zero with a message on the first mismatch."""
import argparse
import faulthandler
import os
import signal
import sys
import time

# `kill -USR1 <pid>` prints where every thread is (to look into a stall).
faulthandler.register(signal.SIGUSR1)


def fail(msg):
    print(f"txn_eos: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def wait_for(what, cond, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def ck_read(bootstrap, topic, partitions, committed, want=None, timeout_s=30):
    """Every value in `topic` (all partitions, from the beginning): read_committed or not.
    Reads until `want` values arrived, or until the end offsets when `want` is None."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
                  "enable.auto.commit": False,
                  "isolation.level": "read_committed" if committed else "read_uncommitted"})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    ends = {}
    for p in range(partitions):
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        ends[p] = hi
    got = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = c.poll(0.3)
        if m is not None and m.error() is None:
            got.append(m.value().decode())
        if want is not None and len(got) >= want:
            break
        if want is None and m is None:
            pos = c.position([TopicPartition(topic, p) for p in range(partitions)])
            # read_committed stops at the last stable offset, not the high watermark: an
            # idle poll with nothing more to read ends it.
            if committed or all(tp.offset >= ends[tp.partition] for tp in pos):
                break
    c.close()
    return got


def ck(a):
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    t_in, t_out, t_vis = f"{a.tag}-in", f"{a.tag}-out", f"{a.tag}-vis"
    for f in admin.create_topics([NewTopic(t, 3, -1) for t in (t_in, t_out, t_vis)]).values():
        f.result(30)

    def leaders_ready():
        md = admin.list_topics(timeout=10).topics
        return all(t in md and all(p.leader >= 0 for p in md[t].partitions.values()) and len(md[t].partitions) == 3
                   for t in (t_in, t_out, t_vis))
    wait_for("the topics' leaders", leaders_ready)

    # Visibility: abort, then commit.
    p = Producer({"bootstrap.servers": a.bootstrap, "transactional.id": f"{a.tag}-vis-producer",
                  "transaction.timeout.ms": 60_000})
    t0 = time.monotonic()
    p.init_transactions(30)
    print(f"init_transactions took {time.monotonic() - t0:.2f} s")
    p.begin_transaction()
    for i in range(10):
        p.produce(t_vis, value=f"aborted-{i}".encode(), partition=i % 3)
    p.flush(30)
    # While it is open, read_committed sees nothing of it.
    if ck_read(a.bootstrap, t_vis, 3, True, timeout_s=3):
        fail("read_committed saw records of an open transaction")
    p.abort_transaction(30)
    p.begin_transaction()
    for i in range(10):
        p.produce(t_vis, value=f"committed-{i}".encode(), partition=i % 3)
    p.commit_transaction(30)
    seen = ck_read(a.bootstrap, t_vis, 3, True, want=10)
    if sorted(seen) != sorted(f"committed-{i}" for i in range(10)):
        fail(f"read_committed read {sorted(seen)}")
    raw = ck_read(a.bootstrap, t_vis, 3, False, want=20)
    if len(raw) != 20 or sum(v.startswith("aborted-") for v in raw) != 10:
        fail(f"read_uncommitted read {sorted(raw)}")

    # Fencing: a new instance with the same transactional id.
    p2 = Producer({"bootstrap.servers": a.bootstrap, "transactional.id": f"{a.tag}-vis-producer"})
    p2.init_transactions(30)
    try:
        p.begin_transaction()
        p.produce(t_vis, value=b"zombie", partition=0)
        p.commit_transaction(10)
        fail("a fenced producer committed")
    except KafkaException as e:
        if not e.args[0].fatal():
            fail(f"the fenced producer's error is not fatal: {e}")
    p2.begin_transaction()
    p2.produce(t_vis, value=b"after-fence", partition=0)
    p2.commit_transaction(30)
    print("visibility and fencing: ok")

    # The exactly-once loop.
    prod = Producer({"bootstrap.servers": a.bootstrap, "acks": "all"})
    for i in range(a.count):
        prod.produce(t_in, value=f"in-{i}".encode(), partition=i % 3)
    if prod.flush(30):
        fail("input records left unsent")
    group = f"{a.tag}-eos"

    def clients():
        """The loop's consumer and transactional producer (a new instance of each fences and
        replaces the one before: its open transaction is aborted)."""
        consumer = Consumer({"bootstrap.servers": a.bootstrap, "group.id": group, "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                             "session.timeout.ms": 10_000, "heartbeat.interval.ms": 500})
        consumer.subscribe([t_in])
        conf = {"bootstrap.servers": a.bootstrap, "transactional.id": a.txn_id,
                "transaction.timeout.ms": 30_000, "message.timeout.ms": 30_000}
        if os.environ.get("RDKAFKA_DEBUG"):
            # librdkafka's own account of the loop (e.g. eos,protocol), to look into a stall.
            conf["debug"] = os.environ["RDKAFKA_DEBUG"]
        txp = Producer(conf)
        txp.init_transactions(60)
        return consumer, txp

    consumer, txp = clients()
    processed = 0
    killed = False
    aborted = 0
    deadline = time.monotonic() + 150
    while processed < a.count:
        if time.monotonic() > deadline:
            fail(f"the loop processed {processed} of {a.count} in 150 s ({aborted} transactions aborted)")
        msgs = consumer.consume(num_messages=50, timeout=0.5)
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            continue
        try:
            txp.begin_transaction()
            for m in msgs:
                txp.produce(t_out, value=m.value().replace(b"in-", b"out-"), partition=m.partition())
            if a.kill_at and not killed and processed >= a.kill_at:
                # Mid-transaction: its records are written, its offsets and end are not.
                txp.flush(30)
                print("kill-now", flush=True)
                if sys.stdin.readline().strip() != "killed":
                    fail("the harness did not kill")
                killed = True
                if a.new_clients_after_kill:
                    # The application died too: new instances take over (librdkafka's
                    # send_offsets_to_transaction may wait forever for a group coordinator
                    # that restarted under it: librdkafka issues 5456 and 5511).
                    consumer, txp = clients()
                    processed = sum(max(tp.offset, 0) for tp in consumer.committed(
                        [TopicPartition(t_in, q) for q in range(3)], timeout=30))
                    continue
            txp.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                            consumer.consumer_group_metadata(), 30)
            txp.commit_transaction(60)
            processed += len(msgs)
        except KafkaException as e:
            err = e.args[0]
            if err.fatal():
                fail(f"fatal transaction error: {err}")
            aborted += 1
            print(f"transaction failed ({err}); aborting and rewinding", flush=True)
            for _ in range(30):
                try:
                    txp.abort_transaction(30)
                    break
                except KafkaException as e2:
                    if e2.args[0].fatal():
                        fail(f"fatal error aborting: {e2}")
                    time.sleep(0.5)
            # Back to the committed offsets: what was not committed is read again.
            committed = consumer.committed(consumer.assignment(), timeout=30)
            for tp in committed:
                consumer.seek(tp if tp.offset >= 0 else TopicPartition(tp.topic, tp.partition, 0))
            processed = sum(max(tp.offset, 0) for tp in consumer.committed(
                [TopicPartition(t_in, q) for q in range(3)], timeout=30))
    consumer.close()
    out = ck_read(a.bootstrap, t_out, 3, True, want=a.count, timeout_s=60)
    want = sorted(f"out-{i}" for i in range(a.count))
    if sorted(out) != want:
        dup = len(out) - len(set(out))
        missing = len(set(want) - set(out))
        fail(f"read_committed output: {len(out)} records, {dup} duplicated, {missing} missing")
    print(f"exactly once: {a.count} records, {aborted} transactions aborted on the way")


def kp(a):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap, request_timeout_ms=20_000)
    topic = f"{a.tag}-vis"
    admin.create_topics({topic: {"num_partitions": 1, "replication_factor": -1}})

    def ready():
        meta = admin.describe_topics([topic])
        return meta and meta[0]["error_code"] == 0 and all(p["leader_id"] >= 0 for p in meta[0]["partitions"])
    wait_for("the topic's leader", ready)
    p = KafkaProducer(bootstrap_servers=a.bootstrap, transactional_id=f"{a.tag}-producer")
    p.init_transactions()
    p.begin_transaction()
    for i in range(5):
        p.send(topic, value=f"aborted-{i}".encode(), partition=0)
    p.flush()
    p.abort_transaction()
    p.begin_transaction()
    for i in range(5):
        p.send(topic, value=f"committed-{i}".encode(), partition=0)
    p.commit_transaction()
    p.close()

    def read(level):
        c = KafkaConsumer(bootstrap_servers=a.bootstrap, isolation_level=level, enable_auto_commit=False,
                          auto_offset_reset="earliest", consumer_timeout_ms=3000)
        c.assign([TopicPartition(topic, 0)])
        c.seek_to_beginning()
        got = [m.value.decode() for m in c]
        c.close()
        return got
    committed = read("read_committed")
    if committed != [f"committed-{i}" for i in range(5)]:
        fail(f"kafka-python read_committed read {committed}")
    raw = read("read_uncommitted")
    if sorted(raw) != sorted([f"aborted-{i}" for i in range(5)] + [f"committed-{i}" for i in range(5)]):
        fail(f"kafka-python read_uncommitted read {raw}")
    # The admin view of it: listed (on whichever broker coordinates it) and described.
    listed = admin.list_transactions()  # broker id -> listings
    mine = [t for ts in listed.values() for t in ts if t.transactional_id == f"{a.tag}-producer"]
    name = lambda state: getattr(state, "value", str(state))  # noqa: E731 (an enum's wire name)
    if len(mine) != 1 or name(mine[0].state) != "CompleteCommit":
        fail(f"ListTransactions does not list {a.tag}-producer once, committed: {listed}")
    d = admin.describe_transactions([f"{a.tag}-producer"])[f"{a.tag}-producer"]
    if name(d.state) != "CompleteCommit" or d.producer_id != mine[0].producer_id:
        fail(f"DescribeTransactions: {d}")
    print("kafka-python transactions: ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT[,HOST:PORT...]")
    ap.add_argument("--client", choices=["ck", "kp"], required=True)
    ap.add_argument("--tag", default="txn")
    ap.add_argument("--txn-id", default="eos-app")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--kill-at", type=int, default=0)
    ap.add_argument("--new-clients-after-kill", action="store_true",
                    help="after the kill, carry on with new client instances (the app died too)")
    a = ap.parse_args()
    if a.client == "ck":
        ck(a)
    else:
        kp(a)
    print("txn_eos: ok")


if __name__ == "__main__":
    main()
