"""Reads the cloud's telemetry topic with confluent-kafka's JSONDeserializer, which fetches the
writer's schema from the registry by the id in each record: the bridge's "registry" value
format must be readable with no code of ours. Prints "registry_readings: ok <n>"."""

import argparse
import sys

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--count", type=int, required=True)
    a = ap.parse_args()
    src = SchemaRegistryClient({"url": a.registry})
    deser = JSONDeserializer(None, schema_registry_client=src)
    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": "registry-readings",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe(["telemetry"])
    seen = set()
    for _ in range(400):
        m = c.poll(0.25)
        if m is None:
            if len(seen) >= a.count:
                break
            continue
        if m.error():
            print(f"registry_readings: FAIL {m.error()}")
            sys.exit(1)
        raw = m.value()
        if raw[0] != 0:
            print(f"registry_readings: FAIL not Confluent's wire format: {raw[:8]!r}")
            sys.exit(1)
        r = deser(raw, SerializationContext("telemetry", MessageField.VALUE))
        if r["device_id"] != m.key().decode() or not isinstance(r["value"], float):
            print(f"registry_readings: FAIL {r} under key {m.key()!r}")
            sys.exit(1)
        seen.add((r["device_id"], r["boot_id"], r["seq"]))
    c.close()
    if len(seen) != a.count:
        print(f"registry_readings: FAIL {len(seen)} distinct readings, expected {a.count}")
        sys.exit(1)
    print(f"registry_readings: ok {len(seen)}")


if __name__ == "__main__":
    main()
