#!/usr/bin/env python3
"""An auditor's check of an exported log bundle in Python, written from
docs/audit.md and docs/protocol.md alone.

It needs Python 3.9+ and `cryptography`, nothing of the hub's code, and
trusts only the pinned key set:

    python3 docs/examples/python_audit.py audit-bundle --jwks pinned-jwks.json

It checks the log's integrity, as `hub audit verify --integrity-only`
does: every record's place (`index`), its link to the one before
(`prev`), its hub seal (version 2 records: those of hubs since batch
seals; a bundle with older ones is for `hub audit verify`);
every checkpoint's signature by a hub key for the bundle's origin,
that sizes never decrease and no size has two roots, and that the tree
recomputed from the records has each checkpoint's root. The hub keys are
the pinned ones and those the bundle's hand-overs lead to from them
(`key_handover`); each seal's key was valid at its record's `time`, and
each checkpoint's at the `time` of the last record it covers
(`key_validity`). It leaves to `hub audit verify` what needs more than
the hub's keys and the records: the agencies' signatures, schemas,
bodies and references.
It prints each failure as `FAILED entry|checkpoint|handover <n>: <check>: <detail>`
and exits non-zero if there was any. The end-to-end test
`hub/cli/tests/foreign_audit.rs` runs it on a real hub's export.
"""

import argparse
import hashlib
import json
import os
import sys

from hubproto import (b64u, checkpoint_signer, follow_handovers, jcs, leaf_hash, node, root_from_path,
                      unb64u, valid_at, verify_detached)

class Tree:
    """RFC 9162 Merkle tree hashes, appended to one leaf at a time: the
    roots of its complete subtrees, largest first."""

    def __init__(self):
        self.size, self.subtrees = 0, []  # [(leaves, hash)]

    def append(self, leaf: bytes) -> None:
        self.size += 1
        self.subtrees.append((1, leaf))
        while len(self.subtrees) > 1 and self.subtrees[-1][0] == self.subtrees[-2][0]:
            (n, right), (_, left) = self.subtrees.pop(), self.subtrees.pop()
            self.subtrees.append((2 * n, node(left, right)))

    def root(self) -> bytes:
        if not self.subtrees:
            return hashlib.sha256(b"").digest()
        root = self.subtrees[-1][1]
        for _, left in reversed(self.subtrees[:-1]):
            root = node(left, root)
        return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="the bundle directory (hub audit export --out)")
    parser.add_argument("--jwks", required=True, help="the hub's key set, pinned")
    args = parser.parse_args()
    with open(args.jwks, encoding="utf-8") as f:
        keys = {k["kid"]: k for k in json.load(f)["keys"]}
    with open(os.path.join(args.bundle, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != "hub-audit-bundle/1":
        sys.exit(f"not a bundle this checks: format {manifest.get('format')!r}")
    failures = []

    def fail(what: str, n: int, check: str, detail: str) -> None:
        failures.append(f"FAILED {what} {n}: {check}: {detail}")
        print(failures[-1], flush=True)

    # The keys the pinned ones hand over to, in order; one not followed
    # adds nothing, so what only its key signed fails below.
    handovers = []
    if os.path.exists(os.path.join(args.bundle, "hub-key-handovers.json")):
        with open(os.path.join(args.bundle, "hub-key-handovers.json"), encoding="utf-8") as f:
            handovers = json.load(f)
    keys, not_followed = follow_handovers(keys, handovers)
    for n, e in not_followed:
        fail("handover", n, "key_handover", repr(e))
    followed = len(handovers) - len(not_followed)

    # Checkpoints first (a few per second of the log's life): by size.
    checkpoints = {}  # size -> root
    signers = {}  # size -> the keys that signed a checkpoint of that size
    last_size = -1
    with open(os.path.join(args.bundle, "checkpoints.jsonl"), encoding="utf-8") as f:
        for line in f:
            checkpoint = json.loads(line)
            size = checkpoint["size"]
            try:
                origin, signed_size, root, key = checkpoint_signer(checkpoint["note"], keys)
            except Exception as e:  # noqa: BLE001 - any failure to verify is a finding
                fail("checkpoint", size, "checkpoint_signature", repr(e))
                continue
            if origin != manifest["origin"] or signed_size != size:
                fail("checkpoint", size, "checkpoint_signature", f"signed for {origin} size {signed_size}")
                continue
            if size < last_size:
                fail("checkpoint", size, "checkpoint_order", f"after size {last_size}")
            last_size = max(last_size, size)
            if checkpoints.setdefault(size, root) != root:
                fail("checkpoint", size, "fork", "two roots for one size")
            signers.setdefault(size, []).append(key)

    tree, prev, batches = Tree(), bytes(32), {}  # (batch, signature) -> kid
    with open(os.path.join(args.bundle, "entries.jsonl"), encoding="utf-8") as f:
        for n, line in enumerate(f):
            record = json.loads(line)
            if record.get("index") != n:
                fail("entry", n, "index", f"the record says {record.get('index')}")
            if record.get("prev") != b64u(prev):
                fail("entry", n, "chain", "prev is not the leaf hash of the entry before")
            leaf = leaf_hash(record)
            try:
                if "hub_seal" not in record:
                    raise ValueError("no hub_seal (a version 1 record: use hub audit verify)")
                seal = record["hub_seal"]
                first, size = seal["first"], seal["size"]
                if not first <= n < first + size:
                    raise ValueError("the seal's batch does not hold this entry")
                path = [unb64u(p) for p in seal["path"]]
                root = root_from_path(n - first, size, leaf, path)
                batch = jcs({"first": first, "root": b64u(root), "size": size, "v": 2}).encode()
                if (batch, seal["signature"]) not in batches:  # each batch's signature once
                    batches[(batch, seal["signature"])] = verify_detached(seal["signature"], batch, keys)
                kid = batches[(batch, seal["signature"])]
            except Exception as e:  # noqa: BLE001 - any failure to verify is a finding
                fail("entry", n, "hub_signature", repr(e))
            else:
                try:
                    valid_at(keys[kid], record.get("time"))
                except ValueError as e:
                    fail("entry", n, "key_validity", str(e))
            tree.append(leaf)
            prev = leaf
            if tree.size in checkpoints and tree.root() != checkpoints[tree.size]:
                fail("checkpoint", tree.size, "checkpoint_root", "not the root of the entries")
            # A checkpoint is signed after the last record it covers.
            for key in signers.get(tree.size, []):
                try:
                    valid_at(key, record.get("time"))
                except ValueError as e:
                    fail("checkpoint", tree.size, "key_validity", str(e))
    for size in sorted(s for s in checkpoints if s > tree.size):
        fail("checkpoint", size, "checkpoint_root", f"beyond the bundle's {tree.size} entries")
    if tree.size != manifest.get("entries"):
        fail("entry", tree.size, "manifest", f"the manifest counts {manifest.get('entries')}")
    covered = max((s for s in checkpoints if s <= tree.size), default=0)
    print(f"{tree.size} entries, {len(checkpoints)} checkpoints ({tree.size - covered} "
          f"entries after the last), {followed} of {len(handovers)} hand-over(s) followed: "
          f"{len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
