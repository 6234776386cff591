#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/ (committed).

Seeds are real inputs: the content format's test vectors, records laid out as the index
writes them, the login messages of docs/protocol.md, header values curl and browsers send.
Run it again only to change the seeds; the fuzzers add what they find next to them.
"""
import hashlib
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent
VECTORS = ROOT.parent / "crates/efs-format/tests/vectors"


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = ROOT / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


# content_format: every vector up to one segment plus one byte (the larger ones only add size).
for v in sorted(VECTORS.glob("*.json")):
    vec = json.loads(v.read_text())
    ct = bytes.fromhex(vec.get("ciphertext", ""))
    if 0 < len(ct) <= 65536 + 56 + 2 * 16 + 1:
        write("content_format", ct)

# path: as they arrive in URIs and JSON bodies.
for p in ["/", "/patients/173/prescription.pdf", "/docs/", "/a%20b/c%2Fd", "/%C3%A9t%C3%A9.txt",
          "/_efs/health", "/a/../b", "/a//b", "/x%00y", "/%252e", "/" + "n" * 255, "relative",
          "/a\\b", "/.hidden/./x", "/%e2%82%ac"]:
    write("path", p)


# record: postcard(Record) as efs-core writes it.
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zigzag(n):
    return varint((n << 1) ^ (n >> 63))


def pstr(s):
    s = s.encode()
    return varint(len(s)) + s


def record(name, kind, size, ctype, storage, wrapped):
    return (pstr(name) + varint(kind) + bytes(range(16)) + varint(size)
            + zigzag(1764547200000) + zigzag(1764547200123)
            + (b"\x01" + pstr(ctype) if ctype is not None else b"\x00")
            + varint(storage) + varint(1) + varint(len(wrapped)) + wrapped)


write("record", record("prescription.pdf", 0, 183_211, "application/pdf", 1, bytes(60)))
write("record", record("notes.txt", 0, 12, "text/plain", 0, bytes(60)))
write("record", record("patients", 1, 0, None, 2, b""))
write("record", record("é", 0, 2**63, None, 0, b""))

# login: first byte = message kind (see fuzz_targets/login.rs).
nonce = "q2Sx0o6W3oEFw0tXQUkyZ6r1cK0jM6Ejm4b2YJ0n7vA"
write("login", b"\x00" + json.dumps({"user": "alice"}).encode())
write("login", b"\x00" + json.dumps({"user": "bob.smith-2"}).encode())
write("login", b"\x01" + json.dumps({"user": "alice", "nonce": nonce, "signature": "A" * 86}).encode())
write("login", b"\x02" + json.dumps({"user": "alice", "nonce": "", "signature": "honest"}).encode())
write("login", b"\x02" + json.dumps({"user": "alice", "nonce": "", "signature": "honest",
                                     "fs": "records"}).encode())
write("login", b"\x03" + b"eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJlZnMtIn0.AAAA")
write("login", b"\x03" + b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.")
write("login", b"\x04" + struct.pack(">HB", 10, ord("B")))
write("login", b"\x04" + struct.pack(">HB", 200, ord("x")) + struct.pack(">HB", 201, ord("y")))
write("login", b"\x05ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE test@host")
write("login", b"\x05-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n")

# http_headers: 8-byte file length, then the header value.
for length, value in [(10, "bytes=0-0"), (1000, "bytes=100-"), (1000, "bytes=-200"),
                      (0, "bytes=-1"), (5, "bytes=0-1,3-4"), (2**40, "bytes=1099511627775-"),
                      (10, "*"), (10, '"00112233445566778899aabbccddeeff"'),
                      (10, '"00112233445566778899aabbccddeeff", W/"abc", "ffeeddccbbaa99887766554433221100"')]:
    write("http_headers", struct.pack(">Q", length) + value.encode())

# audit_log: edit scripts on a genuine five-entry log and its anchor, 4 bytes per edit
# (position u16 LE; operation, +128 for the anchor: 0 overwrite, 1 insert, 2 delete,
# 3 truncate, 4 flip a letter's case; then the byte).
for ops in [[], [(0, 0, ord("E"))], [(40, 0, ord("A"))], [(200, 1, ord("\n"))], [(120, 2, 0)],
            [(300, 3, 0)], [(65535, 1, ord("x"))], [(70, 0, ord("0")), (71, 2, 0)],
            [(30, 4, 0)], [(20, 128 + 4, 0)], [(15, 128 + 0, ord("9"))], [(40, 128 + 3, 0)]]:
    write("audit_log", b"".join(struct.pack("<HBB", p, o, b) for p, o, b in ops))

# backup_dump: index dumps as a backup writes them (kind 1: entry, 32-byte key; kind 2: inline
# content, 16-byte id; each with u32 big-endian lengths).
def dump_item(kind, key, value):
    return bytes([kind]) + struct.pack(">I", len(key)) + key + struct.pack(">I", len(value)) + value
write("backup_dump", b"")
write("backup_dump", dump_item(1, bytes(range(32)), b"\x00\x01sealed record bytes"))
write("backup_dump", dump_item(1, b"\xaa" * 32, b"r" * 90) + dump_item(2, b"\x07" * 16, b"c" * 300)
      + dump_item(1, b"\xab" * 32, b""))
write("backup_dump", dump_item(2, b"\x01" * 16, b"") + dump_item(2, b"\x02" * 16, b"x"))
