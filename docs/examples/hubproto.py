"""What a client of the hub in Python needs of docs/protocol.md: RFC 8785
canonical JSON, detached unencoded-payload JWS (Ed25519), the hub's seals,
RFC 9162 inclusion and consistency proofs, C2SP signed checkpoints,
and following the hub key's hand-overs. Shared by python_client.py,
python_adapter.py and python_audit.py; needs `cryptography`.
"""

import base64
import calendar
import copy
import hashlib
import json
import os
import re
import time
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jcs(value) -> str:
    """RFC 8785 canonical JSON, for the values the hub's schemas allow
    (no fractional numbers: identifiers and amounts travel as strings)."""
    if isinstance(value, dict):
        # Members sorted by their names' UTF-16 code units.
        members = sorted(value.items(), key=lambda m: m[0].encode("utf-16-be"))
        return "{" + ",".join(jcs(k) + ":" + jcs(v) for k, v in members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    if isinstance(value, float):
        raise ValueError("a fractional number; this client sends none")
    # Strings: only '"', '\\' and control characters escaped, as RFC 8785 says.
    return json.dumps(value, ensure_ascii=False)


def uuid7() -> str:
    rand = int.from_bytes(os.urandom(10), "big")
    value = (int(time.time() * 1000) << 80) | (0x7 << 76)
    value |= ((rand >> 62) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def verify_detached(jws: str, payload: bytes, keys: dict) -> str:
    """Verify a detached, unencoded-payload JWS with the key its header
    names; that key's `kid`."""
    header_b64, empty, signature = jws.split(".")
    if empty:
        raise ValueError("not a detached JWS")
    header = json.loads(unb64u(header_b64))
    if header.get("alg") != "EdDSA" or header.get("b64") is not False or header.get("crit") != ["b64"]:
        raise ValueError(f"unexpected JWS header {header}")
    key = keys[header["kid"]]
    Ed25519PublicKey.from_public_bytes(unb64u(key["x"])).verify(
        unb64u(signature), header_b64.encode() + b"." + payload
    )
    return header["kid"]


def node(left: bytes, right: bytes) -> bytes:
    """An RFC 9162 interior node's hash."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_path(index: int, size: int, leaf: bytes, path: list) -> bytes:
    """RFC 9162 section 2.1.3.2: every hash of the path used, no more."""
    if index >= size:
        raise ValueError("leaf index past the tree")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ValueError("inclusion path too long")
        if fn % 2 == 1 or fn == sn:
            r = node(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("inclusion path too short")
    return r


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, path: list) -> None:
    """RFC 9162 section 2.1.4.2: the tree of `second` leaves extends that of `first`."""
    if first > second:
        raise ValueError("an older size larger than the newer")
    if first == second:
        if path or first_root != second_root:
            raise ValueError("equal sizes, different roots or a proof")
        return
    if first == 0 or not path:
        raise ValueError("nothing to prove from, or no proof")
    if first & (first - 1) == 0:
        path = [first_root] + path
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ValueError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node(c, fr)
            sr = node(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != first_root or sr != second_root:
        raise ValueError("the consistency proof does not hold")


def verify_checkpoint(note: str, keys: dict):
    """A C2SP signed note holding a tlog-checkpoint, signed by one of the
    hub's keys (its note key derived from the JWKS): (origin, size, root)."""
    return checkpoint_signer(note, keys)[:3]


def checkpoint_signer(note: str, keys: dict):
    """As `verify_checkpoint`, with the key that signed: (origin, size, root, key)."""
    body, _, signatures = note.partition("\n\n")
    body += "\n"
    origin, size, root = body.splitlines()[:3]
    for line in signatures.splitlines():
        dash, name, blob = line.split(" ")
        if dash != "\u2014" or name != origin:
            continue
        blob = base64.b64decode(blob)
        for key in keys.values():
            public = unb64u(key["x"])
            key_id = hashlib.sha256(origin.encode() + b"\n\x01" + public).digest()[:4]
            if blob[:4] == key_id:
                Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], body.encode())
                return origin, int(size), base64.b64decode(root), key
    raise ValueError("no signature by the hub's keys on the checkpoint")


