#!/usr/bin/env python3
"""A provider's adapter in Python over AMQP, written from docs/protocol.md
("Adapters over AMQP") alone.

It needs Python 3.9+, `pika` and `cryptography` (Debian: python3-pika,
python3-cryptography), nothing of the hub's own code. It serves
`citizen.lookup` for the population registry from a one-person registry:

    python3 docs/examples/python_adapter.py --amqp amqp://guest:guest@127.0.0.1:5672/%2f \\
        --prefix hub --jwks hub-data/pki/hub-jwks.json

(with the hub running on RabbitMQ and no other adapter consuming the
population registry's queue). It declares the topology, takes requests -
one per message, or several as a JSON array - checks each one's seal and
body commitment against the hub's keys, answers each exchange once (a
redelivered request is answered again from memory, which the hub drops as
a duplicate), publishes the answers with publisher confirms and
acknowledges a message only once its answers are confirmed. A request
sealed by a key the hub rotated to after the adapter started is checked
with the keys the hand-overs it carries (`x-hub-key-handovers`) lead to
from the pinned ones. A request that fails its checks is dead-lettered
with the `x-refused-*` headers.
The end-to-end test `tests/tests/foreign_adapter.rs` runs it against a
real hub on PostgreSQL and RabbitMQ.
"""

import argparse
import collections
import json
import signal
import sys

import pika

from hubproto import follow_handovers, verify_record

PROVIDER = {"agency": "000.00.00.G01", "subsystem": "population-registry"}

# How many answers are kept to answer a redelivered request again (the
# Rust SDK keeps as many).
REMEMBERED = 100_000

# What pika raises, with confirms on, when the broker refuses a message or
# returns it unroutable (`mandatory`).
NOT_TAKEN = (pika.exceptions.NackError, pika.exceptions.UnroutableError)

# The registry: one citizen, in the national schema (citizen.lookup v1 response).
CITIZENS = {
    "001085012345": {
        "personal_id": "001085012345",
        "full_name": "Nguyễn Văn An",
        "birth_date": "1985-03-12",
        "sex": "1",
        "ethnicity": "01",
        "nationality": "VN",
        "birth_registration_province": "01",
        "permanent_residence": {
            "country": "VN",
            "province": "01",
            "district": "005",
            "commune": "00160",
            "detail": "Số 8 ngõ 20 phố Trần Duy Hưng",
        },
    }
}


def answer(payload: dict) -> dict:
    citizen = CITIZENS.get(payload.get("personal_id"))
    return {"found": True, "citizen": citizen} if citizen else {"found": False}


