#!/usr/bin/env python3
"""confluent-kafka (librdkafka 2.x) over SASL_SSL with SCRAM: a producer with produce rights
delivers 100 records (acks=all, idempotent); a consumer with consume rights reads them back in
its consumer group; then the refusals, each with Kafka's own error and well before a client
timeout: a wrong password, a producer without produce rights (TOPIC_AUTHORIZATION_FAILED), a
consumer in a group it may not use (GROUP_AUTHORIZATION_FAILED). Exits non-zero with a message
on the first mismatch."""
import argparse
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer


def fail(msg):
    print(f"ck_sasl_ssl: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def conf(a, user, password, mechanism):
    return {
        "bootstrap.servers": a.bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        "ssl.ca.location": a.ca,
    }


def produce(a, user, password, n, timeout_s=20, idempotent=True):
    errors, delivered = [], []
    p = Producer({**conf(a, user, password, "SCRAM-SHA-256"), "acks": "all", "enable.idempotence": idempotent,
                  "message.timeout.ms": 15000})

    def report(err, msg):
        (errors if err else delivered).append(err or msg.offset())

    for i in range(n):
        p.produce(a.topic, key=f"k{i}".encode(), value=f"reading {i}".encode(), on_delivery=report)
    deadline = time.time() + timeout_s
    while len(errors) + len(delivered) < n and time.time() < deadline:
        p.poll(0.1)
    return errors, delivered


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--producer", required=True, help="user:password with produce rights")
    ap.add_argument("--consumer", required=True, help="user:password with consume rights in group 'readers'")
    a = ap.parse_args()
    pu, pp = a.producer.split(":", 1)
    cu, cp = a.consumer.split(":", 1)

    errors, delivered = produce(a, pu, pp, 100)
    if errors or len(delivered) != 100:
        fail(f"the producer: {len(delivered)} delivered, errors {errors[:3]}")

    c = Consumer({**conf(a, cu, cp, "SCRAM-SHA-512"), "group.id": "readers", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([a.topic])
    got = set()
    deadline = time.time() + 30
    while len(got) < 100 and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            fail(f"the consumer: {m.error()}")
        got.add(m.value().decode())
    c.commit(asynchronous=False)
    c.close()
    if got != {f"reading {i}" for i in range(100)}:
        fail(f"consumed {len(got)} of 100")

    # A wrong password: an authentication error at once, not a timeout.
    started, seen = time.time(), []
    p = Producer({**conf(a, pu, pp + "x", "SCRAM-SHA-256"), "error_cb": seen.append})
    p.produce(a.topic, value=b"never")
    while not seen and time.time() - started < 10:
        p.poll(0.1)
    if not seen or seen[0].code() != KafkaError._AUTHENTICATION:
        fail(f"a wrong password gave {seen[:1]} within 10 s")
    if "invalid username or password" not in seen[0].str():
        fail(f"the authentication error does not say why: {seen[0]}")
    p.purge()
    p.flush(1)

    # The consumer's principal has no produce rights.
    started = time.time()
    errors, delivered = produce(a, cu, cp, 1, idempotent=False)
    if delivered or not errors:
        fail("a principal without produce rights delivered a record")
    if errors[0].code() != KafkaError.TOPIC_AUTHORIZATION_FAILED:
        fail(f"no produce rights gave {errors[0]}")
    if time.time() - started > 10:
        fail(f"the refusal took {time.time() - started:.1f} s")

    # A group the consumer may not use.
    c = Consumer({**conf(a, cu, cp, "SCRAM-SHA-256"), "group.id": "not-mine", "auto.offset.reset": "earliest"})
    c.subscribe([a.topic])
    deadline, seen = time.time() + 15, None
    while seen is None and time.time() < deadline:
        try:
            m = c.poll(0.5)
        except KafkaException as e:
            seen = e.args[0]
            break
        if m is not None and m.error():
            seen = m.error()
        elif m is not None:
            fail("read a record in a group it may not use")
    c.close()
    if seen is None or seen.code() != KafkaError.GROUP_AUTHORIZATION_FAILED:
        fail(f"a group without rights gave {seen}")
    print("ck_sasl_ssl: ok")


if __name__ == "__main__":
    main()
