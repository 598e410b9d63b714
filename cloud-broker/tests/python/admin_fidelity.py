#!/usr/bin/env python3
"""The admin APIs a Kafka UI or tool uses on its first screens, through a real client
(`--client kp`: kafka-python; `--client ck`: confluent-kafka, i.e. librdkafka):

- CreatePartitions grows a topic (records then go to the new partitions); shrinking and
  staying put are refused with INVALID_PARTITIONS;
- IncrementalAlterConfigs sets and deletes retention.ms, appends to cleanup.policy;
  AlterConfigs replaces a topic's configs; a read-only config cannot be changed
  (INVALID_CONFIG); DescribeConfigs shows each value with its source;
- DeleteRecords moves the log start (a consumer from the beginning starts there); past the
  end is OFFSET_OUT_OF_RANGE;
- ListOffsets, table-driven: earliest, latest, max-timestamp, and by time before, inside
  and after the data, on an empty partition and on records out of time order;
- kafka-python only (librdkafka has no API for them): DescribeLogDirs sizes, and
  OffsetDelete refused for a subscribed topic and done for another.

Exits non-zero with a message on the first mismatch."""
import argparse
import sys
import time


def fail(msg):
    print(f"admin_fidelity: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def is_err(e, code):
    """Whether error name `e` (kafka-python's class, librdkafka's name) is Kafka's `code`."""
    return e is not None and code.replace("_", "") in e.upper().replace("_", "")


def wait_for(what, cond, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


# Offsets 0..=5 with timestamps that do not grow with the offsets (one batch each, flushed).
RECORDS = [[("a", 1000), ("b", 3000), ("c", 2000)], [("d", 5000), ("e", 4000)], [("f", 5000)]]
EARLIEST, LATEST, MAX = -2, -1, -3
# (spec, (offset, timestamp)) on the partition holding RECORDS.
CASES = [
    (EARLIEST, (0, -1)),
    (LATEST, (6, -1)),
    (MAX, (3, 5000)),
    (0, (0, 1000)),
    (1500, (1, 3000)),
    (4500, (3, 5000)),
    (5001, (-1, -1)),
]
EMPTY_CASES = [(EARLIEST, (0, -1)), (LATEST, (0, -1)), (MAX, (-1, -1)), (1000, (-1, -1))]


class KafkaPython:
    def __init__(self, bootstrap):
        from kafka import KafkaAdminClient
        self.bootstrap = bootstrap
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fidelity-kp", request_timeout_ms=20_000)

    def create(self, topic, partitions):
        self.admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": -1}})

    def partitions(self, topic):
        """Partitions of `topic` that have a leader."""
        meta = self.admin.describe_topics([topic])
        if not meta or meta[0]["error_code"] != 0:
            return 0
        return sum(1 for p in meta[0]["partitions"] if p["leader_id"] >= 0)

    def add_partitions(self, topic, count):
        """None, or the error's class name."""
        from kafka.errors import KafkaError
        try:
            self.admin.create_partitions({topic: count})
            return None
        except KafkaError as e:
            return type(e).__name__

    def configs(self, topic):
        from kafka.admin import ConfigResource, ConfigResourceType
        got = self.admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        return {k: (v["value"], str(v["config_source"])) for k, v in got["topic"][topic].items()}

    def alter(self, topic, changes, incremental):
        """changes: {name: (op, value)}; None, or the error's class name."""
        from kafka.admin import ConfigResource, ConfigResourceType
        from kafka.errors import KafkaError
        res = ConfigResource(ConfigResourceType.TOPIC, topic,
                             configs={k: (op, v) if incremental else v for k, (op, v) in changes.items()})
        try:
            # Its own check of the names against the topic's changeable configs is skipped:
            # the broker is what is tested.
            out = self.admin.alter_configs([res], incremental=incremental, raise_on_unknown=False)
        except KafkaError as e:
            return type(e).__name__
        # Per resource: None, or the error as a string ("[Error 40] InvalidConfigurationError: ...").
        err = out["topic"][topic]
        return str(err) if err is not None and str(err).startswith("[Error") else None

    def produce(self, topic, partition, batches):
        from kafka import KafkaProducer
        p = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        for batch in batches:
            for key, ts in batch:
                p.send(topic, key=key.encode(), value=b"v", partition=partition, timestamp_ms=ts)
            p.flush(30)
        p.close()

    def list_offsets(self, topic, partition, spec):
        from kafka import TopicPartition
        tp = TopicPartition(topic, partition)
        got = self.admin.list_partition_offsets({tp: spec})[tp]
        return (got.offset, got.timestamp if got.timestamp is not None else -1)

    def delete_records(self, topic, partition, offset):
        """(low watermark, None) or (None, the error's class name)."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        tp = TopicPartition(topic, partition)
        try:
            out = self.admin.delete_records({tp: offset})
        except KafkaError as e:
            return None, type(e).__name__
        return out[tp]["low_watermark"], None

    def first_offset_read(self, topic, partition):
        from kafka import KafkaConsumer, TopicPartition
        c = KafkaConsumer(bootstrap_servers=self.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
        c.assign([TopicPartition(topic, partition)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                if recs:
                    c.close()
                    return recs[0].offset
        c.close()
        return None


class Confluent:
    def __init__(self, bootstrap):
        from confluent_kafka.admin import AdminClient
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})

    def create(self, topic, partitions):
        from confluent_kafka.admin import NewTopic
        for f in self.admin.create_topics([NewTopic(topic, partitions, -1)]).values():
            f.result(30)

    def partitions(self, topic):
        """Partitions of `topic` that have a leader."""
        md = self.admin.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return 0
        return sum(1 for p in md.partitions.values() if p.leader >= 0)

    def add_partitions(self, topic, count):
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import NewPartitions
        try:
            for f in self.admin.create_partitions([NewPartitions(topic, count)]).values():
                f.result(30)
            return None
        except KafkaException as e:
            return e.args[0].name()

    def configs(self, topic):
        from confluent_kafka.admin import ConfigResource, ResourceType
        res = ConfigResource(ResourceType.TOPIC, topic)
        got = list(self.admin.describe_configs([res]).values())[0].result(30)
        from confluent_kafka.admin import ConfigSource
        return {k: (v.value, ConfigSource(int(v.source)).name) for k, v in got.items()}

    def alter(self, topic, changes, incremental):
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
        ops = {"SET": AlterConfigOpType.SET, "DELETE": AlterConfigOpType.DELETE,
               "APPEND": AlterConfigOpType.APPEND, "SUBTRACT": AlterConfigOpType.SUBTRACT}
        try:
            if incremental:
                res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
                    ConfigEntry(k, v, incremental_operation=ops[op]) for k, (op, v) in changes.items()])
                futs = self.admin.incremental_alter_configs([res])
            else:
                res = ConfigResource(ResourceType.TOPIC, topic, set_config={k: v for k, (_, v) in changes.items()})
                futs = self.admin.alter_configs([res])
            for f in futs.values():
                f.result(30)
            return None
        except KafkaException as e:
            return e.args[0].name()

    def produce(self, topic, partition, batches):
        from confluent_kafka import Producer
        p = Producer({"bootstrap.servers": self.bootstrap, "acks": "all"})
        for batch in batches:
            for key, ts in batch:
                p.produce(topic, key=key.encode(), value=b"v", partition=partition, timestamp=ts)
            if p.flush(30):
                fail("records left unsent")

    def list_offsets(self, topic, partition, spec):
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec
        s = {EARLIEST: OffsetSpec.earliest(), LATEST: OffsetSpec.latest(), MAX: OffsetSpec.max_timestamp()}.get(spec)
        if s is None:
            s = OffsetSpec.for_timestamp(spec)
        tp = TopicPartition(topic, partition)
        got = list(self.admin.list_offsets({tp: s}).values())[0].result(30)
        return (got.offset, got.timestamp)

    def delete_records(self, topic, partition, offset):
        from confluent_kafka import KafkaException, TopicPartition
        try:
            f = list(self.admin.delete_records([TopicPartition(topic, partition, offset)]).values())[0]
            got = f.result(30)
        except KafkaException as e:
            return None, e.args[0].name()
        return got.low_watermark, None

    def first_offset_read(self, topic, partition):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "fidelity-ck-reader", "enable.auto.commit": False})
        c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                c.close()
                return m.offset()
        c.close()
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--client", choices=["kp", "ck"], required=True)
    a = ap.parse_args()
    c = KafkaPython(a.bootstrap) if a.client == "kp" else Confluent(a.bootstrap)
    name = lambda t: f"fidelity-{a.client}-{t}"

    # CreatePartitions.
    grow = name("grow")
    c.create(grow, 2)
    wait_for("the topic's leaders", lambda: c.partitions(grow) == 2)
    if (e := c.add_partitions(grow, 5)) is not None:
        fail(f"CreatePartitions to 5: {e}")
    wait_for("5 partitions with leaders in Metadata", lambda: c.partitions(grow) == 5)
    for count in (5, 3):
        if not is_err(e := c.add_partitions(grow, count), "INVALID_PARTITIONS"):
            fail(f"CreatePartitions to {count} of 5 answered {e}, expected INVALID_PARTITIONS")
    c.produce(grow, 4, [[("new", 1)]])
    if c.list_offsets(grow, 4, LATEST) != (1, -1):
        fail(f"the new partition 4 holds {c.list_offsets(grow, 4, LATEST)}, expected one record")

    # Configs.
    cfg = name("configs")
    c.create(cfg, 1)
    wait_for("the topic's leaders", lambda: c.partitions(cfg) == 1)
    if (e := c.alter(cfg, {"retention.ms": ("SET", "3600000")}, True)) is not None:
        fail(f"IncrementalAlterConfigs SET retention.ms: {e}")
    got = c.configs(cfg)
    if got["retention.ms"][0] != "3600000" or "TOPIC" not in got["retention.ms"][1].upper():
        fail(f"retention.ms after SET: {got['retention.ms']}")
    if got["cleanup.policy"][0] != "delete" or "DEFAULT" not in got["cleanup.policy"][1].upper():
        fail(f"cleanup.policy untouched: {got['cleanup.policy']}")
    if (e := c.alter(cfg, {"retention.ms": ("DELETE", None), "cleanup.policy": ("APPEND", "compact")}, True)) is not None:
        fail(f"IncrementalAlterConfigs DELETE + APPEND: {e}")
    got = c.configs(cfg)
    if got["retention.ms"][0] != "-1" or "DEFAULT" not in got["retention.ms"][1].upper():
        fail(f"retention.ms after DELETE: {got['retention.ms']}")
    if got["cleanup.policy"][0] != "compact":
        fail(f"cleanup.policy after APPEND compact: {got['cleanup.policy']}")
    # AlterConfigs replaces the whole set: what is not named goes back to its default.
    # kafka-python names every config already set (its guard against that); librdkafka
    # sends what it is given, so cleanup.policy goes back to delete.
    if (e := c.alter(cfg, {"retention.bytes": ("SET", "1048576")}, False)) is not None:
        fail(f"AlterConfigs retention.bytes: {e}")
    got = c.configs(cfg)
    policy = "compact" if a.client == "kp" else "delete"
    if got["retention.bytes"][0] != "1048576" or got["cleanup.policy"][0] != policy:
        fail(f"after AlterConfigs: {got}, expected cleanup.policy {policy}")
    e = c.alter(cfg, {"max.message.bytes": ("SET", "1000")}, True)
    if not is_err(e, "INVALID_CONFIG"):
        fail(f"changing read-only max.message.bytes answered {e}, expected INVALID_CONFIG")
    if got["max.message.bytes"][0] != str(8 << 20):
        fail(f"max.message.bytes {got['max.message.bytes']}")

    # ListOffsets: an empty partition, then records out of time order.
    lo = name("offsets")
    c.create(lo, 2)
    wait_for("the topic's leaders", lambda: c.partitions(lo) == 2)
    for spec, want in EMPTY_CASES:
        if (got := c.list_offsets(lo, 1, spec)) != want:
            fail(f"ListOffsets {spec} on an empty partition: {got}, expected {want}")
    c.produce(lo, 0, RECORDS)
    for spec, want in CASES:
        if (got := c.list_offsets(lo, 0, spec)) != want:
            fail(f"ListOffsets {spec}: {got}, expected {want}")

    # DeleteRecords inside the first batch.
    low, e = c.delete_records(lo, 0, 2)
    if e is not None or low != 2:
        fail(f"DeleteRecords to 2: low watermark {low}, error {e}")
    if (got := c.list_offsets(lo, 0, EARLIEST)) != (2, -1):
        fail(f"earliest after DeleteRecords: {got}")
    if (got := c.list_offsets(lo, 0, 0)) != (2, 2000):
        fail(f"by time 0 after DeleteRecords: {got}")
    if (got := c.first_offset_read(lo, 0)) != 2:
        fail(f"a consumer from the beginning read offset {got} first, expected 2")
    low, e = c.delete_records(lo, 0, 99)
    if not is_err(e, "OFFSET_OUT_OF_RANGE"):
        fail(f"DeleteRecords past the end answered low {low}, error {e}")

    if a.client == "kp":
        kafka_python_only(c, name)
    print("admin_fidelity: ok")


def kafka_python_only(c, name):
    from kafka import KafkaConsumer, TopicPartition
    lo = name("offsets")
    dirs = c.admin.describe_log_dirs()
    sizes = {}
    for broker in dirs:
        for d in broker.get("results", broker.get("log_dirs", [])):
            for t in d["topics"]:
                for p in t["partitions"]:
                    sizes[(t["name"], p["partition_index"])] = max(sizes.get((t["name"], p["partition_index"]), 0), p["partition_size"])
    if not sizes.get((lo, 0)):
        fail(f"DescribeLogDirs has no size for {lo}/0: {dirs}")
    if sizes.get((lo, 1)) != 0:
        fail(f"DescribeLogDirs size of the empty partition: {sizes.get((lo, 1))}")

    # OffsetDelete: a group consuming one topic, with offsets committed for two.
    other = name("other")
    c.create(other, 1)
    wait_for("the topic's leaders", lambda: c.partitions(other) == 1)
    group = "fidelity-kp-group"
    consumer = KafkaConsumer(bootstrap_servers=c.bootstrap, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    consumer.subscribe([lo])
    wait_for("an assignment", lambda: consumer.poll(timeout_ms=200) is not None and consumer.assignment())
    from kafka.structs import OffsetAndMetadata
    consumer.commit({TopicPartition(lo, 0): OffsetAndMetadata(3, "", -1),
                     TopicPartition(other, 0): OffsetAndMetadata(0, "", -1)})
    out = c.admin.delete_group_offsets(group, [TopicPartition(lo, 0), TopicPartition(other, 0)])
    errs = {tp.topic: getattr(e, "__name__", str(e)) for tp, e in out.items()}
    if not is_err(errs.get(lo), "GROUP_SUBSCRIBED_TO_TOPIC"):
        fail(f"OffsetDelete of a subscribed topic answered {errs}")
    if errs.get(other) not in ("NoError", "None"):
        fail(f"OffsetDelete of a topic not subscribed answered {errs}")
    left = {tp.topic for tp in c.admin.list_group_offsets(group)[group]}
    if left != {lo}:
        fail(f"offsets left after OffsetDelete: {left}, expected only {lo}'s")
    consumer.close()


if __name__ == "__main__":
    main()
