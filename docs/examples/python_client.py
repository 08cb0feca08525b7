#!/usr/bin/env python3
"""A client of the hub in Python, written from docs/protocol.md alone.

It needs Python 3.9+ and the `cryptography` package (Debian:
python3-cryptography), nothing of the hub's own code; what it shares with
the adapter example is in hubproto.py beside it. Against a hub on
its dev PKI (`hub serve`, from the repository root):

    python3 docs/examples/python_client.py --pki hub-data/pki

It does, as the demo agencies: a query as the one-stop office (unsigned);
an event published by the enterprise registry (signed envelope, an id of
its own, sent twice to show idempotency); the tax office leasing its
inbox and acknowledging the event. Every record the hub returns - reply,
inbox message, receipt - is checked against the hub's published keys
(the seal: the record's path to its batch root and the hub's signature
over that root) and every body against the record's salted commitment;
then the event and its receipt are proved in a signed checkpoint, and
that checkpoint consistent with the one before the client began.
It exits non-zero at the first check that fails. The end-to-end test
`tests/tests/foreign_client.rs` runs it against a real hub.
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import ssl
import sys
import time

from cryptography.hazmat.primitives import serialization

from hubproto import (
    b64u,
    jcs,
    leaf_hash,
    root_from_path,
    uuid7,
    verify_checkpoint,
    verify_consistency,
    verify_record,
)


class Hub:
    def __init__(self, pki: str, api: str, public: str):
        self.pki, self.api, self.public = pki, api, public

    def _context(self, member=None):
        context = ssl.create_default_context(cafile=os.path.join(self.pki, "ca.crt"))
        if member:
            name = os.path.join(self.pki, "agencies", member.replace("/", "_"))
            context.load_cert_chain(name + ".crt", name + ".key")
        return context

    def call(self, member, method, path, body=None):
        """One request on the API listener as `member` (its client certificate)."""
        host, port = self.api.rsplit(":", 1)
        connection = http.client.HTTPSConnection(host, int(port), context=self._context(member))
        headers = {"content-type": "application/json"} if body is not None else {}
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        text = response.read()
        connection.close()
        return response.status, json.loads(text)

    def public_get(self, path):
        """A GET on the public listener (no client certificate): status, text."""
        host, port = self.public.rsplit(":", 1)
        connection = http.client.HTTPSConnection(host, int(port), context=self._context())
        connection.request("GET", path)
        response = connection.getresponse()
        text = response.read().decode()
        connection.close()
        return response.status, text

    def keys(self):
        """The hub's signing keys from the public listener, by kid."""
        _, text = self.public_get("/.well-known/jwks.json")
        return {k["kid"]: k for k in json.loads(text)["keys"]}


def sign_envelope(pki: str, member: str, envelope: dict) -> str:
    """The detached, unencoded-payload JWS over the envelope's RFC 8785 bytes."""
    path = os.path.join(pki, "agencies", member.replace("/", "_") + ".sign.key")
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    # kid: the RFC 7638 thumbprint of the registered JWK.
    thumbprint = jcs({"crv": "Ed25519", "kty": "OKP", "x": b64u(public)})
    kid = b64u(hashlib.sha256(thumbprint.encode()).digest())
    header = b64u(jcs({"alg": "EdDSA", "b64": False, "crit": ["b64"], "kid": kid}).encode())
    signature = key.sign(header.encode() + b"." + jcs(envelope).encode())
    return header + ".." + b64u(signature)