class Adapter:
    def __init__(self, channel, prefix: str, keys: dict, user: str):
        # user: the broker user we log in as, named in every answer's
        # user_id; the hub takes answers for PROVIDER only from its user.
        self.channel, self.prefix, self.user = channel, prefix, user
        self.pinned, self.keys = keys, keys  # pinned, and those hand-overs led to
        self.member = f"{PROVIDER['agency']}.{PROVIDER['subsystem']}"
        self.queue = f"{prefix}.provider.{self.member}"
        # exchange id -> answer, the latest REMEMBERED: a redelivery is
        # answered alike, and a long-running adapter does not grow forever.
        self.answered = collections.OrderedDict()

    def declare(self):
        ch, p = self.channel, self.prefix
        ch.exchange_declare(f"{p}.exchanges", "topic", durable=True)
        ch.exchange_declare(f"{p}.dead", "fanout", durable=True)
        ch.queue_declare(f"{p}.dead-letters", durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(f"{p}.dead-letters", f"{p}.dead")
        ch.queue_declare(
            self.queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": f"{p}.dead",
                "x-delivery-limit": 5,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        ch.queue_bind(self.queue, f"{p}.exchanges", routing_key=f"provider.{self.member}")

    def follow(self, headers: dict) -> bool:
        """Follow the hub key's hand-overs a message carries from the pinned
        keys; whether that added a key."""
        handovers = headers.get("x-hub-key-handovers")
        if not handovers:
            return False
        keys, not_followed = follow_handovers(self.pinned, json.loads(handovers))
        for n, e in not_followed:
            print(f"hand-over {n} not followed: {e!r}", flush=True)
        if set(keys) <= set(self.keys):
            return False
        print(f"following the hub key's hand-over to {sorted(set(keys) - set(self.keys))}", flush=True)
        self.keys = keys
        return True

    def check(self, document: dict, headers: dict) -> str:
        """Why the request must never be handled, or '' if it may be."""
        def verify():
            verify_record(document["record"], self.keys, document["body"], document["body_salt"])
        try:
            try:
                verify()
            except Exception:  # noqa: BLE001 - perhaps a key the hub rotated to
                if not self.follow(headers):
                    raise
                verify()
        except Exception as e:  # noqa: BLE001 - any failure to verify refuses it
            return f"the hub's signature or body commitment does not verify: {e!r}"
        record = document["record"]
        if record.get("kind") != "request" or record.get("receiver") != PROVIDER:
            return "not a request addressed to this provider"
        return ""

    def reply(self, reply_to: str, exchange_id: str, outcome: dict) -> None:
        body = {"exchange_id": exchange_id, "provider": PROVIDER, **outcome}
        # With confirms on, basic_publish raises if the broker refuses or
        # returns it (mandatory): the request is then not acknowledged.
        self.channel.basic_publish(
            "",
            reply_to,
            json.dumps(body, ensure_ascii=False).encode(),
            pika.BasicProperties(
                message_id=exchange_id,
                correlation_id=exchange_id,
                content_type="application/json",
                delivery_mode=2,
                user_id=self.user,
            ),
            mandatory=True,
        )

    def refuse(self, method, properties, body: bytes, because: str) -> None:
        headers = dict(properties.headers or {})
        headers.update({
            "x-refused-queue": self.queue,
            "x-refused-because": because,
            "x-refused-exchange": method.exchange,
            "x-refused-routing-key": method.routing_key,
        })
        # The message unchanged but for these headers, and without a
        # user_id: RabbitMQ refuses a message naming a user other than the
        # one publishing it (a re-driven request names the hub's).
        properties.headers = headers
        properties.user_id = None
        self.channel.basic_publish(f"{self.prefix}.dead", method.routing_key, body, properties, mandatory=True)
        print(f"dead-lettered {properties.message_id}: {because}", flush=True)

    def send_back(self, method, properties, element: dict) -> None:
        exchange_id = element["record"]["exchange_id"]
        handovers = (properties.headers or {}).get("x-hub-key-handovers")
        self.channel.basic_publish(
            method.exchange,
            method.routing_key,
            json.dumps(element, ensure_ascii=False).encode(),
            pika.BasicProperties(
                message_id=exchange_id,
                correlation_id=exchange_id,
                reply_to=properties.reply_to,
                content_type="application/json",
                delivery_mode=2,
                headers={"x-hub-key-handovers": handovers} if handovers else None,
            ),
            mandatory=True,
        )
        print(f"sent back {exchange_id} alone", flush=True)

    def on_message(self, channel, method, properties, body: bytes) -> None:
        try:
            self.handle(channel, method, properties, body)
        except NOT_TAKEN as e:
            # An answer the broker did not confirm: the message goes back,
            # and what was answered of it is answered again (the hub drops
            # the duplicates).
            print(f"put back {properties.message_id}: {e!r}", flush=True)
            channel.basic_nack(method.delivery_tag, requeue=True)

    def handle(self, channel, method, properties, body: bytes) -> None:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        several = isinstance(parsed, list)
        elements = parsed if several else [parsed]
        if not elements or not all(isinstance(e, dict) for e in elements):
            self.refuse_message(channel, method, properties, body,
                                "neither a request nor a JSON array of requests")
            return
        if several:
            print(f"took {len(elements)} requests in one message", flush=True)
        redelivered = method.redelivered or (properties.headers or {}).get("x-delivery-count", 0) > 0
        if several and redelivered:
            # Perhaps one of them took an adapter down: each goes back alone.
            for element in elements:
                self.send_back(method, properties, element)
            channel.basic_ack(method.delivery_tag)
            return
        for element in elements:
            because = self.check(element, properties.headers or {}) if properties.reply_to else "no reply_to"
            if because and not several:
                self.refuse_message(channel, method, properties, body, because)
                return
            if because:
                exchange_id = element.get("record", {}).get("exchange_id")
                alone = pika.BasicProperties(
                    message_id=exchange_id,
                    correlation_id=exchange_id,
                    reply_to=properties.reply_to,
                    content_type="application/json",
                    headers=properties.headers,
                )
                try:
                    self.refuse(method, alone, json.dumps(element).encode(), because)
                except NOT_TAKEN:
                    self.send_back(method, properties, element)
                continue
            exchange_id = element["record"]["exchange_id"]
            if exchange_id not in self.answered:
                self.answered[exchange_id] = {"payload": answer(element["body"]["payload"])}
                if len(self.answered) > REMEMBERED:
                    self.answered.popitem(last=False)
            self.reply(properties.reply_to, exchange_id, self.answered[exchange_id])
            print(f"answered {exchange_id}", flush=True)
        channel.basic_ack(method.delivery_tag)

    def refuse_message(self, channel, method, properties, body: bytes, because: str) -> None:
        """Dead-letter a whole message; if the broker will not take the
        copy, reject it and let the broker dead-letter it (`x-death`)."""
        try:
            self.refuse(method, properties, body, because)
        except NOT_TAKEN:
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        channel.basic_ack(method.delivery_tag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    parser.add_argument("--prefix", default="hub", help="the hub's amqp_prefix")
    parser.add_argument("--jwks", default="hub-data/pki/hub-jwks.json", help="the hub's keys, pinned")
    args = parser.parse_args()
    with open(args.jwks, encoding="utf-8") as f:
        keys = {k["kid"]: k for k in json.load(f)["keys"]}
    parameters = pika.URLParameters(args.amqp)
    connection = pika.BlockingConnection(parameters)
    channel = connection.channel()
    channel.confirm_delivery()
    adapter = Adapter(channel, args.prefix, keys, parameters.credentials.username)
    adapter.declare()
    channel.basic_qos(prefetch_count=16)
    channel.basic_consume(adapter.queue, adapter.on_message)
    signal.signal(signal.SIGTERM, lambda *_: channel.stop_consuming())
    print(f"consuming {adapter.queue}", flush=True)
    try:
        channel.start_consuming()
    finally:
        connection.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