def leaf_hash(record: dict) -> bytes:
    statement = {k: v for k, v in record.items() if k != "hub_seal"}
    return hashlib.sha256(b"\x00" + jcs(statement).encode()).digest()


def verify_record(record: dict, keys: dict, body=None, salt=None) -> None:
    """protocol.md, "Verifying the hub's seal", steps 2-5."""
    seal = record["hub_seal"]
    leaf = leaf_hash(record)
    first, size = seal["first"], seal["size"]
    if not first <= record["index"] < first + size:
        raise ValueError("the record is not in the batch its seal names")
    root = root_from_path(record["index"] - first, size, leaf, [unb64u(p) for p in seal["path"]])
    batch = jcs({"first": first, "root": b64u(root), "size": size, "v": 2}).encode()
    verify_detached(seal["signature"], batch, keys)
    if body is not None:
        commitment = b64u(hashlib.sha256(unb64u(salt) + jcs(body).encode()).digest())
        if commitment != record["body_hash"]:
            raise ValueError("the body is not the one the record commits to")


RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):(\d\d))")


def instant(text) -> int:
    """An RFC 3339 time as nanoseconds since 1970 (exact, to compare)."""
    m = RFC3339.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    seconds = calendar.timegm((year, month, day, hour, minute, second))
    if m.group(8):
        offset = int(m.group(9)) * 3600 + int(m.group(10)) * 60
        seconds -= offset if m.group(8) == "+" else -offset
    return seconds * 10**9 + int((m.group(7) or "")[:9].ljust(9, "0"))


def valid_at(key: dict, when) -> None:
    """The key's period (`valid_from`, `valid_until`, either optional) holds `when`."""
    t = instant(when)
    if "valid_from" in key and t < instant(key["valid_from"]) or \
            "valid_until" in key and t > instant(key["valid_until"]):
        raise ValueError(f"key {key['kid']} was not valid at {when}")


def thumbprint(key: dict) -> str:
    """RFC 7638 thumbprint of an Ed25519 JWK."""
    required = {"crv": key["crv"], "kty": key["kty"], "x": key["x"]}
    return b64u(hashlib.sha256(jcs(required).encode()).digest())


def follow(keys: dict, handover: dict, successors: dict) -> None:
    """docs/protocol.md, "Following the hub key's rotations": add the
    hand-over's key to `keys` (kid -> JWK) and end the retired key's period."""
    new, retires = handover["key"], handover["retires"]
    if successors.get(retires, new["kid"]) != new["kid"]:
        raise ValueError(f"{retires} was handed over to {successors[retires]} before")
    if "valid_from" not in new:
        raise ValueError(f"the new key {new['kid']} has no valid_from")
    since = instant(new["valid_from"])
    if thumbprint(new) != new["kid"]:
        raise ValueError(f"the new key's kid {new['kid']} is not its thumbprint")
    if retires not in keys:
        raise ValueError(f"the retiring key {retires} is not pinned nor handed over to")
    valid_at(keys[retires], new["valid_from"])
    payload = jcs({"key": new, "retires": retires, "type": "hub-key-handover/1"}).encode()
    signer = json.loads(unb64u(handover["signature"].split(".")[0])).get("kid")
    if signer != retires:
        raise ValueError(f"signed by {signer}, not by the retiring key {retires}")
    verify_detached(handover["signature"], payload, {retires: keys[retires]})
    retired = keys[retires]
    if "valid_until" not in retired or instant(retired["valid_until"]) > since:
        retired["valid_until"] = new["valid_from"]
    keys.setdefault(new["kid"], new)
    successors[retires] = new["kid"]


def follow_handovers(pinned: dict, handovers: list):
    """The keys (kid -> JWK) that `pinned` vouches for through `handovers`
    (oldest first), and each hand-over not followed with why: (keys, [(n, error)])."""
    keys, successors, not_followed = copy.deepcopy(pinned), {}, []
    for n, handover in enumerate(handovers):
        try:
            follow(keys, handover, successors)
        except Exception as e:  # noqa: BLE001 - one not followed adds nothing
            not_followed.append((n, e))
    return keys, not_followed