def must(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"FAILED: {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pki", default="hub-data/pki", help="the dev PKI folder")
    parser.add_argument("--api", default="localhost:8443", help="the API listener")
    parser.add_argument("--public", default="localhost:8444", help="the public listener")
    args = parser.parse_args()
    hub = Hub(args.pki, args.api, args.public)
    keys = hub.keys()
    # The log as it stands before this client adds to it (404 while empty).
    status, note = hub.public_get("/v1/log/checkpoint")
    before = verify_checkpoint(note, keys) if status == 200 else None

    # A query, unsigned (the one-stop office registered no key).
    one_stop = "000.00.29.H29/one-stop"
    query = {
        "sender": {"agency": "000.00.29.H29", "subsystem": "one-stop"},
        "service": "citizen.lookup",
        "version": 1,
        "purpose": "public_service",
        "case_ref": "PY-HS-0001",
        "payload": {"personal_id": "001085012345"},
    }
    status, reply = hub.call(one_stop, "POST", "/v1/exchanges", {"envelope": query})
    must(status == 200, f"the query answered 200, not {status}: {reply}")
    verify_record(reply["record"], keys, reply["body"], reply["body_salt"])
    # The checks can fail: a record changed by one member does not verify.
    forged = dict(reply["record"], case_ref="PY-HS-0002")
    try:
        verify_record(forged, keys)
        must(False, "a changed record verified")
    except Exception:  # noqa: BLE001 - any failure to verify is the point
        pass
    print(f"query {reply['record']['exchange_id']}: response at log index "
          f"{reply['record']['index']}, seal and body verified")

    # An event, signed, with an id of the publisher's own.
    publisher = "000.00.00.G09/enterprise-registry"
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "enterprise-registered.json"), encoding="utf-8") as f:
        payload = json.load(f)
    event = {
        "id": uuid7(),
        "sender": {"agency": "000.00.00.G09", "subsystem": "enterprise-registry"},
        "service": "enterprise.registered",
        "version": 1,
        "purpose": "registry_update",
        "case_ref": "PY-DKKD-0001",
        "payload": payload,
    }
    request = {"envelope": event, "signature": sign_envelope(args.pki, publisher, event)}
    status, published = hub.call(publisher, "POST", "/v1/exchanges", request)
    must(status == 202, f"the event answered 202, not {status}: {published}")
    verify_record(published["record"], keys, published["body"], published["body_salt"])
    must(published["body"] == event, "the event's body is the envelope published")
    status, again = hub.call(publisher, "POST", "/v1/exchanges", request)
    must(status == 202 and again == published, "a retry returns the first result")
    recipients = [f"{r['agency']}/{r['subsystem']}" for r in published["record"]["recipients"]]
    print(f"event {event['id']}: logged at index {published['record']['index']} for "
          f"{', '.join(recipients)}; the retry got the same record")

    # The tax office leases its inbox and acknowledges the event.
    tax = "000.00.00.G08/tax"
    must(tax in recipients, "the tax office subscribes to enterprise.registered")
    status, inbox = hub.call(tax, "GET", "/v1/inbox?max=100")
    must(status == 200, f"the inbox answered 200, not {status}: {inbox}")
    ours = [m for m in inbox["messages"] if m["record"]["exchange_id"] == event["id"]]
    for m in inbox["messages"]:
        verify_record(m["record"], keys, m["body"], m["body_salt"])
    must(len(ours) == 1, "the event is in the tax office's inbox once")
    must(ours[0]["body"] == event, "the inbox message's body is the envelope published")
    status, acks = hub.call(tax, "POST", "/v1/inbox/ack", {"exchange_ids": [event["id"]]})
    must(status == 200 and acks["unknown"] == [], f"the acknowledgement: {status} {acks}")
    receipt = acks["receipts"][0]
    verify_record(receipt, keys)
    must(receipt["kind"] == "receipt", "a receipt")
    must(receipt["refers_to"] == published["record"]["index"], "the receipt names the event")
    status, acks = hub.call(tax, "POST", "/v1/inbox/ack", {"exchange_ids": [event["id"]]})
    must(status == 200 and acks["unknown"] == [event["id"]], "a second acknowledgement is unknown")
    print(f"receipt of {event['id']} by {tax}: log index {receipt['index']}, seal verified")

    # A checkpoint that covers the receipt (signed within a second or so),
    # the event and receipt proved in it, and the log only grown since the
    # checkpoint read at the start.
    deadline = time.time() + 30
    while True:
        status, note = hub.public_get("/v1/log/checkpoint")
        if status == 200:
            origin, size, root = verify_checkpoint(note, keys)
            if size > receipt["index"]:
                break
        must(time.time() < deadline, "a checkpoint covering the receipt within 30 s")
        time.sleep(0.2)
    for record in (published["record"], receipt):
        status, proof = hub.call(tax if record is receipt else publisher, "GET",
                                 f"/v1/log/proof/inclusion?index={record['index']}&size={size}")
        must(status == 200, f"an inclusion proof: {status} {proof}")
        must(base64.b64decode(proof["leaf_hash"]) == leaf_hash(record), "the proof is of this record")
        path = [base64.b64decode(p) for p in proof["proof"]]
        must(root_from_path(record["index"], size, leaf_hash(record), path) == root,
             f"entry {record['index']} is in the checkpoint's tree")
    if before is not None:
        _, old_size, old_root = before
        status, proof = hub.call(tax, "GET", f"/v1/log/proof/consistency?from={old_size}&to={size}")
        must(status == 200, f"a consistency proof: {status} {proof}")
        verify_consistency(old_size, size, old_root, root, [base64.b64decode(p) for p in proof["proof"]])
    grown = f"; grew from size {before[1]} consistently" if before else ""
    print(f"checkpoint {origin} size {size}: signature, both inclusion proofs verified{grown}")


if __name__ == "__main__":
    main()
