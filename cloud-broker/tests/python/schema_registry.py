"""The broker's schema registry through confluent-kafka's SchemaRegistryClient, its JSON Schema
and Avro serializers and deserializers (none of it code of ours).

  write: registers schemas (directly, and through the serializers' auto-registration),
         produces readings in Confluent's wire format (magic byte, schema id, payload) and
         reads them back with deserializers that fetch the writer's schema by id; checks the
         REST answers (subjects, versions, lookups, ids shared across subjects, errors).
  read:  after a restart of the broker: the same ids, versions and records.
"""

import argparse
import sys

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

READING_JSON = """{
  "$schema": "http://json-schema.org/draft-07/schema#",
  "title": "Reading",
  "type": "object",
  "properties": {
    "device_id": {"type": "string"},
    "boot_id": {"type": "integer"},
    "seq": {"type": "integer"},
    "channel": {"type": "integer"},
    "timestamp_ms": {"type": "integer"},
    "value": {"type": "number"}
  },
  "required": ["device_id", "boot_id", "seq", "channel", "timestamp_ms", "value"]
}"""

READING_AVRO = """{
  "type": "record", "name": "Reading", "namespace": "iot",
  "fields": [
    {"name": "device_id", "type": "string"},
    {"name": "boot_id", "type": "long"},
    {"name": "seq", "type": "long"},
    {"name": "channel", "type": "int"},
    {"name": "timestamp_ms", "type": "long"},
    {"name": "value", "type": "float"}
  ]
}"""

N = 50


def fail(msg):
    print(f"schema_registry: FAIL {msg}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def reading(i):
    return {"device_id": f"dev-{i % 5}", "boot_id": 7, "seq": i, "channel": 0,
            "timestamp_ms": 1_760_000_000_000 + i, "value": float(i) / 2}


def consume(bootstrap, topic, deser, n):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"sr-{topic}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out = []
    for _ in range(400):
        m = c.poll(0.25)
        if m is None:
            if len(out) >= n:
                break
            continue
        check(m.error() is None, f"consume {topic}: {m.error()}")
        raw = m.value()
        check(raw[0] == 0, f"{topic}: the magic byte is {raw[0]}")
        out.append(deser(raw, SerializationContext(topic, MessageField.VALUE)))
    c.close()
    check(len(out) == n, f"{topic}: read {len(out)} of {n}")
    return out


def write(a):
    src = SchemaRegistryClient({"url": a.registry})
    # Direct registration: idempotent, the same id for the same schema, a new version for a
    # new one; the same schema under another subject keeps its id.
    sid = src.register_schema("readings-json-value", Schema(READING_JSON, "JSON"))
    again = src.register_schema("readings-json-value", Schema(READING_JSON.replace("  ", " "), "JSON"))
    check(sid == again, f"re-registering gave {again}, not {sid}")
    other = src.register_schema("mirror-value", Schema(READING_JSON, "JSON"))
    check(other == sid, f"another subject got id {other}, not {sid}")
    v2 = src.register_schema("readings-json-value", Schema('{"type": "object"}', "JSON"))
    check(v2 != sid, "a new schema got the old id")
    latest = src.get_latest_version("readings-json-value")
    check((latest.version, latest.schema_id) == (2, v2), f"latest: {latest.version} {latest.schema_id}")
    check(src.get_versions("readings-json-value") == [1, 2], f"versions {src.get_versions('readings-json-value')}")
    found = src.lookup_schema("readings-json-value", Schema(READING_JSON, "JSON"))
    check((found.version, found.schema_id) == (1, sid), f"lookup {found.version} {found.schema_id}")
    check(src.get_schema(sid).schema_type == "JSON", "get_schema type")
    try:
        src.get_latest_version("no-such-subject")
        fail("an unknown subject was found")
    except SchemaRegistryError as e:
        check(e.http_status_code == 404 and e.error_code == 40401, f"unknown subject: {e}")
    try:
        src.register_schema("bad-value", Schema("not json", "JSON"))
        fail("a malformed schema was registered")
    except SchemaRegistryError as e:
        check(e.http_status_code == 422, f"malformed schema: {e}")
    check(src.delete_subject("mirror-value") == [1], "delete_subject")
    check("mirror-value" not in src.get_subjects(), "a deleted subject is listed")

    # The serializers register on their own and frame every value; the deserializers fetch
    # the writer's schema by the id in each record.
    p = Producer({"bootstrap.servers": a.bootstrap, "acks": "all"})
    js = JSONSerializer(READING_JSON, src)
    av = AvroSerializer(src, READING_AVRO)
    for i in range(N):
        p.produce("sr-json", value=js(reading(i), SerializationContext("sr-json", MessageField.VALUE)))
        p.produce("sr-avro", value=av(reading(i), SerializationContext("sr-avro", MessageField.VALUE)))
    check(p.flush(30) == 0, "records left unsent")
    check_records(a, src)
    print(f"ids json={src.get_latest_version('sr-json-value').schema_id} "
          f"avro={src.get_latest_version('sr-avro-value').schema_id}", flush=True)
    print("schema_registry: ok", flush=True)


def check_records(a, src):
    got = consume(a.bootstrap, "sr-json", JSONDeserializer(None, schema_registry_client=src), N)
    check(got == [reading(i) for i in range(N)], f"json records differ: {got[:2]}")
    got = consume(a.bootstrap, "sr-avro", AvroDeserializer(src), N)
    check([r["seq"] for r in got] == list(range(N)), "avro records differ")
    check(all(r["device_id"] == reading(r["seq"])["device_id"] for r in got), "avro fields differ")


def read(a):
    # A fresh client (no cache): everything from the broker as restarted.
    src = SchemaRegistryClient({"url": a.registry})
    check(src.get_versions("readings-json-value") == [1, 2], "versions after the restart")
    check("mirror-value" not in src.get_subjects(), "the deletion did not survive the restart")
    check_records(a, src)
    print(f"ids json={src.get_latest_version('sr-json-value').schema_id} "
          f"avro={src.get_latest_version('sr-avro-value').schema_id}", flush=True)
    print("schema_registry: ok", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["write", "read"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--registry", required=True)
    a = ap.parse_args()
    write(a) if a.phase == "write" else read(a)


if __name__ == "__main__":
    main()
